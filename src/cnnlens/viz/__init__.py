"""Figures a person can read, each saved with the raw arrays it shows.

``render`` turns arrays into colours (testable pixel by pixel); ``panels`` and ``grids`` build
matplotlib figures (``matplotlib.figure.Figure``, no pyplot state) that print each map's value range
and flag constant maps (``scale``); ``save_figure`` writes the PNG (with those ranges in its metadata)
and its ``.npy``/``.npz`` atomically. ``defaults`` holds the options ``cnnlens explain`` and
``cnnlens report`` share.

>>> fig = method_grid(images, {"saliency": s, "grad-cam": g}, row_titles=titles)
>>> save_figure(fig, out / "grid.png", {"images": images, "saliency": s, "grad-cam": g})
"""

from __future__ import annotations

from cnnlens.viz.grids import (
    class_method_grid,
    feature_map_grid,
    filter_grid,
    is_signed,
    method_grid,
    prediction_title,
)
from cnnlens.viz.panels import lime_regions, show_image, three_panel
from cnnlens.viz.render import (
    diverging,
    diverging_norm,
    diverging_overlay,
    image_rgb,
    lime_cmap,
    mask_below_percentile,
    normalize,
    overlay,
    segment_colours,
    symmetric_limit,
    top_segments,
)
from cnnlens.viz.save import save_figure
from cnnlens.viz.scale import PanelScale, constant_reason, is_constant, range_text, scales_of, value_range

__all__ = [
    "class_method_grid",
    "diverging",
    "diverging_norm",
    "diverging_overlay",
    "feature_map_grid",
    "filter_grid",
    "image_rgb",
    "is_signed",
    "lime_cmap",
    "lime_regions",
    "mask_below_percentile",
    "method_grid",
    "normalize",
    "overlay",
    "PanelScale",
    "constant_reason",
    "is_constant",
    "range_text",
    "scales_of",
    "value_range",
    "prediction_title",
    "save_figure",
    "segment_colours",
    "show_image",
    "symmetric_limit",
    "three_panel",
    "top_segments",
]
