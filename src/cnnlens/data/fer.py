"""FER2013 CSV files, in both layouts people have.

* Kaggle (``fer2013.csv``): header ``emotion,pixels,Usage`` (any column order, spaces allowed); Usage is
  ``Training``, ``PublicTest`` or ``PrivateTest``. A file without the Usage column is all ``train``.
* Course (``train.csv`` / ``test.csv``): header ``label,feature`` (labelled) or ``id,feature`` (unlabelled;
  labels are -1).

``pixels`` / ``feature`` holds 48*48 = 2304 integers 0..255 separated by spaces, row-major. Labels and pixel
values are ASCII digits only: ``+3``, ``0_3``, ``3.0`` or Arabic-Indic ``٣`` are errors, never the value 3. Lines
end in LF, CRLF or (old Mac files) CR alone.
Goodfellow et al., "Challenges in representation learning" (ICML 2013 workshop), introduced the data set.

Parsing is done in bulk on the raw bytes with numpy (digit masks, token boundaries, place values), so the
35,887 rows of the Kaggle file load in a few seconds and every bad row is still located exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from cnnlens._atomic import atomic_path
from cnnlens._checks import check_choice
from cnnlens._types import PathArg
from cnnlens.data.errors import DataError, raise_or_skip
from cnnlens.data.imageset import ImageSet

#: FER2013 class names, index = label.
FER_CLASSES: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
#: Side of a FER image in pixels.
FER_SIZE = 48
#: Kaggle Usage value -> cnnlens split name.
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
#: Split names a FER file can be asked for.
FER_SPLITS: tuple[str, ...] = ("train", "val", "test", "all")

_ACCEPTED_HEADERS = ("'emotion,pixels,Usage' (Kaggle FER2013), 'label,feature' or 'id,feature' "
                     "(course train.csv/test.csv)")
_CHUNK_ROWS = 2048  # rows parsed per numpy pass: ~17 MB of text, keeps the temporaries small


def masks_path(csv_path: PathArg) -> Path:
    """Where the optional ground-truth masks of ``csv_path`` live: ``<stem>.masks.npy`` beside it."""
    p = Path(csv_path)
    return p.with_name(f"{p.stem}.masks.npy")


def load_fer(path: PathArg, split: str | None = "train", *, skip_bad_rows: bool = False,
             skipped: list[DataError] | None = None) -> ImageSet:
    """Load one split of a FER2013 CSV (either layout) as a gray 48x48 :class:`ImageSet`.

    Splits: ``train`` (Usage Training, or every row of a course ``label,feature`` file), ``val`` (PublicTest),
    ``test`` (PrivateTest, or every row of a course ``id,feature`` file), ``all``; None = the file's default:
    ``test`` for an ``id,feature`` file (it has no other rows), else ``train``. Only rows of the chosen
    split are checked and parsed. Image names are ``"<file name>:<line>"`` (the header is line 1).
    ``<stem>.masks.npy`` beside the CSV (bool ``[rows,48,48]``, one per data row) becomes ``ImageSet.masks``.

    A bad row raises :class:`DataError` naming the file, the line and what was expected. With
    ``skip_bad_rows=True`` bad rows are left out instead: each one's error is appended to ``skipped`` (when
    given) and their count is logged as a warning on the ``cnnlens.data`` logger, so none vanish silently.

    >>> faces = load_fer("fer2013.csv", "val")      # 3,589 PublicTest rows
    >>> faces.images.shape
    torch.Size([3589, 1, 48, 48])
    """
    path = Path(path)
    if split is not None:
        check_choice(split, FER_SPLITS, "split")
    if not path.is_file():
        raise DataError(path, f"no such file; expected a FER2013 CSV with header {_ACCEPTED_HEADERS}")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM written by Excel and some pandas set-ups
        raw = raw[3:]
    if not raw.strip():
        raise DataError(path, f"empty file; expected a header line {_ACCEPTED_HEADERS} followed by one row per image")
    # LF or CRLF (the CR is stripped with the fields' spaces); a file without any LF is an old-Mac CR-only file
    lines = raw.split(b"\n") if b"\n" in raw else raw.split(b"\r")
    header = [c.strip().strip('"').strip() for c in lines[0].decode("utf-8", "replace").split(",")]
    columns = [c.lower() for c in header]  # matched case-insensitively, quoted as the file spells them
    layout, label_col, pixel_col, usage_col = _layout(path, columns, header)
    ncols = len(columns)
    if split is None:
        split = "test" if layout == "course-test" else "train"

    # data rows: every non-blank line after the header; k = row index (masks are aligned to it), line = k-th line no.
    line_numbers: list[int] = []
    fields: list[list[bytes]] = []
    for i in range(1, len(lines)):
        if lines[i].strip():
            line_numbers.append(i + 1)
            fields.append(lines[i].split(b","))
    del lines
    if not fields:
        raise DataError(path, f"no data rows after the header line; expected one row per image ({_ACCEPTED_HEADERS})")

    errors: dict[int, str] = {}  # row index -> what was wrong (first problem only)
    for k, row in enumerate(fields):
        if len(row) != ncols:
            errors[k] = f"expected {ncols} comma-separated columns ({','.join(header)}), got {len(row)}"

    # which rows belong to the split
    if usage_col is not None:
        usage = [_text(row[usage_col]) if k not in errors else "" for k, row in enumerate(fields)]
        for k, u in enumerate(usage):
            if k not in errors and u not in USAGE_TO_SPLIT:
                errors[k] = f"expected Usage Training, PublicTest or PrivateTest, got {u!r}"
        row_split = [USAGE_TO_SPLIT.get(u, "") for u in usage]
    else:
        row_split = ["test" if layout == "course-test" else "train"] * len(fields)
    if split == "all":
        chosen = list(range(len(fields)))
    else:
        # a row whose Usage is unreadable may belong to any split, so its error is reported for every split
        chosen = [k for k in range(len(fields)) if row_split[k] == split or (k in errors and row_split[k] == "")]
    if not chosen:
        counts = {s: row_split.count(s) for s in ("train", "val", "test") if row_split.count(s)}
        have = ", ".join(f"{s}: {n} rows" for s, n in counts.items())
        raise DataError(path, f"no rows for split {split!r} ({layout} layout); this file has {have}"
                        + ("" if usage_col is not None else "; make a validation split with stratified_split"))

    labels = np.full(len(chosen), -1, dtype=np.int64)
    if label_col is not None:
        nclass = len(FER_CLASSES)
        for j, k in enumerate(chosen):
            if k in errors:
                continue
            text = _text(fields[k][label_col])
            if not _ASCII_INT.fullmatch(text):  # int() would take "+3", "0_3" and "٣" as 3
                errors[k] = (f"expected an integer label 0..{nclass - 1} in column {header[label_col]!r}, "
                             f"got {text[:20]!r} (plain ASCII digits 0-9 only)")
                continue
            digits = text.lstrip("0") or "0"
            # a negative or huge number is out of range (and int() refuses more than 4300 digits)
            value = int(digits) if len(digits) <= 9 and not text.startswith("-") else -1
            if not 0 <= value < nclass:
                shown = text if len(text) <= 20 else text[:20] + "..."
                errors[k] = (f"label {shown} out of range: expected 0..{nclass - 1} "
                             f"({', '.join(f'{i}={c}' for i, c in enumerate(FER_CLASSES))})")
            labels[j] = value

    todo = [j for j, k in enumerate(chosen) if k not in errors]
    pixels, pixel_errors = parse_pixel_rows([fields[chosen[j]][pixel_col] for j in todo], FER_SIZE * FER_SIZE)
    for t, message in pixel_errors.items():
        errors[chosen[todo[t]]] = message
    images = np.zeros((len(chosen), FER_SIZE * FER_SIZE), dtype=np.uint8)
    images[todo] = pixels

    bad = sorted(k for k in chosen if k in errors)
    keep = np.array([k not in errors for k in chosen], dtype=bool)
    row_errors = [DataError(path, errors[k], line=line_numbers[k]) for k in bad]
    raise_or_skip(path, split, row_errors, skip_bad_rows, skipped)
    if not keep.any():
        raise DataError(path, f"all {len(chosen)} rows of split {split!r} are bad; first: {row_errors[0].message}",
                        line=row_errors[0].line)

    masks = _load_masks(path, len(fields))
    kept_rows = np.asarray(chosen)[keep]
    return ImageSet(
        images=torch.from_numpy(images[keep].reshape(-1, 1, FER_SIZE, FER_SIZE)),
        labels=torch.from_numpy(labels[keep]),
        classes=FER_CLASSES,
        names=tuple(f"{path.name}:{line_numbers[k]}" for k in kept_rows.tolist()),
        masks=None if masks is None else torch.from_numpy(masks[kept_rows]),
    )


def parse_pixel_rows(rows: list[bytes], expected: int) -> tuple[np.ndarray, dict[int, str]]:
    """Parse space-separated integer pixel rows in bulk: ``(uint8 [len(rows), expected], {row: error})``.

    Rows with an error are left as zeros in the array. Tokens are found from a digit mask of the raw bytes
    (a token starts where a digit follows a non-digit) and valued from their last three digits' place values,
    so no Python code runs per value.

    >>> parse_pixel_rows([b"1 20 255", b"7 8"], 3)[1]
    {1: 'expected 3 pixel values, got 2'}
    """
    out = np.zeros((len(rows), expected), dtype=np.uint8)
    errors: dict[int, str] = {}
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start : start + _CHUNK_ROWS]
        values, chunk_errors = _parse_chunk(chunk, expected)
        out[start : start + len(chunk)] = values
        errors.update({start + r: m for r, m in chunk_errors.items()})
    return out, errors


# byte -> 1 for a digit, 0 for a separator (space, tab, CR, LF, '"' around the field), -1 for anything else
_BYTE_KIND = np.full(256, -1, dtype=np.int8)
_BYTE_KIND[48:58] = 1
_BYTE_KIND[[9, 10, 13, 32, 34]] = 0
_ASCII_INT = re.compile(r"-?[0-9]+")


def _parse_chunk(rows: list[bytes], expected: int) -> tuple[np.ndarray, dict[int, str]]:
    n = len(rows)
    out = np.zeros((n, expected), dtype=np.uint8)
    errors: dict[int, str] = {}
    if n == 0:
        return out, errors
    blob = b"\n".join(rows) + b"\n"
    a = np.frombuffer(blob, dtype=np.uint8)
    row_end = np.flatnonzero(a == 10)  # one newline per row
    kind = _BYTE_KIND[a]
    bad_rows = np.unique(np.searchsorted(row_end, np.flatnonzero(kind < 0)))
    for r in bad_rows.tolist():
        errors[r] = _bad_byte_message(rows[r])

    # a token starts where the digit indicator steps 0 -> 1 and ends before it steps 1 -> 0
    step = np.diff((kind > 0).view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(step == 1)
    ends = np.flatnonzero(step == -1) - 1
    first_token = np.searchsorted(starts, np.concatenate([[0], row_end[:-1]]))  # tokens are in row order
    counts = np.diff(np.append(first_token, starts.size))

    length = ends - starts + 1
    value = (a[ends] - np.uint8(48)).astype(np.int32)
    two = np.flatnonzero(length >= 2)
    value[two] += 10 * (a[ends[two] - 1] - np.uint8(48)).astype(np.int32)
    three = np.flatnonzero(length >= 3)
    value[three] += 100 * (a[ends[three] - 2] - np.uint8(48)).astype(np.int32)
    for t in np.flatnonzero(length > 3).tolist():  # leading zeros or huge numbers: rare, value them exactly
        digits = blob[starts[t] : ends[t] + 1].lstrip(b"0") or b"0"
        value[t] = int(digits) if len(digits) <= 9 else 1 << 30  # int() refuses > 4300 digits
    too_big = np.flatnonzero(value > 255)
    for t, r in zip(too_big.tolist(), np.searchsorted(row_end, starts[too_big]).tolist()):
        if r not in errors:  # ascending, so a row reports its first offending value
            errors[r] = f"expected pixel values 0..255, got {int(value[t])}"
    for r in np.flatnonzero(counts != expected).tolist():
        if r not in errors:
            errors[r] = f"expected {expected} pixel values, got {int(counts[r])}"

    good = np.ones(n, dtype=bool)
    good[list(errors)] = False
    if good.all():
        out[:] = value.reshape(n, expected)
    elif good.any():
        out[good] = value[np.repeat(good, counts)].reshape(-1, expected)
    return out, errors


def _bad_byte_message(row: bytes) -> str:
    """The error of a pixel field holding a byte that is neither a digit nor a separator: the token around
    the first such byte, shown with escapes (a vertical tab is ``\\x0b``), and the byte when it is a control byte."""
    kind = _BYTE_KIND[np.frombuffer(row, dtype=np.uint8)]
    pos = int(np.flatnonzero(kind < 0)[0])
    seps = np.flatnonzero(kind == 0)
    start = int(seps[seps < pos][-1]) + 1 if (seps < pos).any() else 0
    after = seps[seps > pos]
    end = int(after[0]) if after.size else len(row)
    token = row[start:end]
    shown = token[:20].decode("utf-8", "replace") + ("..." if len(token) > 20 else "")
    byte = row[pos]
    control = f" (control byte 0x{byte:02x} at character {pos + 1} of the field)" if byte < 32 or byte == 127 else ""
    return f"expected integer pixel values 0..255 separated by spaces, got {shown!r}{control}"


def write_fer_csv(path: PathArg, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                  usage: list[str] | tuple[str, ...] | np.ndarray | None = None) -> None:
    """Write images in the Kaggle FER2013 layout ``emotion,pixels,Usage``, atomically.

    ``images``: uint8 ``[N,48,48]`` (or ``[N,1,48,48]``); ``labels``: ints ``[N]``; ``usage``: one of
    Training/PublicTest/PrivateTest per row (default: all Training). Numbers are formatted in bulk.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    images = images.reshape(images.shape[0], -1)
    labels = np.asarray(labels).reshape(-1)
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries for {n} images")
    usage = ["Training"] * n if usage is None else [str(u) for u in usage]
    if len(usage) != n or any(u not in USAGE_TO_SPLIT for u in usage):
        raise ValueError(f"usage must give one of {', '.join(USAGE_TO_SPLIT)} for each of the {n} images")
    text = format_pixel_rows(images)
    body = b"".join(b"%d,%s,%s\n" % (int(lab), row, u.encode()) for lab, row, u in zip(labels.tolist(), text, usage))
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"emotion,pixels,Usage\n" + body)


