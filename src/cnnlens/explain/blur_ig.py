"""Blur IG (Xu, Venugopalan & Sundararajan 2020): integrated gradients along the path of ever stronger
Gaussian blurs of the image, from the fully blurred image to the image itself.

``BlurIG(x) = -sum_i (sigma_{i+1} - sigma_i) * dL(x, sigma_i)/dsigma * d logit_t(L(x, sigma_i)) / dx`` for
``sigma_i = i * max_sigma / n_steps`` (or ``sqrt(i * max_sigma / n_steps)``), ``L(x, sigma)`` the blur
(zero borders, as PAIR's ``saliency``), ``dL/dsigma`` a forward difference of ``grad_step`` (both blurs
in float64, as PAIR's numpy does). All ``n_steps x N`` path points are evaluated in batches of ``batch_size``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlens._checks import check_int, is_number
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import gaussian_blur
from cnnlens.explain.registry import Paper, method


def _blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return images if sigma == 0 else gaussian_blur(images, sigma, border="zeros")


# the commands' 32 steps (the paper's 100): the demo's report well under a minute on 2 CPU cores
@method("blur-ig", "Blur IG", kind="gradient", options={"n_steps": 32},
        paper=Paper("Xu, Venugopalan & Sundararajan", 2020, "Attribution in scale and space"))
def blur_ig(model: nn.Module, images: torch.Tensor, target: Target = None, *, max_sigma: float = 50.0,
            n_steps: int = 100, grad_step: float = 0.01, sqrt: bool = False, batch_size: int | None = None,
            progress: bool = False, reduce: Reduce = "sum", fast: bool = True) -> torch.Tensor:
    """Blur IG (Xu et al. 2020): integrated gradients along the blur path ``sigma: max_sigma -> 0`` (pixels).

    ``n_steps`` blur levels, spaced linearly (or by square root with ``sqrt=True``); ``grad_step`` the
    sigma step of the blur's derivative. Returns ``[N,H,W]`` summed over channels (signed), raw
    ``[N,C,H,W]`` with ``reduce=None``: PAIR's ``saliency.core.BlurIG`` with ``batch_size=1`` (with a larger
    batch it weighs every step of a batch by the last one's sigma difference; here each step has its own).
    ``fast``: as in :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = blur_ig(model, images, target=3, max_sigma=20, n_steps=64)
    """
    core.check_images(images)
    check_int(n_steps, "n_steps", 1)
    for name, value in (("max_sigma", max_sigma), ("grad_step", grad_step)):
        if not is_number(value) or not value > 0:
            raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
    bs = core.check_batch_size(batch_size, images.device)
    x = images.detach()
    x64 = x.double()
    n = x.shape[0]
    levels = [float(i) * max_sigma / n_steps for i in range(n_steps + 1)]
    sigmas = [math.sqrt(v) for v in levels] if sqrt else levels
    with core.guarded(model, images):
        net = accel.prepared(model, example=x) if fast else model
        logits = core.predict_logits(net, x, bs)
        t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
        total = torch.zeros_like(x)
        # path point k is blur level k // n of image k % n
        for start, end in core.batch_ranges(n_steps * n, bs, progress=progress, description="blur IG"):
            k = torch.arange(start, end, device=x.device)
            step, img = k // n, k % n
            points, slopes = torch.empty_like(x[img]), torch.empty_like(x[img])
            for s in step.unique().tolist():  # a few blur levels per batch, each blurring its images at once
                rows = (step == s).nonzero().squeeze(1)
                # in float64: the forward difference of two close blurs would lose ~5 digits in float32
                wide = x64[img[rows]]
                near = _blurred(wide, sigmas[s])
                points[rows] = near.to(x.dtype)
                slopes[rows] = ((_blurred(wide, sigmas[s] + grad_step) - near) / grad_step).to(x.dtype)
            widths = torch.tensor([sigmas[s + 1] - sigmas[s] for s in step.tolist()], dtype=x.dtype, device=x.device)
            grad = core.input_gradient(net, points, t[img])
            total.index_add_(0, img, -widths.view(-1, 1, 1, 1) * slopes * grad)
    return core.reduce_channels(total, reduce)
