"""The speed layer's one seam: what the method files use to run faster, and all they import of it.

Everything here is an optimisation the user never sees (the same maps to float rounding; ``fast=False``
in every method runs the model itself):

- :func:`prepared` / :func:`prepare`: the model's folded-BatchNorm, channels-last copy, checked against the
  model on the first real batch (:mod:`.copies`).
- :func:`fast_forward` / :func:`fast_scorer`: that copy's scoring forward (optionally bfloat16) and a measured
  batch size (:mod:`.tuning`).
- :func:`occlusion_scorer`: incremental occlusion where the model decomposes into local layers up to its head
  (:mod:`.incremental`, on the graph :mod:`.graph` reads), else None and a line saying which layer stops it.
- :func:`masked_scorer`: LIME's scores with the first layers computed once per local mask pattern
  (:mod:`.tables`, with Winograd convolutions where timed faster, :mod:`.winograd`), else None.
- :func:`set_deterministic` / :func:`deterministic` / ``CNNLENS_DETERMINISTIC=1``: nothing timed; and
  :func:`clear_caches`, which forgets every process-wide cache.
- :func:`retain_freed_memory`: glibc keeps freed heap memory instead of handing it back after every batch
  (:mod:`cnnlens._allocator`; the ``cnnlens`` command calls it, a library user opts in).

The heavy parts (:mod:`.graph`, :mod:`.incremental`, :mod:`.tables`, :mod:`.winograd`: ``torch.fx`` graph
reading) are imported on first use, not by ``import cnnlens.explain``.

>>> forward, bs = fast_scorer(model, images[:1])   # prepared forward + batch size measured once per shape
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from cnnlens._allocator import retain_freed_memory
from cnnlens.explain.accel import copies as _copies, tuning
from cnnlens.explain.accel.copies import (PRECISIONS, autocast, check_precision, copy_input, fast_forward, fast_scorer,
                                            precision_agreement, prepare, prepared)
from cnnlens.explain.accel.tuning import (DETERMINISTIC_BATCH, DETERMINISTIC_ENV, architecture_key, deterministic,
                                          is_deterministic, set_deterministic, tuned_batch_size)

if TYPE_CHECKING:
    from cnnlens.explain.accel.incremental import OcclusionScorer


def occlusion_scorer(model: nn.Module, example: torch.Tensor, *, precision: str = "float32",
                     warn: bool = False) -> OcclusionScorer | None:
    """Incremental occlusion's scorer for ``model`` on images shaped like ``example`` (call inside
    ``core.guarded``), or None where the model does not decompose, after one warning (``warn``) or
    ``cnnlens.explain`` log line naming the layer that stops it. See
    :func:`cnnlens.explain.accel.incremental.occlusion_scorer`."""
    from cnnlens.explain.accel import incremental  # heavy (torch.fx graph reading): loaded on first use

    return incremental.occlusion_scorer(model, example, precision=precision, warn=warn)


def masked_scorer(model: nn.Module, example: torch.Tensor, *, precision: str = "float32"
                  ) -> Callable[..., torch.Tensor] | None:
    """LIME's masked-image scorer through pattern tables for ``model`` on images shaped like ``example`` (call
    inside ``core.guarded``), or None with a ``cnnlens.explain`` log line naming the layer that stops it. See
    :func:`cnnlens.explain.accel.tables.masked_scorer`."""
    from cnnlens.explain.accel import tables  # heavy (torch.fx graph reading): loaded on first use

    return tables.masked_scorer(model, example, precision=precision)


def plan_scorer(model: nn.Module, example: torch.Tensor, batch_size: int | None = None
                ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int] | None:
    """``(forward, batch_size)`` for scoring many whole images: logits under ``torch.inference_mode`` through
    ``model``'s :class:`~cnnlens.explain.accel.incremental.LocalPlan` (folded BatchNorm, channels-last), its 3x3
    convolutions as Winograd F(4x4,3x3) where timed faster (:func:`cnnlens.explain.accel.winograd.plan_forward`),
    at ``batch_size`` (None: measured on the plan with Winograd's choices for batches of the usual size,
    :data:`DETERMINISTIC_BATCH`, then those timed again at the size found: timing every candidate size's choices
    took ~15 s of the small CNN's first call); or None, with a ``cnnlens.explain`` log line saying why, where the
    model does not decompose. Call inside ``core.guarded``."""
    from cnnlens.explain.accel import incremental, winograd  # heavy (torch.fx graph reading): loaded on first use

    try:
        plan = incremental.local_plan(model, example)
    except incremental.NotDecomposable as why:
        _copies.log.info("cnnlens: %s does not decompose (%s); scoring with its prepared copy",
                         type(model).__name__, why)
        return None
    with torch.inference_mode():
        if batch_size is None:
            usual = DETERMINISTIC_BATCH.get(example.device.type, DETERMINISTIC_BATCH["cpu"])
            guess = winograd.plan_forward(plan, example, usual)  # Winograd's choices timed at the usual size
            batch_size = tuned_batch_size(guess, example[:1], key=("plan", *architecture_key(model)))
        forward = winograd.plan_forward(plan, example, batch_size)

    def scored(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return forward(x)

    return scored, batch_size


def clear_caches() -> None:
    """Forget every process-wide cache of the speed layer in one call: the prepared copies of models, the
    measured batch sizes, the graph plans of incremental occlusion and LIME's tables, and Winograd's choices
    and transformed weights (where those modules were loaded).
    Nothing here is needed for correctness (each cache is rebuilt on use); clear them to re-measure after
    changing ``torch.set_num_threads`` or to free memory."""
    tuning.clear_cache()
    _copies.clear_cache()
    for heavy in ("incremental", "winograd"):  # not imported just to clear them
        module = sys.modules.get(f"cnnlens.explain.accel.{heavy}")
        if module is not None:
            module.clear_cache()


__all__ = ["DETERMINISTIC_BATCH", "DETERMINISTIC_ENV", "PRECISIONS", "architecture_key", "autocast", "check_precision", "clear_caches",
           "copy_input",
           "deterministic", "fast_forward", "fast_scorer", "is_deterministic", "masked_scorer", "occlusion_scorer", "plan_scorer",
           "precision_agreement", "prepare", "prepared", "retain_freed_memory", "set_deterministic", "tuned_batch_size"]
