"""Feature ablation over superpixels: how much the target's score drops when one superpixel is hidden.

``map[p] = s(x) - s(x with segment(p) hidden)`` for every pixel ``p``, ``s`` the target's softmax
probability (or logit). Captum's ``FeatureAblation`` with ``feature_mask`` = the superpixels and
``baselines`` = what a hidden superpixel shows; occlusion's idea with segments instead of a sliding
square, one model pass per segment.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.registry import Paper, method
from cnnlens.explain.segmentation import hide_values, masked_scores, paint, superpixels


@method("feature-ablation", "Feature ablation", kind="perturbation",
        paper=Paper.own("Captum's FeatureAblation over SLIC superpixels: occlusion (Zeiler & Fergus 2014) with "
                        "segments for patches"))
def feature_ablation(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                     segmentation: str | torch.Tensor = "slic", n_segments: int = 50,
                     segmentation_kwargs: dict | None = None, hide: str | float = "black",
                     output: str = "probability", batch_size: int | None = None, progress: bool = False,
                     fast: bool = True, precision: str = "float32") -> torch.Tensor:
    """Drop in the target's score when each superpixel alone is hidden, painted on its pixels: ``[N,H,W]``.

    Feature ablation (as in Captum, after Zeiler & Fergus 2014's occlusion):
    ``a_s = s(x) - s(x_{-s})``, ``x_{-s}`` the image with segment ``s`` replaced by ``hide``.
    ``segmentation``: ``"slic"`` (default), ``"quickshift"``, ``"felzenszwalb"`` or an int tensor
    ``[N,H,W]`` / ``[H,W]`` (:func:`cnnlens.explain.segmentation.superpixels`); ``hide``: ``"black"``
    (0, Captum's default baseline), ``"mean"`` (each segment's own mean colour) or a float; ``output``:
    the target's ``"probability"`` or ``"logit"``. Captum's ``FeatureAblation(model).attribute(x,
    target, baselines=hide, feature_mask=segments[:, None])`` on the probability, channel 0. ``fast``
    (default) scores through the prepared copy and LIME's pattern tables where the model decomposes
    (the same scores to float rounding); ``fast=False`` runs the model itself on every ablated image.

    >>> maps = feature_ablation(model, images, target=3, n_segments=30)
    """
    core.check_images(images)
    core.check_output(output)
    core.check_batch_size(batch_size, images.device)
    images = images.detach()
    segments, num = superpixels(images, segmentation, n_segments=n_segments, segmentation_kwargs=segmentation_kwargs)
    s = int(num.max())
    fill = hide_values(images, segments, s, hide)
    # pattern 0 shows everything; pattern k + 1 hides segment k alone (past an image's S_i there is no
    # segment k: it shows everything, and the map never reads it)
    masks = torch.ones(images.shape[0], s + 1, s, dtype=torch.bool, device=images.device)
    masks[:, 1:] &= ~torch.eye(s, dtype=torch.bool, device=images.device)
    scores, _ = masked_scores(model, images, fill, segments, num, masks, target, output=output, batch_size=batch_size,
                              fast=fast, precision=precision, progress=progress, description="feature ablation")
    return paint(scores[:, :1] - scores[:, 1:], segments)
