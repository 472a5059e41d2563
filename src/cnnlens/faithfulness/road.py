"""Noisy linear imputation, ROAD's deletion substrate (Rong, Leemann, Borisov, Kasneci & Kasneci 2022,
"A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML).

A removed pixel becomes the weighted mean of its 8 neighbours (1/6 for the four direct ones, 1/12 for
the diagonals), removed neighbours included, so all removed pixels are solved together as one sparse
linear system whose known values are the kept pixels; then a little Gaussian noise is added. Unlike a
blurred copy or a constant, the fill carries no trace of the removed pixels' own values, and unlike
black it has no edges that outline the removal order (the paper's "class information leakage").

``A y = b`` per image and channel: ``d_i y_i - sum_{j removed} w_ij y_j = sum_{j kept} w_ij v_j``
over the removed pixels ``i``, ``d_i`` the sum of the weights of ``i``'s neighbours inside the image.
``A`` is symmetric and positive definite whenever some pixel is kept, and is solved here by Jacobi-
preconditioned conjugate gradients, batched over images and channels, with a 3x3 convolution as the
matrix product (the paper's reference code builds the matrix and calls ``scipy.sparse.linalg.spsolve``,
one image at a time; the tests check the two agree). An image with every pixel removed has nothing to
impute from and gets ``fallback`` (cnnlens passes the dataset's per-channel mean).

The metric itself (:func:`road`) removes a share of the pixels in the map's order, Most Relevant First
(MoRF: a faithful map makes the target's probability fall, lower is better) or Least Relevant First
(LeRF: it should stay, higher is better), imputes them, and averages the target's probability over the
shares (10%, 20%, ..., 90%, pytorch-grad-cam's ``ROADMostRelevantFirstAverage`` /
``ROADLeastRelevantFirstAverage`` percentiles).

>>> filled = noisy_linear_imputation(images, keep, fallback=images.mean(dim=(0, 2, 3)), noise=0.01)
>>> road(model, images, maps, order="morf").score   # [N]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens._checks import check_choice
from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.faithfulness._checks import check_generator, check_maps
from cnnlens.faithfulness.order import pixel_ranks
from cnnlens.faithfulness.variants import copy_probabilities

#: Neighbour weights (the paper's): direct neighbours 1/6, diagonal ones 1/12; the pixel itself 0.
WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
#: ROAD's default noise standard deviation, here in pixel units of [0,1] images.
NOISE = 0.01
#: Removal orders: Most Relevant First, Least Relevant First.
ORDERS = ("morf", "lerf")
#: Shares of the pixels removed, in percent (pytorch-grad-cam's ROAD averages).
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
#: Conjugate gradients stop when every system's residual is below this share of its right-hand side:
#: imputed values then lie within ~2e-3 of the exact solution on 48x48 (a fifth of ROAD's noise), in
#: 20-70 iterations as 10-99% of the pixels are removed.
TOLERANCE = 1e-4


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum_j w_ij x_j`` over each pixel's neighbours inside the image (zero outside), ``x`` ``[B,1,H,W]``.

    The 3x3 weights are ``outer([1,2,1], [1,2,1]) / 12`` less the centre's ``4/12``: two 1-D passes of
    shifted adds, several times faster on CPU than a one-channel ``conv2d``.
    """
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    rows = p[..., :, 0:w] + 2 * p[..., :, 1:w + 1] + p[..., :, 2:w + 2]
    box = rows[..., 0:h, :] + 2 * rows[..., 1:h + 1, :] + rows[..., 2:h + 2, :]
    return box * (1 / 12) - x * (4 / 12)


