"""XGrad-CAM (Fu et al. 2020): Grad-CAM with each gradient weighted by its activation's share of the channel.

``w_k = sum_ij (A_kij / sum_ab A_kab) d logit_t / dA_kij``, ``map = ReLU(sum_k w_k A_k)``: the weights that
satisfy the paper's sensitivity and conservation axioms to first order.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain.cam_family import combine, layer_and_gradient
from cnnlens.explain.registry import Paper, method


@method("xgrad-cam", "XGrad-CAM", kind="cam", layer=True, streamable=True,
        paper=Paper("Fu et al.", 2020, "Axiom-based Grad-CAM: towards accurate visualization and explanation of "
                    "CNNs"))
def xgrad_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              layer: str | nn.Module | None = None, relu: bool = True, upsample: bool = True,
              fast: bool = True) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``ReLU(sum_k w_k A_k)``, ``w_k = sum_ij A_kij g_kij / sum_ij A_kij``, ``g = d logit_t / dA``.

    A channel whose activations sum to 0 gets weight 0 (torchcam adds 1e-8 to the sum, pytorch-grad-cam 1e-7).
    Returns ``[N,H,W]`` upsampled to the input (``upsample=False``: ``[N,h,w]``); ``relu=False`` keeps the
    negative part. torchcam's ``XGradCAM`` and pytorch-grad-cam's ``XGradCAM``. ``fast``: as in Grad-CAM.

    >>> maps = xgrad_cam(model, images, target=3)
    """
    acts, grads, _ = layer_and_gradient(model, images, target, layer, fast=fast)
    total = acts.sum(dim=(2, 3))
    weights = torch.where(total != 0, (acts * grads).sum(dim=(2, 3)) / torch.where(total != 0, total, 1), 0)
    return combine(weights, acts, images, relu=relu, upsample=upsample)
