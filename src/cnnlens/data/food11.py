"""Food-11: folders ``training/``, ``validation/``, ``evaluation/`` of ``<label>_<index>.jpg``.

Singla, Yuan and Ebrahimi, "Food/Non-food image classification and food categorization using pre-trained
GoogLeNet model" (MADiMa 2016). 16,643 photos in 11 classes; images are resized to a square of
``image_size`` pixels (default 128, as in the course that used it) and kept RGB.

Files in ``evaluation/`` may be unlabelled (``0001.jpg``): their label is -1.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cnnlens._checks import check_choice
from cnnlens._types import PathArg
from cnnlens.data._images import IMAGE_SUFFIXES, check_hw, check_resize, decode_all, log_not_loaded, scan_folder
from cnnlens.data.errors import DataError, raise_or_skip
from cnnlens.data.imageset import ImageSet

#: Food-11 class names, index = label.
FOOD11_CLASSES: tuple[str, ...] = ("Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
                                   "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit")
#: cnnlens split name -> Food-11 folder.
FOOD11_FOLDERS: dict[str, str] = {"train": "training", "val": "validation", "test": "evaluation"}
#: Default side of the square the photos are resized to.
FOOD11_SIZE = 128

# ASCII digits only: "+3_1", "٣_1" (Arabic-Indic) or "3_1_2" are misnamed files, never label 3
_LABELLED = re.compile(r"([0-9]+)_([0-9]+)")
_UNLABELLED = re.compile(r"[0-9]+")


def load_food11(root: PathArg, split: str = "train", *, image_size: int | tuple[int, int] | None = None,
                skip_bad_rows: bool = False, skipped: list[DataError] | None = None,
                resize: str = "squash") -> ImageSet:
    """Load one split of Food-11 as an RGB :class:`ImageSet` of ``image_size`` x ``image_size`` images
    (or ``(height, width)``), each photo brought there by ``resize`` (``"squash"`` or ``"crop"``, see
    :func:`cnnlens.data.folder.load_folder`).

    Splits: ``train`` = ``training/``, ``val`` = ``validation/``, ``test`` = ``evaluation/``, ``all`` = the three.
    Names are ``"training/3_41.jpg"``. A misnamed or unreadable file raises :class:`DataError` naming it;
    with ``skip_bad_rows=True`` it is left out, its error appended to ``skipped`` and the count logged.

    >>> food = load_food11("food-11", "val", image_size=64)
    >>> food.images.shape[1:]
    torch.Size([3, 64, 64])
    """
    root = Path(root)
    size = check_hw(FOOD11_SIZE if image_size is None else image_size)
    check_resize(resize)
    check_choice(split, (*FOOD11_FOLDERS, "all"), "split")
    if not root.is_dir():
        raise DataError(root, "no such folder; expected a Food-11 folder with training/, validation/, evaluation/")
    folders = list(FOOD11_FOLDERS.values()) if split == "all" else [FOOD11_FOLDERS[split]]
    paths: list[Path] = []
    labels: list[int] = []
    errors: dict[int, DataError] = {}
    not_loaded: list[tuple[Path, str]] = []
    nclass = len(FOOD11_CLASSES)
    for folder in folders:
        d = root / folder
        if not d.is_dir():
            raise DataError(d, f"missing split folder {folder}/; expected {root}/ to hold "
                               f"{', '.join(f + '/' for f in FOOD11_FOLDERS.values())}")
        files, extra = scan_folder(d)
        not_loaded += extra
        if not files:
            raise DataError(d, f"no images; expected files named <label>_<index>.jpg ({', '.join(IMAGE_SUFFIXES)})")
        keyed = []
        for p in files:
            m = _LABELLED.fullmatch(p.stem)
            if m:
                keyed.append(((0, int(m.group(1)), int(m.group(2))), p, int(m.group(1))))
            elif folder == "evaluation" and _UNLABELLED.fullmatch(p.stem):
                keyed.append(((1, int(p.stem), 0), p, -1))
            else:
                keyed.append(((2, 0, 0), p, None))
        for _key, p, label in sorted(keyed, key=lambda t: (t[0], t[1].name)):
            i = len(paths)
            paths.append(p)
            labels.append(-1 if label is None else label)
            if label is None:
                unlabelled = " (or <index>.jpg, unlabelled)" if folder == "evaluation" else ""
                errors[i] = DataError(p, f"expected a file name <label>_<index>{p.suffix} with label 0..{nclass - 1} "
                                         f"in ASCII digits{unlabelled}, got {p.name!r}")
            elif label >= nclass:
                errors[i] = DataError(p, f"label {label} out of range: expected 0..{nclass - 1} "
                                         f"({', '.join(f'{k}={c}' for k, c in enumerate(FOOD11_CLASSES))})")
    log_not_loaded(root, split, not_loaded)
    todo = [i for i in range(len(paths)) if i not in errors]
    images, decode_errors = decode_all([paths[i] for i in todo], size, 3, resize=resize)
    errors.update({todo[j]: e for j, e in decode_errors.items()})
    keep = [i for i in range(len(paths)) if i not in errors]
    raise_or_skip(root, split, [errors[i] for i in sorted(errors)], skip_bad_rows, skipped, what="files")
    if not keep:
        raise DataError(root, f"no readable images in split {split!r}")
    pos = {i: j for j, i in enumerate(todo)}
    return ImageSet(
        images=torch.from_numpy(images[[pos[i] for i in keep]]),  # type: ignore[index]
        labels=torch.tensor([labels[i] for i in keep], dtype=torch.long),
        classes=FOOD11_CLASSES,
        names=tuple(paths[i].relative_to(root).as_posix() for i in keep),
    )
