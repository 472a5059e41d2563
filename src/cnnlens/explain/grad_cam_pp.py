"""Grad-CAM++ (Chattopadhay et al. 2018): Grad-CAM with each position's gradient weighted by how much of the
channel's evidence it carries.

``w_k = sum_ij alpha_kij ReLU(g_kij)``, ``alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)`` (0 where
``g = 0``), ``map = ReLU(sum_k w_k A_k)``, with ``g = d logit_t / dA``: the paper's closed form for an
exponential of the logit, whose higher derivatives are powers of the first (the paper's ``exp(logit_t)``
factor in ``w`` scales each image's map by a positive constant and is left out, as pytorch-grad-cam does).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain.cam_family import combine, layer_and_gradient
from cnnlens.explain.registry import Paper, method


def grad_cam_pp_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s channel weights ``[N,K]`` from a layer's output and gradient ``[N,K,h,w]``."""
    g2 = grads * grads
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads
    alpha = torch.where((grads != 0) & (denom != 0), g2 / torch.where(denom != 0, denom, 1), 0)
    return (alpha * grads.clamp(min=0)).sum(dim=(2, 3))


@method("grad-cam-pp", "Grad-CAM++", kind="cam", layer=True, streamable=True,
        paper=Paper("Chattopadhay et al.", 2018, "Grad-CAM++: generalized gradient-based visual explanations for "
                    "deep convolutional networks"))
def grad_cam_pp(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                layer: str | nn.Module | None = None, relu: bool = True, upsample: bool = True,
                fast: bool = True) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``ReLU(sum_k w_k A_k)``, ``w_k = sum_ij ReLU(g) g^2 / (2 g^2 + sum_ab A_kab g^3)``, ``g = d logit_t / dA_k``.

    Returns ``[N,H,W]`` upsampled to the input (``upsample=False``: the layer's ``[N,h,w]``); ``relu=False``
    keeps the negative part. pytorch-grad-cam's ``GradCAMPlusPlus``. torchcam 0.5's ``GradCAMpp`` differs:
    its division by the denominator lands on a copy (boolean indexing), so its weights are
    ``sum_ij g^2 ReLU(g)``, and its denominator sums ``A g^3`` over positions instead of multiplying
    ``sum A`` by the position's ``g^3`` (tests/test_explain_cams_oracle.py shows both). ``fast``: as in Grad-CAM.

    >>> maps = grad_cam_pp(model, images, target=3, layer="features.8")
    """
    acts, grads, _ = layer_and_gradient(model, images, target, layer, fast=fast)
    return combine(grad_cam_pp_weights(acts, grads), acts, images, relu=relu, upsample=upsample)
