"""GradientSHAP (Lundberg & Lee 2017, SHAP's ``GradientExplainer``): expected gradients, i.e. integrated
gradients with the baseline and the point on the path drawn at random.

``GradientSHAP(x) = mean_s (x_s - b_s) * d logit_t(b_s + a_s (x_s - b_s)) / dx``, ``b_s`` drawn from the
baseline images, ``a_s ~ U[0, 1]``, ``x_s = x + eps_s`` (SmoothGrad's noise, none by default). Draws, in
this order from one ``generator``: the noise baselines (when none are given), the baseline index and the
``a`` of each of the ``n_samples x N`` samples (sample-major), then SmoothGrad's noise
(:func:`~cnnlens.explain.smoothgrad.noisy_batches`); without a generator, a fresh random seed (torch's global
generator is never drawn from). The samples are evaluated in batches.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._checks import check_int, is_number
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.deeplift_shap import background
from cnnlens.explain.registry import Paper, method
from cnnlens.explain.smoothgrad import noisy_batches


# the commands' 8 noise baselines and 16 samples (Captum's 5 samples are noisy maps)
@method("gradient-shap", "GradientSHAP", kind="gradient", options={"n_baselines": 8, "n_samples": 16},
        paper=Paper("Lundberg & Lee", 2017, "A unified approach to interpreting model predictions"))
def gradient_shap(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                  baselines: torch.Tensor | None = None, n_baselines: int = 16, n_samples: int = 5,
                  sigma: float = 0.0, batch_size: int | None = None, generator: torch.Generator | None = None,
                  progress: bool = False, reduce: Reduce = "sum", fast: bool = True) -> torch.Tensor:
    """GradientSHAP (Lundberg & Lee 2017): ``mean_s (x_s - b_s) * grad(b_s + a_s (x_s - b_s))``.

    ``baselines``: ``[B,C,H,W]`` background images; None draws ``n_baselines`` uniform-noise images (as
    :func:`~cnnlens.explain.deeplift_shap.deeplift_shap`). ``n_samples`` random (baseline, point) draws per
    image; ``sigma`` the noise added to the image, relative to its value range (Captum's ``stdevs``
    is absolute; both default to none). ``batch_size`` samples go through the model at a time (None: the
    device's default); the result does not depend on it. Returns ``[N,H,W]`` summed over channels, raw
    ``[N,C,H,W]`` with ``reduce=None``: Captum's ``GradientShap`` given the same draws. ``fast``: as in
    :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = gradient_shap(model, images, baselines=train_images[:32], n_samples=32,
    ...                      generator=torch.Generator().manual_seed(0))
    """
    core.check_images(images)
    check_int(n_samples, "n_samples", 1)
    if not is_number(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a number >= 0 (a fraction of each image's value range), got {sigma!r}")
    bs = core.check_batch_size(batch_size, images.device)
    x = images.detach()
    generator = core.own_generator(generator, x.device)
    base = background(x, baselines, n_baselines, generator)
    n, total_draws = x.shape[0], n_samples * x.shape[0]
    device = generator.device
    chosen = torch.randint(base.shape[0], (total_draws,), generator=generator, device=device).to(x.device)
    alphas = torch.rand(total_draws, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)
    with core.guarded(model, images):
        net = accel.prepared(model, example=x) if fast else model
        logits = core.predict_logits(net, x)
        t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
        total = torch.zeros_like(x)
        offset = 0
        for noisy, img in noisy_batches(x, n_samples, float(sigma), bs, generator, progress):
            k = slice(offset, offset + noisy.shape[0])
            offset += noisy.shape[0]
            ref = base[chosen[k]]
            diff = noisy - ref
            grad = core.input_gradient(net, ref + alphas[k].view(-1, 1, 1, 1) * diff, t[img])
            total.index_add_(0, img, grad * diff)
    return core.reduce_channels(total / n_samples, reduce)
