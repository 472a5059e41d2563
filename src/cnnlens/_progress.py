"""The one place cnnlens builds a rich progress bar, so every bar looks alike: its text, a bar, ``done/total``,
any extra text fields, the time elapsed (and on request the rate and the time left).

Progress is on for the CLI and opt-in for the library; rich is imported only when a bar is shown.

>>> with progress_bar() as bar:
...     task = bar.add_task("explaining", total=10)
>>> for item in track(items, "smoothgrad", enabled=progress):
...     ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rich.progress import Progress

T = TypeVar("T")


def progress_bar(description: str = "{task.description}", *, fields: Sequence[str] = (), bar_width: int | None = 40,
                 rate: str | None = None, remaining: bool = False, transient: bool = False,
                 console: Any = None) -> Progress:
    """A rich ``Progress``: ``description``, a bar, ``done/total``, ``fields`` (rich text templates such as
    ``"loss {task.fields[loss]:.3f}"``), ``"<rate> <unit>"`` if ``rate`` names a unit, the elapsed time, and
    the time left if ``remaining``. Use it as a context manager (or ``start()``/``stop()``)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: object) -> Text:
            speed = getattr(task, "speed", None)
            return Text(f"- {rate}" if speed is None else f"{speed:,.1f} {rate}", style="progress.data.speed")

    columns: list[Any] = [TextColumn(description), BarColumn(bar_width=bar_width), MofNCompleteColumn(),
                          *(TextColumn(f) for f in fields)]
    if rate is not None:
        columns.append(RateColumn())
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, transient=transient, console=console)


def track(iterable: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """The items of ``iterable``, with a :func:`progress_bar` named ``description`` while ``enabled``."""
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task)
