"""One-image figures: the seeds' three-panel saliency view and LIME's regions."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cnnlens.viz.render import (
    HEAT_CMAP,
    diverging_norm,
    heat_map,
    image_float,
    lime_cmap,
    mask_below_percentile,
    normalize,
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


def three_panel(image: Any, saliency: Any, masked: Any | None = None, *, percentile: float = 50.0,
                title: str | None = None, cmap: str = HEAT_CMAP) -> Figure:
    """The seeds' saliency figure: original | saliency map | original with low-saliency pixels masked.

    ``image`` is ``[C,H,W]``, ``saliency`` ``[H,W]``. ``masked`` defaults to
    :func:`~cnnlens.viz.render.mask_below_percentile` at ``percentile`` (pixels below it set to black).

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
    fig = Figure(figsize=(3 * CELL + 0.6, CELL + 0.5), layout="constrained")
    axes = fig.subplots(1, 3)
    show_image(axes[0], img)
    axes[0].set_title("original", fontsize=9)
    axes[1].imshow(normalize(sal), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    bare(axes[1])
    axes[1].set_title("saliency", fontsize=9)
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=axes[1], fraction=0.046, pad=0.02,
                 label="relative |gradient|")
    show_image(axes[2], masked)
    axes[2].set_title(masked_title, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
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
    fig = Figure(figsize=(3 * CELL + 0.6, CELL + 0.6), layout="constrained")
    axes = fig.subplots(1, 3)
    show_image(axes[0], image)
    axes[0].set_title("original", fontsize=9)
    axes[1].imshow(regions, interpolation="nearest")
    bare(axes[1])
    axes[1].set_title(f"top {top_k}: green for, red against", fontsize=9)
    axes[2].imshow(painted, cmap=lime_cmap(), norm=norm, interpolation="nearest")
    bare(axes[2])
    axes[2].set_title("weight per segment", fontsize=9)
    fig.colorbar(ScalarMappable(norm, lime_cmap()), ax=axes[2], fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
