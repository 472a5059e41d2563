"""IS-CAM (Naidu et al. 2020, "Integrated Score-CAM"): Score-CAM with each mask's score summed along a path of
growing masks.

``w = softmax_k(1/N sum_{i=1..N} logit_t(x * c_i s(Up(A_k))))``, ``c_i = sum_{j=1..i} j/N``,
``map = ReLU(sum_k w_k A_k)``.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._checks import check_int
from cnnlens._types import Target
from cnnlens.explain.cam_family import score_cam_map
from cnnlens.explain.registry import Paper, method


# the commands' 4 steps (torchcam's 10): one pass per step and channel of the layer
@method("is-cam", "IS-CAM", kind="cam", layer=True, options={"n_samples": 4},
        paper=Paper("Naidu et al.", 2020, "IS-CAM: integrated Score-CAM for axiomatic-based explanations"))
def is_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
           layer: str | nn.Module | None = None, n_samples: int = 10, relu: bool = True, upsample: bool = True,
           batch_size: int | None = None, progress: bool = False, fast: bool = True) -> torch.Tensor:
    """IS-CAM (Naidu et al. 2020) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``ReLU(sum_k softmax_k(1/N sum_i logit_t(x * c_i M_k)) A_k)``, ``M_k = s(Up(A_k))``, ``c_i = i(i+1)/(2N)``.

    The masks accumulate as in torchcam's ``ISCAM`` code (``M <- M + (i/N) M_k`` at step ``i``, so the last step
    scales ``M_k`` by ``(N+1)/2``; torchcam's docstring writes the sum from ``j = 0`` to ``i - 1``, its code
    from 1 to ``i``, as here), with its default ``n_samples=10``. Masks are upsampled, then
    scaled (the paper's order; torchcam scales first, see :func:`~cnnlens.explain.score_cam.score_cam`).
    ``batch_size``, ``progress``, ``fast``: as in Score-CAM. Returns ``[N,H,W]`` (``upsample=False``: ``[N,h,w]``).

    >>> maps = is_cam(model, images, target=3, n_samples=10)
    """
    check_int(n_samples, "n_samples", 1)

    def scaled(masks: torch.Tensor, s: int, n: torch.Tensor, k: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return masks * ((s + 1) * (s + 2) / (2 * n_samples))

    return score_cam_map(model, images, target, layer=layer, variants=n_samples, transform=scaled, relu=relu,
                         upsample=upsample, batch_size=batch_size, progress=progress, fast=fast, description="is-cam")
