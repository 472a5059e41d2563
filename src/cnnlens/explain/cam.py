"""CAM (Zhou et al. 2016): for a model ending in global average pooling + one linear layer,
``map_t = sum_k w[t,k] * F_k``, with ``F`` the pooled feature maps and ``w`` the linear layer's weights.

The head is found on a real forward pass, not from names: the last ``nn.Linear`` to run must produce the
model's output, and its input must equal the spatial mean of a feature map seen during the pass.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.registry import Paper, method

_NOT_CAM = ("CAM needs a model whose output is one nn.Linear applied to the global average pooling of a "
            "feature map [N,C,h,w] (like small_cnn and resnet18); {why}. Use grad_cam for other models")


def gap_head(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, nn.Linear, torch.Tensor]:
    """``(F, linear, logits)``: the feature maps ``[N,C,h,w]`` pooled by the head, the head's linear layer,
    and the model's output, from one forward pass (:func:`cnnlens.explain.core.pooled_head`). Raises
    ValueError when the head is not GAP + linear producing the output. Call inside ``core.guarded``.
    """
    try:
        head = core.pooled_head(model, images)
    except ValueError as why:
        raise ValueError(_NOT_CAM.format(why=why)) from None
    if head.linear_output.shape != head.logits.shape or not torch.allclose(
            head.linear_output, head.logits, rtol=1e-4, atol=1e-5 * max(1.0, float(head.logits.abs().max()))):
        raise ValueError(_NOT_CAM.format(why="the output of its last nn.Linear is not the model's output"))
    return head.features, head.linear, head.logits


@method("cam", "CAM", kind="cam",
        paper=Paper("Zhou et al.", 2016, "Learning deep features for discriminative localization"))
def cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
        relu: bool = False, upsample: bool = True) -> torch.Tensor:
    """Class activation map (Zhou et al. 2016): ``sum_k w[t,k] * F_k`` for a GAP + linear head.

    Returns ``[N,H,W]`` bilinearly upsampled to the input (``upsample=False``: the feature maps' ``[N,h,w]``),
    signed as in the paper (``relu=True`` keeps the positive part). On such a model Grad-CAM of the pooled
    layer equals ``ReLU(cam) / (h*w)``. Raises ValueError for other heads.

    >>> maps = cam(model, images)   # where the predicted class's evidence is
    """
    core.check_images(images)
    with core.guarded(model, images):
        features, linear, logits = gap_head(model, images)
    t = core.resolve_target(target, images.shape[0], logits.shape[1], logits=lambda: logits, device=images.device)
    weights = linear.weight.detach()[t]  # [N,C]
    maps = torch.einsum("nc,nchw->nhw", weights, features)
    if relu:
        maps = maps.clamp(min=0)
    return core.upsample(maps, tuple(images.shape[2:])) if upsample else maps
