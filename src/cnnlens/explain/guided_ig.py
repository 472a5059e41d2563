"""Guided Integrated Gradients (Kapishnikov et al. 2021): integrated gradients along an adaptive path that
at every step moves the features whose gradient is smallest first.

From the baseline, step ``i`` of ``n_steps`` lowers the L1 distance to the image by ``1 / n_steps`` of the
total, moving the ``fraction`` of features with the smallest ``|gradient|`` towards the image (each kept
within ``max_dist`` of the straight line's alpha); ``GuidedIG(x) = sum_steps (x_new - x_old) * grad(x_old)``,
which sums to about ``logit_t(x) - logit_t(b)``. One gradient pass per step, of all N images at once; the
feature selection is PAIR's ``saliency.core.guided_ig`` algorithm, batched over the images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlens._checks import check_int, is_number
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.integrated_gradients import make_baseline
from cnnlens.explain.registry import Paper, method

#: PAIR's tolerance for "the L1 target is reached".
EPSILON = 1e-9


def _lower_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per row, numpy's ``quantile(values, q, method="lower")``: the sorted value at ``floor(q (D - 1))``."""
    index = math.floor(q * (values.shape[1] - 1))
    return values.sort(dim=1).values[:, index]


def _guided_step(x: torch.Tensor, x_in: torch.Tensor, base: torch.Tensor, grad_actual: torch.Tensor, step: int,
                 n_steps: int, fraction: float, max_dist: float, l1_total: torch.Tensor,
                 active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the path for the ``active`` rows of flattened ``[N,D]`` points: the new points and the
    attribution gained, ``(x_new - x_old) * grad_actual`` summed over the step's moves."""
    total = x_in - base
    alpha = (step + 1.0) / n_steps
    alpha_min, alpha_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    x_min, x_max = base + total * alpha_min, base + total * alpha_max
    l1_target = l1_total * (1 - (step + 1) / n_steps)
    grad = grad_actual.clone()
    gained = torch.zeros_like(x)
    moving = active.clone()
    while bool(moving.any()):
        rows = moving[:, None]
        x_old = x
        ratio = torch.where(total != 0, (x - base) / torch.where(total != 0, total, torch.ones_like(total)),
                            torch.full_like(x, alpha_max))  # a feature with no range counts as arrived
        x = torch.where(rows & (ratio < alpha_min), x_min, x)
        l1_current = (x - x_in).abs().sum(dim=1)
        reached = (l1_target - l1_current).abs() <= torch.clamp(EPSILON * torch.maximum(l1_target.abs(), l1_current.abs()),
                                                                  min=EPSILON)
        gained = gained + torch.where(rows, (x - x_old) * grad_actual, torch.zeros_like(x))
        moving = moving & ~reached
        if not bool(moving.any()):
            break
        rows = moving[:, None]
        x_old = x
        grad = torch.where(rows & (x == x_max), torch.full_like(grad, math.inf), grad)
        threshold = _lower_quantile(grad.abs(), fraction)
        chosen = (grad.abs() <= threshold[:, None]) & (grad != math.inf)
        l1_chosen = ((x - x_max).abs() * chosen).sum(dim=1)
        gamma = torch.where(l1_chosen > 0, (l1_current - l1_target) / torch.where(l1_chosen > 0, l1_chosen, 1.0),
                            torch.full_like(l1_chosen, math.inf))
        far = gamma > 1.0
        moved = torch.where(far[:, None], x_max, x + (x_max - x) * torch.where(far, 0.0, gamma)[:, None])
        x = torch.where(rows & chosen, moved, x)
        gained = gained + torch.where(rows, (x - x_old) * grad_actual, torch.zeros_like(x))
        moving = moving & far  # PAIR's `while gamma > 1`
    return x, gained


# the commands' 32 steps (PAIR's 200): the demo's report well under a minute on 2 CPU cores
@method("guided-ig", "Guided IG", kind="gradient", options={"n_steps": 32},
        paper=Paper("Kapishnikov et al.", 2021, "Guided integrated gradients: an adaptive path method for removing "
                    "noise"))
def guided_ig(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              baseline: str | float | torch.Tensor = "zeros", n_steps: int = 200, fraction: float = 0.25,
              max_dist: float = 0.02, progress: bool = False, reduce: Reduce = "sum",
              fast: bool = True) -> torch.Tensor:
    """Guided IG (Kapishnikov et al. 2021): ``sum_steps (x_new - x_old) * d logit_t(x_old) / dx`` along the
    path that moves the ``fraction`` of features with the smallest ``|gradient|`` first.

    ``baseline``: as in :func:`~cnnlens.explain.integrated_gradients.integrated_gradients` (``"zeros"``: black,
    PAIR's default). ``max_dist``: how far (in alpha) a feature may stray from the straight line (0:
    integrated gradients with a right-Riemann sum; 1: unbounded). Returns ``[N,H,W]`` summed over channels,
    raw ``[N,C,H,W]`` with ``reduce=None``: PAIR's ``saliency.core.GuidedIG`` with ``x_steps=n_steps``
    (float64 there; here the images' dtype). ``fast``: as in :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = guided_ig(model, images, target=3, n_steps=64)
    """
    core.check_images(images)
    check_int(n_steps, "n_steps", 1)
    if not is_number(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], the share of features moved at a time, got {fraction!r}")
    if not is_number(max_dist) or not 0 <= max_dist <= 1:
        raise ValueError(f"max_dist must be a number in [0, 1] (0: the straight line), got {max_dist!r}")
    x_img = images.detach()
    n = x_img.shape[0]
    base = make_baseline(x_img, baseline).flatten(1)
    x_in = x_img.flatten(1)
    l1_total = (x_in - base).abs().sum(dim=1)
    active = l1_total > 0  # an image equal to its baseline gets no attribution
    with core.guarded(model, images):
        net = accel.prepared(model, example=x_img) if fast else model
        logits = core.predict_logits(net, x_img)
        t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x_img.device)
        x, attr = base.clone(), torch.zeros_like(x_in)
        for step in core.batch_ranges(n_steps, 1, progress=progress, description="guided IG"):
            grad = core.input_gradient(net, x.view_as(x_img), t).flatten(1)
            x, gained = _guided_step(x, x_in, base, grad, step[0], n_steps, float(fraction), float(max_dist),
                                     l1_total, active)
            attr += gained
    return core.reduce_channels(attr.view_as(x_img), reduce)
