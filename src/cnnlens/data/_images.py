"""Decoding image files with Pillow for the folder loaders: listing, header checks, decode + resize in threads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlens.data.errors import DataError

#: File endings read as images (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Pillow modes that hold one gray channel.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def header(path: Path) -> tuple[str, tuple[int, int]]:
    """``(mode, (width, height))`` from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise _unreadable(path, exc) from None


def decode_all(paths: Sequence[Path], size: tuple[int, int] | None, channels: int,
               workers: int | None = None) -> tuple[np.ndarray | None, dict[int, DataError]]:
    """Decode ``paths`` to uint8 ``[N,C,H,W]`` (``size`` = (height, width), None = each file's own size, which
    must then be the same for all). Returns the array (unreadable files left as zeros) and ``{index: error}``.

    Pillow releases the GIL while decoding, so a few threads decode in parallel.
    """
    if not paths:
        return None, {}
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _decode(p, size, channels), paths))
    errors = {i: r for i, r in enumerate(results) if isinstance(r, DataError)}
    good = [r for r in results if not isinstance(r, DataError)]
    if not good:
        return None, errors
    h, w = good[0].shape[:2]
    out = np.zeros((len(paths), channels, h, w), dtype=np.uint8)
    for i, r in enumerate(results):
        if not isinstance(r, DataError):
            if r.shape[:2] != (h, w):
                errors[i] = DataError(paths[i], f"image is {r.shape[1]}x{r.shape[0]} but the others are {w}x{h}; "
                                                f"pass image_size (CLI: --image-size) to resize them all")
                continue
            out[i] = r.reshape(h, w, channels).transpose(2, 0, 1)
    return out, errors


def _decode(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray | DataError:
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG":
                # let the JPEG decoder scale down by a power of two first: much faster for large photos
                im.draft("RGB" if channels == 3 else "L", (size[1], size[0]))
            if im.mode.startswith("I;16"):  # 16-bit gray: keep the high byte (Pillow's convert("L") would clip)
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
            im = im.convert("RGB" if channels == 3 else "L")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # any decoding failure is this file's problem, reported with its name
        return _unreadable(path, exc)


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(path, f"cannot read image ({type(exc).__name__}: {exc}); expected an image file "
                           f"({', '.join(IMAGE_SUFFIXES)}) that Pillow can open")


def check_size(image_size: int) -> int:
    """``image_size`` as an int, or a ValueError naming the accepted values."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int (pixels per side), got {image_size!r}")
    return int(image_size)
