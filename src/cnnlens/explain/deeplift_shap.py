"""DeepLiftShap (Lundberg & Lee 2017, after Shrikumar et al. 2017): DeepLIFT averaged over a set of
baselines, an approximation of SHAP values with the baselines as the background distribution.

``DeepLiftShap(x) = 1/B sum_j DeepLIFT(x; b_j)``; for ReLU / max-pool networks its sum over pixels is
``logit_t(x) - mean_j logit_t(b_j)``. The ``N x B`` image-baseline pairs are evaluated in batches.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._checks import check_int
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.deeplift import check_eps, check_rescaled, deeplift_pair
from cnnlens.explain.registry import Paper, method


def background(images: torch.Tensor, baselines: torch.Tensor | None, n_baselines: int,
               generator: torch.Generator | None) -> torch.Tensor:
    """The baseline set ``[B,C,H,W]`` shared by every image: ``baselines`` itself, or (None)
    ``n_baselines`` images of uniform noise in [0, 1] drawn from ``generator`` (float32, in one draw; None:
    a fresh random seed, never torch's global generator)."""
    if baselines is None:
        check_int(n_baselines, "n_baselines", 1)
        generator = core.own_generator(generator, images.device)
        noise = torch.rand((n_baselines, *images.shape[1:]), generator=generator, device=generator.device,
                           dtype=torch.float32)
        return noise.to(images.device, images.dtype)
    if not isinstance(baselines, torch.Tensor) or baselines.dim() != 4 or tuple(baselines.shape[1:]) != tuple(images.shape[1:]) \
            or baselines.shape[0] == 0:
        got = tuple(baselines.shape) if isinstance(baselines, torch.Tensor) else type(baselines).__name__
        raise ValueError(f"baselines must be a tensor [B,C,H,W] of B >= 1 baseline images shaped like the images "
                         f"{tuple(images.shape[1:])}, got {got}; or None for uniform noise images")
    return baselines.detach().to(images.device, images.dtype)


# the commands' 8 noise baselines: a background of its own when no data set is at hand
@method("deeplift-shap", "DeepLiftShap", kind="gradient", options={"n_baselines": 8},
        paper=Paper("Lundberg & Lee", 2017, "A unified approach to interpreting model predictions"))
def deeplift_shap(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                  baselines: torch.Tensor | None = None, n_baselines: int = 16, eps: float = 1e-10,
                  batch_size: int | None = None, generator: torch.Generator | None = None,
                  progress: bool = False, reduce: Reduce = "sum", fast: bool = True) -> torch.Tensor:
    """DeepLiftShap: ``mean_j DeepLIFT(x; b_j)`` over the baseline images ``b_j`` (Lundberg & Lee 2017).

    ``baselines``: ``[B,C,H,W]`` background images (ideally a sample of the training data); None draws
    ``n_baselines`` uniform-noise images from ``generator``. ``batch_size`` image-baseline pairs go through
    the model at a time (None: the device's default); the result does not depend on it. Returns
    ``[N,H,W]`` summed over channels, raw ``[N,C,H,W]`` with ``reduce=None``: Captum's ``DeepLiftShap``
    with the same baselines (and :func:`~cnnlens.explain.deeplift.deeplift`'s differences from Captum's
    ``DeepLift``). ``fast``: as in :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = deeplift_shap(model, images, baselines=train_images[:32])
    """
    core.check_images(images)
    check_eps(eps)
    bs = core.check_batch_size(batch_size, images.device)
    x = images.detach()
    base = background(x, baselines, n_baselines, generator)
    n, b = x.shape[0], base.shape[0]
    count = 0
    with core.guarded(model, images):
        net = accel.prepared(model, example=x) if fast else model
        logits = core.predict_logits(net, x)
        t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
        total = torch.zeros_like(x)
        # pair k is image k // b against baseline k % b
        for start, end in core.batch_ranges(n * b, bs, progress=progress, description="deeplift-shap"):
            k = torch.arange(start, end, device=x.device)
            img, ref = k // b, k % b
            attr, _, rescaled = deeplift_pair(net, x[img], base[ref], t[img], float(eps))
            count += rescaled
            total.index_add_(0, img, attr)
    check_rescaled(model, count, "DeepLiftShap")
    return core.reduce_channels(total / b, reduce)
