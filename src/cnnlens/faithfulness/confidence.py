"""Average Drop and Increase in Confidence (Chattopadhay et al. 2018, "Grad-CAM++", WACV): the model's
confidence in the target when it sees only what the map highlights.

Each map is scaled to ``[0,1]`` (``(m - min) / (max - min + 1e-8)``, as torch-cam normalises its CAMs) and
multiplied into the image; ``Y`` is the target's probability on the image, ``O`` on the masked image.
``drop = max(0, Y - O) / Y`` (lower is better: the highlighted part alone keeps the confidence) and
``increase = [O > Y]`` (higher is better). torch-cam's ``ClassificationMetric`` with ``softmax`` as its
``logits_fn`` averages the same two numbers over images; here they are kept per image, for intervals.

>>> r = confidence_change(model, images, maps)
>>> r.drop.mean(), r.increase.float().mean()   # Average Drop, Increase in Confidence
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.accel import fast_forward
from cnnlens.faithfulness._checks import check_maps

#: torch-cam's epsilons: in the CAM normalisation and in the drop's denominator.
NORMALISE_EPS, DROP_EPS = 1e-8, 1e-7


@dataclass(frozen=True)
class ConfidenceResult:
    """Per image: ``drop`` ``[N]`` (Average Drop's terms), ``increase`` bool ``[N]``, the target's probability
    on the image (``clean``) and on the masked image (``masked``), and the ``targets``."""

    drop: torch.Tensor
    increase: torch.Tensor
    clean: torch.Tensor
    masked: torch.Tensor
    targets: torch.Tensor


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Each map min-max scaled to ``[0,1]`` (a constant map becomes 0), torch-cam's CAM normalisation."""
    flat = maps.detach().flatten(1)
    low = flat.amin(1, keepdim=True)
    flat = flat - low
    return (flat / (flat.amax(1, keepdim=True) + NORMALISE_EPS)).reshape(maps.shape)


def confidence_change(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                      batch_size: int | None = None) -> ConfidenceResult:
    """Average Drop's and Increase in Confidence's per-image terms for ``maps`` ``[N,H,W]`` on ``images``.

    Chattopadhay et al. 2018: ``drop_i = max(0, Y_i - O_i) / Y_i``, ``increase_i = [Y_i < O_i]``, with
    ``O_i`` the target's softmax probability on ``scale_to_unit(map_i) * x_i``. ``target`` as in
    ``cnnlens.explain`` (None = the predicted class).

    >>> r = confidence_change(model, images, grad_cam(model, images))
    """
    core.check_images(images)
    n, _, h, w = images.shape
    check_maps(maps, n=n, size=(h, w))
    images = images.detach()
    masked = scale_to_unit(maps.to(images.device, images.dtype))[:, None] * images
    with core.guarded(model, images):
        forward = fast_forward(model, images)  # outside inference mode: the cached copy serves gradient methods too
    with core.guarded(model, images), torch.inference_mode():
        clean_logits = core.predict_logits(model, images, batch_size)
        t = core.resolve_target(target, n, clean_logits.shape[1], logits=lambda: clean_logits, device=images.device)
        y = clean_logits.double().softmax(1).gather(1, t[:, None])[:, 0]
        bs = batch_size or max(core.default_batch_size(images.device), 64)
        o = torch.cat([forward(masked[s:s + bs]).double().softmax(1) for s in range(0, n, bs)]).gather(1, t[:, None])[:, 0]
    y, o = y.clone(), o.clone()  # normal tensors, not inference-mode ones
    drop = torch.relu(y - o) / (y + DROP_EPS)
    return ConfidenceResult(drop=drop, increase=y < o, clean=y, masked=o, targets=t.clone())
