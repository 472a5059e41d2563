"""Explanation methods. Every method: ``method(model, images[N,C,H,W], target=None, **options) -> Tensor``.

``METHODS`` maps the CLI's names to the methods that return a per-pixel map ``[N,H,W]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

METHODS: dict[str, Callable[..., torch.Tensor]] = {}
