"""The files a report writes beside its page, and the data URIs the page embeds for its images.

Every image shown in the page is both embedded (so ``index.html`` opens alone, from disk, offline) and
written under ``figures/`` (so a person can reuse it). Tables go to ``data/`` as CSV and JSON.
The folder is the temporary one of :func:`cnnlens._atomic.output_dir`, so plain writes are safe here:
the whole folder appears only when the report is complete.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlens.report.images import data_uri, png_bytes

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Assets:
    """Writes the report's side files under ``root`` and remembers them for the page's file list."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files: list[str] = []

    def _path(self, folder: str, name: str) -> Path:
        # names are built by the report from indices and method ids, never from user strings; refuse
        # anything else so a class name can never steer a write outside the report folder
        if not _SAFE.match(name):
            raise ValueError(f"asset name {name!r} must match {_SAFE.pattern}")
        path = self.root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rel = f"{folder}/{name}"
        if rel in self.files:
            raise ValueError(f"asset {rel} written twice; names must be unique")
        self.files.append(rel)
        return path

    def png(self, name: str, array: np.ndarray) -> str:
        """Write ``figures/<name>.png`` from a uint8 array and return its data URI."""
        data = png_bytes(array)
        self._path("figures", f"{name}.png").write_bytes(data)
        return data_uri(data)

    def copy_png(self, name: str, source: Path) -> str:
        """Copy an existing PNG (a run's ``curves.png``) to ``figures/<name>.png``; return its data URI."""
        data = Path(source).read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"{source} is not a PNG file")
        self._path("figures", f"{name}.png").write_bytes(data)
        return data_uri(data)

    def copy_file(self, folder: str, name: str, source: Path) -> str:
        """Copy any file beside the page; return its relative path."""
        shutil.copyfile(source, self._path(folder, name))
        return f"{folder}/{name}"

    def csv(self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
        """Write ``data/<name>.csv``; return its relative path."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        self._path("data", f"{name}.csv").write_text(buf.getvalue(), encoding="utf-8")
        return f"data/{name}.csv"

    def json(self, name: str, obj: Any) -> str:
        """Write ``data/<name>.json``; return its relative path."""
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)
        self._path("data", f"{name}.json").write_text(text + "\n", encoding="utf-8")
        return f"data/{name}.json"

    def npy(self, name: str, array: np.ndarray) -> str:
        """Write ``arrays/<name>.npy`` (the raw maps behind the figures); return its relative path."""
        path = self._path("arrays", f"{name}.npy")
        with open(path, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)
        return f"arrays/{name}.npy"
