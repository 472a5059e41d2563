"""Labelled grids: images x methods, classes x methods, filters of a layer, feature maps of a layer."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cnnlens._checks import check_count
from cnnlens.viz import scale
from cnnlens.viz.panels import bare, show_image
from cnnlens.viz.render import (
    CLIP_PERCENTILE,
    HEAT_CMAP,
    diverging,
    diverging_overlay,
    normalize,
    overlay,
    symmetric_limit,
    to_numpy,
)

#: Inches per grid cell: big enough for a 48x48 face and a two-line title.
CELL = 1.7
#: A column counts as signed (drawn red/blue) when its most negative value is at least this fraction
#: of its largest magnitude; smaller negatives are rounding noise in a non-negative map.
SIGNED_TOLERANCE = 1e-3


def prediction_title(true: int | None, pred: int, prob: float, classes: Sequence[str], name: str | None = None) -> str:
    """A row label such as ``"val.csv:12\\ntrue Happy\\npred Sad 71%"``; ``true`` None or -1 = unknown."""
    lines = [name] if name else []
    if true is not None and true >= 0:
        lines.append(f"true {classes[true]}")
    lines.append(f"pred {classes[pred]} {100 * prob:.0f}%")
    return "\n".join(lines)


def _maps(values: Any, name: str) -> np.ndarray:
    """``[N,H,W]`` float maps; a map that is entirely NaN (a class without images) is allowed and left blank."""
    arr = to_numpy(values)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be maps of shape [N,H,W], got {arr.shape}")
    arr = arr.astype(np.float64)
    empty = np.isnan(arr).all(axis=(1, 2))
    if not np.isfinite(arr[~empty]).all():
        raise ValueError(f"{name} holds NaN or infinite values (only a map that is NaN everywhere, for 'no data', is allowed)")
    return arr


def colour_range(values: Any, signed: bool, *, relative: bool = False) -> tuple[float, float]:
    """The values the ends of a panel's colour scale stand for: ``[-L, L]`` for a signed map (``L`` its
    symmetric limit), else ``[min(0, min), p99.5]`` as :func:`~cnnlens.viz.render.normalize` scales it
    (``[min, p99.5]`` for a ``relative`` map)."""
    x = to_numpy(values).astype(np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return float("nan"), float("nan")
    if signed:
        lim = symmetric_limit(x)
        return -lim, lim
    low = float(x.min())
    return low if relative else min(0.0, low), float(np.percentile(x, CLIP_PERCENTILE))


def flag_panel(ax: Axes, flag: str) -> None:
    """Write a constant map's flag's first words across its (blank) panel."""
    ax.text(0.5, 0.5, flag.split(":")[0], ha="center", va="center", fontsize=7, color="#a04000", fontweight="bold",
            transform=ax.transAxes, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "#a04000"})


def scale_note(fig: Figure, scales: list[scale.PanelScale], width_in: float, *, shared: bool = False) -> None:
    """The figure's footnote: whether its panels share a colour scale, where their ranges are, and the
    reason for every constant map (once per method and reason)."""
    first = ("All panels share one colour scale" if shared else "Each panel has its own colour scale") + \
        "; the numbers under a panel are its map's min … max."
    lines = [first]
    seen: dict[str, list[str]] = {}
    for sc in scales:
        if sc.flag:
            seen.setdefault(sc.flag, []).append(sc.panel)
    for flag, panels in seen.items():
        names = list(dict.fromkeys(p.split("/")[-1] for p in panels))  # "row 2/grad-cam" -> "grad-cam"
        where = ", ".join(names) + ("" if len(panels) == 1 else f" ({len(panels)} panels)")
        lines.append(f"{where}: {flag}.")
    chars = max(40, int(width_in * 14))
    text = "\n".join("\n".join(textwrap.wrap(line, chars)) for line in lines)
    fig.supxlabel(text, fontsize=6.5, x=0.02, ha="left", color="0.25")


def is_signed(maps: Any) -> bool:
    """Whether maps carry a sign worth showing (a red/blue scale) rather than a heat scale (NaN ignored)."""
    arr = to_numpy(maps).astype(np.float64)
    arr = arr[np.isfinite(arr)]
    peak = float(np.abs(arr).max()) if arr.size else 0.0
    return peak > 0.0 and float(arr.min()) < -SIGNED_TOLERANCE * peak


def _method_cell(ax: Axes, image: np.ndarray | None, a: np.ndarray, signed: bool, alpha: float,
                 signed_alpha: float, relative: bool) -> None:
    """One method's map ``a`` [H,W] in ``ax``: over ``image`` when given, red/blue when ``signed``, heat from
    its own minimum when ``relative``."""
    if np.isnan(a).all():
        ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)
    elif signed and image is not None:
        ax.imshow(diverging_overlay(image, a, signed_alpha), interpolation="nearest")
    elif signed:
        ax.imshow(diverging(a), interpolation="nearest")
    elif image is not None:
        ax.imshow(overlay(image, normalize(a, low=0.0) if relative else a, alpha, scale=not relative),
                  interpolation="nearest")
    else:
        ax.imshow(normalize(a, low=0.0 if relative else None), cmap=HEAT_CMAP, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
    bare(ax)
    ax.set_aspect("equal")


def _panel_scale(ax: Axes, panel: str, method: str, a: np.ndarray, signed: bool,
                 relative: bool) -> scale.PanelScale:
    """The map's min … max under ``ax``, a constant map flagged in it; the panel's recorded scale."""
    lo, hi = scale.value_range(a)
    vmin, vmax = colour_range(a, signed, relative=relative)
    flag = scale.constant_reason(method, a) if scale.is_constant(a) else None
    if flag:
        flag_panel(ax, flag)
    ax.set_xlabel(scale.range_text(a), fontsize=6.5, labelpad=2)
    return scale.PanelScale(panel, lo, hi, vmin, vmax, flag=flag)


def method_grid(images: Any | None, maps: Mapping[str, Any], *, row_titles: Sequence[str] | None = None,
                alpha: float = 0.5, signed_alpha: float = 0.8, signed: Mapping[str, bool] | None = None,
                title: str | None = None, max_cols: int | None = None, relative: Collection[str] = ()) -> Figure:
    """A labelled grid: one row per image, columns = the original and then one per method.

    Non-negative maps (saliency, Grad-CAM, ...) are heat overlays on the image (``alpha``); signed
    maps (integrated gradients with ``reduce="sum"``, occlusion where hiding helps, LIME) are red (+)
    and blue (-) over the image (``signed_alpha``; alone on a centred red/blue scale without images).
    ``signed`` overrides the per-column automatic choice; the maps named in ``relative`` are heat scaled from
    their own minimum instead of 0 (RISE: registry style ``relative``). Each cell is scaled
    on its own (percentile-clipped), so the grid compares where each method looks, not magnitudes: the
    map's min … max is printed under each cell, and a constant map (an all-zero Grad-CAM) is flagged in
    its cell and, with its likely reason, in the footnote. The ranges are recorded on the figure
    (:func:`cnnlens.viz.scale.scales_of`) and written into its PNG by ``save_figure``.
    ``images`` may be None (for maps with no single image, e.g. class averages): maps are then drawn
    without an image under them. ``max_cols``: with more columns than that, the methods wrap into bands
    stacked one under the other, each band every image again with its original and the next methods (34
    methods in one row would be a figure 60 inches wide).

    >>> fig = method_grid(x, {"saliency": s, "grad-cam": g},
    ...                   row_titles=[prediction_title(t, p, q, classes) for t, p, q in zip(y, pred, prob)])
    """
    if not maps:
        raise ValueError("maps is empty; give at least one method's maps {name: [N,H,W]}")
    arrays = {m: _maps(v, f"maps[{m!r}]") for m, v in maps.items()}
    n, h, w = next(iter(arrays.values())).shape
    for m, a in arrays.items():
        if a.shape != (n, h, w):
            raise ValueError(f"maps[{m!r}] has shape {a.shape} but the first method's maps are {(n, h, w)}")
    imgs = None
    if images is not None:
        imgs = to_numpy(images)
        if imgs.ndim != 4 or imgs.shape[0] != n or tuple(imgs.shape[2:]) != (h, w):
            raise ValueError(f"images must have shape [{n},C,{h},{w}] to match the maps, got {imgs.shape}")
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"row_titles has {len(row_titles)} entries for {n} rows")
    sign = {m: (signed or {}).get(m, is_signed(a)) for m, a in arrays.items()}
    lead = imgs is not None
    per = len(arrays) if max_cols is None else max(1, check_count(max_cols, "max_cols") - lead)
    names = list(arrays)
    bands = [names[b:b + per] for b in range(0, len(names), per)]
    ncols = len(bands[0]) + lead
    fig = Figure(figsize=(CELL * ncols + 0.6, CELL * n * len(bands) + 1.0), layout="constrained")
    scales: list[scale.PanelScale] = []
    axes = np.asarray(fig.subplots(n * len(bands), ncols, squeeze=False))
    for b, band in enumerate(bands):
        for i in range(n):  # one cell per (image, method): drawing is per-axes anyway
            row = axes[b * n + i]
            if imgs is not None:
                show_image(row[0], imgs[i])
            for j, m in enumerate(band):
                rel = m in relative and not sign[m]
                _method_cell(row[lead + j], imgs[i] if imgs is not None else None, arrays[m][i], sign[m], alpha,
                             signed_alpha, rel)
                if not np.isnan(arrays[m][i]).all():
                    scales.append(_panel_scale(row[lead + j], m if n == 1 else f"row {i + 1}/{m}", m, arrays[m][i],
                                               sign[m], rel))
            for ax in row[lead + len(band):]:  # the last band's empty cells
                ax.set_axis_off()
            if row_titles is not None:
                row[0].set_ylabel(row_titles[i], fontsize=8, rotation=0, ha="right", va="center")
        top = axes[b * n]
        if imgs is not None:
            top[0].set_title("original", fontsize=9)
        for j, m in enumerate(band):
            top[lead + j].set_title(f"{m}\nred +, blue -" if sign[m] else m, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    scale_note(fig, scales, CELL * ncols + 0.6)
    scale.attach(fig, scales)
    return fig


def class_method_grid(class_maps: Mapping[str, Any], classes: Sequence[str], mean_images: Any | None = None, *,
                      alpha: float = 0.5, title: str | None = None) -> Figure:
    """Classes x methods: "where does the model look for each class?".

    ``class_maps`` maps a method to ``[K,H,W]`` (one averaged map per class, K = ``len(classes)``);
    ``mean_images`` ``[K,C,H,W]`` (e.g. each class's average image) is shown under the maps if given.
    """
    for m, a in class_maps.items():
        if to_numpy(a).shape[:1] != (len(classes),):
            raise ValueError(f"class_maps[{m!r}] must have one map per class ({len(classes)}), got shape {to_numpy(a).shape}")
    return method_grid(mean_images, class_maps, row_titles=list(classes), alpha=alpha, title=title)


def _grid_shape(count: int, ncols: int) -> tuple[int, int]:
    check_count(ncols, "ncols")
    cols = min(ncols, count)
    return math.ceil(count / cols), cols


def filter_grid(images: Any, layer: str | None, filter_ids: Sequence[int | str], *,
                activations: Sequence[float] | Any | None = None, ncols: int = 8) -> Figure:
    """Activation-maximisation images ``[F,C,H,W]``, one cell per filter, titled with the filter id.

    Each image is stretched to its own 0.5..99.5 percentile range, so faint patterns show;
    ``activations`` (the value each image reaches) is printed under the id when given. ``layer`` None
    means class scores: ``filter_ids`` are then the classes (ids or names).

    >>> res = activation_maximization(model, "features.3", [0, 1, 2])
    >>> fig = filter_grid(res.images, res.layer, res.units, activations=res.activation)
    """
    imgs = to_numpy(images).astype(np.float64)
    if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [F,C,H,W] with C = 1 or 3, got {imgs.shape}")
    f = imgs.shape[0]
    if len(filter_ids) != f:
        raise ValueError(f"filter_ids has {len(filter_ids)} entries for {f} images")
    if activations is not None and len(activations) != f:
        raise ValueError(f"activations has {len(activations)} entries for {f} images")
    rows, cols = _grid_shape(f, ncols)
    fig = Figure(figsize=(1.3 * cols + 0.4, 1.45 * rows + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for k, ax in enumerate(axes):
        if k >= f:
            ax.set_axis_off()
            continue
        show_image(ax, normalize(imgs[k], low=0.5, high=99.5))
        unit = filter_ids[k]
        label = str(unit) if isinstance(unit, str) else f"{'class' if layer is None else 'filter'} {unit}"
        if activations is not None:
            label += f"\nact {float(activations[k]):.3g}"
        ax.set_title(label, fontsize=7)
    what = "class scores: inputs that most excite each class" if layer is None else f"{layer}: inputs that most excite each filter"
    fig.suptitle(what, fontsize=10)
    return fig


def feature_map_grid(maps: Any, layer: str, *, channels: Sequence[int] | None = None, ncols: int = 8,
                     max_maps: int = 64, cmap: str = "gray", shared_scale: bool = False) -> Figure:
    """A layer's output for one image, ``[C,h,w]``: one cell per channel (black = low, white = high).

    ``channels`` picks and labels the channels to show (default: the first ``max_maps``). Each map is
    scaled on its own unless ``shared_scale``, which puts all of them on one scale so dead channels
    look dead.
    """
    arr = to_numpy(maps).astype(np.float64)
    if arr.ndim != 3:
        raise ValueError(f"maps must be one image's feature maps [C,h,w], got {arr.shape}; index the batch first")
    ids = list(range(min(arr.shape[0], max_maps))) if channels is None else [int(c) for c in channels]
    bad = [c for c in ids if not 0 <= c < arr.shape[0]]
    if bad or not ids:
        raise ValueError(f"channels must be a non-empty list of ids in [0, {arr.shape[0] - 1}], got {list(channels or [])}")
    sel = arr[ids]
    lo, hi = (float(sel.min()), float(sel.max())) if shared_scale else (None, None)
    rows, cols = _grid_shape(len(ids), ncols)
    fig = Figure(figsize=(1.2 * cols + 0.4, 1.4 * rows + 0.9), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    scales: list[scale.PanelScale] = []
    for k, ax in enumerate(axes):
        if k >= len(ids):
            ax.set_axis_off()
            continue
        ax.imshow(sel[k], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        bare(ax)
        ax.set_title(f"ch {ids[k]}", fontsize=7)
        flag = "constant: this channel does not respond to this image" if scale.is_constant(sel[k]) else None
        if flag and not shared_scale:
            flag_panel(ax, flag)
        ax.set_xlabel(scale.range_text(sel[k]), fontsize=6, labelpad=2)
        c_lo, c_hi = scale.value_range(sel[k])
        scales.append(scale.PanelScale(f"ch {ids[k]}", c_lo, c_hi, c_lo if lo is None else lo, c_hi if hi is None else hi,
                                       shared=shared_scale, flag=flag))
    shown = f"{len(ids)} of {arr.shape[0]} channels" if len(ids) < arr.shape[0] else f"{arr.shape[0]} channels"
    fig.suptitle(f"{layer}: feature maps ({shown}, {arr.shape[1]}x{arr.shape[2]})"
                 + (f", one scale {scale.number(lo)} … {scale.number(hi)}" if shared_scale else ""), fontsize=10)
    scale_note(fig, scales, 1.2 * cols + 0.4, shared=shared_scale)
    scale.attach(fig, scales)
    return fig
