"""The images of a dataset job, read a range at a time: an ImageSet, a ``[N,C,H,W]`` tensor/array or a ``.npy``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlens._types import PathArg
from cnnlens.data.imageset import ImageSet

Source = ImageSet | torch.Tensor | np.ndarray | PathArg


@dataclass
class Images:
    """``read(start, end)`` gives images ``[start, end)`` as they are stored (uint8 0-255 or float 0-1) and their
    labels (-1 unknown); ``names`` one per image. Build it with :func:`images_of`."""

    source: ImageSet | torch.Tensor | np.ndarray | Path
    n: int
    shape: tuple[int, int, int]
    labels: np.ndarray
    names: list[str]
    classes: tuple[str, ...] | None = None

    def read(self, start: int, end: int) -> tuple[torch.Tensor, np.ndarray]:
        s = self.source
        if isinstance(s, ImageSet):
            x = s.images[start:end]
        elif isinstance(s, Path):  # mapped only while read: the pages touched do not stay in memory
            x = torch.from_numpy(np.array(np.load(s, mmap_mode="r")[start:end]))
        elif isinstance(s, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(s[start:end]))
        else:
            x = s[start:end]
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise TypeError(f"images must be uint8 (0-255) or floating point (0-1), got {x.dtype}")
        return x, self.labels[start:end]

    def digest(self, chunk: int = 4096) -> str:
        """sha256 of every image's bytes and label, read ``chunk`` images at a time (the manifest's data hash)."""
        h = hashlib.sha256()
        for start in range(0, self.n, chunk):
            x, lab = self.read(start, min(start + chunk, self.n))
            h.update(np.ascontiguousarray(x.cpu().numpy()).tobytes())
            h.update(np.ascontiguousarray(lab).tobytes())
        return h.hexdigest()

    def channel_mean(self, chunk: int = 4096) -> tuple[float, ...]:
        """Per-channel mean in [0,1] over the whole split, in float64 (one pass, ``chunk`` images at a time)."""
        total = None
        for start in range(0, self.n, chunk):
            x, _ = self.read(start, min(start + chunk, self.n))
            x = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
            part = x.sum(dim=(0, 2, 3))
            total = part if total is None else total + part
        assert total is not None
        return tuple(float(v) for v in total / (self.n * self.shape[1] * self.shape[2]))


def images_of(source: Source, labels: torch.Tensor | np.ndarray | None = None) -> Images:
    """Wrap ``source`` for a job; an ImageSet brings its labels, names and classes, other sources get
    ``labels`` (default unknown, -1) and names ``#0``, ``#1`` ..."""
    if isinstance(source, ImageSet):
        return Images(source, len(source), source.input_shape, source.labels.cpu().numpy().astype(np.int64),
                      list(source.names), tuple(source.classes))
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix != ".npy" or not path.is_file():
            raise ValueError(f"images path must be an existing .npy file of [N,C,H,W] images, got {str(path)!r}")
        shape = tuple(np.load(path, mmap_mode="r").shape)
        source = path
    elif isinstance(source, (torch.Tensor, np.ndarray)):
        shape = tuple(source.shape)
    else:
        raise TypeError("images must be an ImageSet, a [N,C,H,W] tensor or array (uint8 0-255 or float 0-1), or the "
                        f"path of such a .npy file; got {type(source).__name__}")
    if len(shape) != 4 or shape[0] < 1:
        raise ValueError(f"images must have shape [N,C,H,W] with N >= 1, got {shape}")
    n = int(shape[0])
    lab = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if lab.shape != (n,):
        raise ValueError(f"labels must hold one label per image ({n}), got shape {lab.shape}")
    return Images(source, n, tuple(int(v) for v in shape[1:]), lab, [f"#{i}" for i in range(n)])  # type: ignore[arg-type]
