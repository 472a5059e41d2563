"""Helpers every section uses: figure dicts (what the template's ``figure`` macro renders) and picking."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnlens.report.context import ReportContext
from cnnlens.report.images import heat_layer, image_hwc
from cnnlens.viz import scale


def figure(src: str, caption: str, *, layer: str | None = None, title: str | None = None,
           method: str | None = None, kind: str = "image", value_range: str | None = None,
           flag: str | None = None) -> dict[str, Any]:
    """A figure for the template: ``src`` (data URI) with an optional heat ``layer`` stacked on top.

    ``caption`` is shown under the image, ``title`` in the enlarged view; ``method`` tags the figure for
    the page's method chooser (None: always shown). ``value_range`` ("-0.0034 … 0.0012") is printed
    under the caption, ``flag`` (why a map is blank) below it, and both in the enlarged view's title.
    """
    full = title or caption
    if value_range:
        full += f" [values {value_range}]"
    if flag:
        full += f". {flag[0].upper()}{flag[1:]}."
    return {"src": src, "layer": layer, "caption": caption, "title": full, "method": method, "kind": kind,
            "range": value_range, "flag": flag.split(":")[0] if flag else None}


def image_figure(ctx: ReportContext, name: str, index: int, caption: str, *, title: str | None = None) -> dict[str, Any]:
    """The split's image ``index`` as a plain figure, written to ``figures/<name>.png``."""
    return figure(ctx.assets.png(name, image_hwc(ctx.dataset.images[index])), caption, title=title)


def overlay_figure(ctx: ReportContext, name: str, base: np.ndarray, attribution: np.ndarray, caption: str, *,
                   style: str = "auto", method: str | None = None, title: str | None = None,
                   base_src: str | None = None) -> dict[str, Any]:
    """``base`` (uint8 ``[H,W]``/``[H,W,3]``) with ``attribution``'s heat layer stacked over it.

    Both layers are written (``<name>.png`` holds the heat layer; the base is reused when ``base_src`` is
    given) so the page can change the layer's opacity without re-rendering anything. Each layer is
    scaled to its own map's range, printed under it; a constant map (drawn fully transparent) is
    flagged with the likely reason for ``method``.
    """
    src = base_src if base_src is not None else ctx.assets.png(f"{name}-base", base)
    layer = ctx.assets.png(name, heat_layer(attribution, style))
    flag = scale.constant_reason(method, attribution) if scale.is_constant(attribution) else None
    return figure(src, caption, layer=layer, title=title, method=method, kind="overlay",
                  value_range=scale.range_text(attribution), flag=flag)


def constant_sentences(flags: dict[str, list[str]], labels: dict[str, str], total: dict[str, int]) -> list[str]:
    """One sentence per method whose maps were constant on some images: how many, and the likely reason.

    ``flags``: method -> the flag of each constant map; ``total``: method -> maps drawn.
    """
    out = []
    for m, found in flags.items():
        if not found:
            continue
        reason = found[0]
        kind, _, why = reason.partition(": ")
        out.append(f"{labels.get(m, m)} is {kind} on {len(found)} of {total.get(m, len(found))} maps (flagged; "
                   f"drawn blank): likely {why}.")
    return out


def top_by_confidence(candidates: np.ndarray, confidence: np.ndarray, k: int) -> list[int]:
    """The ``k`` indices of ``candidates`` with the highest ``confidence``, highest first (ties: lower index)."""
    if candidates.size == 0:
        return []
    order = np.lexsort((candidates, -confidence[candidates]))
    return [int(i) for i in candidates[order][:k]]
