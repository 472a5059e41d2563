"""One-image figures: the seeds' three-panel saliency view and LIME's regions."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cnnlens.viz import scale
from cnnlens.viz.defaults import MASK_PERCENTILE
from cnnlens.viz.render import (
    CLIP_PERCENTILE,
    HEAT_CMAP,
    diverging_norm,
    heat_map,
    image_float,
    lime_cmap,
    mask_below_percentile,
    segment_colours,
    to_numpy,
)

#: Inches per image cell.
CELL = 2.2


def show_image(ax: Axes, image: Any) -> None:
    """Draw a ``[C,H,W]`` image: grayscale with the gray colour map on a fixed 0..1 scale, RGB as is."""
    img = image_float(image)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
    bare(ax)


def bare(ax: Axes) -> None:
    """No ticks and no frame, but keep the axis labels usable (row titles are y-labels)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _flag(ax: Axes, flag: str) -> None:
    ax.text(0.5, 0.5, flag.split(":")[0], ha="center", va="center", fontsize=8, color="#a04000", fontweight="bold",
            transform=ax.transAxes, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "#a04000"})


def three_panel(image: Any, saliency: Any, masked: Any | None = None, *, percentile: float = MASK_PERCENTILE,
                title: str | None = None, cmap: str = HEAT_CMAP, method: str = "saliency") -> Figure:
    """The seeds' saliency figure: original | saliency map | original with low-saliency pixels masked.

    ``image`` is ``[C,H,W]``, ``saliency`` ``[H,W]``. ``masked`` defaults to
    :func:`~cnnlens.viz.render.mask_below_percentile` at ``percentile`` (pixels below it set to black).
    The map is drawn in its own units: the colour bar runs from ``min(0, min)`` to the 99.5th
    percentile (brighter pixels are clipped), and its min … max is printed under it; a constant map
    is flagged, with the likely reason for ``method``.

    >>> fig = three_panel(x[0], saliency(model, x)[0], title="Happy (93%)")
    """
    img = image_float(image)
    sal = heat_map(saliency, "saliency")
    if sal.shape != img.shape[1:]:
        raise ValueError(f"saliency has shape {sal.shape} but the image is {img.shape[1:]}")
    if masked is None:
        masked = mask_below_percentile(img, sal, percentile)
        masked_title = f"top {100 - percentile:g}% salient pixels"
    else:
        masked_title = "masked original"
    lo, hi = scale.value_range(sal)
    vmin, vmax = min(0.0, lo), float(np.percentile(sal, CLIP_PERCENTILE))
    flag = scale.constant_reason(method, sal) if scale.is_constant(sal) else None
    if vmax <= vmin:  # a constant map: any non-empty range draws it as one colour
        vmax = vmin + 1.0
    fig = Figure(figsize=(3 * CELL + 0.6, CELL + (0.9 if flag else 0.6)), layout="constrained")
    axes = fig.subplots(1, 3)
    show_image(axes[0], img)
    axes[0].set_title("original", fontsize=9)
    axes[1].imshow(sal, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    bare(axes[1])
    axes[1].set_title("saliency", fontsize=9)
    axes[1].set_xlabel(scale.range_text(sal), fontsize=7, labelpad=2)
    if flag:
        _flag(axes[1], flag)
    clipped = " (clipped at p99.5)" if hi > vmax else ""
    bar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), ax=axes[1], fraction=0.046, pad=0.02)
    bar.set_label(f"|gradient|{clipped}" if method == "saliency" else f"{method}{clipped}", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    show_image(axes[2], masked)
    axes[2].set_title(masked_title, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    if flag:
        fig.supxlabel("\n".join(textwrap.wrap(f"{method}: {flag}.", 100)), fontsize=6.5, x=0.02, ha="left", color="0.25")
    scale.attach(fig, [scale.PanelScale(method, lo, hi, vmin, vmax, flag=flag)])
    return fig


def lime_regions(image: Any, segments: Any, weights: Any, top_k: int = 5, *, title: str | None = None,
                 alpha: float = 0.5) -> Figure:
    """LIME at a glance: original | top regions for (green) and against (red) the class | segment weights.

    ``segments`` is LIME's integer segment map ``[H,W]`` (ids ``0..S-1``), ``weights`` the surrogate's
    weight per segment ``[S]``. The third panel paints each segment with its weight on a centred
    red/white/green scale (the same colours), so the regions outside the top ``k`` can be read too.
    """
    regions = segment_colours(image, segments, weights, top_k, alpha=alpha)
    seg = to_numpy(segments)
    painted = to_numpy(weights).astype(np.float64).reshape(-1)[seg]
    norm = diverging_norm(painted, 100.0)
    flag = scale.constant_reason("lime", painted) if scale.is_constant(painted) else None
    fig = Figure(figsize=(3 * CELL + 0.6, CELL + 0.8), layout="constrained")
    axes = fig.subplots(1, 3)
    show_image(axes[0], image)
    axes[0].set_title("original", fontsize=9)
    axes[1].imshow(regions, interpolation="nearest")
    bare(axes[1])
    axes[1].set_title(f"top {top_k}: green for, red against", fontsize=9)
    axes[2].imshow(painted, cmap=lime_cmap(), norm=norm, interpolation="nearest")
    bare(axes[2])
    axes[2].set_title("weight per segment", fontsize=9)
    axes[2].set_xlabel(scale.range_text(painted), fontsize=7, labelpad=2)
    if flag:
        _flag(axes[2], flag)
    fig.colorbar(ScalarMappable(norm, lime_cmap()), ax=axes[2], fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    lo, hi = scale.value_range(painted)
    scale.attach(fig, [scale.PanelScale("lime weights", lo, hi, float(norm.vmin), float(norm.vmax), flag=flag)])
    return fig
