"""Run folders: what `cnnlens train` writes, and how everything after it reads a run back safely.

A run folder (see docs/architecture.md, "Runs") holds ``config.json`` (enough to rebuild the model
without the command line), ``weights.safetensors`` (best weights), ``checkpoint.pt`` (the last completed
epoch, for ``--resume``), ``history.csv``, ``curves.png``, ``split.json``, ``tensorboard/`` and
``train.log``.

Loading never unpickles arbitrary objects: weights come from safetensors, checkpoints through
``torch.load(weights_only=True)``, and both are checked key by key and shape by shape against the model.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlens import _atomic
from cnnlens._checks import check_choice, is_int
from cnnlens._types import PathArg
from cnnlens.data.imageset import ImageSet
from cnnlens.data.preprocess import Preprocess
from cnnlens.models.foreign import check_state_dict  # noqa: F401  (re-exported: runs and checkpoints use it)
from cnnlens.train.config import TrainConfig

#: Version of config.json and checkpoint.pt; bumped when their layout changes.
RUN_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
SPLIT_FILE = "split.json"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
#: Columns of history.csv, in order.
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
#: Keys every checkpoint.pt must hold.
CHECKPOINT_KEYS = ("version", "epoch", "model", "optimizer", "scheduler", "history", "best_val_acc",
                   "best_epoch", "epochs_without_improvement", "finished", "rng", "train")
#: Dataset splits a run can give back: its own train/val split of the dataset's train split, and the
#: dataset's test split.
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------- config.json

def run_manifest(config: TrainConfig, model_kwargs: dict[str, Any], input_shape: tuple[int, int, int],
                 classes: tuple[str, ...], n_images: int) -> dict[str, Any]:
    """The content of ``config.json`` for a run."""
    return {
        "version": RUN_VERSION,
        "model": {"name": config.model, "kwargs": model_kwargs},
        "input_shape": list(input_shape),
        "classes": list(classes),
        # cnnlens models normalise inside and take [0,1] images; the loaders bring photos to image_size
        "preprocess": Preprocess(resize=config.resize, channels=input_shape[0],
                                 size=(input_shape[1], input_shape[2])).to_dict(),
        "data": {"spec": config.data, "resolved_spec": absolute_spec(config.data), "image_size": config.image_size,
                 "resize": config.resize, "skip_bad_rows": config.skip_bad_rows, "n_images": n_images},
        "train": config.to_dict(),
    }


def absolute_spec(spec: str) -> str:
    """``kind:PATH`` with PATH made absolute, so a run can find its data from any working directory."""
    kind, sep, where = spec.partition(":")
    return f"{kind}:{Path(where).resolve()}" if sep and where else spec


def spec_path(spec: str | None) -> Path | None:
    """The file or folder a dataset spec names (``fer:train.csv`` -> ``train.csv``), as a
    :class:`~cnnlens._atomic.DataInput` (no output goes inside a data folder); None without one."""
    if not spec:
        return None
    _, sep, where = spec.partition(":")
    return _atomic.DataInput(where) if sep and where else None


def run_inputs(run_dir: PathArg, manifest: Mapping[str, Any] | None = None) -> list[Path]:
    """What no output made from a run may replace: the run folder and its data (as given and as resolved).

    ``manifest`` defaults to the run's config.json when it is readable (a run that is not one is refused
    by whoever loads it, with its own message).
    """
    found = [Path(run_dir)]
    if manifest is None:
        try:
            manifest = read_manifest(run_dir)
        except ValueError:
            manifest = None
    data = (manifest or {}).get("data")
    if isinstance(data, dict):
        for key in ("spec", "resolved_spec"):
            path = spec_path(data.get(key)) if isinstance(data.get(key), str) else None
            if path is not None:
                found.append(path)
    return found


def data_spec(manifest: dict[str, Any]) -> str:
    """The run's dataset spec: as it was given when its path still exists from here, else the absolute one."""
    data = manifest["data"]
    spec, resolved = data["spec"], data.get("resolved_spec")
    _, sep, where = spec.partition(":")
    if resolved and sep and not Path(where).exists():
        return resolved
    return spec


