"""Eigen-CAM (Muhammad & Yeasin 2020): a layer's maps projected on their first principal direction.

With ``A`` of one image as the matrix ``[h*w, K]`` (a row per position) and ``A = U S V^T`` its singular value
decomposition, ``map = A v_1`` (``v_1`` the first right singular vector), reshaped to ``[h,w]``: class-agnostic,
no gradients, one forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.cam_family import combine, layer_maps, layer_name
from cnnlens.explain.registry import Paper, method


@method("eigen-cam", "Eigen-CAM", kind="cam", layer=True, streamable=True,
        paper=Paper("Muhammad & Yeasin", 2020, "Eigen-CAM: class activation map using principal components"))
def eigen_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              layer: str | nn.Module | None = None, center: bool = False, relu: bool = True, upsample: bool = True,
              fast: bool = True) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``A v_1``, the projection of the layer's ``[h*w, K]`` activations on their first right singular vector.

    The same map for every class: ``target`` is accepted for the common call shape and not used. The SVD
    leaves the singular vector's sign arbitrary (pytorch-grad-cam keeps whichever comes out): cnnlens picks
    the one that makes the map's largest magnitude positive (for non-negative activations: ``v_1 >= 0``, a map
    >= 0), so that ``relu=True`` keeps where the component is strongest, also for signed (tanh) activations.
    The paper factorises ``A`` itself; ``center=True`` subtracts each channel's mean over positions first, as
    pytorch-grad-cam's ``EigenCAM`` does. Returns
    ``[N,H,W]`` upsampled to the input (``upsample=False``: ``[N,h,w]``); ``relu=False`` keeps the negative
    part. ``fast``: the checked prepared copy with the layer kept unfolded, as in Grad-CAM.

    >>> maps = eigen_cam(model, images, layer="features.8")
    """
    core.check_images(images)
    with core.guarded(model, images):
        acts, logits = layer_maps(model, images, layer_name(model, images, layer), fast=fast)
    if target is not None:  # checked like every method's, then unused
        core.resolve_target(target, images.shape[0], logits.shape[1], device=images.device)
    n, k, h, w = acts.shape
    rows = acts.flatten(2).transpose(1, 2)  # [N, h*w, K]
    if center:
        rows = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    proj = (rows @ vh[:, 0, :, None])[..., 0]  # [N, h*w]
    strongest = proj.gather(1, proj.abs().argmax(dim=1, keepdim=True))[:, 0]
    sign = torch.where(strongest < 0, -1.0, 1.0).to(proj.dtype)
    maps = (proj * sign[:, None]).reshape(n, 1, h, w)
    return combine(torch.ones(n, 1, dtype=acts.dtype, device=acts.device), maps, images, relu=relu, upsample=upsample)
