"""Extremal perturbations (Fong, Patrick & Vedaldi 2019): the smooth mask of a fixed area that keeps the
target's score highest when everything outside it is blurred away.

``m_a = argmax_m f_t(x (.) m + blur(x) (.) (1 - m)) - lambda ||sort(m) - r_a||^2`` for each area ``a``, ``r_a``
the sorted mask of area ``a`` (``(1 - a) P`` zeros then ones, ``P`` the pixels of the image and a margin
around it): the area is a constraint, not a weight that trades size against score. ``m`` is a smooth
max-convolution of a coarse parameter grid, so it has no adversarial speckle; the map of several areas is
their mean (a pixel's share of the areas that keep it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens._checks import check_choice, check_count, check_int, is_number
from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import batch_ranges, gaussian_blur
from cnnlens.explain.registry import Paper, method

PERTURBATIONS: tuple[str, ...] = ("blur", "fade")
REWARDS: tuple[str, ...] = ("logit", "contrastive")
#: TorchRay's settings for 224-pixel images; cnnlens scales the lengths to the image (a 48 px face gets a
#: 2 px parameter grid, a 4.5 px kernel and a 4.3 px blur: at 224 px sizes they would cover a third of it).
REFERENCE_SIDE, REFERENCE_STEP, REFERENCE_SIGMA, REFERENCE_BLUR = 224, 7, 21.0, 20.0
#: The smooth max's coldness (a softmax-weighted mean: 20 is close to a max and still differentiable).
COLDNESS = 20.0


def mask_weights(size: tuple[int, int], step: int, sigma: float, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """``(weights [K,H,W], radius)``: how much each of the ``K = (2 radius + 1)^2`` parameter points around
    a pixel's own grid cell reaches it: ``k(d / sigma)``, ``d`` the distance to the point (at the centre of
    its ``step`` x ``step`` cell), ``k(z) = exp(-2 max(z - 1/2, 0)^2)`` (flat out to ``sigma / 2``)."""
    radius = 1 + math.ceil(sigma / step)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)

    def axis(n: int) -> torch.Tensor:  # [2r+1, n]: signed distance from pixel u to the point of cell u//step + o
        u = torch.arange(n, dtype=torch.float64)
        centre = (torch.div(u, step, rounding_mode="floor")[None] + offsets[:, None]) * step + (step - 1) / 2
        return u[None] - centre

    dy, dx = axis(size[0]), axis(size[1])
    dist = torch.sqrt(dy[:, None, :, None] ** 2 + dx[None, :, None, :] ** 2)  # [2r+1, 2r+1, H, W]
    weights = torch.exp(-2 * (dist / sigma - 0.5).clamp(min=0) ** 2)
    return weights.reshape(-1, *size).to(dtype=dtype, device=device), radius


def smooth_mask(params: torch.Tensor, weights: torch.Tensor, radius: int, step: int) -> torch.Tensor:
    """Masks ``[B,H,W]`` in [0, 1] from parameter grids ``[B,gh,gw]`` (``gh = ceil(H / step)``): at each pixel
    the smooth max over the nearby points of ``weight * parameter`` (points past the border count as 0)."""
    b, gh, gw = params.shape
    k, h, w = weights.shape
    near = F.unfold(params[:, None], 2 * radius + 1, padding=radius).reshape(b, k, gh, gw)
    near = near.repeat_interleave(step, dim=2).repeat_interleave(step, dim=3)[:, :, :h, :w]
    z = weights * near
    return (z * torch.softmax(COLDNESS * z, dim=1)).sum(dim=1).clamp(0, 1)


@dataclass(frozen=True)
class MaskGeometry:
    """Where a mask's parameters lie: a ``grid`` of points ``step`` pixels apart over the image, ringed by
    ``pad`` cells of fixed zeros so that the mask also covers a ``margin`` of pixels around the image (the
    area term counts the image and its margin, as TorchRay does: pixels near the border are then not
    favoured by having fewer points near them). ``weights``/``radius``: :func:`mask_weights` over the padded
    grid's pixels."""

    size: tuple[int, int]
    step: int
    grid: tuple[int, int]
    pad: int
    margin: int
    weights: torch.Tensor
    radius: int

    def masks(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(on the image [B,H,W], on the image and its margin [B,H+2M,W+2M])`` of parameters ``[B,gh,gw]``."""
        full = smooth_mask(F.pad(params, (self.pad,) * 4), self.weights, self.radius, self.step)
        o, m, (h, w) = self.pad * self.step, self.margin, self.size
        return full[:, o:o + h, o:o + w], full[:, o - m:o + h + m, o - m:o + w + m]


def mask_geometry(size: tuple[int, int], step: int, sigma: float, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> MaskGeometry:
    """The :class:`MaskGeometry` of ``size`` images: ``ceil(size / step)`` points, a margin of ``round(sigma)``."""
    grid = (math.ceil(size[0] / step), math.ceil(size[1] / step))
    margin = round(sigma)
    pad = math.ceil(margin / step)
    weights, radius = mask_weights(((grid[0] + 2 * pad) * step, (grid[1] + 2 * pad) * step), step, sigma, dtype,
                                   device)
    return MaskGeometry(tuple(size), step, grid, pad, margin, weights, radius)


def blend(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[B,C,H,W]``: each pixel read from the pyramid ``[B,L,C,H,W]`` (level 0 the most perturbed, ``L - 1``
    the image) at level ``mask * (L - 1)``, linearly between the two nearest levels."""
    levels = pyramid.shape[1]
    pos = masks[:, None, None] * (levels - 1)  # [B,1,1,H,W]
    low = pos.detach().floor().clamp(max=levels - 2)
    frac = pos - low
    idx = low.long().expand(-1, 1, pyramid.shape[2], -1, -1)
    y0 = pyramid.gather(1, idx)[:, 0]
    y1 = pyramid.gather(1, idx + 1)[:, 0]
    return y0 + frac[:, 0] * (y1 - y0)


def perturbation_pyramid(images: torch.Tensor, kind: str, levels: int, max_blur: float) -> torch.Tensor:
    """``[N,L,C,H,W]``: level ``l`` is the image blurred by ``max_blur (1 - l / (L - 1))`` (``"blur"``) or
    scaled by ``l / (L - 1)`` (``"fade"``, towards black)."""
    steps = torch.linspace(0, 1, levels, dtype=torch.float64).tolist()
    if kind == "fade":
        return torch.stack([images * s for s in steps], dim=1)
    return torch.stack([gaussian_blur(images, max_blur * (1 - s)) if s < 1 else images for s in steps], dim=1)


@method("extremal-perturbation", "Extremal perturbation", kind="perturbation", options={"steps": 300},
        paper=Paper("Fong, Patrick & Vedaldi", 2019, "Understanding deep networks via extremal perturbations and "
                    "smooth masks"))
def extremal_perturbation(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                          areas: float | Sequence[float] = (0.1,), steps: int = 800, perturbation: str = "blur",
                          reward: str = "logit", step: int | None = None, sigma: float | None = None,
                          max_blur: float | None = None, levels: int = 8, jitter: bool = True,
                          batch_size: int | None = None, progress: bool = False, fast: bool = True) -> torch.Tensor:
    """Extremal perturbation masks ``[N,H,W]`` in [0, 1], the mean over ``areas`` (Fong et al., ICCV 2019).

    Preservation game: ``max_m R(x_m) - lambda_t ||sort(m) - r_a||^2 / HW``, ``x_m`` the image where ``m = 1``
    and its blur (``"fade"``: black) where ``m = 0``, read from an ``levels``-level pyramid; ``R`` the target's
    logit (``reward="contrastive"``: minus the largest other logit). As TorchRay: the parameter grid starts at 1,
    SGD with learning rate 0.01, momentum and dampening 0.9, clamped to [0, 1] after each step;
    ``lambda`` starts at 300 and grows by 0.35% a step; every other step the masked image is flipped
    left-right (``jitter``). ``step``, ``sigma`` and ``max_blur`` default to TorchRay's 7, 21 and 20 pixels
    scaled to the image's shorter side over 224. The area term counts the image and a margin of
    ``round(sigma)`` pixels around it, as TorchRay's does (over the image alone, the near-ties of the mask
    at its start favour the corners, which have the fewest points near them, and the optimisation kept
    them); the parameter points sit at the cells' centres (TorchRay's at their corners; with one-pixel
    cells the two masks agree: ``tests/test_explain_extremal_torchray.py``). Every image and area is
    its own optimisation, run side by side in rows of ``batch_size`` (image, area) pairs; ``fast`` (default)
    differentiates the checked folded, channels-last copy. No Captum equivalent (TorchRay's
    ``extremal_perturbation`` takes one image).

    >>> maps = extremal_perturbation(model, images, target=3, areas=(0.05, 0.1, 0.2), steps=300)
    """
    core.check_images(images)
    area_list = [float(areas)] if is_number(areas) else list(areas)
    if not area_list or not all(is_number(a) and 0 < a < 1 for a in area_list):
        raise ValueError(f"areas must be a number or a non-empty list of numbers in (0, 1) (shares of the image "
                         f"and its margin that the mask keeps), got {areas!r}")
    check_count(steps, "steps")
    check_choice(perturbation, PERTURBATIONS, "perturbation")
    check_choice(reward, REWARDS, "reward")
    check_int(levels, "levels", 2)
    n, _, h, w = images.shape
    scale = min(h, w) / REFERENCE_SIDE
    step = max(1, round(REFERENCE_STEP * scale)) if step is None else check_count(step, "step")
    sigma = REFERENCE_SIGMA * scale if sigma is None else float(sigma)
    max_blur = REFERENCE_BLUR * scale if max_blur is None else float(max_blur)
    if not (is_number(sigma) and sigma > 0 and is_number(max_blur) and max_blur > 0):
        raise ValueError(f"sigma and max_blur must be positive numbers of pixels, got {sigma!r} and {max_blur!r}")
    bs = core.check_batch_size(batch_size, images.device)
    x = images.detach()
    geometry = mask_geometry((h, w), step, sigma, x.dtype, x.device)
    a, covered = len(area_list), (h + 2 * geometry.margin) * (w + 2 * geometry.margin)
    reference = torch.ones(a, covered, dtype=x.dtype, device=x.device)
    for i, share in enumerate(area_list):
        reference[i, : int(covered * (1 - share))] = 0
    out = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    with core.guarded(model, images):
        net = accel.prepared(model, example=x) if fast else model
        with torch.no_grad():
            logits = core.predict_logits(net, x, bs)
        t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
        pyramid = perturbation_pyramid(x, perturbation, levels, max_blur)
        for start, end in batch_ranges(n * a, bs, progress=progress, description="extremal perturbation"):
            row = torch.arange(start, end, device=x.device)
            img, k = row // a, row % a
            masks = _optimise(net, pyramid[img], t[img], reference[k], geometry, steps, reward, jitter)
            out.index_add_(0, img, masks)
    return out / a


def _optimise(net: nn.Module, pyramid: torch.Tensor, target: torch.Tensor, reference: torch.Tensor,
              geometry: MaskGeometry, steps: int, reward: str, jitter: bool) -> torch.Tensor:
    """The masks ``[B,H,W]`` of one row of (image, area) pairs after ``steps`` SGD steps (see the caller)."""
    params = torch.ones(pyramid.shape[0], *geometry.grid, dtype=pyramid.dtype, device=pyramid.device)
    velocity = torch.zeros_like(params)
    lam, lr, momentum = 300.0, 0.01, 0.9
    for i in range(steps):
        params.requires_grad_(True)
        masks, covered = geometry.masks(params)
        seen = blend(pyramid, masks)
        if jitter and i % 2 == 0:
            seen = torch.flip(seen, dims=(3,))
        logits = net(seen)
        score = core.target_scores(logits, target)
        if reward == "contrastive":
            others = logits.scatter(1, target[:, None], float("-inf"))
            score = score - others.max(dim=1).values
        area = ((covered.flatten(1).sort(dim=1).values - reference) ** 2).mean(dim=1)
        (grad,) = torch.autograd.grad((score - lam * area).sum(), params)
        with torch.no_grad():  # SGD with dampening as torch.optim.SGD: the first step takes the gradient itself
            velocity = grad if i == 0 else momentum * velocity + (1 - momentum) * grad
            params = (params.detach() + lr * velocity).clamp_(0, 1)  # ascent on the energy
        lam *= 1.0035
    with torch.no_grad():
        return geometry.masks(params)[0]
