"""Integrated Gradients (Sundararajan, Taly & Yan 2017): gradients averaged along the straight path
from a baseline ``b`` to the image ``x``.

``IG(x) = (x - b) * integral_0^1 d logit_t(b + a (x - b)) / dx  da``, the integral by an ``n_steps``
quadrature. Completeness: ``sum IG(x) = logit_t(x) - logit_t(b)`` up to the quadrature error, reported
per image by :func:`integrated_gradients_result`. All ``n_steps x N`` path points are evaluated in
batches of ``batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnlens._checks import check_int, is_number
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import gaussian_blur
from cnnlens.explain.registry import Paper, method

BASELINES = ("zeros", "mean", "blur")
QUADRATURES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


@dataclass(frozen=True)
class IntegratedGradientsResult:
    """Integrated gradients with their completeness check.

    Attributes:
        attributions: raw ``[N,C,H,W]``.
        target: the explained class per image ``[N]``.
        baseline: ``[N,C,H,W]``.
        scores: ``logit_t(x)`` ``[N]``.
        baseline_scores: ``logit_t(b)`` ``[N]``.
        gap: ``sum(attributions) - (scores - baseline_scores)`` ``[N]``: the quadrature error, 0 ideally.
    """

    attributions: torch.Tensor
    target: torch.Tensor
    baseline: torch.Tensor
    scores: torch.Tensor
    baseline_scores: torch.Tensor
    gap: torch.Tensor

    @property
    def relative_gap(self) -> torch.Tensor:
        """``|gap| / |scores - baseline_scores|`` ``[N]``."""
        return self.gap.abs() / (self.scores - self.baseline_scores).abs().clamp(min=1e-12)


def quadrature(method: str, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas, weights)`` float64 ``[n_steps]`` with ``integral_0^1 g ~ sum_s weights[s] g(alphas[s])``.

    Same points as Captum's methods of the same names; the weights always sum to 1, so a model linear
    in its input has no gap. (Captum's ``riemann_trapezoid`` weighs the n points by ``1/n`` instead of
    ``1/(n-1)``, so its sum is ``(n-1)/n``; here it is the trapezoid rule.)
    """
    if method not in QUADRATURES:
        raise ValueError(f"method must be one of {', '.join(map(repr, QUADRATURES))}, got {method!r}")
    check_int(n_steps, "n_steps", 2 if method == "riemann_trapezoid" else 1, hint=f" for {method}")
    n = n_steps
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * w)
    k = torch.arange(n, dtype=torch.float64)
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (n - 1), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (k + offset) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)


def make_baseline(images: torch.Tensor, baseline: str | float | torch.Tensor, blur_sigma: float | None = None) -> torch.Tensor:
    """The baseline ``[N,C,H,W]``: ``"zeros"`` (black), ``"mean"`` (each image's per-channel mean colour),
    ``"blur"`` (Gaussian blur, sigma ``blur_sigma`` pixels, default ``min(H,W)/10``), a number (that value
    everywhere), or a tensor broadcastable to the images (``[C,H,W]``, ``[1,C,H,W]`` or ``[N,C,H,W]``).
    """
    if isinstance(baseline, torch.Tensor):
        if baseline.dim() not in (3, 4) or (baseline.dim() == 4 and baseline.shape[0] not in (1, images.shape[0])) \
                or tuple(baseline.shape[-3:]) != tuple(images.shape[1:]):
            raise ValueError(f"baseline tensor must have shape [C,H,W], [1,C,H,W] or [N,C,H,W] matching images "
                             f"{tuple(images.shape)}, got {tuple(baseline.shape)}")
        return baseline.to(device=images.device, dtype=images.dtype).expand_as(images)
    if is_number(baseline):
        return torch.full_like(images, float(baseline))
    if baseline == "zeros":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if baseline == "blur":
        sigma = min(images.shape[2:]) / 10 if blur_sigma is None else blur_sigma
        if not is_number(sigma) or sigma <= 0:
            raise ValueError(f"blur_sigma must be a positive number of pixels, got {blur_sigma!r}")
        return gaussian_blur(images, float(sigma))
    raise ValueError(f"baseline must be one of {', '.join(map(repr, BASELINES))}, a number or a tensor, got {baseline!r}")


