"""Guided Grad-CAM (Selvaraju et al. 2017): guided backprop's fine detail, gated by where Grad-CAM looks.

``raw[n,c,h,w] = guided_backprop[n,c,h,w] * upsample(grad_cam)[n,h,w]``.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.guided_backprop import guided_backprop
from cnnlens.explain.registry import Paper, method


@method("guided-grad-cam", "Guided Grad-CAM", kind="cam", layer=True, in_report=4,
        paper=Paper("Selvaraju et al.", 2017, "Grad-CAM: visual explanations from deep networks via gradient-based "
                    "localization"))
def guided_grad_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                    layer: str | nn.Module | None = None, reduce: Reduce = "max_abs",
                    fast: bool = True) -> torch.Tensor:
    """Guided backprop times bilinearly upsampled, ReLU'd Grad-CAM of ``layer`` (Selvaraju et al. 2017).

    ``[N,H,W]`` after ``reduce`` (default ``max_c |.|``), raw ``[N,C,H,W]`` with ``reduce=None``: Captum's
    ``GuidedGradCam(model, layer).attribute(..., interpolate_mode="bilinear")``. ``fast``: as in
    :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = guided_grad_cam(model, images, target=2, layer="features.8")
    """
    core.check_images(images)
    with core.guarded(model, images):
        # One target for both halves: the predicted class is the same (the guide hooks leave forward values alone).
        logits = core.predict_logits(accel.prepared(model, example=images) if fast else model, images)
        t = core.resolve_target(target, images.shape[0], logits.shape[1], logits=lambda: logits, device=images.device)
        cam = grad_cam(model, images, t, layer=layer, fast=fast)
        guided = guided_backprop(model, images, t, reduce=None, fast=fast)
    return core.reduce_channels(guided * cam[:, None], reduce)
