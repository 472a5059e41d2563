"""What a map panel's colours stand for: the range of values it spans, and a flag when it shows nothing.

Every cnnlens map figure scales each panel to its own range, so that where a method looks is visible
however small its values are; the range printed under the panel says how small they are (a map of
changes of -0.0034 looks as strong as one of -0.9 otherwise). A map whose values do not vary at all is
drawn blank, which reads as "nothing here" when it usually means "nothing was computed": it is flagged,
with the likely reason for the method that made it.

>>> range_text(np.array([[-0.0034, 0.0], [0.001, 0.0012]]))
'-0.0034 … 0.0012'
>>> constant_reason("grad-cam", np.zeros((4, 4)))[:28]
'all zero: the class score ha'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cnnlens.viz.render import to_numpy

#: A map is constant when its values span at most this share of its largest magnitude (0 for all-zero maps).
CONSTANT_TOLERANCE = 1e-6
#: PNG text key under which :func:`cnnlens.viz.save_figure` writes a figure's panel scales (JSON).
PNG_KEY = "cnnlens:scales"

#: Why a method's map is zero everywhere (or one value everywhere), keyed by method id; ``default`` else.
ZERO_REASONS: dict[str, str] = {
    "grad-cam": "the class score has no gradient at the chosen layer, or its gradient-weighted sum is <= 0 "
                "everywhere and the final ReLU removed it; typical of a layer after the last ReLU whose units are "
                "all inactive here, or a layer the score does not depend on: try another --layer",
    "guided-grad-cam": "its Grad-CAM factor is zero everywhere (see Grad-CAM: try another --layer) or guided "
                       "backprop's gradient is",
    "cam": "the class's weights times the last feature maps are <= 0 at every position",
    "saliency": "the class score's gradient with respect to the pixels is zero: the score does not depend on the "
                "input here (all ReLUs inactive, or a model that ignores its input)",
    "smoothgrad": "the class score's gradient is zero on every noisy copy: the score does not depend on the input here",
    "guided-backprop": "every gradient was zeroed by a ReLU on the way back (no positive path from the pixels to the "
                       "score), or the score does not depend on the input",
    "integrated-gradients": "the score's gradient is zero along the whole path from the baseline, or the image "
                            "equals the baseline",
    "occlusion": "hiding no patch changes the score: the fill looks like the image there, the patches are too small "
                 "to matter, or the probability is saturated (try -o occlusion.output=logit)",
    "lime": "no superpixel changed the score in the surrogate's samples (saturated probability, or too few samples)",
    "default": "the method's output does not vary: the score may not depend on these pixels",
}
#: Why a map is one non-zero value everywhere.
FLAT_REASONS: dict[str, str] = {
    "grad-cam": "the layer has a single position (after global pooling, 1x1), so its map is one value: choose "
                "a convolutional layer",
    "guided-grad-cam": "Grad-CAM's layer has a single position (1x1), so it only scales guided backprop",
    "default": "the method gave every pixel the same value",
}


def value_range(values: Any) -> tuple[float, float]:
    """``(min, max)`` of a map's finite values; ``(nan, nan)`` when it has none (a "no data" map)."""
    arr = to_numpy(values).astype(np.float64)
    arr = arr[np.isfinite(arr)]
    return (float(arr.min()), float(arr.max())) if arr.size else (float("nan"), float("nan"))


def is_constant(values: Any) -> bool:
    """Whether a map's finite values do not vary (all zero included): ``max - min <= 1e-6 * max |x|``."""
    lo, hi = value_range(values)
    if np.isnan(lo):
        return False
    return hi - lo <= CONSTANT_TOLERANCE * max(abs(lo), abs(hi))


def number(x: float) -> str:
    """Two significant figures, no exponent for everyday sizes: ``-0.0034``, ``0.91``, ``1.2e-07``, ``0``."""
    return "0" if x == 0 else f"{x:.2g}"


def range_text(values: Any) -> str:
    """``"min … max"`` of a map, or ``"constant v"``; ``"no data"`` for an all-NaN map."""
    lo, hi = value_range(values)
    if np.isnan(lo):
        return "no data"
    if is_constant(values):
        return f"constant {number(lo)}"
    return f"{number(lo)} … {number(hi)}"


def constant_reason(method: str | None, values: Any) -> str:
    """The flag for a constant map: ``"all zero: <likely reason for method>"`` or ``"constant v: ..."``."""
    lo, _ = value_range(values)
    if lo == 0:
        return "all zero: " + ZERO_REASONS.get(method or "", ZERO_REASONS["default"])
    return f"constant {number(lo)}: " + FLAT_REASONS.get(method or "", FLAT_REASONS["default"])


@dataclass(frozen=True)
class PanelScale:
    """One panel of a figure: which map, its value range, the colour range drawn, and its flag.

    Attributes:
        panel: the panel's name (``"saliency"``, ``"row 2/grad-cam"``, ``"ch 5"``).
        low / high: the map's smallest and largest value.
        vmin / vmax: the values the colour scale's ends stand for (after percentile clipping).
        shared: whether this colour range is shared with other panels of the figure.
        flag: why the panel is blank (a constant map), or None.
    """

    panel: str
    low: float
    high: float
    vmin: float
    vmax: float
    shared: bool = False
    flag: str | None = None


def attach(fig: Figure, scales: list[PanelScale]) -> None:
    """Record ``scales`` on ``fig`` (``fig.cnnlens_scales``), where :func:`scales_of` and ``save_figure`` read them."""
    fig.cnnlens_scales = list(scales)  # type: ignore[attr-defined]


def scales_of(fig: Figure) -> list[PanelScale]:
    """The panel scales a cnnlens figure recorded (empty for other figures)."""
    return list(getattr(fig, "cnnlens_scales", []))


def scales_json(fig: Figure) -> str | None:
    """The figure's panel scales as JSON (what the PNG's ``cnnlens:scales`` text holds), or None without any."""
    scales = scales_of(fig)
    if not scales:
        return None
    clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(s).items()} for s in scales]
    return json.dumps(clean)
