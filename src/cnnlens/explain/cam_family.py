"""What the CAM family shares: one layer's maps (with their gradient, or the logits), their weighted sum,
and the scores of the images they mask.

Every CAM is ``map = ReLU(sum_k w_k * A_k)`` of one layer's output ``A`` ``[N,K,h,w]``, bilinearly upsampled to
the input; the methods differ in the weights ``w`` (one per channel ``[N,K]``, or one per position
``[N,K,h,w]``). The gradient CAMs (Grad-CAM++, XGrad-CAM, Layer-CAM, HiResCAM) read ``A`` and ``dlogit_t / dA``
from :func:`layer_and_gradient`; the forward-only ones (Score-CAM and its variants, Ablation-CAM, Eigen-CAM)
read ``A`` and the logits from :func:`layer_maps`; :func:`combine` makes the map. :func:`masked_scores` scores
the images masked by each normalised, upsampled ``A_k`` (Score-CAM, SS-CAM, IS-CAM), in batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.grad_cam import layer_output_and_gradient

#: ``transform(masks [B,H,W], s, n [B], k [B], shape) -> masks``: the ``s``-th variant of the masks of images
#: ``n``, channels ``k``, out of all masks ``shape = (N, K, H, W)`` (SS-CAM adds noise draw ``s``, IS-CAM
#: scales by step ``s``'s coefficient).
MaskTransform = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor, tuple[int, ...]], torch.Tensor]


class LayerGradient(NamedTuple):
    """A layer's output ``acts`` ``[N,K,h,w]``, ``grads`` = d logit_t / d acts, and the explained ``target`` ``[N]``."""

    acts: torch.Tensor
    grads: torch.Tensor
    target: torch.Tensor


def layer_name(model: nn.Module, images: torch.Tensor, layer: str | nn.Module | None) -> str:
    """The name of ``layer``, or of ``core.default_cam_layer`` when None (Grad-CAM's default). Call inside
    ``core.guarded``."""
    return core.default_cam_layer(model, images) if layer is None else core.layer_name(model, layer)


def layer_and_gradient(model: nn.Module, images: torch.Tensor, target: Target, layer: str | nn.Module | None, *,
                       fast: bool) -> LayerGradient:
    """``layer``'s output and the target logit's gradient with respect to it, in one forward and one backward
    pass: on the checked prepared copy with the layer kept unfolded (``fast``) or the model itself, the
    model left as it was."""
    core.check_images(images)
    with core.guarded(model, images):
        name = layer_name(model, images, layer)
        net = accel.prepared(model, keep=[name], example=images) if fast else model
        return LayerGradient(*layer_output_and_gradient(net, images, target, name))


def layer_maps(model: nn.Module, images: torch.Tensor, layer: str, *,
               fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, logits)``: ``layer``'s output ``[N,K,h,w]`` (copied as the layer returns it, so that an in-place op
    after it changes nothing) and the model's output, in one forward pass without gradients, on the checked
    prepared copy with the layer kept unfolded (``fast``) or the model itself. Call inside ``core.guarded``."""
    net = accel.prepared(model, keep=[layer], example=images) if fast else model
    seen: list[object] = []
    with core.hooks() as handles, torch.no_grad():
        handles.append(core.get_layer(net, layer).register_forward_hook(
            lambda _m, _i, out: seen.append(out.clone() if isinstance(out, torch.Tensor) else out)))
        logits = net(images)
    acts = seen[0] if len(seen) == 1 else None
    if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
        got = f"ran {len(seen)} times in one forward pass" if len(seen) != 1 else \
            f"outputs {tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__}"
        raise ValueError(f"layer {layer!r} {got}; a CAM needs a layer that runs once and outputs a feature map "
                         "[N,C,h,w] (a conv, BatchNorm, ReLU or pooling layer)")
    return acts, logits


def combine(weights: torch.Tensor, acts: torch.Tensor, images: torch.Tensor, *, relu: bool,
            upsample: bool) -> torch.Tensor:
    """``sum_k weights_k * acts_k`` (weights ``[N,K]`` per channel or ``[N,K,h,w]`` per position), its positive
    part with ``relu``, bilinearly upsampled to the images with ``upsample``: ``[N,H,W]`` (else ``[N,h,w]``)."""
    w = weights[:, :, None, None] if weights.dim() == 2 else weights
    cam = (w * acts).sum(dim=1)
    if relu:
        cam = cam.clamp(min=0)
    return core.upsample(cam, tuple(images.shape[2:])) if upsample else cam


def normalised_masks(acts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each map ``[B,h,w]`` bilinearly upsampled to ``size`` and then min-max scaled to [0,1] (Score-CAM's
    ``s(Up(A_k))``, in the paper's order); a constant map gives 0."""
    up = core.upsample(acts, size)
    low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    span = high - low
    return torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1), 0)


