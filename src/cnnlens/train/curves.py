"""The training-curves figure of a run (loss and accuracy, train vs validation, per epoch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnlens._types import PathArg

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_curves(history: list[dict[str, float]], path: PathArg, *, title: str | None = None) -> None:
    """Save a two-panel PNG: cross-entropy loss and accuracy per epoch, train vs validation, with the best
    validation epoch marked. Written atomically.

    >>> plot_curves([{"epoch": 1, "train_loss": 1.9, "val_loss": 1.8, "train_acc": .2, "val_acc": .3}], "c.png")  # doctest: +SKIP
    """
    from cnnlens.viz.save import write_png

    write_png(curves_figure(history, title=title), path, dpi=110)


def curves_figure(history: list[dict[str, float]], *, title: str | None = None) -> Figure:
    """The figure :func:`plot_curves` saves: loss and accuracy panels, whole-epoch ticks."""
    # The object-oriented Figure API needs no GUI backend and touches no global pyplot state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.88, wspace=0.25)  # fixed: constrained layout cost ~0.3 s
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, label in ((ax_loss, "loss", "loss (cross-entropy)"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], "o-", ms=3, label="train")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "o-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 tick on a short run
        if len(epochs) == 1:  # a span of one epoch would fall back to fractional ticks
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if history:
        best = max(history, key=lambda row: (row["val_acc"], -row["epoch"]))  # first epoch of the best accuracy
        ax_acc.axvline(best["epoch"], color="0.5", ls=":", lw=1)
        ax_acc.plot([best["epoch"]], [best["val_acc"]], "k*", ms=8)
        # in a corner the curves never reach (accuracy rarely sits near 0 at the last epochs)
        ax_acc.text(0.98, 0.04, f"best validation {best['val_acc']:.1%} (epoch {best['epoch']}): saved weights",
                    transform=ax_acc.transAxes, ha="right", va="bottom", fontsize=8)
    ax_acc.set_ylim(0, 1.02)
    ax_loss.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
