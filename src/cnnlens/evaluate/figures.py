"""Evaluation figures, drawn on ``matplotlib.figure.Figure`` objects (no pyplot, no global state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from cnnlens.viz.save import png_bytes  # noqa: F401  (re-exported: evaluation outputs encode their figures with it)

if TYPE_CHECKING:
    from cnnlens.evaluate.metrics import Evaluation


def _heatmap(ax, matrix: np.ndarray, classes: tuple[str, ...], labels: list[str], title: str,
             vmax: float, fontsize: float) -> None:
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    k = len(classes)
    ax.set_xticks(range(k), classes, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    threshold = 0.5 * (vmax if vmax > 0 else 1.0)
    for (i, j), text in zip(np.ndindex(k, k), labels):
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                color="white" if matrix[i, j] > threshold else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _percent(x: float) -> str:
    return "0" if x == 0 else "<1%" if x < 0.005 else f"{x:.0%}"


def confusion_figure(evaluation: Evaluation) -> Figure:
    """Confusion matrix heat-maps side by side: counts (left) and row-normalised shares (right).

    Rows are true classes, columns predicted classes; each cell is written in, and class names label both
    axes. The diagonal of the right panel is each class's recall.
    """
    classes = evaluation.classes
    k = len(classes)
    cell = 0.55 if k > 3 else 0.9
    fontsize = max(5.0, 10.0 - k / 3)
    fig = Figure(figsize=(2 * (k * cell + 2.6), k * cell + 2.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    counts, shares = evaluation.confusion, evaluation.confusion_normalized
    _heatmap(left, counts, classes, [str(int(c)) for c in counts.ravel()], "Counts", float(counts.max()), fontsize)
    _heatmap(right, shares, classes, [_percent(float(s)) for s in shares.ravel()],
             "Share of the true class (recall on the diagonal)", 1.0, fontsize)
    fig.suptitle(f"Confusion matrix: {evaluation.num_images:,} images, accuracy {evaluation.accuracy:.1%}")
    return fig


def class_distribution_figure(evaluation: Evaluation) -> Figure:
    """Bar chart of images per class: true labels beside the model's predictions."""
    classes = evaluation.classes
    k = len(classes)
    fig = Figure(figsize=(max(5.0, 0.8 * k + 2.0), 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(k)
    width = 0.4
    true_bars = ax.bar(x - width / 2, evaluation.support, width, label="true label", color="#4c72b0")
    pred_bars = ax.bar(x + width / 2, evaluation.predicted_counts, width, label="predicted", color="#dd8452")
    ax.bar_label(true_bars, fontsize=7)
    ax.bar_label(pred_bars, fontsize=7)
    ax.set_xticks(x, classes, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_ylabel("images")
    ax.set_title(f"Class distribution ({evaluation.num_images:,} images)")
    ax.legend(ncols=2, loc="upper center")
    ax.margins(y=0.25)  # head-room for the legend above the tallest bar
    return fig
