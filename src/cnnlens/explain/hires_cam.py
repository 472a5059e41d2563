"""HiResCAM (Draelos & Carin 2020): the activations times their gradients, summed over channels.

``map = ReLU(sum_k d logit_t / dA_k * A_k)``, position by position (Grad-CAM averages the gradient first).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain.cam_family import combine, layer_and_gradient
from cnnlens.explain.registry import Paper, method


@method("hires-cam", "HiResCAM", kind="cam", layer=True, streamable=True,
        paper=Paper("Draelos & Carin", 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations of "
                    "convolutional neural networks"))
def hires_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              layer: str | nn.Module | None = None, relu: bool = True, upsample: bool = True,
              fast: bool = True) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``ReLU(sum_k g_k * A_k)``, ``g = d logit_t / dA``, per position.

    When the layer feeds global average pooling and one linear layer, the gradient is constant over positions
    and HiResCAM equals Grad-CAM (the paper's point: elsewhere it shows what the model used, Grad-CAM may not).
    Returns ``[N,H,W]`` upsampled to the input (``upsample=False``: ``[N,h,w]``); ``relu=False`` keeps the
    negative part. pytorch-grad-cam's ``HiResCAM``. ``fast``: as in Grad-CAM.

    >>> maps = hires_cam(model, images, target=3)
    """
    acts, grads, _ = layer_and_gradient(model, images, target, layer, fast=fast)
    return combine(grads, acts, images, relu=relu, upsample=upsample)
