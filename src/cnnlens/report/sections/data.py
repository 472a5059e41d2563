"""Section 1, Data: how many images of each class the split holds, and a few of each."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnlens.report import text
from cnnlens.report.context import ReportContext
from cnnlens.report.sections._common import image_figure


def data_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Class distribution (bars + CSV) and ``examples_per_class`` seeded random examples per class."""
    labels, classes = ctx.labels, ctx.classes
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))[: len(classes)]
    total = int(counts.sum())
    top = int(counts.max()) if counts.size else 0
    bars = [{"cls": i, "name": name, "count": int(counts[i]), "share": text.pct(counts[i] / total, 1) if total else "-",
             "width": round(100.0 * counts[i] / top, 2) if top else 0.0} for i, name in enumerate(classes)]
    csv = ctx.assets.csv("class_distribution", ["class", "count", "share"],
                         [(c, int(n), f"{n / total:.6f}" if total else "") for c, n in zip(classes, counts)])
    rng = np.random.default_rng(ctx.options.seed)
    examples = []
    for i, name in enumerate(classes):
        members = np.flatnonzero(labels == i)
        k = min(ctx.options.examples_per_class, members.size)
        pick = np.sort(rng.choice(members, size=k, replace=False)) if k else members[:0]
        figs = [image_figure(ctx, f"example-c{i}-{j}", int(idx), ctx.dataset.names[idx], title=f"{name}: {ctx.dataset.names[idx]}")
                for j, idx in enumerate(pick)]
        examples.append({"cls": i, "name": name, "count": int(counts[i]), "figures": figs})
    unlabelled = int((labels < 0).sum())
    sentences = text.data_sentences(counts.tolist(), classes, ctx.options.split, data=ctx.inputs.data)
    if unlabelled:
        sentences.append(f"{text.num(unlabelled)} images have no label and are left out of the scores.")
    return {"id": "data", "title": "Data", "text": sentences, "bars": bars, "examples": examples, "files": [csv],
            "where": ctx.split_name}
