"""Any image folder in the ImageFolder convention: one sub-folder per class, class names sorted.

Two layouts are recognised:

* ``DIR/<class>/<image>``: one pool of images; splits ``train`` and ``all`` are the whole folder
  (make a validation split with :func:`cnnlens.data.split.stratified_split`).
* ``DIR/train/<class>/<image>`` (+ ``val/`` or ``valid/`` or ``validation/``, + ``test/``): used when
  ``DIR`` holds only split folders. Classes are the sorted union of the class folders of every split, so a
  label means the same class in each split.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlens._types import PathArg
from cnnlens.data._images import GRAY_MODES, IMAGE_SUFFIXES, check_size, decode_all, header, list_images
from cnnlens.data.errors import DataError, raise_or_skip
from cnnlens.data.imageset import ImageSet

#: cnnlens split name -> folder names accepted for it, in order of preference.
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val", "valid", "validation"),
                                            "test": ("test",)}
#: Size used when ``image_size`` is None and the images do not all share one size.
DEFAULT_SIZE = 128


def load_folder(root: PathArg, split: str = "train", *, image_size: int | None = None, channels: int | None = None,
                skip_bad_rows: bool = False, skipped: list[DataError] | None = None) -> ImageSet:
    """Load an ImageFolder-style directory as an :class:`ImageSet`.

    ``image_size``: side of the square every image is resized to; None keeps the images' own size when they
    all share one and otherwise resizes to 128. ``channels``: 1 (gray) or 3 (RGB); None = gray when every
    image is single-channel, else RGB. Names are paths relative to ``root`` ("cat/001.jpg").

    A class folder without images, a missing split folder, or a file Pillow cannot read raises
    :class:`DataError` naming it. With ``skip_bad_rows=True`` unreadable files are left out instead (their
    errors appended to ``skipped``, their count logged); a folder-level problem is always an error.

    >>> pets = load_folder("pets", image_size=64)       # pets/cat/*.jpg, pets/dog/*.jpg
    >>> pets.classes, pets.input_shape
    (('cat', 'dog'), (3, 64, 64))
    """
    root = Path(root)
    if split not in (*SPLIT_FOLDERS, "all"):
        raise ValueError(f"split must be one of {', '.join((*SPLIT_FOLDERS, 'all'))}; got {split!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (gray), 3 (RGB) or None (automatic), got {channels!r}")
    size = None if image_size is None else check_size(image_size)
    if not root.is_dir():
        raise DataError(root, "no such folder; expected a folder with one sub-folder of images per class")
    split_roots = _split_roots(root)
    if split_roots:
        classes = sorted({c.name for d in split_roots.values() for c in _class_dirs(d)})
        wanted = list(split_roots) if split == "all" else [split]
        for s in wanted:
            if s not in split_roots:
                raise DataError(root / SPLIT_FOLDERS[s][0], f"missing split folder for {s!r}: expected one of "
                                f"{', '.join(f + '/' for f in SPLIT_FOLDERS[s])} in {root} (found "
                                f"{', '.join(d.name + '/' for d in split_roots.values())})")
        class_roots = [split_roots[s] for s in wanted]
    else:
        if split in ("val", "test"):
            raise DataError(root / SPLIT_FOLDERS[split][0],
                            f"missing split folder for {split!r}: {root} is a single ImageFolder (one sub-folder per "
                            f"class); use split 'train' or 'all' and make a validation split with stratified_split")
        classes = sorted(c.name for c in _class_dirs(root))
        class_roots = [root]
    if not classes:
        loose = list_images(root)
        raise DataError(root, "no class folders; expected one sub-folder of images per class"
                        + (f" (found {len(loose)} images directly in the folder)" if loose else ""))

    paths: list[Path] = []
    labels: list[int] = []
    for d in class_roots:
        for c in _class_dirs(d):
            files = list_images(c)
            if not files:
                others = sorted(p.name for p in c.iterdir() if not p.name.startswith("."))[:3]
                found = f" (found {', '.join(others)})" if others else ""
                raise DataError(c, f"class folder {c.name!r} has no images; expected at least one "
                                   f"{'/'.join(IMAGE_SUFFIXES)} file{found}")
            paths += files
            labels += [classes.index(c.name)] * len(files)

    errors: dict[int, DataError] = {}
    modes: list[str] = []
    sizes: set[tuple[int, int]] = set()
    for i, p in enumerate(paths):  # headers only: cheap, and decides channels and size before decoding
        try:
            mode, wh = header(p)
        except DataError as exc:
            errors[i] = exc
            continue
        modes.append(mode)
        sizes.add(wh)
    if channels is None:
        channels = 1 if modes and all(m in GRAY_MODES for m in modes) else 3
    if size is not None:
        hw: tuple[int, int] | None = (size, size)
    elif len(sizes) == 1:
        w, h = next(iter(sizes))
        hw = (h, w)
    else:
        hw = (DEFAULT_SIZE, DEFAULT_SIZE)
    todo = [i for i in range(len(paths)) if i not in errors]
    images, decode_errors = decode_all([paths[i] for i in todo], hw, channels)
    errors.update({todo[j]: e for j, e in decode_errors.items()})
    raise_or_skip(root, split, [errors[i] for i in sorted(errors)], skip_bad_rows, skipped, what="files")
    keep = [j for j, i in enumerate(todo) if i not in errors]
    if images is None or not keep:
        raise DataError(root, f"no readable images in split {split!r}")
    kept = [todo[j] for j in keep]
    return ImageSet(
        images=torch.from_numpy(images[keep]),
        labels=torch.tensor([labels[i] for i in kept], dtype=torch.long),
        classes=tuple(classes),
        names=tuple(paths[i].relative_to(root).as_posix() for i in kept),
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_roots(root: Path) -> dict[str, Path]:
    """``{split: folder}`` when ``root`` holds only split folders (train/, val/, test/), else ``{}``."""
    subdirs = _class_dirs(root)
    known = {name: s for s, names in SPLIT_FOLDERS.items() for name in names}
    if not subdirs or any(d.name not in known for d in subdirs):
        return {}
    if not all(_class_dirs(d) for d in subdirs):  # a class that happens to be called "test" holds images
        return {}
    out: dict[str, Path] = {}
    for d in subdirs:
        out.setdefault(known[d.name], d)
    return out
