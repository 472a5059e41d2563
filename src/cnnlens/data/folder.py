"""Any image folder in the ImageFolder convention: one sub-folder per class.

Two layouts are recognised:

* ``DIR/<class>/<image>``: one pool of images; splits ``train`` and ``all`` are the whole folder
  (make a validation split with :func:`cnnlens.data.split.stratified_split`).
* ``DIR/train/<class>/<image>`` (+ ``val/`` or ``valid/`` or ``validation/``, + ``test/``): used when
  ``DIR`` holds only split folders. Without class names, classes are the sorted union of the class folders
  of every split, so a label means the same class in each split.

Labels: with the model's class names (``classes=``), each folder is matched to a class by name, ignoring
case and a numeric prefix (``03_happy/`` is class ``Happy``), the label is that class's position in the
given list, and the folders may hold only some of the classes. Only without class names are labels the
folders' positions in sorted order, and the ``cnnlens.data`` log says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from cnnlens._checks import check_choice
from cnnlens._types import PathArg
from cnnlens.data._images import (GRAY_MODES, IMAGE_SUFFIXES, check_hw, check_resize, decode_all, header,
                                  log_not_loaded, scan_folder)
from cnnlens.data.errors import DataError, log, raise_or_skip
from cnnlens.data.imageset import ImageSet

#: cnnlens split name -> folder names accepted for it, in order of preference.
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val", "valid", "validation"),
                                            "test": ("test",)}
#: Size used when ``image_size`` is None and the images do not all share one size.
DEFAULT_SIZE = 128
#: Why a file directly in the dataset folder (or a split folder) is not loaded.
LOOSE = "directly in the dataset folder, not in a class folder"

_PREFIX = re.compile(r"^[0-9]+[ _-]+(?=.)")  # "03_", "3-", "12 " before a name (ASCII digits only)
_positional_told: set[str] = set()  # roots whose positional labels were logged (once per process)


def class_key(name: str) -> str:
    """The form in which a folder name and a class name are compared: case-folded, without a numeric
    prefix (``03_``, ``3-``), with runs of spaces, ``_`` and ``-`` read as one space.

    >>> class_key("03_Very_Happy") == class_key("very happy")
    True
    """
    return re.sub(r"[\s_-]+", " ", _PREFIX.sub("", name.strip())).strip().casefold()


def load_folder(root: PathArg, split: str = "train", *, image_size: int | tuple[int, int] | None = None,
                channels: int | None = None, classes: Sequence[str] | None = None, skip_bad_rows: bool = False,
                skipped: list[DataError] | None = None, resize: str = "squash") -> ImageSet:
    """Load an ImageFolder-style directory as an :class:`ImageSet`.

    ``image_size``: side of the square (or ``(height, width)``) every image is brought to, by ``resize``:
    ``"squash"`` resizes it whole, ``"crop"`` resizes its shorter side to fit and cuts out the centre (each
    file from its own full resolution); None keeps the images' own size when they all share one and
    otherwise squashes them to 128. ``channels``: 1 (gray) or 3 (RGB); None = gray when every
    image is single-channel, else RGB. Names are paths relative to ``root`` ("cat/001.jpg").

    ``classes``: the model's class names, index = label. Each class folder is matched to one of them by
    :func:`class_key` (case, a numeric prefix ``NN_`` and ``_``/``-``/space differences ignored); folders
    may cover a subset of the classes, and the returned ``classes`` are the given ones. A folder matching
    no class, or two folders matching one class, raise :class:`DataError` naming them and the valid names.
    None: classes are the folder names in sorted order, labels their positions (logged once, as a warning).

    A class folder without images, a missing split folder, or a file Pillow cannot read raises
    :class:`DataError` naming it. With ``skip_bad_rows=True`` unreadable files are left out instead (their
    errors appended to ``skipped``, their count logged); a folder-level problem is always an error. Files
    that are not loaded at all (an unsupported type such as ``.heic``, images in nested sub-folders, files
    beside the class folders) are counted by reason in one warning on the ``cnnlens.data`` logger.

    >>> pets = load_folder("pets", image_size=64)       # pets/cat/*.jpg, pets/dog/*.jpg
    >>> pets.classes, pets.input_shape
    (('cat', 'dog'), (3, 64, 64))
    >>> load_folder("faces", classes=["Angry", "Happy", "Sad"]).labels.unique().tolist()   # faces/happy/, faces/02_sad/
    [1, 2]
    """
    root = Path(root)
    check_choice(split, (*SPLIT_FOLDERS, "all"), "split")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (gray), 3 (RGB) or None (automatic), got {channels!r}")
    given = None if classes is None else _check_classes(classes)
    size = None if image_size is None else check_hw(image_size)
    check_resize(resize)
    if not root.is_dir():
        raise DataError(root, "no such folder; expected a folder with one sub-folder of images per class")
    split_roots = _split_roots(root)
    if split_roots:
        names = sorted({c.name for d in split_roots.values() for c in _class_dirs(d)})
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
        names = sorted(c.name for c in _class_dirs(root))
        class_roots = [root]
    if not names:
        loose = scan_folder(root)[0]
        raise DataError(root, "no class folders; expected one sub-folder of images per class"
                        + (f" (found {len(loose)} images directly in the folder)" if loose else ""))
    if given is None:
        _tell_positional(root, names)

    paths: list[Path] = []
    labels: list[int] = []
    not_loaded: list[tuple[Path, str]] = []
    for d in class_roots:
        dirs = _class_dirs(d)
        label_of = {c.name: names.index(c.name) for c in dirs} if given is None else _match(dirs, given, root)
        not_loaded += [(p, LOOSE) for p in sorted(d.iterdir()) if not p.name.startswith(".") and not p.is_dir()]
        for c in dirs:
            files, extra = scan_folder(c)
            if not files:
                others = sorted(p.name for p, _ in extra if p.parent == c)[:3]
                found = f" (found {', '.join(others)})" if others else ""
                raise DataError(c, f"class folder {c.name!r} has no images; expected at least one "
                                   f"{'/'.join(IMAGE_SUFFIXES)} file{found}")
            paths += files
            labels += [label_of[c.name]] * len(files)
            not_loaded += extra
    log_not_loaded(root, split, not_loaded)
    classes_out = tuple(names) if given is None else given

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
        hw: tuple[int, int] | None = size
    elif len(sizes) == 1:
        w, h = next(iter(sizes))
        hw = (h, w)
    else:
        hw = (DEFAULT_SIZE, DEFAULT_SIZE)
    todo = [i for i in range(len(paths)) if i not in errors]
    images, decode_errors = decode_all([paths[i] for i in todo], hw, channels, resize=resize if size else "squash")
    errors.update({todo[j]: e for j, e in decode_errors.items()})
    raise_or_skip(root, split, [errors[i] for i in sorted(errors)], skip_bad_rows, skipped, what="files")
    keep = [j for j, i in enumerate(todo) if i not in errors]
    if images is None or not keep:
        raise DataError(root, f"no readable images in split {split!r}")
    kept = [todo[j] for j in keep]
    return ImageSet(
        images=torch.from_numpy(images[keep]),
        labels=torch.tensor([labels[i] for i in kept], dtype=torch.long),
        classes=classes_out,
        names=tuple(paths[i].relative_to(root).as_posix() for i in kept),
    )


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise TypeError(f"classes must be a sequence of non-empty class names, e.g. ['angry', 'happy']; "
                        f"got {classes!r}")
    given = tuple(classes)
    if not given:
        raise ValueError("classes is empty; pass the model's class names in label order, or None")
    seen: dict[str, str] = {}
    for c in given:
        if class_key(c) in seen:
            raise ValueError(f"classes {seen[class_key(c)]!r} and {c!r} are the same name once case and a numeric "
                             "prefix are ignored, so folders cannot be matched to them")
        seen[class_key(c)] = c
    return given


def _match(dirs: Sequence[Path], classes: tuple[str, ...], root: Path) -> dict[str, int]:
    """``{folder name: label}`` by :func:`class_key`; a folder matching no class, or two matching one, raise."""
    index = {class_key(c): i for i, c in enumerate(classes)}
    out: dict[str, int] = {}
    owner: dict[int, Path] = {}
    for d in dirs:
        label = index.get(class_key(d.name))
        if label is None:
            raise DataError(d, f"folder {d.name!r} matches none of the {len(classes)} class names "
                               f"({', '.join(classes)}); rename it to one of them (case and a numeric prefix such "
                               f"as '03_' are ignored) or move it out of {root}")
        if label in owner:
            raise DataError(d, f"folders {owner[label].name!r} and {d.name!r} both match class {classes[label]!r}; "
                               "merge them or rename one")
        owner[label] = d
        out[d.name] = label
    return out


def _tell_positional(root: Path, names: Sequence[str]) -> None:
    key = str(root.resolve())
    if key in _positional_told:
        return
    _positional_told.add(key)
    pairs = ", ".join(f"{i}={n}" for i, n in enumerate(names[:12])) + (", ..." if len(names) > 12 else "")
    log.warning("%s: no class names given, so labels are the class folders' positions in sorted order (%s); "
                "a model trained with another class order needs its class names (classes=, --classes) to match "
                "folders by name", root, pairs)


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
