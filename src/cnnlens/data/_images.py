"""Decoding image files with Pillow for the folder loaders: listing, header checks, decode + resize in threads."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlens._checks import check_choice, check_count
from cnnlens.data.errors import DataError, log

#: File endings read as images (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Pillow modes that hold one gray channel.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: Pillow's one-channel modes with more than 8 bits (32-bit int, 32-bit float; 16-bit "I;16..." by prefix),
#: brought to 8 bits by :func:`to_uint8`.
WIDE_MODES = frozenset({"I", "F"})
#: Why a file below a class folder was not loaded (the other reasons are made by :func:`scan_folder`).
NESTED = "in a sub-folder of a class folder (only files directly in a class folder are loaded; move them up)"
#: Photo formats people have that Pillow does not read without a plugin.
_UNSUPPORTED_PHOTOS = (".heic", ".heif", ".jxl", ".dng", ".cr2", ".nef", ".arw")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted by name."""
    return scan_folder(folder)[0]


def scan_folder(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(images, not_loaded)``: the image files directly in ``folder`` sorted by name, and every other
    non-hidden file found in it or below it, with the reason it is not loaded (an unsupported type, or
    inside a nested sub-folder). Hidden files (``.DS_Store``, ``._x.jpg``) are neither."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(folder, f"cannot list the folder ({type(exc).__name__}: {exc}); "
                                "expected a readable folder") from None
    images: list[Path] = []
    not_loaded: list[tuple[Path, str]] = []
    for p in entries:
        if p.is_dir():
            for top, dirs, files in os.walk(p):  # does not follow links to folders: no loops
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                not_loaded += [(Path(top) / f, NESTED) for f in sorted(files) if not f.startswith(".")]
        elif p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            images.append(p)
        else:
            not_loaded.append((p, _unsupported(p)))
    return images, not_loaded


def _unsupported(path: Path) -> str:
    suffix = path.suffix.lower()
    if not path.is_file():
        return "not a regular file (a broken link?)"
    if suffix in _UNSUPPORTED_PHOTOS:
        return f"{suffix} photos are not read (Pillow needs a plugin for them); convert them to .jpg or .png"
    return f"not an image type cnnlens reads ({suffix or 'no suffix'}; it reads {', '.join(IMAGE_SUFFIXES)})"


def log_not_loaded(root: Path, split: str, not_loaded: Sequence[tuple[Path, str]]) -> None:
    """One warning on the ``cnnlens.data`` logger counting the files that were found but not loaded, by
    reason, with an example of each, so that no file is left out silently."""
    if not not_loaded:
        return
    by_reason = Counter(reason for _, reason in not_loaded)
    example = {}
    for p, reason in not_loaded:
        example.setdefault(reason, p)
    parts = []
    for reason, n in by_reason.most_common():
        p = example[reason]
        shown = p.relative_to(root).as_posix() if p.is_relative_to(root) else p
        parts.append(f"{n} {'file' if n == 1 else 'files'} {reason} (e.g. {shown})")
    total = len(not_loaded)
    log.warning("%s: %d %s of split %r not loaded: %s", root, total, "file" if total == 1 else "files", split,
                "; ".join(parts))


def header(path: Path) -> tuple[str, tuple[int, int]]:
    """``(mode, (width, height))`` from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise _unreadable(path, exc) from None


#: How an image of another shape is brought to the requested size: ``squash`` resizes it whole (the aspect
#: ratio may change); ``crop`` resizes the shorter side to fit and cuts out the centre.
RESIZE_POLICIES = ("squash", "crop")


def check_resize(resize: str) -> str:
    """``resize`` if it names a policy of :data:`RESIZE_POLICIES`, else a ValueError naming them."""
    check_choice(resize, RESIZE_POLICIES, "resize")
    return resize


def covering_size(h: int, w: int, target: tuple[int, int]) -> tuple[int, int]:
    """The smallest ``(H, W)`` with ``h x w``'s aspect ratio that covers ``target``: what ``crop`` resizes to."""
    scale = max(target[0] / h, target[1] / w)
    return max(target[0], math.ceil(h * scale - 1e-9)), max(target[1], math.ceil(w * scale - 1e-9))


