"""Explanation methods. Every method: ``method(model, images[N,C,H,W], target=None, **options) -> Tensor``.

``METHODS`` maps the CLI's names to the methods that return a per-pixel map ``[N,H,W]``; richer results
(LIME's segments, integrated gradients' completeness gap) come from each method's own ``*_result`` /
``*_explain`` function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cnnlens.explain.cam import cam
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.guided_backprop import guided_backprop
from cnnlens.explain.guided_grad_cam import guided_grad_cam
from cnnlens.explain.integrated_gradients import integrated_gradients
from cnnlens.explain.lime import lime, lime_explain
from cnnlens.explain.occlusion import occlusion
from cnnlens.explain.saliency import masked_image, saliency
from cnnlens.explain.smoothgrad import smoothgrad

METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "saliency": saliency,
    "smoothgrad": smoothgrad,
    "guided-backprop": guided_backprop,
    "integrated-gradients": integrated_gradients,
    "grad-cam": grad_cam,
    "cam": cam,
    "guided-grad-cam": guided_grad_cam,
    "occlusion": occlusion,
    "lime": lime,
}

__all__ = ["METHODS", "cam", "grad_cam", "guided_backprop", "guided_grad_cam", "integrated_gradients",
           "lime", "lime_explain", "masked_image", "occlusion", "saliency", "smoothgrad"]
