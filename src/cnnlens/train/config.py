"""The training configuration: one dataclass, checked on construction, stored as JSON in every run.

A config is plain data. It is read back with :meth:`TrainConfig.from_dict`, which checks every field and
rejects unknown ones; nothing is ever executed (no ``exec``, no pickles), so a run folder from someone else
is safe to open.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cnnlens._checks import check_choice
from cnnlens.train.augment import default_flip

#: Optimisers :func:`cnnlens.train.train` knows.
OPTIMIZERS = ("adam", "sgd")
#: Learning-rate schedules: one-cycle (Smith & Topin 2017, warm-up then cosine annealing), cosine
#: annealing to zero (Loshchilov & Hutter 2017), or a constant rate.
SCHEDULES = ("onecycle", "cosine", "constant")
#: Device choices; ``auto`` is CUDA when available, else CPU.
DEVICES = ("auto", "cpu", "cuda")
#: Fields that only say where and how fast to run: they may change when a run is resumed.
RUNTIME_FIELDS = ("device", "num_threads")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (together with the data it names).

    >>> TrainConfig(data="synth:demo/data", epochs=5).optimizer
    'adam'

    Attributes:
        data: dataset spec (``synth:DIR``, ``fer:FILE.csv``, ``food11:DIR``, ``folder:DIR``).
        model: model name in :data:`cnnlens.models.MODELS`.
        image_size: resize images to ``image_size x image_size`` when loading; None keeps the dataset's size.
        resize: how photos of another shape get to ``image_size``: ``squash`` (resized whole) or ``crop``
            (shorter side resized, centre cut out); stored in the run's preprocessing, so every later
            command loads images the way training did.
        val_fraction: fraction of the training split held out (stratified) for validation, in (0, 1).
        seed: seeds the split, the model's initial weights, the shuffling, the augmentation and dropout.
        epochs: number of passes over the training images.
        batch_size: images per optimisation step.
        optimizer: ``adam`` or ``sgd`` (SGD uses Nesterov momentum when ``momentum > 0``).
        lr: learning rate; the peak rate for ``onecycle``, the starting rate for ``cosine``.
        weight_decay: L2 penalty (decoupled for Adam: AdamW, Loshchilov & Hutter 2019).
        momentum: SGD momentum (ignored by Adam).
        schedule: learning-rate schedule, one of :data:`SCHEDULES`, stepped every batch.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016), in [0, 1).
        flip: random horizontal flips. None (the default) is decided by the kind of data and stored as that
            decision: on for faces (``fer:``, ``synth:``) and food (``food11:``), off for a plain ``folder:``
            (:data:`cnnlens.train.augment.FLIP_DEFAULTS`), so ``config.flip`` is always a bool.
        shift: random shifts of up to this many pixels in x and y (replicate-pad, then crop).
        rotation: random rotations of up to this many degrees either way.
        patience: stop after this many epochs without a better validation accuracy; 0 never stops early.
        skip_bad_rows: leave out unreadable data rows (counted in ``train.log``) instead of failing.
        device: ``auto``, ``cpu`` or ``cuda``.
        num_threads: CPU threads for PyTorch during training; None keeps PyTorch's default.
    """

    data: str
    model: str = "small_cnn"
    image_size: int | None = None
    resize: str = "squash"
    val_fraction: float = 0.2
    seed: int = 0
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    flip: bool | None = None
    shift: int = 4
    rotation: float = 10.0
    patience: int = 0
    skip_bad_rows: bool = False
    device: str = "auto"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        if not self.data:
            raise ValueError("data must be a dataset spec such as 'synth:DIR', 'fer:FILE.csv', 'food11:DIR' or 'folder:DIR'")
        if self.flip is None:  # frozen: set once here, so the stored config says what was used
            object.__setattr__(self, "flip", default_flip(self.data))
        if not self.model:
            raise ValueError("model must be a model name such as 'small_cnn'")
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        check_choice(self.schedule, SCHEDULES, "schedule")
        check_choice(self.device, DEVICES, "device")
        _check_range("val_fraction", self.val_fraction, 0.0, 1.0, "strictly between 0 and 1", open_low=True, open_high=True)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, "in [0, 1)", open_high=True)
        _check_range("momentum", self.momentum, 0.0, 1.0, "in [0, 1)", open_high=True)
        _check_range("lr", self.lr, 0.0, math.inf, "a positive number", open_low=True)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf, ">= 0")
        _check_range("rotation", self.rotation, 0.0, 180.0, "in [0, 180] degrees")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("shift", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.resize not in ("squash", "crop"):
            raise ValueError(f"resize must be 'squash' or 'crop', got {self.resize!r}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels or None, got {self.image_size}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Rebuild a config from :meth:`to_dict` output, rejecting unknown or missing fields.

        ``source`` names where ``values`` came from (a file) in error messages.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{source}: the training config must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown training option(s) {unknown}; known options: {sorted(known)}")
        if "data" not in values:
            raise ValueError(f"{source}: the training config has no 'data' (the dataset spec)")
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{source}: {err}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (checked like a new config)."""
        return dataclasses.replace(self, **changes)

    def differences(self, other: TrainConfig, *, ignore: tuple[str, ...] = RUNTIME_FIELDS) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, other's value)}`` for fields that differ, except ``ignore``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Check ``value`` against a dataclass annotation string such as ``'int | None'``."""
    parts = [p.strip() for p in str(annotation).split("|")]
    if value is None:
        if "None" in parts:
            return
        raise TypeError(f"{name} must be {annotation}, got None")
    for part in parts:
        accepted = _TYPES.get(part)
        # bool is an int in Python; a JSON 'true' for a number (or 1 for a switch) is a mistake, not a value.
        if accepted and isinstance(value, accepted) and (isinstance(value, bool) == (part == "bool")):
            return
    raise TypeError(f"{name} must be {annotation}, got {value!r} ({type(value).__name__})")


def _check_range(name: str, value: float, low: float, high: float, words: str, *,
                 open_low: bool = False, open_high: bool = False) -> None:
    ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok or math.isnan(value):
        raise ValueError(f"{name} must be {words}, got {value}")
