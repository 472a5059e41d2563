"""Ground-truth masks for any dataset: a folder of PNG files matched to the images by name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from cnnlens._types import PathArg

#: Gray level from which a mask pixel counts as inside (tolerates anti-aliased edges).
THRESHOLD = 128


def mask_candidates(folder: Path, name: str) -> list[Path]:
    """Where the mask of the image called ``name`` may be, in the order they are tried.

    ``"training/3_41.jpg"`` -> ``training/3_41.png``, then ``3_41.png``; a CSV row ``"train.csv:12"``
    -> ``train.csv_12.png`` (``:`` cannot be in a file name on every system).
    """
    rel = PurePosixPath(name.replace("\\", "/"))
    flat = name.replace(":", "_").replace("/", "_") + ".png"
    found = [folder / rel.with_suffix(".png"), folder / (rel.stem + ".png"), folder / flat]
    return list(dict.fromkeys(found))


def load_mask_folder(folder: PathArg, names: Sequence[str], size: tuple[int, int]) -> torch.Tensor:
    """Bool masks ``[N,H,W]`` for the images ``names`` from PNG files in ``folder``.

    Each mask is found by :func:`mask_candidates`; a pixel is inside where its gray level is >= 128.
    A missing file or a mask of another size than ``size`` (H, W) raises a ValueError naming the image
    and the file. Masks are not resized: a resized mask would no longer say which pixels decide.

    >>> masks = load_mask_folder("masks/", run.dataset("val").names, (48, 48))
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"mask folder {folder} does not exist or is not a folder")
    out = np.zeros((len(names), *size), dtype=bool)
    for i, name in enumerate(names):
        tried = mask_candidates(folder, name)
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            options = ", ".join(str(p.relative_to(folder)) for p in tried)
            raise ValueError(f"no mask for image {i} ({name!r}) in {folder}; tried {options}")
        try:
            with Image.open(path) as im:
                gray = np.asarray(im.convert("L"))
        except OSError as exc:
            raise ValueError(f"mask {path} (image {name!r}) is not a readable image: {exc}") from exc
        if gray.shape != tuple(size):
            raise ValueError(f"mask {path} (image {name!r}) is {gray.shape[1]}x{gray.shape[0]} (WxH) "
                             f"but the image is {size[1]}x{size[0]}; masks must have the image's size")
        out[i] = gray >= THRESHOLD
    return torch.from_numpy(out)
