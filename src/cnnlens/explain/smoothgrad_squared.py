"""SmoothGrad-Squared (Hooker et al. 2019): the mean square of a gradient method over noisy copies.

``SG^2(x) = mean_s M(x + eps_s)^2``, the noise and batching of
:func:`~cnnlens.explain.smoothgrad.smoothgrad` (whose ``squared=True`` this is).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Reduce, Target
from cnnlens.explain import core
from cnnlens.explain.registry import Paper, method
from cnnlens.explain.saliency import saliency
from cnnlens.explain.smoothgrad import GradientMethod, smoothgrad


# the commands' 12 noisy copies, as SmoothGrad's
@method("smoothgrad-squared", "SmoothGrad-Squared", kind="gradient", options={"n_samples": 12},
        paper=Paper("Hooker et al.", 2019, "A benchmark for interpretability methods in deep neural networks"))
def smoothgrad_squared(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                       method: GradientMethod = saliency, n_samples: int = 50, sigma: float = 0.15,
                       batch_size: int | None = None, generator: torch.Generator | None = None,
                       progress: bool = False, reduce: Reduce = "max_abs", fast: bool = True) -> torch.Tensor:
    """SmoothGrad-Squared (Hooker et al. 2019): ``mean_s method(x + eps_s)^2``.

    The options are :func:`~cnnlens.explain.smoothgrad.smoothgrad`'s. ``[N,H,W]`` after ``reduce``, raw
    ``[N,C,H,W]`` with ``reduce=None``: Captum's ``NoiseTunnel(Saliency).attribute(nt_type="smoothgrad_sq")``
    given the same noise.

    >>> maps = smoothgrad_squared(model, images, generator=torch.Generator().manual_seed(0))
    """
    core.check_images(images)
    generator = core.own_generator(generator, images.device)  # never torch's global generator
    return smoothgrad(model, images, target, method=method, n_samples=n_samples, sigma=sigma, squared=True,
                      batch_size=batch_size, generator=generator, progress=progress, reduce=reduce, fast=fast)
