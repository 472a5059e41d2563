"""Fuzzing the FER and folder loaders with Hypothesis: a valid file, mutated (bytes flipped, cut, inserted,
control bytes, other line endings, odd labels), either loads or raises ``DataError`` naming the file (and, for a
row, its line); never any other exception, never a label read from something that is not plain digits.

CI runs a bounded budget (``max_examples`` 60 per test, a few seconds in all); ``make fuzz`` runs a longer one
through ``CNNLENS_FUZZ_EXAMPLES``. Failing examples are printed by Hypothesis (no example database is written).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlens.data import DataError
from cnnlens.data.fer import FER_CLASSES, load_fer
from cnnlens.data.folder import load_folder

EXAMPLES = int(os.environ.get("CNNLENS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

P = 48 * 48
#: bytes people's files really contain where they should not: NUL, VT, FF, separators of other systems,
#: a BOM, NEL, an Arabic-Indic digit, a non-breaking space, quotes and commas
ODD_BYTES = [b"\x00", b"\x0b", b"\x0c", b"\x1c", b"\x1e", b"\x7f", b"\r", b"\n", b"\r\n", b"\t", b'"', b",", b"-",
             b"+", b"_", b".", b"\xef\xbb\xbf", b"\xc2\x85", "\u0663".encode(), "\u00a0".encode(), b"\xff\xfe"]
ODD_LABELS = ["0_3", "+3", "\u0663", "\uff13", "-1", "3.0", " 3 ", '"3"', "", "03", "7", "99999999999999999999",
              "0x3", "3\x0c", "\u00b3", "1e1", "3 3"]
# what the FER loader reads as a label: ASCII digits with spaces, tabs, CRs and quotes around them
CANONICAL_LABEL = re.compile(r'[ \t\r]*"?[ \t]*0*([0-6])[ \t]*"?[ \t\r]*')

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from(ODD_BYTES)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=6)),
)


def mutate(raw: bytes, ops: list[tuple]) -> bytes:
    for op in ops:
        if not raw:
            break
        pos = op[1] % (len(raw) + 1)
        if op[0] == "flip" and pos < len(raw):
            raw = raw[:pos] + bytes([op[2]]) + raw[pos + 1:]
        elif op[0] == "cut":
            raw = raw[:pos]
        elif op[0] == "delete":
            raw = raw[:pos] + raw[pos + op[2]:]
        elif op[0] == "insert":
            raw = raw[:pos] + op[2] + raw[pos:]
    return raw


def _check_error(err: DataError, path: Path, n_lines: int) -> None:
    assert err.file == str(path) or err.file.startswith(str(path.parent)), err
    assert str(err).startswith(err.file)
    if err.line is not None:
        assert 1 <= err.line <= n_lines + 1, err


# --- FER CSV files ------------------------------------------------------------------------------------------

LAYOUTS = {"kaggle": "emotion,pixels,Usage", "course-train": "label,feature", "course-test": "id,feature"}


@st.composite
def fer_files(draw: st.DrawFn) -> tuple[bytes, str, list[tuple[int, str]]]:
    """(file bytes, layout, [(line, label text)] of rows whose label was replaced by an odd one)."""
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    pixels = rng.integers(0, 256, (n, P))
    usages = ["Training", "PublicTest", "PrivateTest"]
    rows, odd = [LAYOUTS[layout]], []
    for k in range(n):
        label = str(k % 7)
        if layout != "course-test" and draw(st.booleans()):
            label = draw(st.sampled_from(ODD_LABELS))
            odd.append((k + 2, label))
        field = " ".join(map(str, pixels[k]))
        rows.append(f"{label},{field},{usages[k % 3]}" if layout == "kaggle" else f"{label},{field}")
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return (newline.join(rows) + newline).encode("utf-8"), layout, odd


@FUZZ
@given(file=fer_files(), ops=st.lists(mutation, max_size=4), split=st.sampled_from(["train", "val", "test", "all"]),
       skip=st.booleans())
def test_fer_loader_loads_or_names_file_and_line(file, ops, split, skip) -> None:
    original, layout, odd = file
    raw = mutate(original, ops)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "faces.csv"
        path.write_bytes(raw)
        skipped: list[DataError] = []
        try:
            faces = load_fer(path, split, skip_bad_rows=skip, skipped=skipped)
        except DataError as err:
            _check_error(err, path, raw.count(b"\n") + raw.count(b"\r"))
            return
        n = len(faces)
        assert faces.images.dtype == torch.uint8 and faces.images.shape == (n, 1, 48, 48)
        assert faces.labels.dtype == torch.int64 and faces.classes == FER_CLASSES and len(faces.names) == n
        assert bool(((faces.labels >= -1) & (faces.labels < len(FER_CLASSES))).all())
        assert all(name.startswith("faces.csv:") for name in faces.names)
        for err in skipped:
            _check_error(err, path, raw.count(b"\n") + raw.count(b"\r"))
        if not ops:  # the file is as written: an odd label never loads, not even as a number it resembles
            lines = {int(name.split(":")[1]): int(lab) for name, lab in zip(faces.names, faces.labels.tolist())}
            for line, text in odd:
                if not CANONICAL_LABEL.fullmatch(text):
                    assert line not in lines, (text, lines)
                else:
                    assert lines.get(line, int(CANONICAL_LABEL.fullmatch(text).group(1))) == \
                        int(CANONICAL_LABEL.fullmatch(text).group(1))


# --- image folders --------------------------------------------------------------------------------------------

FORMATS = ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"]
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif", "WEBP": ".webp"}
FOLDER_NAMES = ["happy", "Happy", "03_happy", "3-HAPPY", "sad", "04_Sad", "smiling", "happy ", "٣_happy", "_sad"]


def _image_bytes(fmt: str, seed: int, mode: str) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "F":
        im = Image.fromarray(rng.random((6, 7)).astype(np.float32))
    elif mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (6, 7)).astype(np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (6, 7, 3) if mode == "RGB" else (6, 7), dtype=np.uint8), mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(["L", "RGB"] + (["F", "I;16"] if fmt == "TIFF" else [])))
    raw = _image_bytes(fmt, draw(st.integers(0, 1000)), mode)
    if draw(st.booleans()):
        raw = mutate(raw, draw(st.lists(mutation, min_size=1, max_size=3)))
    return SUFFIX[fmt], raw


@FUZZ
@given(folders=st.lists(st.sampled_from(FOLDER_NAMES), min_size=1, max_size=3, unique=True),
       files=st.lists(image_files(), min_size=1, max_size=4),
       extra=st.lists(st.sampled_from(["a.heic", "notes.txt", "nested/x.png", ".hidden.png"]), max_size=2),
       with_classes=st.booleans(), image_size=st.sampled_from([None, 5]), skip=st.booleans())
def test_folder_loader_loads_or_names_the_file(folders, files, extra, with_classes, image_size, skip) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "d"
        for k, (suffix, raw) in enumerate(files):
            target = root / folders[k % len(folders)] / f"{k}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
        for name in extra:
            target = root / folders[0] / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"\x00\x00\x00\x18ftypheic")
        classes = ("Angry", "Happy", "Sad") if with_classes else None
        try:
            data = load_folder(root, classes=classes, image_size=image_size, skip_bad_rows=skip)
        except DataError as err:
            assert err.file == str(root) or err.file.startswith(str(root) + os.sep), err
            assert str(err).startswith(err.file)
            return
        except TypeError as err:  # only the class list itself can be of the wrong type, and it is not
            pytest.fail(f"unexpected TypeError: {err}")
        n = len(data)
        assert n >= 1 and data.images.dtype == torch.uint8 and data.images.shape[:2] in ((n, 1), (n, 3))
        if image_size is not None:
            assert data.images.shape[2:] == (image_size, image_size)
        if classes is not None:
            assert data.classes == classes
            for name, label in zip(data.names, data.labels.tolist()):
                folder = name.split("/")[0].strip().lower().lstrip("0123456789_-")
                assert classes[label].lower() == folder, (name, label)
        assert data.float_images().dtype == torch.float32
