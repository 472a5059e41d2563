"""Datasets: every loader returns an :class:`ImageSet`; a dataset is named by a spec string.

Specs: ``synth:DIR`` (written by ``cnnlens data synth``), ``fer:FILE.csv`` (either FER2013 layout),
``food11:DIR`` (``training/``, ``validation/``, ``evaluation/``), ``folder:DIR`` (ImageFolder).

>>> faces = load_dataset("synth:data/faces", "train")
>>> faces.images.shape, faces.masks is not None
(torch.Size([3150, 1, 48, 48]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cnnlens._checks import check_choice
from cnnlens.data._images import check_hw
from cnnlens.data.errors import DataError
from cnnlens.data.fer import FER_CLASSES, load_fer
from cnnlens.data.folder import load_folder
from cnnlens.data.food11 import FOOD11_CLASSES, load_food11
from cnnlens.data.imageset import ImageSet
from cnnlens.data.split import stratified_split
from cnnlens.data.synth import FACES_CSV, make_faces, write_faces

__all__ = ["DATASET_KINDS", "DataError", "FER_CLASSES", "FOOD11_CLASSES", "ImageSet", "load_dataset", "make_faces",
           "parse_spec", "stratified_split", "write_faces"]

#: Dataset kinds accepted in a spec, with the form of their argument.
DATASET_KINDS: dict[str, str] = {"synth": "synth:DIR", "fer": "fer:FILE.csv", "food11": "food11:DIR",
                                 "folder": "folder:DIR"}
#: Split names every loader understands (``all`` = every image the source has).
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")


def parse_spec(spec: str) -> tuple[str, Path]:
    """Split a dataset spec into ``(kind, path)``; an unknown kind is a ValueError listing the accepted forms.

    >>> parse_spec("fer:data/train.csv")
    ('fer', PosixPath('data/train.csv'))
    """
    forms = ", ".join(DATASET_KINDS.values())
    if not isinstance(spec, str):
        raise TypeError(f"dataset spec must be a string like {forms}; got {type(spec).__name__}")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset spec {spec!r}: expected one of {forms}")
    if not rest:
        raise ValueError(f"dataset spec {spec!r} names no path: expected {DATASET_KINDS[kind]}")
    return kind, Path(rest)


def load_dataset(spec: str, split: str | None = None, *, image_size: int | tuple[int, int] | None = None,
                 skip_bad_rows: bool = False, channels: int | None = None, skipped: list[DataError] | None = None,
                 classes: Sequence[str] | None = None, resize: str = "squash") -> ImageSet:
    """Load ``split`` (``train``, ``val``, ``test`` or ``all``) of the dataset named by ``spec``.

    ``split=None``: the dataset's own default, ``train``, except for a file that holds only a test split
    (FER's unlabelled ``id,feature`` file, whose labels are -1), which gives that split.

    ``classes``: the class names of the model the data is meant for, index = label. A ``folder:`` dataset
    matches its sub-folders to them by name (case and a numeric prefix such as ``03_`` ignored; a subset of
    the classes is fine; a folder matching none is a :class:`DataError`) and returns these classes; without
    them its labels are the folders' sorted positions, and the log says so. Other kinds have fixed class
    names and ignore it (the caller compares them with its own).

    ``image_size``: side of the square (or ``(height, width)``) images are brought to (None = the dataset's
    own: 48 for FER and synth, 128 for Food-11, a folder's common size); photos (``food11:``, ``folder:``)
    get there by ``resize``: ``"squash"`` (resized whole) or ``"crop"`` (shorter side resized, centre cut
    out), each from its own full resolution. ``channels``: 1 or 3 to convert (None = the dataset's own:
    gray for FER and synth, RGB for Food-11, automatic for a folder).

    Bad rows and unreadable files raise :class:`DataError` naming the file, the line (or file name) and
    what was expected. ``skip_bad_rows=True`` leaves them out instead; nothing vanishes silently: each
    skipped row's :class:`DataError` is appended to ``skipped`` when a list is given (the caller logs the
    count), and the count is always logged as a warning on the ``cnnlens.data`` logger. Folder-level
    problems (missing column, empty file, missing split folder, empty class folder) always raise.

    >>> skipped = []
    >>> faces = load_dataset("fer:fer2013.csv", "train", skip_bad_rows=True, skipped=skipped)
    >>> len(skipped), str(skipped[0]) if skipped else None
    (1, 'fer2013.csv line 12: expected 2304 pixel values, got 2303')
    """
    kind, path = parse_spec(spec)
    if split is None and kind not in ("fer", "synth"):
        split = "train"
    if split is not None:
        check_choice(split, SPLITS, "split")
    if image_size is not None:
        image_size = check_hw(image_size)
    if kind == "food11":
        return _convert(load_food11(path, split, image_size=image_size, skip_bad_rows=skip_bad_rows, skipped=skipped,
                                    resize=resize), None, channels)
    if kind == "folder":
        return load_folder(path, split, image_size=image_size, channels=channels, classes=classes,
                           skip_bad_rows=skip_bad_rows, skipped=skipped, resize=resize)
    if kind == "synth":
        csv = path if path.is_file() else path / FACES_CSV
        if not csv.is_file():
            raise DataError(path, f"no {FACES_CSV}; expected a folder written by `cnnlens data synth --out {path}`")
        path = csv
    return _convert(load_fer(path, split, skip_bad_rows=skip_bad_rows, skipped=skipped), image_size, channels)


def _convert(images: ImageSet, image_size: tuple[int, int] | None, channels: int | None) -> ImageSet:
    if channels is not None:
        images = images.with_channels(channels)
    return images if image_size is None else images.resized(image_size)