def noisy_linear_imputation(images: torch.Tensor, keep: torch.Tensor, *, fallback: torch.Tensor | None = None,
                            noise: float = NOISE, noise_values: torch.Tensor | None = None,
                            generator: torch.Generator | None = None, tolerance: float = TOLERANCE,
                            max_iterations: int | None = None) -> torch.Tensor:
    """``images`` ``[N,C,H,W]`` with every pixel where ``keep`` (bool ``[N,H,W]`` or ``[N,1,H,W]``) is False
    replaced by the weighted mean of its neighbours (solved jointly), plus ``noise``-std Gaussian noise.

    ``noise_values``: the standard-normal noise ``[N,C,H,W]`` to scale by ``noise`` (default: drawn with
    ``generator``), so a caller can hold it fixed across calls. ``fallback``: per-channel values ``[C]``
    for an image with no kept pixel, where nothing is left to impute from (default 0.5, mid-gray).
    Computed in float32 (float64 for float64 images). ``max_iterations`` defaults to ``4 * (H + W)``, more
    than a 48x48 image needs (at most ~70 at the default ``tolerance``).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N,C,H,W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    keep = keep.reshape(n, 1, h, w) if keep.numel() == n * h * w else None  # type: ignore[assignment]
    if keep is None:
        raise ValueError(f"keep must be a bool mask [N,H,W] = {(n, h, w)} (True = the pixel is kept)")
    keep = keep.to(device=images.device, dtype=torch.bool)
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.detach().to(dtype)
    if fallback is None:
        fallback = torch.full((c,), 0.5, dtype=dtype, device=images.device)
    fallback = torch.as_tensor(fallback, dtype=dtype, device=images.device).reshape(1, c, 1, 1)
    out = torch.where(keep, x, fallback.expand(n, c, h, w))
    active = keep.flatten(1).any(1) & (~keep).flatten(1).any(1)  # images with something to solve
    if bool(active.any()):
        idx = active.nonzero()[:, 0]
        k = keep[idx]
        start = (x[idx] * k).sum(dim=(2, 3), keepdim=True) / k.sum(dim=(2, 3), keepdim=True).to(x.dtype)
        out[idx] = _solve(x[idx], (~k).to(x.dtype), start.expand(-1, c, h, w), tolerance,
                          max_iterations or 4 * (h + w))
    if noise:
        if noise_values is None:
            noise_values = torch.randn(n, c, h, w, generator=generator, dtype=torch.float32).to(images.device)
        out = torch.where(keep, out, out + noise * noise_values.to(device=images.device, dtype=dtype))
    return out.to(images.dtype)


def _solve(x: torch.Tensor, removed: torch.Tensor, start: torch.Tensor, tolerance: float,
           max_iterations: int) -> torch.Tensor:
    """The system solved by batched Jacobi-preconditioned conjugate gradients from ``start`` ``[B,C,H,W]``
    (each image's mean kept value); returns ``[B,C,H,W]``: the kept pixels' values, the removed ones' solution."""
    b_, c, h, w = x.shape
    u = removed.repeat_interleave(c, dim=0)  # one system per image and channel: [B*C,1,H,W]
    v = x.reshape(b_ * c, 1, h, w)
    diag = _neighbour_sum(torch.ones_like(u))  # d_i: weights of the neighbours inside the image (>= 5/12)

    def matvec(y: torch.Tensor) -> torch.Tensor:
        return u * (diag * y - _neighbour_sum(u * y))

    rhs = u * _neighbour_sum((1 - u) * v)
    y = u * start.reshape(b_ * c, 1, h, w)
    r = rhs - matvec(y)
    z = r / diag
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
    scale = rhs.flatten(1).norm(dim=1).clamp_min(1e-12)
    for it in range(max_iterations):
        if it % 4 == 0 and bool((r.flatten(1).norm(dim=1) <= tolerance * scale).all()):
            break
        ap = matvec(p)
        pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), torch.zeros_like(pap))
        y = y + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return torch.where(u > 0, y, v).reshape(b_, c, h, w)


@dataclass(frozen=True)
class RoadResult:
    """ROAD for N images: ``probs`` ``[N,P]`` the target's probability with ``percentiles[p]``% of the
    pixels removed in ``order`` and imputed, ``score`` ``[N]`` their mean, the ``targets``."""

    order: str
    percentiles: tuple[float, ...]
    probs: torch.Tensor
    score: torch.Tensor
    targets: torch.Tensor


def road(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: Target = None, *, order: str = "morf",
         percentiles: Sequence[float] = PERCENTILES, noise: float = NOISE, channel_mean: torch.Tensor | None = None,
         generator: torch.Generator | None = None, batch_size: int | None = None) -> RoadResult:
    """ROAD (Rong et al. 2022): the target's probability after removing ``percentiles``% of the pixels,
    most (``order="morf"``, lower is better) or least (``"lerf"``, higher is better) relevant first, each
    removal filled by :func:`noisy_linear_imputation`; ``score`` = the mean over the percentiles.

    Ties in ``maps`` are broken at random with ``generator`` (default seed 0), which also draws the noise
    (one draw per image, the same at every percentile). ``channel_mean``: the fill of an image with every
    pixel removed (default: the mean of ``images``). All (image, percentile) pairs are imputed and scored
    in chunks of ``batch_size``.

    >>> morf = road(model, images, maps, order="morf").score
    >>> lerf = road(model, images, maps, order="lerf").score   # faithful maps: lerf well above morf
    """
    core.check_images(images)
    n, c, h, w = images.shape
    check_maps(maps, n=n, size=(h, w))
    check_choice(order, ORDERS, "order")
    shares = tuple(float(p) for p in percentiles)
    if not shares or not all(0 <= p <= 100 for p in shares):
        raise ValueError(f"percentiles must be a non-empty list of numbers in [0, 100], got {list(percentiles)!r}")
    g = check_generator(generator)
    images = images.detach()
    ranks = pixel_ranks((maps if order == "morf" else -maps).to(images.device), g)
    counts = torch.tensor([round(p / 100 * h * w) for p in shares], device=images.device)
    noise_values = torch.randn(images.shape, generator=g).to(images.device)
    mean = images.float().mean(dim=(0, 2, 3)) if channel_mean is None else torch.as_tensor(channel_mean)

    def make(img: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        keep = (ranks[img] >= counts[k, None]).view(-1, 1, h, w)
        return noisy_linear_imputation(images[img], keep, fallback=mean, noise=noise, noise_values=noise_values[img])

    probs, t = copy_probabilities(model, images, target, len(shares), make, batch_size)
    return RoadResult(order=order, percentiles=shares, probs=probs, score=probs.double().mean(1), targets=t)
