"""Arrays to colours: the pixel-level rendering every cnnlens figure uses.

Pure numpy functions (no figures), so that what a picture shows can be tested pixel by pixel.
Images are ``[C,H,W]`` with C = 1 (grayscale) or 3 (RGB), float in ``[0,1]`` or uint8; maps are ``[H,W]``.
Torch tensors are accepted anywhere an array is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import CenteredNorm, LinearSegmentedColormap

from cnnlens._checks import check_count

#: Heat maps on images: a rainbow whose hot end (red) stands out on both gray faces and food photos.
HEAT_CMAP = "turbo"
#: Signed attributions: red = evidence for the class, blue = against, white = nothing.
DIVERGING_CMAP = "RdBu_r"
#: LIME's colours (as in the lime package's figures): green = for the class, red = against, yellow outline.
LIME_POSITIVE = (0.0, 0.75, 0.2)
LIME_NEGATIVE = (0.85, 0.1, 0.1)
LIME_BOUNDARY = (1.0, 0.9, 0.0)
#: Clip the top 0.5% of a map before scaling: gradient maps are spiky, and a few pixels would
#: otherwise wash the rest of the map out to black.
CLIP_PERCENTILE = 99.5


def to_numpy(x: Any) -> np.ndarray:
    """A numpy copy-free view of an array or a (possibly CUDA, possibly grad-tracking) torch tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def image_float(image: Any, name: str = "image") -> np.ndarray:
    """``image`` (``[C,H,W]`` with C in {1,3}, or ``[H,W]``) as float ``[C,H,W]`` in ``[0,1]``.

    uint8 is divided by 255; floats are clipped to ``[0,1]`` (cnnlens models take ``[0,1]`` input).
    """
    arr = to_numpy(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"{name} must have shape [C,H,W] with C = 1 (gray) or 3 (RGB), or [H,W]; got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers (uint8 or float in [0,1]), got {arr.dtype}")
    return np.clip(arr.astype(np.float64), 0.0, 1.0)


def image_rgb(image: Any, name: str = "image") -> np.ndarray:
    """``image`` as float RGB ``[H,W,3]`` in ``[0,1]``; a grayscale image is repeated on the 3 channels."""
    arr = image_float(image, name)
    return np.repeat(arr, 3, axis=0).transpose(1, 2, 0) if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def heat_map(heat: Any, name: str = "heat") -> np.ndarray:
    """``heat`` as a finite float ``[H,W]`` array; a clear error otherwise."""
    arr = to_numpy(heat)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a map of shape [H,W], got {arr.shape}; reduce channels first")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def normalize(values: Any, *, high: float = CLIP_PERCENTILE, low: float | None = None) -> np.ndarray:
    """Scale a map to ``[0,1]`` with percentile clipping: ``clip((x - lo) / (hi - lo), 0, 1)``.

    ``hi`` is the ``high``-th percentile. ``lo`` is the ``low``-th percentile when given, else
    ``min(0, x.min())``, so that a non-negative map keeps 0 as "no heat". A map with ``hi <= lo``
    (constant) gives zeros.

    >>> normalize(np.array([[0.0, 1.0], [2.0, 4.0]]), high=100)
    array([[0.  , 0.25],
           [0.5 , 1.  ]])
    """
    x = to_numpy(values).astype(np.float64)
    if not 0.0 < high <= 100.0 or (low is not None and not 0.0 <= low < high):
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    hi = float(np.percentile(x, high))
    lo = float(np.percentile(x, low)) if low is not None else min(0.0, float(x.min()))
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def symmetric_limit(values: Any, percentile: float = CLIP_PERCENTILE) -> float:
    """The colour limit ``L`` for a signed map shown on ``[-L, L]``: the percentile of ``|x|``.

    Falls back to ``max |x|`` when the percentile is 0 (a sparse map) and to 1 for an all-zero map, so the
    norm is never degenerate.
    """
    x = np.abs(to_numpy(values).astype(np.float64))
    lim = float(np.percentile(x, percentile)) if x.size else 0.0
    if lim <= 0.0:
        lim = float(x.max()) if x.size else 0.0
    return lim if lim > 0.0 else 1.0


def diverging_norm(values: Any, percentile: float = CLIP_PERCENTILE) -> CenteredNorm:
    """A colour norm centred on 0 with symmetric limits ``[-L, L]`` (``L`` from :func:`symmetric_limit`).

    Zero always maps to the colour map's middle (white for RdBu_r), so the sign of an attribution is
    read from the hue and its size from the saturation.
    """
    return CenteredNorm(vcenter=0.0, halfrange=symmetric_limit(values, percentile))


def diverging(attribution: Any, *, percentile: float = CLIP_PERCENTILE, cmap: str = DIVERGING_CMAP) -> np.ndarray:
    """A signed map ``[H,W]`` as RGB ``[H,W,3]`` on a centred colour scale (red +, blue -, white 0).

    ``rgb = cmap(clip(x / L, -1, 1) / 2 + 1/2)`` with ``L`` the symmetric limit, so ``x`` and ``-x``
    get mirrored colours.
    """
    x = heat_map(attribution, "attribution")
    norm = diverging_norm(x, percentile)
    return colormaps[cmap](np.clip(norm(x), 0.0, 1.0))[..., :3]