def masked_scores(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, acts: torch.Tensor,
                  target: torch.Tensor, *, variants: int = 1, transform: MaskTransform | None = None,
                  skip_constant: bool = True, batch_size: int, progress: bool = False,
                  description: str = "score-cam") -> torch.Tensor:
    """``mean_s logit_t(x_n * transform(s(Up(A[n,k])), s))`` for every image ``n`` and channel ``k``: ``[N,K]``.

    All ``variants x N x K`` masked images go through ``forward`` in chunks of ``batch_size`` (variant-major,
    so the result does not depend on ``batch_size``). With ``skip_constant`` (the transform keeps a zero mask
    zero), a constant map masks the image to zeros: the all-zero image is scored once for all of them.
    """
    n, k = acts.shape[:2]
    size = tuple(images.shape[2:])
    flat = acts.flatten(0, 1)
    scores = torch.empty(n * k, dtype=images.dtype, device=images.device)
    active = torch.arange(n * k, device=images.device)
    if skip_constant:
        constant = flat.amax(dim=(1, 2)) == flat.amin(dim=(1, 2))
        if bool(constant.any()):
            blank = forward(torch.zeros_like(images[:1]))[0]
            scores[constant] = blank[target.repeat_interleave(k)[constant]].to(scores.dtype)
            active = active[~constant]
    m = active.shape[0]
    total = torch.zeros(m, dtype=images.dtype, device=images.device)
    for start, end in core.batch_ranges(variants * m, batch_size, progress=progress, description=description):
        idx = torch.arange(start, end, device=images.device)
        pair = active[idx % m]
        masks = normalised_masks(flat[pair], size)
        if transform is not None:
            parts = []
            s_of = idx // m
            for s in range(int(s_of[0]), int(s_of[-1]) + 1):  # a chunk spans at most a few variants
                run = s_of == s
                parts.append(transform(masks[run], s, pair[run] // k, pair[run] % k, (n, k, *size)))
            masks = torch.cat(parts)
        logits = forward(images[pair // k] * masks[:, None].to(images.dtype))
        total.index_add_(0, idx % m, core.target_scores(logits, target[pair // k]).to(total.dtype))
    scores[active] = total / variants
    return scores.reshape(n, k)


def score_forward(model: nn.Module, images: torch.Tensor, batch_size: int | None, *,
                  fast: bool) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``(forward, batch_size)`` for scoring masked images under ``torch.inference_mode``, ``fast``: through the
    model's local plan with Winograd convolutions where timed faster (:func:`cnnlens.explain.accel.plan_scorer`;
    measured 1.3x the prepared copy on the small CNN's Score-CAM), else the checked prepared copy, at a measured
    batch size (``batch_size`` when given); otherwise the model itself at ``batch_size`` (None: the device's
    default). Call inside ``core.guarded``."""
    if batch_size is not None:
        core.check_batch_size(batch_size, images.device)
    if fast:
        return accel.plan_scorer(model, images, batch_size) or accel.fast_scorer(model, images, batch_size)
    return accel.fast_forward(model, images, fast=False), core.check_batch_size(batch_size, images.device)


def score_cam_map(model: nn.Module, images: torch.Tensor, target: Target, *, layer: str | nn.Module | None,
                  variants: int = 1, transform: MaskTransform | None = None, skip_constant: bool = True,
                  relu: bool, upsample: bool, batch_size: int | None, progress: bool, fast: bool,
                  description: str) -> torch.Tensor:
    """Score-CAM's map and its variants': ``ReLU(sum_k softmax_k(masked_scores)_k A_k)`` (see
    :func:`masked_scores`); the model left as it was."""
    core.check_images(images)
    x = images.detach()
    with core.guarded(model, images):
        acts, logits = layer_maps(model, x, layer_name(model, x, layer), fast=fast)
        forward, bs = score_forward(model, x, batch_size, fast=fast)
        t = core.resolve_target(target, x.shape[0], logits.shape[1], logits=lambda: logits, device=x.device)
        scores = masked_scores(forward, x, acts, t, variants=variants, transform=transform,
                               skip_constant=skip_constant, batch_size=bs, progress=progress, description=description)
    return combine(scores.softmax(dim=1), acts, x, relu=relu, upsample=upsample)
