"""XRAI (Kapishnikov et al. 2019): regions instead of pixels. Integrated gradients are summed up over
overlapping image segments, and the segments are added greedily, densest attribution first.

``XRAI(x)[p] = gain of the region that first covers pixel p``, where the image's Felzenszwalb segments at six
scales (dilated by 5 pixels) are added one at a time, each time the one whose not yet covered pixels have
the highest mean attribution (``max_c`` of integrated gradients averaged over a black and a white
baseline: the image's min and max). Segmentation and selection follow PAIR's ``saliency.core.XRAI``; the
integrated gradients of all images are one batched computation
(:func:`~cnnlens.explain.integrated_gradients.integrated_gradients`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cnnlens._checks import check_int, is_number
from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.integrated_gradients import integrated_gradients
from cnnlens.explain.registry import Paper, method

#: The paper's Felzenszwalb scales, smoothing, minimum segment size and segmentation size (PAIR's values).
SCALES = (50, 100, 150, 250, 500, 1200)
SIGMA, MIN_SIZE, SEGMENT_SIZE, DILATION = 0.8, 150, (224, 224), 5
ALGORITHMS = ("full", "fast")


def xrai_segments(image: torch.Tensor) -> torch.Tensor:
    """The XRAI segments of one ``[C,H,W]`` image: ``[M,H,W]`` bool, one mask per Felzenszwalb segment at each
    scale, found on the image rescaled to [-1, 1] and resized to 224x224, then dilated by a disk of 5 pixels."""
    from skimage import segmentation
    from skimage.morphology import dilation, disk
    from skimage.transform import resize

    im = image.detach().permute(1, 2, 0).double().cpu().numpy()
    low, high = im.min(), im.max()
    im = (im - low) / (high - low) * 2.0 - 1.0 if high > low else np.zeros_like(im)
    small = resize(im, SEGMENT_SIZE, order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    masks = []
    for scale in SCALES:
        seg = segmentation.felzenszwalb(small, scale=scale, sigma=SIGMA, min_size=MIN_SIZE)
        seg = resize(seg, im.shape[:2], order=0, preserve_range=True, mode="constant", anti_aliasing=False).astype(int)
        masks += [seg == label for label in range(seg.min(), seg.max() + 1)]
    footprint = disk(DILATION)
    return torch.from_numpy(np.stack([dilation(m, footprint=footprint) for m in masks])).to(image.device)


def xrai_regions(attribution: torch.Tensor, masks: torch.Tensor, *, area_threshold: float = 1.0,
                 min_pixel_diff: int = 50, algorithm: str = "full") -> torch.Tensor:
    """XRAI's map of one image from its ``[H,W]`` attribution and ``[M,H,W]`` bool segment masks: each pixel
    gets the gain (mean attribution of the newly covered pixels) of the region that first covered it.

    ``full``: each time the mask of highest gain over the pixels not yet covered (masks adding fewer than
    ``min_pixel_diff`` pixels drop out), until ``area_threshold`` of the image is covered; ``fast``: the masks
    in the order of their own mean attribution. Pixels no mask covered get their own mean.
    """
    attr = attribution.flatten()
    flat = masks.flatten(1)
    weights = flat.to(attr.dtype)
    out = torch.full_like(attr, -torch.inf)
    covered = torch.zeros_like(flat[0])
    alive = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
    if algorithm == "fast":
        own = (weights @ attr) / flat.sum(1).clamp(min=1)
        order = sorted(range(flat.shape[0]), key=lambda i: -float(own[i]))  # stable: ties keep their order
        for i in order:
            new = flat[i] & ~covered
            if int(new.sum()) < min_pixel_diff:
                continue
            out[new] = attr[new].mean()
            covered |= flat[i]
    else:
        while float(covered.to(attr.dtype).mean()) <= area_threshold:
            new = flat & ~covered
            counts = new.sum(1)
            alive &= counts >= min_pixel_diff
            if not bool(alive.any()):
                break
            gains = torch.where(alive, (new.to(attr.dtype) @ attr) / counts.clamp(min=1), -torch.inf)
            best = int(gains.argmax())  # the first of equal gains, as PAIR's strict comparison
            out[new[best]] = gains[best]
            covered |= flat[best]
            alive[best] = False
    rest = out == -torch.inf
    if bool(rest.any()):
        out[rest] = attr[rest].mean()
    return out.view_as(attribution)


# the commands' 16 integrated-gradient steps (PAIR's 100)
@method("xrai", "XRAI", kind="gradient", options={"n_steps": 16},
        paper=Paper("Kapishnikov et al.", 2019, "XRAI: better attributions through regions"))
def xrai(model: nn.Module, images: torch.Tensor, target: Target = None, *, n_steps: int = 100,
         attributions: torch.Tensor | None = None, segments: Sequence[torch.Tensor] | None = None,
         area_threshold: float = 1.0, min_pixel_diff: int = 50,
         algorithm: str = "full", batch_size: int | None = None, progress: bool = False,
         fast: bool = True) -> torch.Tensor:
    """XRAI (Kapishnikov et al. 2019): pixels ranked by the attribution density of the segment that first
    covers them, segments added greedily; ``[N,H,W]``, higher = more important region.

    The attribution is ``max_c`` of integrated gradients (``n_steps`` Gauss-Legendre steps) averaged over the
    image's min and max as baselines, or ``attributions`` (``[N,C,H,W]`` or ``[N,H,W]``) given; the regions are
    :func:`xrai_segments` of each image, or ``segments`` given (one ``[M,H,W]`` bool tensor per image). ``algorithm``:
    ``"full"`` (the paper's greedy search) or ``"fast"`` (segments by their own density). The result is
    PAIR's ``saliency.core.XRAI`` given the same attribution (PAIR's integrated gradients use equal weights
    on ``linspace(0, 1, steps)``; here the quadrature of :func:`integrated_gradients`). Segmentation and
    the greedy search run on the CPU, image after image; ``fast``: as in
    :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = xrai(model, images, target=3)
    """
    core.check_images(images)
    check_int(n_steps, "n_steps", 1)
    check_int(min_pixel_diff, "min_pixel_diff", 1)
    if not is_number(area_threshold) or not 0 < area_threshold <= 1:
        raise ValueError(f"area_threshold must be a number in (0, 1], the share of the image to cover, got {area_threshold!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, got {algorithm!r}")
    x = images.detach()
    n = x.shape[0]
    if attributions is None:
        with core.guarded(model, images):
            logits = core.predict_logits(model, x)
            t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
        black = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
        white = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
        ig = [integrated_gradients(model, x, t, baseline=b, n_steps=n_steps, batch_size=batch_size,
                                   progress=progress, reduce=None, fast=fast) for b in (black, white)]
        attributions = (ig[0] + ig[1]) / 2
    elif not isinstance(attributions, torch.Tensor) or tuple(attributions.shape) not in (tuple(x.shape), (n, *x.shape[2:])):
        got = tuple(attributions.shape) if isinstance(attributions, torch.Tensor) else type(attributions).__name__
        raise ValueError(f"attributions must be a tensor [N,C,H,W] or [N,H,W] matching images {tuple(x.shape)}, got {got}")
    if segments is not None and (len(segments) != n or not all(
            isinstance(m, torch.Tensor) and m.dtype == torch.bool and m.dim() == 3 and tuple(m.shape[1:]) == tuple(x.shape[2:])
            for m in segments)):
        raise ValueError(f"segments must be one bool tensor [M,H,W] of segment masks per image ({n} of them, "
                         f"H,W = {tuple(x.shape[2:])}), or None for XRAI's own segmentation")
    attr = attributions.detach()
    attr = attr.amax(dim=1) if attr.dim() == 4 else attr
    masks = segments if segments is not None else [xrai_segments(img) for img in x]
    return torch.stack([xrai_regions(attr[i], masks[i].to(attr.device), area_threshold=float(area_threshold),
                                     min_pixel_diff=min_pixel_diff, algorithm=algorithm) for i in range(n)])