def write_json(path: PathArg, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    _atomic.write_text(path, json.dumps(obj, indent=2) + "\n")


def _read_json(path: Path, missing: str) -> Any:
    """The JSON in ``path``; ValueError with ``missing`` if there is no such file, or naming the file if it is bad."""
    if not path.is_file():
        raise ValueError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_manifest(run_dir: PathArg) -> dict[str, Any]:
    """Read and check ``RUN/config.json``; raise ValueError naming what is wrong or missing."""
    path = Path(run_dir) / CONFIG_FILE
    manifest = _read_json(path, f"{run_dir} is not a cnnlens run folder: {CONFIG_FILE} is missing "
                                "(runs are written by `cnnlens train`)")
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object with keys version, model, input_shape, classes, data, train")
    missing = [k for k in ("version", "model", "input_shape", "classes", "data", "train") if k not in manifest]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    if manifest["version"] != RUN_VERSION:
        raise ValueError(f"{path}: run format version {manifest['version']!r}, this cnnlens reads version {RUN_VERSION}")
    check_model_section(manifest["model"], str(path))
    shape = manifest["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"{path}: 'input_shape' must be [C, H, W] of positive ints, got {shape!r}")
    classes = manifest["classes"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"{path}: 'classes' must be a non-empty list of class names, got {classes!r}")
    if manifest["train"] is not None or "name" in manifest["model"]:  # an imported model has no training config
        TrainConfig.from_dict(manifest["train"], source=str(path))  # raises on a bad config
    if manifest.get("preprocess") is not None:
        Preprocess.from_dict(manifest["preprocess"], source=str(path))
    return manifest


#: The kinds of model a run's config.json names (its "model" section holds exactly one of these keys):
#: a cnnlens model by name (trained by ``cnnlens train``), a builder ``package.module:callable`` and its
#: keyword arguments (``cnnlens import``; weights in weights.safetensors), or a TorchScript archive in the
#: run folder (``cnnlens import`` of a ``torch.jit.save`` file; it holds its own weights), or a Keras model
#: file in the run folder (``cnnlens import --keras``; read by :mod:`cnnlens.models.keras`).
MODEL_KINDS = ("name", "builder", "torchscript", "keras")


def check_model_section(model: Any, source: str) -> None:
    """Raise ValueError unless ``model`` is a valid "model" section of config.json (see :data:`MODEL_KINDS`)."""
    from cnnlens.models.foreign import SCORES

    forms = ('{"name": str, "kwargs": {...}}, {"builder": "package.module:callable", "kwargs": {...}}, '
             '{"torchscript": "model.pt"} or {"keras": "model.keras"}')
    kinds = [k for k in MODEL_KINDS if isinstance(model, dict) and k in model]
    if len(kinds) != 1 or not isinstance(model[kinds[0]], str) or not model[kinds[0]]:
        raise ValueError(f"{source}: 'model' must be one of {forms}, got {model!r}")
    kind = kinds[0]
    if kind in ("name", "builder") and not isinstance(model.get("kwargs", {} if kind == "builder" else None), dict):
        raise ValueError(f"{source}: 'model' must be one of {forms}, got {model!r}")
    if kind == "builder" and ":" not in model["builder"]:
        raise ValueError(f"{source}: model 'builder' must be package.module:callable, got {model['builder']!r}")
    if kind in ("torchscript", "keras") and Path(model[kind]).name != model[kind]:
        raise ValueError(f"{source}: model {kind!r} must be a file name inside the run folder, got {model[kind]!r}")
    output = model.get("output")
    if output is not None and not (is_int(output) or isinstance(output, str)):
        raise ValueError(f"{source}: model 'output' must be an index (int), a key (str) or null, got {output!r}")
    if model.get("scores", "logits") not in SCORES:
        raise ValueError(f"{source}: model 'scores' must be one of {', '.join(SCORES)}, got {model.get('scores')!r}")


def build_model(manifest: dict[str, Any]) -> nn.Module:
    """A freshly initialised model as the manifest describes it (name or builder, and constructor arguments)."""
    from cnnlens.models import build

    section = manifest["model"]
    if "builder" in section:
        from cnnlens.models.foreign import build_model as build_foreign

        return build_foreign(section["builder"], section.get("kwargs") or {}, root=section.get("root"))
    kwargs = dict(section["kwargs"])
    if isinstance(kwargs.get("input_size"), list):  # JSON has no tuples
        kwargs["input_size"] = tuple(kwargs["input_size"])
    return build(manifest["model"]["name"], **kwargs)


# -------------------------------------------------------------------------------------------- split.json

def write_split(run_dir: PathArg, seed: int, train_index: torch.Tensor, val_index: torch.Tensor, n: int) -> None:
    """Write ``split.json``: indices into the dataset's train split (``n`` images when the run started)."""
    write_json(Path(run_dir) / SPLIT_FILE, {"seed": seed, "n": n, "train": train_index.tolist(), "val": val_index.tolist()})


def read_split(run_dir: PathArg, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_index, val_index)`` from ``split.json``, checked against a dataset of ``n`` images."""
    path = Path(run_dir) / SPLIT_FILE
    split = _read_json(path, f"{run_dir}: {SPLIT_FILE} is missing, so the run's train/validation split is unknown")
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val")):
        raise ValueError(f"{path}: expected {{\"seed\", \"train\": [indices], \"val\": [indices]}}")
    idx = []
    for key in ("train", "val"):
        if not all(is_int(i, 0) for i in split[key]):
            raise ValueError(f"{path}: '{key}' must list non-negative image indices")
        idx.append(torch.tensor(split[key], dtype=torch.long))
    if n is not None:
        recorded = split.get("n")
        top = max([int(t.max()) for t in idx if t.numel()] or [-1])
        if (recorded is not None and recorded != n) or top >= n:
            raise ValueError(f"{path}: the split was made for a dataset of {recorded if recorded is not None else top + 1}+ images, "
                             f"but the data now has {n}; the dataset changed since training")
    return idx[0], idx[1]


# ------------------------------------------------------------------------------------------- history.csv

def write_history(run_dir: PathArg, history: list[dict[str, float]]) -> None:
    """Write ``history.csv`` (one row per completed epoch, columns :data:`HISTORY_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (row[k] if k == "epoch" else f"{row[k]:.6g}") for k in HISTORY_COLUMNS})
    _atomic.write_text(Path(run_dir) / HISTORY_FILE, buf.getvalue())


def read_history(run_dir: PathArg) -> list[dict[str, float]]:
    """Rows of ``history.csv`` as dicts (``epoch`` an int, the rest floats); [] when there is none yet."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                rows.append({k: (int(row[k]) if k == "epoch" else float(row[k])) for k in HISTORY_COLUMNS})
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path} line {line}: expected numbers in columns {', '.join(HISTORY_COLUMNS)}") from None
    return rows


# ----------------------------------------------------------------------------------- weights and checkpoint

def save_weights(path: PathArg, model: nn.Module) -> None:
    """Write the model's state dict to a safetensors file, atomically."""
    from safetensors.torch import save

    # safetensors stores dense row-major tensors: channels_last weights are made contiguous first.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Serialised here and written by Python, so a full disk is an OSError that names its cause.
    _atomic.write_bytes(path, save(state, metadata={"format": "pt", "cnnlens_run_version": str(RUN_VERSION)}))


def load_weights(path: PathArg, model: nn.Module) -> None:
    """Load a safetensors file into ``model`` after checking every key, shape and dtype."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is missing (the best weights of a run)")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be truncated or not a cnnlens weights file") from None
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)


def save_checkpoint(path: PathArg, checkpoint: dict[str, Any]) -> None:
    """Write a training checkpoint atomically: a kill or a full disk mid-write leaves the previous checkpoint intact.

    A full disk raises :class:`cnnlens._atomic.CannotWrite` saying so, not torch's ``enforce fail``.
    """
    path = Path(path)
    try:
        with _atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
            out = _Recording(fh)
            try:
                torch.save(checkpoint, out)
            except RuntimeError:
                if out.error is not None:  # the OSError torch's zip writer turned into "unexpected pos"
                    raise out.error from None
                raise
    except _atomic.CannotWrite as err:
        if err.disk_full:
            raise disk_full(path, err) from None
        raise


class _Recording:
    """A file for ``torch.save`` that keeps the OSError of a failed write: torch's zip writer reports a full
    disk only as ``[enforce fail at inline_container.cc] unexpected pos`` (measured on a full tmpfs)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def disk_full(path: Path, err: _atomic.CannotWrite) -> _atomic.CannotWrite:
    """The error of a full disk while a run's files were written; the checkpoint is the commit point."""
    ckpt = path.parent / CHECKPOINT_FILE
    state = "the previous checkpoint is intact" if ckpt.is_file() else "no checkpoint had been written yet"
    return _atomic.CannotWrite(path, err.reason, f"disk full at {path}, {state}; free some space, then continue with "
                                                 f"`cnnlens train --out {path.parent} --resume`").with_errno(err.errno)


def load_checkpoint(path: PathArg) -> dict[str, Any]:
    """Read ``checkpoint.pt`` with ``torch.load(weights_only=True)`` and check its layout.

    Only tensors and plain containers are accepted; a file that would construct any other object (a
    tampered or foreign pickle) is refused before anything in it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is missing (the last completed epoch of a run)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads fine
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, which is exactly what must not be done here; keep
        # only the line that names the refused object.
        why = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        detail = f"it would construct {why.group(1)}" if why else "it holds objects other than tensors and plain data"
        raise ValueError(f"{path} was refused and nothing in it was run: {detail}. A cnnlens checkpoint holds only "
                         "tensors and plain data; this file was tampered with or not written by cnnlens") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a cnnlens checkpoint: expected a dict, got {type(ckpt).__name__}")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a cnnlens checkpoint: missing {missing}")
    if ckpt["version"] != RUN_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt['version']!r}, this cnnlens reads version {RUN_VERSION}")
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise ValueError(f"{path}: 'model' must map parameter names to tensors")
    if not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
        raise ValueError(f"{path}: 'epoch' must be a non-negative int, got {ckpt['epoch']!r}")
    return ckpt


# -------------------------------------------------------------------------------------------------- Run

@dataclass
class Run:
    """A trained (or imported) model with everything needed to use and explain it.

    Attributes:
        path: the run folder.
        model: the model with the best weights, in eval mode, on ``device``; for an imported model the
            adapter :class:`cnnlens.models.foreign.Scored` around it (normalisation, output selection, scores).
        config: the training config; None for a model imported with ``cnnlens import``.
        classes: class names, index = label.
        input_shape: ``(C, H, W)`` the model takes.
        history: rows of history.csv (one per completed epoch; none for an imported model).
        manifest: the whole config.json (model section, preprocessing, data spec, ...).
        device: where ``model`` lives.
        preprocess: how images are brought to the model's input (channels, size, resize policy, normalisation).
    """

    path: Path
    model: nn.Module
    config: TrainConfig | None
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    history: list[dict[str, float]]
    manifest: dict[str, Any]
    device: torch.device
    preprocess: Preprocess = field(default_factory=Preprocess)
    _train_split: ImageSet | None = field(default=None, repr=False)

    def dataset(self, split: str | None = None, *, data: str | None = None) -> ImageSet:
        """The run's images of ``split``: ``train`` / ``val`` (the saved split of the dataset's train split;
        None = ``val``) or ``test`` (the dataset's own test split; its labels may be -1 when unknown).

        ``data``: another dataset's spec instead (needed for an imported run, which has none of its own):
        its ``split`` (any split it has; None = ``all``, every image), brought to the model's input by
        :attr:`preprocess` and labelled by the run's class names (unlabelled images stay -1).

        The data is reloaded from the config's spec; the train split is cached on the Run.
        """
        from cnnlens.data import load_dataset

        if data is not None:
            images = self.preprocess.load(data, "all" if split is None else split, classes=self.classes)
            if images.input_shape != self.input_shape:
                raise ValueError(f"{data}: images of shape {images.input_shape}, but the run's model takes {self.input_shape}")
            return images
        if self.manifest.get("data") is None:
            raise ValueError(f"{self.path} holds an imported model with no dataset of its own; name one with --data SPEC "
                             "(e.g. folder:photos, fer:test.csv; in Python run.dataset(split, data=SPEC))")
        split = "val" if split is None else split
        check_choice(split, SPLITS, "split")
        data = self.manifest["data"]
        spec = data_spec(self.manifest)
        kwargs = {"image_size": data.get("image_size"), "resize": self.preprocess.resize,
                  "skip_bad_rows": bool(data.get("skip_bad_rows", False))}
        if split == "test":
            images = load_dataset(spec, "test", **kwargs)
        else:
            if self._train_split is None:
                self._train_split = load_dataset(spec, "train", **kwargs)
            train_index, val_index = read_split(self.path, len(self._train_split))
            images = self._train_split.subset(train_index if split == "train" else val_index)
        if tuple(images.classes) != self.classes:
            raise ValueError(f"{spec} ({split}) has classes {list(images.classes)}, but the run was trained on {list(self.classes)}")
        if images.input_shape != self.input_shape:
            raise ValueError(f"{spec} ({split}) has images of shape {images.input_shape}, "
                             f"but the run's model takes {self.input_shape}")
        return images


def run_preprocess(manifest: dict[str, Any], source: str) -> Preprocess:
    """The run's :class:`Preprocess` (its config's ``preprocess`` section; for older runs, the plain one),
    with the channels and size of its ``input_shape``."""
    c, h, w = manifest["input_shape"]
    stored = manifest.get("preprocess")
    prep = Preprocess() if stored is None else Preprocess.from_dict(stored, source=source)
    if prep.channels not in (None, c) or prep.size not in (None, (h, w)):
        raise ValueError(f"{source}: preprocess gives {prep.channels} channels of {prep.size}, but input_shape is {[c, h, w]}")
    return dataclasses.replace(prep, channels=c, size=(h, w))


def adapt(model: nn.Module, section: dict[str, Any], preprocess: Preprocess) -> nn.Module:
    """The model as every cnnlens method sees it: an imported model inside the adapter
    :class:`cnnlens.models.foreign.Scored` (normalisation first, output selection, log of probabilities);
    a cnnlens model (which normalises itself and returns logits) as it is."""
    output, scores = section.get("output"), section.get("scores", "logits")
    if "name" in section and not preprocess.normalizes and output is None and scores == "logits":
        return model
    from cnnlens.models.foreign import Scored

    return Scored(model, output=output, scores=scores, mean=preprocess.mean, std=preprocess.std)


def missing_weights(run_dir: Path) -> str:
    """Why ``RUN/weights.safetensors`` is missing and how to get a usable run back, from what the run recorded."""
    weights = run_dir / WEIGHTS_FILE
    try:
        ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE) if (run_dir / CHECKPOINT_FILE).is_file() else None
    except ValueError:
        ckpt = None
    done = len(read_history(run_dir)) if (run_dir / HISTORY_FILE).is_file() else 0
    if ckpt is None and done == 0:
        return (f"{run_dir} is not a finished cnnlens run folder: {WEIGHTS_FILE} is missing because no epoch has "
                f"completed yet; continue it with `cnnlens train --out {run_dir} --resume`")
    if ckpt is not None and ckpt.get("best_epoch") == ckpt["epoch"] and ckpt["epoch"] > 0:
        return (f"{weights} (the best epoch's weights) is missing: it was deleted or moved. checkpoint.pt holds epoch "
                f"{ckpt['epoch']}, which is the best one, so `cnnlens train --out {run_dir} --resume` rebuilds it")
    best = f"epoch {ckpt['best_epoch']}'s" if ckpt is not None else "the best epoch's"
    last = f"; checkpoint.pt holds only epoch {ckpt['epoch']}'s" if ckpt is not None else ""
    return (f"{weights} ({best} weights) is missing, though {max(done, ckpt['epoch'] if ckpt else 0)} epoch(s) completed: "
            f"it was deleted or moved{last}. Restore the file from a backup, or train again with "
            f"`cnnlens train --data ... --out {run_dir} --overwrite`")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu or cuda[:N]; got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N]; got {name!r}")
    return dev


def load_run(path: PathArg, device: str | torch.device = "cpu") -> Run:
    """Open a run folder: the model with its best weights (eval mode, on ``device``) and its metadata.

    >>> run = load_run("demo-run/run")                     # doctest: +SKIP
    >>> run.model(run.dataset("val").float_images()[:4])   # doctest: +SKIP
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a cnnlens run folder: no such folder")
    manifest = read_manifest(run_dir)
    section, train = manifest["model"], manifest["train"]
    archive, keras_file = section.get("torchscript"), section.get("keras")
    if archive is None and keras_file is None and not (run_dir / WEIGHTS_FILE).is_file():
        raise ValueError(missing_weights(run_dir) if train is not None else
                         f"{run_dir / WEIGHTS_FILE} (the imported model's weights) is missing; run `cnnlens import` again")
    dev = resolve_device(device)
    if keras_file is not None:
        from cnnlens.models.keras import KerasModel, load_keras

        if not (run_dir / keras_file).is_file():
            raise ValueError(f"{run_dir / keras_file} (the imported Keras model) is missing; run `cnnlens import` again")
        model = KerasModel(load_keras(run_dir / keras_file, trust_code=section.get("trust_code") is True))
    elif archive is not None:
        from cnnlens.models.foreign import load_torchscript

        if not (run_dir / archive).is_file():
            raise ValueError(f"{run_dir / archive} (the imported TorchScript model) is missing; run `cnnlens import` again")
        model = load_torchscript(run_dir / archive)
    else:
        with torch.random.fork_rng(devices=[]):  # random initial weights are overwritten; keep the caller's RNG as it was
            model = build_model(manifest)
        load_weights(run_dir / WEIGHTS_FILE, model)
    preprocess = run_preprocess(manifest, str(run_dir / CONFIG_FILE))
    model = adapt(model, section, preprocess)
    model.to(dev).eval()
    return Run(
        path=run_dir,
        model=model,
        config=None if train is None else TrainConfig.from_dict(train, source=str(run_dir / CONFIG_FILE)),
        preprocess=preprocess,
        classes=tuple(manifest["classes"]),
        input_shape=tuple(manifest["input_shape"]),
        history=read_history(run_dir),
        manifest=manifest,
        device=dev,
    )
