"""Type aliases shared across cnnlens."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Union

import torch

#: A target class: None (the model's predicted class), one int for every image, or one per image.
Target = Union[int, Sequence[int], torch.Tensor, None]
#: A filesystem path.
PathArg = Union[str, "PathLike[str]"]
#: Channel reduction of a raw ``[N,C,H,W]`` attribution to a ``[N,H,W]`` map; None keeps it raw.
Reduce = Union[str, None]
