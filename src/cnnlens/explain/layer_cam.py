"""Layer-CAM (Jiang et al. 2021): each activation weighted by its own positive gradient.

``map = ReLU(sum_k ReLU(d logit_t / dA_k) * A_k)``, position by position: fine maps from early layers too.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain.cam_family import combine, layer_and_gradient
from cnnlens.explain.registry import Paper, method


@method("layer-cam", "Layer-CAM", kind="cam", layer=True, streamable=True,
        paper=Paper("Jiang et al.", 2021, "LayerCAM: exploring hierarchical class activation maps for localization"))
def layer_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              layer: str | nn.Module | None = None, relu: bool = True, upsample: bool = True,
              fast: bool = True) -> torch.Tensor:
    """Layer-CAM (Jiang et al. 2021) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``ReLU(sum_k ReLU(g_k) * A_k)``, ``g = d logit_t / dA``, per position.

    Where every gradient is >= 0 it equals HiResCAM. Returns ``[N,H,W]`` upsampled to the input
    (``upsample=False``: ``[N,h,w]``); ``relu=False`` keeps the negative part (negative activations). torchcam's
    ``LayerCAM`` and pytorch-grad-cam's ``LayerCAM`` for one layer (fusing layers: take each layer's map).
    ``fast``: as in Grad-CAM.

    >>> maps = layer_cam(model, images, layer="features.2")
    """
    acts, grads, _ = layer_and_gradient(model, images, target, layer, fast=fast)
    return combine(grads.clamp(min=0), acts, images, relu=relu, upsample=upsample)
