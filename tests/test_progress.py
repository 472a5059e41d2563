"""The one progress-bar helper: every bar has the same columns, and a bar never changes what it iterates."""

import io

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cnnlens._progress import progress_bar, track


def test_progress_bar_columns():
    kinds = [type(c) for c in progress_bar().columns]
    assert kinds == [TextColumn, BarColumn, MofNCompleteColumn, TimeElapsedColumn]
    bar = progress_bar("epoch", fields=("loss {task.fields[loss]}",), bar_width=24, rate="img/s", remaining=True)
    assert [type(c) for c in bar.columns][:4] == [TextColumn, BarColumn, MofNCompleteColumn, TextColumn]
    assert isinstance(bar.columns[-1], TimeRemainingColumn) and isinstance(bar.columns[-2], TimeElapsedColumn)
    assert bar.columns[1].bar_width == 24


def test_track_yields_every_item_with_and_without_a_bar(monkeypatch):
    import cnnlens._progress as p

    quiet = Console(file=io.StringIO())
    made = p.progress_bar
    monkeypatch.setattr(p, "progress_bar", lambda **kw: made(**kw, console=quiet))
    assert list(track(range(5), "x", enabled=False)) == [0, 1, 2, 3, 4]
    assert list(track(iter(range(5)), "x")) == [0, 1, 2, 3, 4]
