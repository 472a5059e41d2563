"""``import_model`` / ``import_keras``: a model trained elsewhere becomes a run folder that every cnnlens command takes.

The run folder holds ``config.json`` (the model section names the builder and its arguments, or the
TorchScript archive; the output selector, what the scores are, the preprocessing and the class names)
and the weights as ``weights.safetensors`` (``model.pt`` for a TorchScript archive, which holds its
own; ``model.keras`` / ``model.h5`` for a Keras model, :func:`import_keras`). Before anything is written the model is built, its weights loaded strictly, and it is run on a
zero batch, which must give ``[1, len(classes)]`` scores; the folder is written atomically.

>>> run, notes = import_model("runs/mine", weights="net.pt", builder="mypackage.nets:build",
...                           classes=["cat", "dog"], input_shape=(3, 64, 64),
...                           preprocess=Preprocess(mean=(0.5,), std=(0.25,)))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cnnlens import _atomic
from cnnlens._checks import is_int
from cnnlens._types import PathArg
from cnnlens.data.preprocess import Preprocess
from cnnlens.models import foreign
from cnnlens.train import run as runfiles

#: File name of an imported TorchScript archive inside the run folder.
TORCHSCRIPT_FILE = "model.pt"
#: File name (before its suffix, .keras or .h5) of an imported Keras model inside the run folder.
KERAS_FILE = "model"
#: ``scores=`` values: detect from the model's outputs, or say what they are.
SCORE_CHOICES = ("auto", *foreign.SCORES)


def import_model(out: PathArg, *, weights: PathArg, classes: Sequence[str], input_shape: Sequence[int],
                 builder: str | None = None, builder_kwargs: dict[str, Any] | None = None,
                 preprocess: Preprocess | None = None, output: foreign.Output = None, scores: str = "auto",
                 overwrite: bool = False) -> tuple[runfiles.Run, list[str]]:
    """Write the run folder ``out`` for a model trained elsewhere; return the loaded run and notes to show.

    Args:
        out: the run folder to write (an earlier run there is replaced only with ``overwrite``).
        weights: a state dict (``.pt``/``.pth`` read with ``torch.load(weights_only=True)``, or
            ``.safetensors``) for ``builder``'s model, or a TorchScript archive (then no ``builder``).
        classes: class names, index = the model's output position.
        input_shape: ``(C, H, W)`` the model takes.
        builder: ``package.module:callable`` returning the model, called with ``builder_kwargs``.
        preprocess: normalisation (``mean``/``std``) the model was trained with and the resize policy;
            channels and size are taken from ``input_shape``.
        output: index or key of the class scores when the model returns a tuple or dict.
        scores: ``auto`` (probabilities and log-probabilities are detected on a probe batch), ``logits``,
            ``probabilities`` or ``log_probabilities``.

    Errors (a :class:`cnnlens.models.foreign.ForeignModelError` naming the option, or ValueError) leave
    ``out`` as it was.
    """
    names = _classes(classes)
    shape = _shape(input_shape)
    if scores not in SCORE_CHOICES:
        raise ValueError(f"scores must be one of {', '.join(SCORE_CHOICES)}; got {scores!r}")
    weights = Path(weights)
    try:
        prep = dataclasses.replace(preprocess or Preprocess(), channels=shape[0], size=shape[1:])
    except ValueError as exc:  # mean/std for another number of channels
        raise foreign.ForeignModelError(str(exc), "--normalize") from None
    _atomic.check_output(out, kind="run", overwrite=overwrite, inputs=[weights])
    if not weights.is_file():
        raise foreign.ForeignModelError(f"{weights} does not exist", "--weights")
    archive = foreign.is_torchscript(weights)
    section: dict[str, Any]
    if archive:
        if builder is not None:
            raise foreign.ForeignModelError(f"{weights} is a TorchScript archive, which holds its own code: leave "
                                            "--model out", "--model")
        model = foreign.load_torchscript(weights)
        section = {"torchscript": TORCHSCRIPT_FILE}
    else:
        if builder is None:
            raise foreign.ForeignModelError(f"{weights} holds weights only: name the code that builds the model with "
                                            "--model package.module:builder", "--model")
        with torch.random.fork_rng(devices=[]):  # the builder's random initial weights are overwritten
            model = foreign.build_model(builder, builder_kwargs)
        foreign.load_state_into(model, foreign.load_state(weights), str(weights))
        section = {"builder": builder, "kwargs": dict(builder_kwargs or {}), "root": foreign.builder_root(builder)}
    model.eval()

    def write(folder: Path) -> None:
        if archive:
            shutil.copyfile(weights, folder / TORCHSCRIPT_FILE)
        else:
            runfiles.save_weights(folder / runfiles.WEIGHTS_FILE, model)

    return _write_run(out, model, section, write, source=weights, key="weights", names=names, shape=shape,
                      prep=prep, output=output, scores=scores, overwrite=overwrite)


def import_keras(out: PathArg, *, keras_file: PathArg, classes: Sequence[str], input_shape: Sequence[int] | None = None,
                 preprocess: Preprocess | None = None, scores: str = "auto", trust_code: bool = False,
                 overwrite: bool = False) -> tuple[runfiles.Run, list[str]]:
    """Write the run folder ``out`` for a Keras 3 model file; return the loaded run and notes to show.

    The file (``.keras``, or a legacy ``.h5``) is copied into the run as ``model.keras`` / ``model.h5`` and
    read with ``keras.saving.load_model(compile=False)`` on the PyTorch backend, inside the adapter
    :class:`cnnlens.models.keras.KerasModel` (``[N,C,H,W]`` images, layers by their Keras names).

    Args:
        out, classes, preprocess, scores, overwrite: as for :func:`import_model`.
        keras_file: the Keras model file.
        input_shape: ``(C, H, W)``; default the model's own input shape (needed where it leaves H or W open).
        trust_code: load a file whose layers hold Python code (a ``Lambda`` layer): refused otherwise,
            since loading it runs that code. Recorded in the run, which then loads it the same way.

    Needs the ``keras`` extra (``pip install 'cnnlens[keras]'``). Errors leave ``out`` as it was.
    """
    from cnnlens.models import keras as kerasmodels

    names = _classes(classes)
    if scores not in SCORE_CHOICES:
        raise ValueError(f"scores must be one of {', '.join(SCORE_CHOICES)}; got {scores!r}")
    source = Path(keras_file)
    _atomic.check_output(out, kind="run", overwrite=overwrite, inputs=[source])
    model = kerasmodels.KerasModel(kerasmodels.load_keras(source, trust_code=trust_code)).eval()
    own = model.input_shape
    if input_shape is None:
        if any(v is None for v in own):
            raise foreign.ForeignModelError(f"{source} takes images of any size ({'x'.join(map(str, own))}); give "
                                            "the size to explain with --input-shape C,H,W", "--input-shape")
        input_shape = own
    shape = _shape(input_shape)
    if any(v is not None and v != s for v, s in zip(own, shape)):
        raise foreign.ForeignModelError(f"--input-shape {','.join(map(str, shape))} does not fit {source}, which takes "
                                        f"{'x'.join('any' if v is None else str(v) for v in own)} (C,H,W)", "--input-shape")
    try:
        prep = dataclasses.replace(preprocess or Preprocess(), channels=shape[0], size=shape[1:])
    except ValueError as exc:  # mean/std for another number of channels
        raise foreign.ForeignModelError(str(exc), "--normalize") from None
    stored = KERAS_FILE + (".keras" if source.suffix.lower() == ".keras" else ".h5")
    section: dict[str, Any] = {"keras": stored, "trust_code": bool(trust_code)}
    rescaling = kerasmodels.rescaling_note(model, prep.normalizes)
    return _write_run(out, model, section, lambda folder: shutil.copyfile(source, folder / stored), source=source,
                      key="keras", names=names, shape=shape, prep=prep, output=None, scores=scores, overwrite=overwrite,
                      notes=[rescaling] if rescaling else [])


def _write_run(out: PathArg, model: torch.nn.Module, section: dict[str, Any], write: Any, *, source: Path, key: str,
               names: tuple[str, ...], shape: tuple[int, int, int], prep: Preprocess, output: foreign.Output,
               scores: str, overwrite: bool, notes: list[str] | None = None) -> tuple[runfiles.Run, list[str]]:
    """Detect the scores, check the adapted model, and write the run folder atomically (``write(folder)``
    puts the model's file there); the run must load back and compute the same scores. ``notes``: said first."""
    notes = list(notes or [])
    if scores == "auto":
        scores, note = foreign.detect_scores(model, shape, output=output, preprocess=prep)
        notes += [note] if note else []
    scored = foreign.Scored(model, output=output, scores=scores, mean=prep.mean, std=prep.std)
    foreign.check_scores(scored, shape, len(names))
    section.update(output=output, scores=scores, notes=notes)
    manifest = {
        "version": runfiles.RUN_VERSION,
        "model": section,
        "input_shape": list(shape),
        "classes": list(names),
        "preprocess": prep.to_dict(),
        "data": None,
        "train": None,
        "imported": {key: str(source.resolve()), "sha256": _sha256(source)},
    }
    with _atomic.output_dir(out, kind="run", overwrite=overwrite, inputs=[source]) as tmp:
        runfiles.write_json(tmp / runfiles.CONFIG_FILE, manifest)
        write(tmp)
        _check_reloads(tmp, scored, shape)
    return runfiles.load_run(out), notes


def _check_reloads(folder: Path, scored: torch.nn.Module, shape: tuple[int, int, int]) -> None:
    """The run as written must load back and compute what the checked model computes (before it is swapped in)."""
    reloaded = runfiles.load_run(folder).model
    x = foreign.probe_batch(shape)
    with torch.no_grad():
        a, b = scored(x), reloaded(x)
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
        raise ValueError("the run as written computes other scores than the model it was made from "
                         f"(largest difference {float((a - b).abs().max()):.3g}); please report this bug")


def _classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"classes must be a sequence of class names, got {classes!r}")
    names = tuple(c.strip() for c in classes)
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise foreign.ForeignModelError(f"expected at least two distinct, non-empty class names; got {list(classes)!r}",
                                        "--classes")
    return names


def _shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(is_int(v, 1) for v in shape):
        raise foreign.ForeignModelError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}",
                                        "--input-shape")
    if shape[0] not in (1, 3):
        raise foreign.ForeignModelError(f"input_shape has {shape[0]} channels; cnnlens reads gray (1) or RGB (3) images",
                                        "--input-shape")
    return shape  # type: ignore[return-value]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
