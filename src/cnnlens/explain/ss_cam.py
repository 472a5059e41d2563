"""SS-CAM (Wang et al. 2020, "Smoothed Score-CAM"): Score-CAM with each mask's score averaged over noisy copies.

``w = softmax_k(mean_s logit_t(x * (s(Up(A_k)) + eps_s)))``, ``eps_s ~ N(0, std^2)`` per pixel of the mask,
``map = ReLU(sum_k w_k A_k)``.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._checks import check_int, is_number
from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.cam_family import score_cam_map
from cnnlens.explain.registry import Paper, method


# the commands' 4 noise samples (the paper's 35): 35 passes per channel of the layer is minutes per image on a CPU
@method("ss-cam", "SS-CAM", kind="cam", layer=True, options={"n_samples": 4},
        paper=Paper("Wang et al.", 2020, "SS-CAM: smoothed Score-CAM for sharper visual feature localization"))
def ss_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
           layer: str | nn.Module | None = None, n_samples: int = 35, std: float = 2.0, relu: bool = True,
           upsample: bool = True, batch_size: int | None = None, generator: torch.Generator | None = None,
           progress: bool = False, fast: bool = True) -> torch.Tensor:
    """SS-CAM (Wang et al. 2020) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``ReLU(sum_k softmax_k(mean_s logit_t(x * (s(Up(A_k)) + eps_s))) A_k)``, ``eps_s ~ N(0, std^2)``.

    The noise is added to the masks (the paper's first variant), torchcam's ``SSCAM`` with its defaults
    (35 samples, std 2). Noise draw ``s`` is ``torch.randn([N,K,H,W], generator=generator)`` for every image and
    channel at once, ``s = 0..n_samples-1`` in order, so the maps do not depend on ``batch_size``; without a
    generator, a fresh one seeded from the system's entropy (torch's global generator is never drawn from).
    Masks are upsampled, then scaled (the paper's order; torchcam scales first, see
    :func:`~cnnlens.explain.score_cam.score_cam`). ``batch_size``, ``progress``, ``fast``: as in Score-CAM.
    Returns ``[N,H,W]`` (``upsample=False``: the layer's ``[N,h,w]``).

    >>> maps = ss_cam(model, images, n_samples=35, generator=torch.Generator().manual_seed(0))
    """
    core.check_images(images)
    check_int(n_samples, "n_samples", 1)
    if not is_number(std) or std < 0:
        raise ValueError(f"std must be a number >= 0 (the noise added to masks in [0,1]), got {std!r}")
    if generator is None:  # fresh entropy, never torch's global generator
        generator = torch.Generator(images.device)
        generator.seed()
    noise: dict[int, torch.Tensor] = {}  # the current draw, made when its first chunk needs it

    def noisy(masks: torch.Tensor, s: int, n: torch.Tensor, k: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if s not in noise:
            noise.clear()
            noise[s] = torch.randn(shape, generator=generator, device=generator.device).to(images.device, masks.dtype)
        return masks + std * noise[s][n, k]

    return score_cam_map(model, images, target, layer=layer, variants=n_samples, transform=noisy,
                         skip_constant=False, relu=relu, upsample=upsample, batch_size=batch_size,
                         progress=progress, fast=fast, description="ss-cam")
