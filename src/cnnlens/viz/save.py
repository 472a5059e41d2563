"""Save a figure together with the raw arrays it shows, atomically."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from cnnlens._atomic import atomic_path
from cnnlens._types import PathArg
from cnnlens.viz import scale
from cnnlens.viz.render import to_numpy

#: 120 dpi: a 48x48 face in a 1.7-inch cell is drawn ~4x, sharp on a laptop and small on disk.
DPI = 120


def write_png(fig: Figure, target: PathArg | io.BytesIO, *, dpi: int = DPI) -> None:
    """The one way cnnlens draws a figure to PNG: with Agg whatever pyplot's backend is (no global state
    touched), each map panel's value range in the PNG's text (:mod:`cnnlens.viz.scale`), and atomically
    when ``target`` is a path (a crash never leaves half a PNG)."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    FigureCanvasAgg(fig)
    scales = scale.scales_json(fig)
    metadata = {scale.PNG_KEY: scales} if scales else None
    if isinstance(target, io.BytesIO):
        fig.savefig(target, format="png", dpi=dpi, metadata=metadata)
        return
    with atomic_path(Path(target)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata=metadata)


def png_bytes(image: Figure | np.ndarray, dpi: int = 110) -> bytes:
    """PNG of a matplotlib figure (drawn at ``dpi``) or of a uint8 ``[H,W]``, ``[H,W,3]`` or ``[H,W,4]`` array."""
    buf = io.BytesIO()
    if isinstance(image, Figure):
        write_png(image, buf, dpi=dpi)
        return buf.getvalue()
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"png_bytes needs uint8 [H,W], [H,W,3] or [H,W,4], got {a.dtype} {a.shape}")
    Image.fromarray(a).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_figure(fig: Figure, path: PathArg, arrays: Mapping[str, Any], *, dpi: int = DPI) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and the arrays it shows as ``<stem>.npy`` (one) or ``<stem>.npz``.

    ``path`` may end in ``.png`` or be the bare stem. Every file is written atomically, so a crash
    never leaves half a PNG. A figure without its arrays is refused: the arrays are what a reader
    re-analyses. The value range of each panel of a cnnlens map figure (:mod:`cnnlens.viz.scale`) is
    written into the PNG too, as JSON under the text key ``cnnlens:scales``
    (``PIL.Image.open(png).text["cnnlens:scales"]``). Returns the written paths, PNG first.

    >>> fig = method_grid(images, {"saliency": maps})
    >>> save_figure(fig, out / "grid.png", {"images": images, "saliency": maps})
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    if not arrays:
        raise ValueError("save_figure needs the arrays the figure shows (arrays={'name': array, ...}), got none")
    for name in arrays:
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty strings, got {name!r}")
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() == ".png" else path
    png = stem.with_name(stem.name + ".png")
    data = {name: to_numpy(a) for name, a in arrays.items()}
    for name, a in data.items():
        if a.dtype == object:  # would need pickle to read back; arrays must be plain numbers
            raise TypeError(f"array {name!r} must be numeric, got dtype=object")
    write_png(fig, png, dpi=dpi)
    if len(data) == 1:
        raw = stem.with_name(stem.name + ".npy")
        with atomic_path(raw) as tmp, open(tmp, "wb") as fh:  # a file object: np.save adds no suffix
            np.save(fh, next(iter(data.values())), allow_pickle=False)
    else:
        raw = stem.with_name(stem.name + ".npz")
        with atomic_path(raw) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **data)
    return [png, raw]
