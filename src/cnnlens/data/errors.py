"""The one error type for bad data files: it names the file, the line (when there is one) and what was expected."""

from __future__ import annotations

import logging

from cnnlens._types import PathArg

log = logging.getLogger("cnnlens.data")


class DataError(ValueError):
    """Bad input data, located precisely enough for a person to open the file and fix it.

    >>> str(DataError("faces.csv", "expected 2304 pixel values, got 2303", line=12))
    'faces.csv line 12: expected 2304 pixel values, got 2303'

    Attributes:
        file: the file (or folder) as the user named it.
        line: 1-based line number in ``file`` (the header is line 1), or None when the error is about a whole file.
        message: what was wrong and what was expected, without the location.
    """

    def __init__(self, file: PathArg, message: str, *, line: int | None = None) -> None:
        self.file = str(file)
        self.line = line
        self.message = message
        where = self.file if line is None else f"{self.file} line {line}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keep the keyword-only ``line`` through pickling (multiprocessing, pytest-xdist)
        return (_rebuild, (self.file, self.message, self.line))


def _rebuild(file: str, message: str, line: int | None) -> DataError:
    return DataError(file, message, line=line)


def raise_or_skip(source: PathArg, split: str, errors: list[DataError], skip_bad_rows: bool,
                  skipped: list[DataError] | None, *, what: str = "rows") -> None:
    """The one policy for bad rows/files: raise the first error (saying how many there are), or, with
    ``skip_bad_rows``, append every error to ``skipped`` (when given) and log their count as a warning on the
    ``cnnlens.data`` logger, so that nothing is dropped silently."""
    if not errors:
        return
    count = f"{len(errors)} bad {what if len(errors) > 1 else what.rstrip('s')}"
    if not skip_bad_rows:
        first = errors[0]
        more = f" ({count} in all; skip_bad_rows=True / --skip-bad-rows leaves them out)"
        raise DataError(first.file, first.message + more, line=first.line)
    if skipped is not None:
        skipped.extend(errors)
    log.warning("%s: skipped %s of split %r (first: %s)", source, count, split, errors[0])