def decode_all(paths: Sequence[Path], size: tuple[int, int] | None, channels: int,
               workers: int | None = None, resize: str = "squash") -> tuple[np.ndarray | None, dict[int, DataError]]:
    """Decode ``paths`` to uint8 ``[N,C,H,W]`` (``size`` = (height, width), None = each file's own size, which
    must then be the same for all; ``resize``: how a file of another shape gets there, see
    :data:`RESIZE_POLICIES`). Returns the array (unreadable files left as zeros) and ``{index: error}``.

    Pillow releases the GIL while decoding, so a few threads decode in parallel.
    """
    if not paths:
        return None, {}
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _decode(p, size, channels, check_resize(resize)), paths))
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


def _decode(path: Path, size: tuple[int, int] | None, channels: int, resize: str = "squash") -> np.ndarray | DataError:
    try:
        with Image.open(path) as im:
            # crop: resize to the size that covers the target with the file's aspect ratio, then cut the centre
            scaled = size if size is None or resize == "squash" else covering_size(im.size[1], im.size[0], size)
            if scaled is not None and im.format == "JPEG":
                # let the JPEG decoder scale down by a power of two first: much faster for large photos
                im.draft("RGB" if channels == 3 else "L", (scaled[1], scaled[0]))
            if im.mode in WIDE_MODES or im.mode.startswith("I;"):
                im = Image.fromarray(to_uint8(np.asarray(im)), "L")
            im = im.convert("RGB" if channels == 3 else "L")
            if scaled is not None and im.size != (scaled[1], scaled[0]):
                im = im.resize((scaled[1], scaled[0]), Image.Resampling.BILINEAR)
            if size is not None and scaled != size:
                top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
                im = im.crop((left, top, left + size[1], top + size[0]))
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # any decoding failure is this file's problem, reported with its name
        return _unreadable(path, exc)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Gray pixels of any depth (16/32-bit integer or 32-bit float TIFFs) as uint8, by one stated rule:

    * floats in ``[0, 1]`` are intensities: ``round(255 v)``; other floats are scaled from the image's own
      range ``[min, max]`` to ``[0, 255]``. NaN or infinite values are an error (a ValueError).
    * integers in ``[0, 255]`` are 8-bit data in a wider container and kept as they are; integers in
      ``[0, 65535]`` are 16-bit data, scaled by their declared range: ``round(255 v / 65535)``; others
      (negative, or beyond 16 bits) are scaled from the image's own range ``[min, max]``.

    A constant image outside these ranges (nothing to scale) is clipped to ``[0, 255]``. Pillow's
    ``convert("L")`` would clip every one of these (a 16-bit or 32-bit image saturates white, a float image in
    ``[0, 1]`` turns black).

    >>> to_uint8(np.array([[0.0, 0.5, 1.0]], np.float32)).tolist()
    [[0, 128, 255]]
    >>> to_uint8(np.array([[0, 4095, 65535]], np.uint16)).tolist()
    [[0, 16, 255]]
    """
    v = np.asarray(values)
    if v.dtype == np.uint8:
        return v
    if v.size == 0:
        return v.astype(np.uint8)
    if v.dtype.kind == "f":
        v = v.astype(np.float64)
        if not np.isfinite(v).all():
            raise ValueError(f"{int((~np.isfinite(v)).sum())} pixels are NaN or infinite")
        lo, hi = float(v.min()), float(v.max())
        if lo >= 0.0 and hi <= 1.0:
            out = v * 255.0
        else:
            out = _stretch(v, lo, hi)
    elif v.dtype.kind in "iub":
        v = v.astype(np.int64)
        lo, hi = int(v.min()), int(v.max())
        if lo >= 0 and hi <= 255:
            out = v.astype(np.float64)
        elif lo >= 0 and hi <= 65535:
            out = v * (255.0 / 65535.0)
        else:
            out = _stretch(v.astype(np.float64), lo, hi)
    else:
        raise ValueError(f"pixels of type {v.dtype} cannot be read as gray levels")
    return np.rint(out).clip(0, 255).astype(np.uint8)


def _stretch(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (v - lo) * (255.0 / (hi - lo)) if hi > lo else v


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(path, f"cannot read image ({type(exc).__name__}: {exc}); expected an image file "
                           f"({', '.join(IMAGE_SUFFIXES)}) that Pillow can open")


def check_size(image_size: int) -> int:
    """``image_size`` as an int, or a ValueError naming the accepted values."""
    check_count(image_size, "image_size", hint=" (pixels per side)", numpy=True)
    return int(image_size)


def check_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``image_size`` (a side, or ``(height, width)``) as ``(height, width)``, or a ValueError."""
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
        return check_size(image_size[0]), check_size(image_size[1])
    side = check_size(image_size)
    return side, side