def overlay(image: Any, heat: Any, alpha: float = 0.5, *, cmap: str = HEAT_CMAP,
            scale: bool = True) -> np.ndarray:
    """A heat map over an image, RGB ``[H,W,3]`` in ``[0,1]``.

    The colour is blended in proportion to the heat, so cold pixels show the image unchanged and the
    hottest pixels are ``(1 - alpha) * image + alpha * cmap(1)``:
    ``out = (1 - alpha * h) * image + alpha * h * cmap(h)``, with ``h = normalize(heat)`` (or ``heat``
    itself, clipped to ``[0,1]``, when ``scale=False``). Grayscale images are shown in gray.

    >>> rgb = overlay(face[None], grad_cam_map, alpha=0.6)   # face [48,48], map [48,48]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image_rgb(image)
    h = heat_map(heat)
    if h.shape != base.shape[:2]:
        raise ValueError(f"heat has shape {h.shape} but the image is {base.shape[:2]}; upsample the map to the image size")
    h = normalize(h) if scale else np.clip(h, 0.0, 1.0)
    colour = colormaps[cmap](h)[..., :3]
    w = (alpha * h)[..., None]
    return (1.0 - w) * base + w * colour


def diverging_overlay(image: Any, attribution: Any, alpha: float = 0.7, *, percentile: float = CLIP_PERCENTILE,
                      cmap: str = DIVERGING_CMAP) -> np.ndarray:
    """A signed map over an image, RGB ``[H,W,3]``: red where it is positive, blue where negative.

    ``out = (1 - alpha * |v|) * image + alpha * |v| * cmap(v / 2 + 1/2)`` with ``v = clip(x / L, -1, 1)``
    and ``L`` the symmetric limit, so zero-attribution pixels show the image unchanged and ``x`` and
    ``-x`` tint the same pixels with mirrored colours.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image_rgb(image)
    x = heat_map(attribution, "attribution")
    if x.shape != base.shape[:2]:
        raise ValueError(f"attribution has shape {x.shape} but the image is {base.shape[:2]}; upsample the map to the image size")
    v = np.clip(x / symmetric_limit(x, percentile), -1.0, 1.0)
    colour = colormaps[cmap](v / 2.0 + 0.5)[..., :3]
    w = (alpha * np.abs(v))[..., None]
    return (1.0 - w) * base + w * colour


def mask_below_percentile(image: Any, saliency: Any, percentile: float = 50.0, *, fill: float = 0.0) -> np.ndarray:
    """The image with every pixel whose saliency is below the ``percentile``-th percentile set to ``fill``.

    The seeds' third panel ("original with the low-gradient pixels masked out"). Returns ``[C,H,W]``.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    img = image_float(image)
    s = heat_map(saliency, "saliency")
    if s.shape != img.shape[1:]:
        raise ValueError(f"saliency has shape {s.shape} but the image is {img.shape[1:]}")
    keep = s >= np.percentile(s, percentile)
    return np.where(keep[None], img, fill)


def lime_cmap() -> LinearSegmentedColormap:
    """LIME's weight scale: ``LIME_NEGATIVE`` (red, against) -> white (0) -> ``LIME_POSITIVE`` (green, for)."""
    return LinearSegmentedColormap.from_list("cnnlens_lime", [LIME_NEGATIVE, (1.0, 1.0, 1.0), LIME_POSITIVE])


def segment_colours(image: Any, segments: Any, weights: Any, top_k: int = 5, *, alpha: float = 0.5,
                    positive: tuple[float, float, float] = LIME_POSITIVE,
                    negative: tuple[float, float, float] = LIME_NEGATIVE,
                    boundary: tuple[float, float, float] = LIME_BOUNDARY) -> np.ndarray:
    """LIME's regions over the image, RGB ``[H,W,3]``.

    The ``top_k`` segments with the largest positive weights are tinted ``positive`` (green), the
    ``top_k`` most negative ones ``negative`` (red), ``(1 - alpha) * image + alpha * colour``; the
    outline of the green and of the red area is drawn in ``boundary`` (yellow) on their inner edge.
    Other pixels show the image unchanged. ``segments`` is an int ``[H,W]`` map of segment ids
    ``0..S-1`` and ``weights`` has one entry per id.
    """
    from skimage.segmentation import find_boundaries  # heavy import, only for LIME figures

    base = image_rgb(image)
    seg = to_numpy(segments)
    w = to_numpy(weights).astype(np.float64).reshape(-1)
    if seg.shape != base.shape[:2] or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segments must be an integer map of shape {base.shape[:2]}, got {seg.dtype} {seg.shape}")
    if seg.min() < 0 or seg.max() >= w.size:
        raise ValueError(f"segments hold ids {seg.min()}..{seg.max()} but weights has {w.size} entries (one per id 0..S-1)")
    check_count(top_k, "top_k", numpy=True)
    pos, neg = top_segments(w, int(top_k))
    out = base.copy()
    for ids, colour in ((pos, positive), (neg, negative)):
        sel = np.isin(seg, ids)
        out[sel] = (1.0 - alpha) * base[sel] + alpha * np.asarray(colour)
    # outline the green and the red areas, not every superpixel: small faces have thin superpixels
    # that a per-segment outline would paint over entirely. 0 = not chosen (find_boundaries' background).
    kind = np.where(np.isin(seg, pos), 1, np.where(np.isin(seg, neg), 2, 0))
    edges = find_boundaries(kind, mode="inner", background=0) & (kind > 0)
    out[edges] = boundary
    return out


def top_segments(weights: Any, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the ``top_k`` largest positive weights and of the ``top_k`` most negative ones."""
    w = to_numpy(weights).astype(np.float64).reshape(-1)
    order = np.argsort(-w, kind="stable")
    pos = order[w[order] > 0][:top_k]
    neg = order[::-1][w[order[::-1]] < 0][:top_k]
    return pos, neg
