"""VarGrad (Adebayo et al. 2018): the variance of a gradient method over noisy copies of the image.

``VarGrad(x) = var_s M(x + eps_s)``, the noise and batching of :func:`~cnnlens.explain.smoothgrad.smoothgrad`
(whose ``variance=True`` this is), ``M`` the signed gradient by default.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from cnnlens._types import Reduce, Target
from cnnlens.explain import core
from cnnlens.explain.registry import Paper, method
from cnnlens.explain.saliency import saliency
from cnnlens.explain.smoothgrad import GradientMethod, smoothgrad

#: The paper's gradient: signed (the variance of |gradient| is another quantity).
SIGNED_GRADIENT = functools.partial(saliency, abs=False)


# the commands' 12 noisy copies, as SmoothGrad's
@method("vargrad", "VarGrad", kind="gradient", options={"n_samples": 12},
        paper=Paper("Adebayo et al.", 2018, "Local explanation methods for deep neural networks lack sensitivity to "
                    "parameter values"))
def vargrad(model: nn.Module, images: torch.Tensor, target: Target = None, *,
            method: GradientMethod = SIGNED_GRADIENT, n_samples: int = 50, sigma: float = 0.15,
            batch_size: int | None = None, generator: torch.Generator | None = None, progress: bool = False,
            reduce: Reduce = "max_abs", fast: bool = True) -> torch.Tensor:
    """VarGrad (Adebayo et al. 2018): ``var_s method(x + eps_s)``, ``eps_s ~ N(0, (sigma * range(x))^2)``.

    The options are :func:`~cnnlens.explain.smoothgrad.smoothgrad`'s. ``[N,H,W]`` after ``reduce``, raw
    ``[N,C,H,W]`` with ``reduce=None``: Captum's ``NoiseTunnel(Saliency).attribute(nt_type="vargrad",
    abs=False)`` given the same noise.

    >>> maps = vargrad(model, images, n_samples=50, generator=torch.Generator().manual_seed(0))
    """
    core.check_images(images)
    generator = core.own_generator(generator, images.device)  # never torch's global generator
    return smoothgrad(model, images, target, method=method, n_samples=n_samples, sigma=sigma, variance=True,
                      batch_size=batch_size, generator=generator, progress=progress, reduce=reduce, fast=fast)
