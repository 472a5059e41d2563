"""Saliency (Simonyan, Vedaldi & Zisserman 2014): the vanilla gradient of the target score.

``saliency[n,c,h,w] = d logit_t(x_n) / d x_n[c,h,w]``; the default map is ``max_c |.|`` as in the paper.
:func:`masked_image` gives the seeds' third panel: the image with its least salient pixels hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._checks import is_number
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.registry import Paper, method


@method("saliency", "Saliency", kind="gradient", streamable=True, in_report=0, class_average=True, contrastive=1,
        paper=Paper("Simonyan, Vedaldi & Zisserman", 2014, "Deep inside convolutional networks: visualising image "
                    "classification models and saliency maps"))
def saliency(model: nn.Module, images: torch.Tensor, target: Target = None, *,
             reduce: Reduce = "max_abs", abs: bool = True, fast: bool = True) -> torch.Tensor:
    """Vanilla gradient of the target logit w.r.t. the input (Simonyan et al. 2014).

    ``map = reduce(|d logit_t / d x|)``: ``[N,H,W]`` by default, raw ``[N,C,H,W]`` with ``reduce=None``
    (the absolute gradient, or the signed one with ``abs=False``, which is Captum's ``Saliency``).
    ``fast`` (default) differentiates a cached folded-BatchNorm, channels-last copy of the model
    (:func:`cnnlens.explain.accel.prepared`: the same function, ~1.1-1.5x faster on CPU); ``fast=False``
    the model itself.

    >>> maps = saliency(model, images, target=3)          # [N,H,W], max |gradient| over channels
    >>> grads = saliency(model, images, reduce=None, abs=False)   # [N,C,H,W] signed gradients
    """
    core.check_images(images)
    with core.guarded(model, images):
        net = accel.prepared(model, example=images) if fast else model
        x = core.input_with_grad(images)
        logits = net(x)
        t = core.resolve_target(target, x.shape[0], logits.shape[1], logits=logits.detach, device=x.device)
        (grad,) = torch.autograd.grad(core.target_scores(logits, t).sum(), x)
    return core.reduce_channels(grad.abs() if abs else grad, reduce)


def masked_image(images: torch.Tensor, saliency_map: torch.Tensor, percentile: float, *,
                 fill: float = 0.0) -> torch.Tensor:
    """The seeds' third panel: ``images`` with every pixel whose saliency is below the per-image
    ``percentile`` (0-100) replaced by ``fill``; ``[N,C,H,W]`` like ``images``.

    >>> shown = masked_image(images, saliency(model, images), percentile=80)  # keeps the top 20%
    """
    core.check_images(images)
    if not isinstance(saliency_map, torch.Tensor) or tuple(saliency_map.shape) != (images.shape[0], *images.shape[2:]):
        got = tuple(saliency_map.shape) if isinstance(saliency_map, torch.Tensor) else type(saliency_map).__name__
        raise ValueError(f"saliency_map must be a tensor of shape [N,H,W] = {(images.shape[0], *images.shape[2:])}, got {got}")
    if not is_number(percentile) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    flat = saliency_map.detach().to(device=images.device, dtype=torch.float32).flatten(1)
    threshold = torch.quantile(flat, percentile / 100.0, dim=1)
    keep = (flat >= threshold[:, None]).reshape(images.shape[0], 1, *images.shape[2:])
    return torch.where(keep, images, torch.full_like(images, fill))
