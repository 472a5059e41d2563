"""Arrays to the small PNG layers the report embeds: images, heat-map layers, masked originals.

A heat map is drawn as its own RGBA layer whose per-pixel alpha grows with the attribution, so the page
can stack it over the original and let the reader change its opacity in the browser (no re-rendering).
"""

from __future__ import annotations

import base64

import numpy as np
import torch
from matplotlib import colormaps

from cnnlens.viz import render
from cnnlens.viz.save import png_bytes  # noqa: F401  (re-exported: the report encodes its layers with it)

#: LIME's colours, as in :func:`cnnlens.viz.render.segment_colours`: green = for the class, red = against.
LIME_POSITIVE = (0.0, 0.75, 0.2)
LIME_NEGATIVE = (0.85, 0.1, 0.1)
#: Layer alpha = min(1, ALPHA_GAIN * scaled value): silent pixels transparent, the top third opaque.
ALPHA_GAIN = 1.5
#: A map whose negative mass is below this share of its absolute mass is drawn as unsigned.
SIGNED_SHARE = 0.05


def to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A CPU numpy copy of a tensor or array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def image_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """One image ``[C,H,W]`` (uint8, or float in [0,1]) as uint8 ``[H,W]`` (gray) or ``[H,W,3]`` (RGB).

    >>> image_hwc(torch.zeros(1, 4, 4, dtype=torch.uint8)).shape
    (4, 4)
    """
    a = to_numpy(image)
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape [C,H,W] with C in (1, 3), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))


def data_uri(png: bytes, mime: str = "image/png") -> str:
    """``data:`` URI of encoded image bytes, for embedding in the self-contained page."""
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def is_signed(attribution: np.ndarray) -> bool:
    """True when a map has a real negative part (more than ``SIGNED_SHARE`` of its absolute mass)."""
    a = np.asarray(attribution, dtype=np.float64)
    total = np.abs(a).sum()
    return bool(total > 0 and -a[a < 0].sum() > SIGNED_SHARE * total)


def heat_layer(attribution: torch.Tensor | np.ndarray, style: str = "auto") -> np.ndarray:
    """An RGBA uint8 ``[H,W,4]`` layer for one ``[H,W]`` attribution map, transparent where it is zero.

    The scaling is :mod:`cnnlens.viz.render`'s (percentile-clipped), so the page and the figures agree.
    ``style``: ``"unsigned"`` (``HEAT_CMAP`` colours, ``alpha = min(1, 1.5 h)`` with ``h = normalize(map)``),
    ``"relative"`` (as ``"auto"``, but an unsigned map's ``h`` is scaled from its minimum, not from 0:
    RISE's map is about p(target) everywhere and would cover the image),
    ``"signed"`` (red = positive, blue = negative, ``alpha = min(1, 1.5 |x| / L)``), ``"lime"`` (green =
    for the class, red = against, as in LIME's figures), or ``"auto"`` (signed when the map has a real
    negative part). Zero is fully transparent, so the image shows where the map is silent; the top
    third of the scale is opaque.
    """
    a = render.heat_map(attribution, "attribution")
    if style in ("auto", "relative") and is_signed(a):
        style = "signed"
    elif style == "auto":
        style = "unsigned"
    if style in ("unsigned", "relative"):
        h = render.normalize(a, low=0.0) if style == "relative" else render.normalize(np.clip(a, 0.0, None))
        rgba = colormaps[render.HEAT_CMAP](h)
        rgba[..., 3] = np.minimum(1.0, ALPHA_GAIN * h)
    elif style in ("signed", "lime"):
        v = np.clip(a / render.symmetric_limit(a), -1.0, 1.0)
        pos, neg = ((0.84, 0.15, 0.16), (0.13, 0.40, 0.75)) if style == "signed" else (LIME_POSITIVE, LIME_NEGATIVE)
        rgba = np.zeros((*a.shape, 4))
        rgba[..., :3] = np.where(v[..., None] >= 0, pos, neg)
        rgba[..., 3] = np.minimum(1.0, ALPHA_GAIN * np.abs(v))
    else:
        raise ValueError(f"style must be 'auto', 'unsigned', 'relative', 'signed' or 'lime', got {style!r}")
    return np.clip(np.rint(rgba * 255), 0, 255).astype(np.uint8)


def tile_normalise(array: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float map or ``[C,H,W]`` image min-max stretched to uint8, for filters and feature maps.

    A constant array becomes mid-grey rather than dividing by zero.
    """
    a = to_numpy(array).astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    out = np.full(a.shape, 0.5) if hi - lo < 1e-12 else (a - lo) / (hi - lo)
    out = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    if out.ndim == 3:
        return out[0] if out.shape[0] == 1 else np.ascontiguousarray(out[:3].transpose(1, 2, 0))
    return out