def format_pixel_rows(images: np.ndarray) -> list[bytes]:
    """Each row of uint8 ``[N,P]`` as space-separated decimal text, formatted without a per-value Python loop."""
    v = images.astype(np.int16)
    digits = np.stack([v // 100, v // 10 % 10, v % 10, np.full_like(v, -16)], axis=-1) + 48  # -16+48 = ' '
    keep = np.stack([v >= 100, v >= 10, np.ones_like(v, bool), np.ones_like(v, bool)], axis=-1)
    keep[:, -1, 3] = False  # no trailing space
    chars = digits.astype(np.uint8)[keep].tobytes()
    ends = np.cumsum(keep.reshape(len(v), -1).sum(axis=1))
    return [chars[s:e] for s, e in zip([0, *ends[:-1].tolist()], ends.tolist())]


def _layout(path: Path, columns: list[str], header: list[str]) -> tuple[str, int | None, int, int | None]:
    """(layout name, label column, pixel column, usage column) from the header, or a DataError on line 1."""
    have = ",".join(header)
    if "pixels" in columns:
        if "emotion" not in columns:
            raise DataError(path, f"missing column 'emotion': expected header {_ACCEPTED_HEADERS}, got {have!r}",
                            line=1)
        usage = columns.index("usage") if "usage" in columns else None
        return "kaggle", columns.index("emotion"), columns.index("pixels"), usage
    if "feature" in columns:
        if "label" in columns:
            return "course-train", columns.index("label"), columns.index("feature"), None
        if "id" in columns:
            return "course-test", None, columns.index("feature"), None
        raise DataError(path, f"missing column 'label' or 'id': expected header {_ACCEPTED_HEADERS}, "
                              f"got {have!r}", line=1)
    raise DataError(path, f"missing pixel column 'pixels' or 'feature': expected header {_ACCEPTED_HEADERS}, "
                          f"got {have!r}", line=1)


def _text(field: bytes) -> str:
    # only the separators the pixel parser knows are stripped: a form feed in a label is not a space
    return field.strip(b" \t\r").strip(b'"').strip(b" \t").decode("utf-8", "replace")


def _load_masks(csv_path: Path, rows: int) -> np.ndarray | None:
    mp = masks_path(csv_path)
    if not mp.exists():
        return None
    want = f"a bool array [{rows},{FER_SIZE},{FER_SIZE}] (one mask per data row of {csv_path.name})"
    try:
        masks = np.load(mp, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(mp, f"cannot read masks ({exc}); expected {want}") from None
    if masks.shape != (rows, FER_SIZE, FER_SIZE) or masks.dtype not in (np.bool_, np.uint8):
        raise DataError(mp, f"expected {want}, got {masks.dtype} {list(masks.shape)}")
    return masks.astype(bool, copy=False)