def integrated_gradients_result(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                                baseline: str | float | torch.Tensor = "zeros", n_steps: int = 50,
                                method: str = "gausslegendre", blur_sigma: float | None = None,
                                batch_size: int | None = None, progress: bool = False,
                                fast: bool = True) -> IntegratedGradientsResult:
    """Integrated gradients (Sundararajan et al. 2017) with per-image completeness gap; see
    :func:`integrated_gradients` for the arguments.

    >>> r = integrated_gradients_result(model, images, n_steps=200)
    >>> r.relative_gap.max()   # small: the quadrature has converged
    """
    core.check_images(images)
    alphas, weights = quadrature(method, n_steps)
    bs = core.check_batch_size(batch_size, images.device)
    x = images.detach()
    base = make_baseline(x, baseline, blur_sigma)
    alphas, weights = alphas.to(device=x.device, dtype=x.dtype), weights.to(device=x.device, dtype=x.dtype)
    n = x.shape[0]
    with core.guarded(model, images):
        net = accel.prepared(model, example=x) if fast else model
        logits = core.predict_logits(net, x, bs)
        t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
        diff = x - base
        total = torch.zeros_like(x)
        # Path point k is step k // n of image k % n (step-major, as Captum orders them).
        for start, end in core.batch_ranges(n_steps * n, bs, progress=progress, description="integrated gradients"):
            k = torch.arange(start, end, device=x.device)
            step, img = k // n, k % n
            points = base[img] + alphas[step].view(-1, 1, 1, 1) * diff[img]
            grad = core.input_gradient(net, points, t[img])
            total.index_add_(0, img, grad * weights[step].view(-1, 1, 1, 1))
        scores = core.target_scores(logits, t)
        baseline_scores = core.target_scores(core.predict_logits(net, base, bs), t)
    attributions = total * diff
    gap = attributions.sum(dim=(1, 2, 3)) - (scores - baseline_scores)
    return IntegratedGradientsResult(attributions, t, base, scores, baseline_scores, gap)


# the commands' 16 steps (Captum's 50): the demo's report well under a minute on 2 CPU cores
@method("integrated-gradients", "Integrated gradients", kind="gradient", options={"n_steps": 16}, in_report=5,
        paper=Paper("Sundararajan, Taly & Yan", 2017, "Axiomatic attribution for deep networks"))
def integrated_gradients(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                         baseline: str | float | torch.Tensor = "zeros", n_steps: int = 50,
                         method: str = "gausslegendre", blur_sigma: float | None = None,
                         batch_size: int | None = None, progress: bool = False,
                         reduce: Reduce = "sum", fast: bool = True) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017): ``(x - b) * mean over the path of d logit_t / dx``.

    ``baseline``: ``"zeros"``, ``"mean"`` (per-image channel means), ``"blur"`` (``blur_sigma`` pixels),
    a number or a tensor. ``method``: the quadrature, as in Captum (``"gausslegendre"``,
    ``"riemann_trapezoid"``, ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``). Returns
    ``[N,H,W]`` summed over channels (signed; the sum over pixels is ``logit_t(x) - logit_t(b)``), raw
    ``[N,C,H,W]`` with ``reduce=None``: Captum's ``IntegratedGradients`` with the same steps and method
    (except ``riemann_trapezoid``, see :func:`quadrature`). ``fast``: as in
    :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = integrated_gradients(model, images, baseline="blur", n_steps=32, batch_size=64)
    """
    result = integrated_gradients_result(model, images, target, baseline=baseline, n_steps=n_steps, method=method,
                                         blur_sigma=blur_sigma, batch_size=batch_size, progress=progress,
                                         fast=fast)
    return core.reduce_channels(result.attributions, reduce)
