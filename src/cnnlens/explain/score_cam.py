"""Score-CAM (Wang et al. 2020): each channel weighted by the target's score on the image it masks.

``M_k = s(Up(A_k))`` (upsampled to the input, then min-max scaled to [0,1]), ``w = softmax_k(logit_t(x * M_k))``,
``map = ReLU(sum_k w_k A_k)``: no gradients, one forward pass per channel and image.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain.cam_family import score_cam_map
from cnnlens.explain.registry import Paper, method


@method("score-cam", "Score-CAM", kind="cam", layer=True,
        paper=Paper("Wang et al.", 2020, "Score-CAM: score-weighted visual explanations for convolutional neural "
                    "networks"))
def score_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              layer: str | nn.Module | None = None, relu: bool = True, upsample: bool = True,
              batch_size: int | None = None, progress: bool = False, fast: bool = True) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``ReLU(sum_k softmax_k(logit_t(x * s(Up(A_k)))) A_k)``.

    The paper's Algorithm 1: the target's logit on each masked image, softmax over the channels (subtracting
    a baseline's score, as torchcam does, changes nothing under the softmax). The paper upsamples each map
    and then scales it to [0,1], as pytorch-grad-cam does; torchcam 0.5's ``ScoreCAM`` scales the low-resolution
    map first, so the two agree where the layer has the input's resolution (tests/test_explain_cams_oracle.py).
    A constant map masks the image to zeros, scored once. The ``N x K`` masked images go through the model in
    chunks of ``batch_size``. ``fast`` (default): the checked prepared copy (folded BatchNorm, channels-last)
    under ``inference_mode`` at a measured batch size; ``fast=False``: the model itself at ``batch_size``
    (None: the device's default). Returns ``[N,H,W]`` (``upsample=False``: the layer's ``[N,h,w]``).

    >>> maps = score_cam(model, images, target=3, layer="features.8")
    """
    return score_cam_map(model, images, target, layer=layer, relu=relu, upsample=upsample, batch_size=batch_size,
                         progress=progress, fast=fast, description="score-cam")
