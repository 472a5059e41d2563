"""The training-curves figure: whole-epoch ticks, the best epoch marked, a PNG written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlens.train.curves import curves_figure, plot_curves


def _history(n: int) -> list[dict[str, float]]:
    return [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "train_acc": 0.3 + 0.05 * e,
             "val_acc": 0.28 + 0.05 * e - (0.1 if e == n else 0.0)} for e in range(1, n + 1)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 60])
def test_epoch_ticks_are_whole_numbers(n: int) -> None:
    fig = curves_figure(_history(n))
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown and all(float(t).is_integer() for t in shown), (n, shown)


def test_best_validation_epoch_is_marked_and_png_written(tmp_path: Path) -> None:
    history = _history(5)  # best val_acc at epoch 4: the last epoch drops
    fig = curves_figure(history, title="t")
    text = [t.get_text() for t in fig.axes[1].texts]
    assert any("(epoch 4)" in t for t in text), text
    out = tmp_path / "curves.png"
    plot_curves(history, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
