"""Preprocessing: how images are brought to a model's input, as one object stored with every run.

cnnlens keeps images in ``[0, 1]`` everywhere (maps, masks and figures are drawn on them); a model trained
on ``Normalize(mean, std)`` inputs gets its normalisation as the first step of its forward, inside the
adapter :class:`cnnlens.models.foreign.Scored`, so every method explains the model on the input it was
trained on. :class:`Preprocess` holds that normalisation and the rest of the way in: the channels, the
input size and the resize policy for images of another size.

>>> prep = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="crop", channels=3,
...                   size=(224, 224))
>>> photos = prep.load("folder:photos", classes=["cat", "dog"])     # doctest: +SKIP
>>> photos.input_shape                                              # doctest: +SKIP
(3, 224, 224)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cnnlens._checks import check_choice, is_int, is_number
from cnnlens.data.imageset import ImageSet

#: Resize policies for images of another size than the model's: ``squash`` resizes to H x W (the aspect
#: ratio may change), ``crop`` resizes the shorter side to fit and cuts out the centre (torchvision's
#: ``Resize`` + ``CenterCrop``).
RESIZE = ("squash", "crop")


@dataclass(frozen=True)
class Preprocess:
    """How images become a model's input: channels, size, resize policy, and normalisation.

    Attributes:
        mean / std: per-channel (or one for all) normalisation ``(x - mean) / std`` of ``[0,1]`` images
            that the model was trained with; None (both) when the model takes ``[0,1]`` images (cnnlens'
            own models normalise internally).
        resize: ``squash`` or ``crop`` (see :data:`RESIZE`), for images of another size than ``size``.
        channels: 1 (gray) or 3 (RGB) to convert images to; None keeps the dataset's.
        size: ``(H, W)`` the model takes; None keeps the dataset's.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "squash"
    channels: int | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both (e.g. mean=(0.5,), std=(0.25,)) or neither")
        if self.mean is not None and self.std is not None:
            object.__setattr__(self, "mean", _floats(self.mean, "mean"))
            object.__setattr__(self, "std", _floats(self.std, "std"))
            if not all(s > 0 for s in self.std):
                raise ValueError(f"std must be positive, got {list(self.std)}")
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}; give one per channel "
                                 "for both, or one for all channels")
            if self.channels is not None and len(self.mean) not in (1, self.channels):
                raise ValueError(f"mean/std have {len(self.mean)} values for {self.channels}-channel images; give one "
                                 f"value or {self.channels}")
        check_choice(self.resize, RESIZE, "resize")
        if self.channels is not None and (isinstance(self.channels, bool) or self.channels not in (1, 3)):
            raise ValueError(f"channels must be 1 (gray), 3 (RGB) or None, got {self.channels!r}")
        if self.size is not None:
            size = tuple(self.size)
            if len(size) != 2 or not all(is_int(v, 1) for v in size):
                raise ValueError(f"size must be (height, width) of positive ints or None, got {self.size!r}")
            object.__setattr__(self, "size", size)

    # ------------------------------------------------------------------------------------ normalisation

    @property
    def normalizes(self) -> bool:
        """Whether the model's input is normalised (``mean``/``std`` given)."""
        return self.mean is not None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(images - mean) / std`` per channel for ``[N,C,H,W]`` images in ``[0,1]``; the images as they
        are without normalisation."""
        if self.mean is None or self.std is None:
            return images
        mean, std = self.tensors(images.device, images.dtype)
        return (images - mean) / std

    def tensors(self, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` as ``[1,C,1,1]`` tensors (C = 1 for one value for all channels)."""
        if self.mean is None or self.std is None:
            raise ValueError("this Preprocess does not normalise (mean and std are None)")
        return (torch.tensor(self.mean, dtype=dtype, device=device).view(1, -1, 1, 1),
                torch.tensor(self.std, dtype=dtype, device=device).view(1, -1, 1, 1))

    # ----------------------------------------------------------------------------------------- images

    def fit(self, images: ImageSet) -> ImageSet:
        """``images`` converted to ``channels`` and brought to ``size`` by the resize policy (masks follow)."""
        if self.channels is not None:
            images = images.with_channels(self.channels)
        if self.size is None or tuple(images.images.shape[2:]) == self.size:
            return images
        if self.resize == "squash":
            return images.resized(self.size)
        h, w = (int(v) for v in images.images.shape[2:])
        target_h, target_w = self.size
        scale = max(target_h / h, target_w / w)  # the shorter side (relative to the target) fits exactly
        covering = (max(target_h, math.ceil(h * scale - 1e-9)), max(target_w, math.ceil(w * scale - 1e-9)))
        big = images.resized(covering)
        top, left = (covering[0] - target_h) // 2, (covering[1] - target_w) // 2
        rows, cols = slice(top, top + target_h), slice(left, left + target_w)
        return ImageSet(images=big.images[:, :, rows, cols].contiguous(), labels=big.labels, classes=big.classes,
                        names=big.names, masks=None if big.masks is None else big.masks[:, rows, cols].contiguous())

    def load(self, spec: str, split: str | None = None, *, classes: Sequence[str] | None = None,
             skip_bad_rows: bool = False) -> ImageSet:
        """Load ``split`` of the dataset ``spec`` (None: the dataset's default split) as the model takes it.

        ``classes``: the model's class names; the dataset's labels are matched to them by name (see
        :func:`align_classes`). Photos are brought to ``size`` by the policy as they are decoded; FER and
        synthetic faces (one size) are resized after loading, by the same policy.
        """
        from cnnlens.data import load_dataset

        # photos are brought to the size by the policy while decoding, each from its own full resolution
        # (faster for big photos, and a folder of mixed sizes is never squashed to a common square first)
        kwargs: dict[str, Any] = {"image_size": self.size, "resize": self.resize, "channels": self.channels,
                                  "skip_bad_rows": skip_bad_rows}
        if classes is not None and spec.partition(":")[0] == "folder":
            kwargs["classes"] = list(classes)
        images = self.fit(load_dataset(spec, split, **kwargs))
        return images if classes is None else align_classes(images, classes, spec)

    # ------------------------------------------------------------------------------------------ config

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the ``preprocess`` section of a run's config.json)."""
        return {"mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "resize": self.resize, "channels": self.channels,
                "size": None if self.size is None else list(self.size)}

    @classmethod
    def from_dict(cls, values: Any, *, source: str = "config") -> Preprocess:
        """Rebuild from :meth:`to_dict` output; unknown keys or bad values raise ValueError naming ``source``."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: 'preprocess' must be a JSON object, got {type(values).__name__}")
        known = {"mean", "std", "resize", "channels", "size"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown preprocess key(s) {unknown}; known: {sorted(known)}")
        v = dict(values)
        try:
            if isinstance(v.get("size"), list):
                v["size"] = tuple(v["size"])
            return cls(**v)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: preprocess: {err}") from None

    def describe(self) -> str:
        """One line for logs and notes: ``"3x224x224, crop; normalised (x - [0.485, ...]) / [0.229, ...]"``."""
        parts = []
        if self.size is not None:
            parts.append(f"{self.channels or '?'}x{self.size[0]}x{self.size[1]}, {self.resize}")
        if self.mean is not None and self.std is not None:
            parts.append(f"normalised (x - {_short(self.mean)}) / {_short(self.std)} inside the model")
        else:
            parts.append("images in [0,1], not normalised")
        return "; ".join(parts)


def parse_normalize(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``"0.5/0.25"`` or ``"0.485,0.456,0.406/0.229,0.224,0.225"`` -> ``(mean, std)``.

    >>> parse_normalize("0.5/0.25")
    ((0.5,), (0.25,))
    """
    mean_text, sep, std_text = text.partition("/")
    try:
        if not sep:
            raise ValueError
        mean = tuple(float(p) for p in mean_text.split(","))
        std = tuple(float(p) for p in std_text.split(","))
    except ValueError:
        raise ValueError(f"expected MEAN/STD such as 0.5/0.25 or 0.485,0.456,0.406/0.229,0.224,0.225 (values of "
                         f"[0,1] images); got {text!r}") from None
    if len(mean) != len(std) or not all(math.isfinite(v) for v in (*mean, *std)) or not all(s > 0 for s in std):
        raise ValueError(f"expected as many means as positive standard deviations in MEAN/STD; got {text!r}")
    if any(m > 2 or s > 2 for m, s in zip(mean, std)):
        raise ValueError(f"MEAN/STD {text!r} looks like 0..255 pixel values; cnnlens images are in [0,1], so "
                         "divide by 255 (ImageNet: 0.485,0.456,0.406/0.229,0.224,0.225)")
    return mean, std


