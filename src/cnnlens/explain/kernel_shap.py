"""KernelSHAP over superpixels (Lundberg & Lee 2017): Shapley values of the segments, estimated by a
weighted linear regression on random coalitions.

Each image's segments are the players; a coalition ``z`` shows the segments it holds and hides the rest
(:mod:`cnnlens.explain.segmentation`). The Shapley values are the coefficients of the linear model
``f(z) ~ phi_0 + phi . z`` fitted with the Shapley kernel ``pi(z) = (M-1) / (C(M,|z|) |z| (M-|z|))``
under the constraints ``phi_0 = f(empty)`` and ``sum phi = f(all) - f(empty)`` (the kernel's infinite
weights on those two coalitions). Sampling coalitions from the kernel itself (a size ``k`` with
probability ``~ (M-1) / (k (M-k))``, then ``k`` segments at random) leaves every sample weight 1, as
Captum and the ``shap`` package do; an image with at most ``log2(n_samples)`` segments gets every
coalition, kernel-weighted, and so its exact Shapley values.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._checks import check_int
from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.registry import Paper, method
from cnnlens.explain.segmentation import hide_values, masked_scores, paint, superpixels


def shapley_kernel(m: int, size: torch.Tensor) -> torch.Tensor:
    """The Shapley kernel weight of a coalition of ``size`` of ``m`` players (0 for the empty and full ones,
    which the regression holds as constraints): ``(m-1) / (C(m,k) k (m-k))``, float64."""
    k = size.double()
    log_binom = torch.lgamma(torch.tensor(m + 1.0, dtype=torch.float64)) - torch.lgamma(k + 1) - torch.lgamma(m - k + 1)
    inner = (k > 0) & (k < m)
    w = (m - 1) / (torch.exp(log_binom) * k.clamp_min(1) * (m - k).clamp_min(1))
    return torch.where(inner, w, torch.zeros_like(w))


def coalitions(num_segments: torch.Tensor, n_samples: int, generator: torch.Generator | None,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masks bool [N,K,S], weights float64 [N,K])``: the coalitions of each image and their regression
    weights; ``K = n_samples``, sample 0 holds every segment, sample 1 none (weight 0: the constraints).

    An image with ``2^M <= n_samples`` gets all ``2^M`` coalitions with the Shapley kernel's weights (the
    rest of its K rows padded with weight 0); any other gets ``K - 2`` coalitions drawn from the kernel
    (size, then members) with weight 1. Drawn image after image from ``generator``, so images explained
    one call at a time with one generator get exactly the coalitions of one batched call.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    n, s_max = len(num_segments), int(num_segments.max())
    masks = torch.zeros(n, n_samples, s_max, dtype=torch.bool, device=device)
    weights = torch.zeros(n, n_samples, dtype=torch.float64, device=device)
    masks[:, 0] = torch.arange(s_max, device=device) < num_segments[:, None]
    for i, m in enumerate(num_segments.tolist()):  # ragged M_i; the model passes are batched
        if m < 2:
            continue  # one segment: its value is the constraint itself
        if 2**m <= n_samples:  # every coalition but the full and empty ones (rows 0 and 1)
            bits = (torch.arange(1, 2**m - 1, device=device)[:, None] >> torch.arange(m, device=device)) & 1
            masks[i, 2: 2**m, :m] = bits.bool()
            weights[i, 2: 2**m] = shapley_kernel(m, bits.sum(1))
            continue
        sizes = torch.arange(1, m, dtype=torch.float64)
        p = (m - 1) / (sizes * (m - sizes))
        k = torch.multinomial(p, n_samples - 2, replacement=True, generator=generator) + 1
        order = torch.rand(n_samples - 2, m, generator=generator, device=gen_device).argsort(dim=1).argsort(dim=1)
        masks[i, 2:, :m] = (order < k.to(order.device)[:, None]).to(device)
        weights[i, 2:] = 1.0
    return masks, weights


def constrained_regression(masks: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor,
                           num_segments: torch.Tensor, full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """``phi [N,S]`` minimising ``sum_k w_k (f(z_k) - f(empty) - phi . z_k)^2`` subject to
    ``sum phi = f(full) - f(empty)``, batched over images in float64 (0 past an image's ``S_i``).

    The constraint eliminates the last segment (``phi_last = total - sum_others``), leaving a plain
    weighted least-squares problem solved through the pseudo-inverse of its normal equations (the
    minimum-norm answer where a segment never varied apart from the last, as scikit-learn's
    ``LinearRegression`` under Captum's ``KernelShap``).
    """
    z = masks.double()
    n, _, s = z.shape
    last = (num_segments - 1).clamp_min(0).to(z.device)
    total = (full - empty).double()
    z_last = z.gather(2, last[:, None, None].expand(n, z.shape[1], 1))
    free = (torch.arange(s, device=z.device) < last[:, None]).double()  # the segments solved for
    x = (z - z_last) * free[:, None, :]
    y = scores.double() - empty.double()[:, None] - z_last[..., 0] * total[:, None]
    a = torch.einsum("nks,nk,nkt->nst", x, weights, x) + torch.diag_embed(1 - free)
    b = torch.einsum("nks,nk,nk->ns", x, weights, y)
    phi = (torch.linalg.pinv(a, hermitian=True) @ b[..., None])[..., 0] * free
    rest = total - phi.sum(1)
    return phi.scatter(1, last[:, None], rest[:, None]) * (num_segments[:, None].to(z.device) > 0)


@method("kernel-shap", "KernelSHAP", kind="perturbation", options={"n_samples": 300},
        paper=Paper("Lundberg & Lee", 2017, "A unified approach to interpreting model predictions"))
def kernel_shap(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                segmentation: str | torch.Tensor = "slic", n_segments: int = 50,
                segmentation_kwargs: dict | None = None, n_samples: int = 2048, hide: str | float = "black",
                output: str = "probability", batch_size: int | None = None,
                generator: torch.Generator | None = None, progress: bool = False, fast: bool = True,
                precision: str = "float32") -> torch.Tensor:
    """KernelSHAP's Shapley value of each superpixel, painted on its pixels: ``[N,H,W]``.

    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017.
    ``phi = argmin sum_z pi(z) (f(x_z) - f(x_empty) - phi . z)^2`` s.t. ``sum phi = f(x) - f(x_empty)``,
    ``pi`` the Shapley kernel (:func:`coalitions`, :func:`constrained_regression`). ``n_samples``
    coalitions per image, the full and empty ones included (``shap`` uses ``2M + 2048``, Captum 25);
    ``hide``: ``"black"`` (0, Captum's default baseline), ``"mean"`` or a float; ``segmentation``,
    ``output``, ``fast`` and ``precision`` as in :func:`cnnlens.explain.feature_ablation.feature_ablation`.
    Captum's ``KernelShap(model).attribute(x, target, baselines=hide, feature_mask=segments[:, None],
    n_samples=n_samples)`` on the probability; the difference: the constraints are exact here, where
    Captum weighs the two coalitions by 1e6 (the tests feed both the same coalitions: within 1e-4). The
    same ``generator`` seed gives the same coalitions (None: one seeded with 0; Captum draws from torch's
    global generator).

    >>> maps = kernel_shap(model, images, target=3, generator=torch.Generator().manual_seed(0))
    """
    core.check_images(images)
    core.check_output(output)
    check_int(n_samples, "n_samples", 3, hint=" (the full and empty coalitions and at least one more)")
    core.check_batch_size(batch_size, images.device)
    images = images.detach()
    segments, num = superpixels(images, segmentation, n_segments=n_segments, segmentation_kwargs=segmentation_kwargs)
    fill = hide_values(images, segments, int(num.max()), hide)
    if generator is None:  # never torch's global generator: a fixed seed, the same answer every call
        generator = torch.Generator().manual_seed(0)
    masks, weights = coalitions(num, n_samples, generator, images.device)
    scores, _ = masked_scores(model, images, fill, segments, num, masks, target, output=output, batch_size=batch_size,
                              fast=fast, precision=precision, progress=progress, description="KernelSHAP")
    phi = constrained_regression(masks, scores, weights, num, scores[:, 0], scores[:, 1])
    return paint(phi.to(images.dtype), segments)


__all__ = ["coalitions", "constrained_regression", "kernel_shap", "shapley_kernel"]
