"""Section 4, Evaluation: confusion matrix (counts and row-normalised), per-class scores, the most
confused pairs with example images, from :mod:`cnnlens.evaluate` on the report's predictions."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnlens.evaluate import Evaluation, describe
from cnnlens.report import text
from cnnlens.report.context import ReportContext
from cnnlens.report.sections._common import image_figure, top_by_confidence

#: Confused pairs shown, and example images per pair.
PAIRS = 4
PAIR_EXAMPLES = 4


def evaluation_of(ctx: ReportContext) -> Evaluation | None:
    """The :class:`~cnnlens.evaluate.Evaluation` of the labelled images of the split (None: none labelled).

    Built from the report's one pass of predictions, so the model does not run twice.
    """
    known = np.flatnonzero(ctx.labels >= 0)
    if known.size == 0:
        return None
    return Evaluation.from_probabilities(ctx.probabilities[known], ctx.labels[known], ctx.classes,
                                         [ctx.dataset.names[i] for i in known], predictions=ctx.predictions[known])


def _cells(matrix: np.ndarray, shares: np.ndarray, as_share: bool) -> list[list[dict[str, Any]]]:
    return [[{"text": ("·" if matrix[i, j] == 0 else text.pct(shares[i, j])) if as_share else str(int(matrix[i, j])),
              "level": round(float(shares[i, j]), 3), "diag": i == j}
             for j in range(matrix.shape[1])] for i in range(matrix.shape[0])]


def evaluation_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Confusion tables, per-class precision/recall/F1, and the most confused pairs with their most
    confident mistakes as examples; absent when the split has no labels."""
    e = evaluation_of(ctx)
    if e is None:
        return None
    a = ctx.assets
    k = len(e.classes)
    files = [
        a.json("metrics", e.to_dict({"run": ctx.inputs.name, "split": ctx.options.split})),
        a.csv("per_class", ["class", "precision", "recall", "f1", "support"],
              [(c, f"{e.precision[i]:.6f}", f"{e.recall[i]:.6f}", f"{e.f1[i]:.6f}", int(e.support[i]))
               for i, c in enumerate(e.classes)]),
        a.csv("confusion", ["true \\ predicted", *e.classes], [(c, *map(int, e.confusion[i])) for i, c in enumerate(e.classes)]),
        a.csv("confusion_normalized", ["true \\ predicted", *e.classes],
              [(c, *(f"{v:.6f}" for v in e.confusion_normalized[i])) for i, c in enumerate(e.classes)]),
    ]
    per_class = [{"cls": i, "name": c, "precision": text.pct(e.precision[i], 1), "recall": text.pct(e.recall[i], 1),
                  "f1": f"{e.f1[i]:.2f}", "support": f"{int(e.support[i]):,}"} for i, c in enumerate(e.classes)]
    conf = ctx.probabilities.max(1)
    pairs = []
    for p in e.most_confused(PAIRS):
        members = np.flatnonzero((ctx.labels == p.true) & (ctx.predictions == p.predicted))
        picks = top_by_confidence(members, conf, PAIR_EXAMPLES)
        figs = [image_figure(ctx, f"confused-{p.true}-{p.predicted}-{j}", idx, f"p={conf[idx]:.2f}",
                             title=f"{ctx.dataset.names[idx]}: true {e.classes[p.true]}, predicted "
                                   f"{e.classes[p.predicted]} (p={conf[idx]:.2f})")
                for j, idx in enumerate(picks)]
        pairs.append({"true_cls": p.true, "true": e.classes[p.true], "pred": e.classes[p.predicted],
                      "count": f"{p.count:,}", "share": text.pct(p.share), "figures": figs})
    lines: list[Any] = describe(e)
    if len(lines) == 2 + k:  # describe(): an overall line, the most common mistake, then one line per class
        lines[2:] = [{"text": t, "cls": i} for i, t in enumerate(lines[2:])]
    return {"id": "evaluation", "title": "Evaluation", "text": lines, "classes": list(e.classes),
            "counts": _cells(e.confusion, e.confusion_normalized, as_share=False),
            "normalized": _cells(e.confusion_normalized, e.confusion_normalized, as_share=True),
            "per_class": per_class, "pairs": pairs, "accuracy": text.pct(e.accuracy, 1), "k": k, "files": files}