def align_classes(images: ImageSet, classes: Sequence[str], spec: str = "the data") -> ImageSet:
    """``images`` relabelled to the model's ``classes`` (index = label), matching class names by
    :func:`cnnlens.data.folder.class_key` (case and a numeric prefix ignored).

    Unlabelled images (-1) stay unlabelled, so data without labels always fits. A labelled class of the data
    that matches none of ``classes`` is a ValueError naming it and the model's classes.
    """
    from cnnlens.data.folder import class_key

    classes = tuple(classes)
    if tuple(images.classes) == classes:
        return images
    index = {class_key(c): i for i, c in enumerate(classes)}
    mapping = torch.full((len(images.classes) + 1,), -1, dtype=torch.long)  # the extra last slot maps -1 to -1
    present = set(images.labels[images.labels >= 0].unique().tolist())
    unmatched = []
    for i, name in enumerate(images.classes):
        j = index.get(class_key(name))
        if j is not None:
            mapping[i] = j
        elif i in present:
            unmatched.append(name)
    if unmatched:
        raise ValueError(f"{spec}: class(es) {', '.join(map(repr, unmatched))} of the data match none of the model's "
                         f"{len(classes)} classes ({', '.join(classes)}); name the data's classes like the model's")
    labels = mapping[images.labels]  # -1 indexes the last slot, which holds -1
    return ImageSet(images=images.images, labels=labels, classes=classes, names=images.names, masks=images.masks)


def _floats(values: Any, name: str) -> tuple[float, ...]:
    if is_number(values):
        values = (values,)
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {values!r}")
    if not all(is_number(v) and math.isfinite(v) for v in values):
        raise ValueError(f"{name} must hold finite numbers, got {list(values)}")
    return tuple(float(v) for v in values)


def _short(values: tuple[float, ...]) -> str:
    return f"{values[0]:g}" if len(values) == 1 else "[" + ", ".join(f"{v:g}" for v in values) + "]"
