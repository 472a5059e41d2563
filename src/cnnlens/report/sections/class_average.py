"""Section 6, Class-average maps: each method averaged over many images of a class, explained toward
that class ("where does the model look for Happy?")."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cnnlens.explain import registry
from cnnlens.explain.class_average import normalize_maps
from cnnlens.report import text
from cnnlens.report.context import ReportContext, method_label
from cnnlens.report.images import image_hwc
from cnnlens.viz import scale
from cnnlens.report.sections._common import constant_sentences, figure, overlay_figure


def average_maps(maps: np.ndarray) -> np.ndarray:
    """Mean of ``[N,H,W]`` maps after scaling each by its max ``|value|`` (``class_average``'s
    ``normalize_maps(..., "max_abs")``), so every image weighs the same.

    >>> average_maps(np.array([[[2.0, 0.0]], [[0.0, 0.5]]])).tolist()
    [[0.5, 0.5]]
    """
    return normalize_maps(torch.from_numpy(np.asarray(maps, dtype=np.float64)), "max_abs").mean(0).numpy()


def mass_inside(maps: np.ndarray, masks: np.ndarray) -> float:
    """Mean over images of the share of each map's positive mass inside its mask (images with mass only)."""
    pos = np.clip(maps, 0, None)
    total = pos.reshape(pos.shape[0], -1).sum(1)
    inside = (pos * masks).reshape(pos.shape[0], -1).sum(1)
    ok = total > 0
    return float((inside[ok] / total[ok]).mean()) if ok.any() else 0.0


def class_average_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Per class: the mean image and each method's average map over up to ``average_images`` images of
    the class (a seeded sample), each map explained toward the class itself.

    The averages are those of :func:`cnnlens.explain.class_average.class_average_maps`; the per-image maps
    are kept (and shared with other sections through the context's cache) to measure, on data with
    ground-truth masks, how much of each map falls inside its image's deciding parts.
    """
    methods = list(ctx.options.average_methods)
    if not methods or len(ctx.dataset) == 0:
        return None
    rng = np.random.default_rng(ctx.options.seed)
    picks = []
    for c in range(len(ctx.classes)):
        members = np.flatnonzero(ctx.labels == c)
        k = min(ctx.options.average_images, members.size)
        picks.append(np.sort(rng.choice(members, size=k, replace=False)) if k else members[:0])
    index = [int(i) for p in picks for i in p]
    if not index:
        return None
    maps, skipped = ctx.explain(methods, index, [int(ctx.labels[i]) for i in index])
    if not maps:
        return None
    masks = ctx.dataset.masks.cpu().numpy() if ctx.dataset.masks is not None else None
    a = ctx.assets
    rows: list[dict[str, Any]] = []
    sentences: list[Any] = []  # per-class sentences carry their class, for the page's class chooser
    summary: dict[str, Any] = {}
    lead = next((m for m in ("grad-cam", *methods) if m in maps), None)
    flags: dict[str, list[str]] = {m: [] for m in maps}
    drawn: dict[str, int] = {m: 0 for m in maps}
    start = 0
    for c, name in enumerate(ctx.classes):
        n = len(picks[c])
        sl = slice(start, start + n)
        start += n
        if n == 0:
            continue
        mean_img = ctx.dataset.images[picks[c]].float().mean(0).round().to(dtype=ctx.dataset.images.dtype)
        base = image_hwc(mean_img)
        base_src = a.png(f"average-c{c}-mean", base)
        figs, per_method = [], {}
        for m in methods:
            if m not in maps:
                continue
            avg = average_maps(maps[m][sl])
            a.npy(f"average-c{c}-{m}", avg)
            drawn[m] += 1
            if scale.is_constant(avg):
                flags[m].append(scale.constant_reason(m, avg))
            inside = cover = None
            if masks is not None:
                inside, cover = mass_inside(maps[m][sl], masks[picks[c]]), float(masks[picks[c]].mean())
            sentence = text.map_location_sentence(method_label(m), name, avg, inside=inside, cover=cover)
            per_method[m] = {"sentence": sentence, "inside": inside}
            cap = method_label(m) if inside is None else f"{text.pct(inside)} inside"
            figs.append(overlay_figure(ctx, f"average-c{c}-{m}", base, avg, cap, style=registry.style_of(m), method=m,
                                       title=sentence, base_src=base_src))
            if m == lead:
                sentences.append({"text": sentence, "cls": c})
        summary[name] = {"images": n, **per_method}
        rows.append({"cls": c, "name": name, "n": n, "figures": figs,
                     "mean": figure(base_src, "mean image", title=f"{name}: mean of {text.count(n, 'image')}")})
    sentences.append("Each image's map is divided by its largest |value| before averaging, so the averages are shares of "
                     "that peak (their min … max under each), each drawn on its own scale.")
    sentences += constant_sentences(flags, {m: method_label(m) for m in maps}, drawn)
    sentences += [f"{method_label(m)} is left out: {reason}" for m, reason in skipped.items()]
    files = [a.json("class_average", {"methods": list(maps), "classes": summary})]
    return {"id": "class_average", "title": "Class-average maps", "text": sentences,
            "methods": [{"id": m, "label": method_label(m)} for m in methods if m in maps], "rows": rows,
            "files": files}
