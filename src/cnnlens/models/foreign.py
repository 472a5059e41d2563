"""Models cnnlens did not make: building them from a builder spec, loading their weights safely, and the
adapter :class:`Scored` that every method and command sees instead of the user's model.

The user's model is never changed. :class:`Scored` wraps it and, in its forward, normalises the ``[0,1]``
input the way the model was trained (``Preprocess.mean/std``), picks the class scores out of a tuple or
dict output (``output=``), and turns probabilities into log-probabilities (``scores=``), so that every
method explains one ``[N, K]`` score that behaves like logits.

>>> model = build_model("mypackage.nets:build", {"num_classes": 7})        # doctest: +SKIP
>>> load_state_into(model, load_state("net.pt"), "net.pt")                   # doctest: +SKIP
>>> scored = Scored(model, output=0, scores=detect_scores(model, (1, 48, 48), output=0)[0])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlens._checks import is_int
from cnnlens.data.preprocess import Preprocess

#: What a model's (selected) output is: logits, probabilities (ends in Softmax) or log-probabilities
#: (ends in LogSoftmax). Explanations use logits as they are and the log-probability otherwise.
SCORES = ("logits", "probabilities", "log_probabilities")
#: An output selector: an index into a tuple/list output, or a key of a dict output.
Output = int | str | None
#: Rows of a probe batch must sum to 1 (or their exponentials must) to this tolerance to count as probabilities.
PROBABILITY_TOLERANCE = 1e-4
#: Random images in the probe batch (besides an all-zero and an all-one image); seeded, so detection is
#: reproducible and the global random state is untouched.
PROBE_IMAGES = 6
#: Where the ``layer_prefix`` protocol's prefix comes from: the attribute :class:`Scored` holds the model in.
MODEL_ATTR = "model"


class ForeignModelError(ValueError):
    """A user's model, weights or output selector that cannot be used; ``option`` names the CLI option
    it is about (``--model``, ``--weights``, ``--output``, ``--input-shape``) so that the CLI can point at it."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


# ---------------------------------------------------------------------------------------------- building

def load_builder(spec: str) -> Callable[..., Any]:
    """The callable named by ``package.module:builder`` (the current folder is importable, as for uvicorn)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise ForeignModelError(f"expected package.module:builder (a function or class that returns the model); got {spec!r}",
                                "--model")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ForeignModelError(f"cannot import module {module_name!r} ({exc}); run from the folder that holds it, "
                                "or add that folder to PYTHONPATH", "--model") from None
    except Exception as exc:  # the user's module raised while importing: say so, with its message
        raise ForeignModelError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}", "--model") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise ForeignModelError(f"module {module_name!r} has no {attr!r}; callables it defines: {', '.join(found) or '(none)'}",
                                    "--model")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ForeignModelError(f"{spec} is a {type(obj).__name__}, not a function or class that builds the model", "--model")
    return obj


def builder_root(spec: str) -> str | None:
    """The folder that makes ``spec``'s module importable (stored with a run, so it loads from anywhere)."""
    module = sys.modules.get(spec.partition(":")[0])
    file = getattr(module, "__file__", None)
    if not file:
        return None
    root = Path(file).resolve().parent
    if Path(file).name == "__init__.py":
        root = root.parent
    for _ in range(spec.partition(":")[0].count(".")):
        root = root.parent
    return str(root)


def build_model(spec: str, kwargs: dict[str, Any] | None = None, *, root: str | None = None) -> nn.Module:
    """``builder(**kwargs)`` for the builder named by ``spec``, checked to be an ``nn.Module``.

    ``root``: a folder to make importable if the module is not (a run records where its builder was).
    """
    if root is not None and root not in sys.path and importlib.util.find_spec(spec.partition(":")[0].split(".")[0]) is None:
        sys.path.append(root)
    builder = load_builder(spec)
    kwargs = dict(kwargs or {})
    call = f"{spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = builder(**kwargs)
    except Exception as exc:
        extra = " with no arguments" if not kwargs else " with the --builder-kwargs"
        raise ForeignModelError(f"calling {call} failed: {type(exc).__name__}: {exc}. The builder is called{extra} and "
                                "must return the model", "--model") from None
    if not isinstance(model, nn.Module):
        raise ForeignModelError(f"{call} returned a {type(model).__name__}, not a torch.nn.Module", "--model")
    return model


# ----------------------------------------------------------------------------------------------- weights

def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``): a zip with ``constants.pkl`` and ``code/``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """A TorchScript archive on the CPU, in eval mode."""
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError for a corrupt or incompatible archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ForeignModelError(f"{path} is a TorchScript archive that torch.jit.load cannot read: {first}", "--weights") from None
    return model.eval()


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from ``torch.load(weights_only=True)`` (never unpickling code).

    A torch file may hold the state dict itself or a checkpoint dict with it under ``state_dict``/``model``.
    A whole model pickled with ``torch.save(model, FILE)`` is refused, with how to save its state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ForeignModelError(f"{path} does not exist", "--weights")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ForeignModelError(f"{path} is not a readable safetensors file ({exc})", "--weights") from None
    if is_torchscript(path):
        raise ForeignModelError(f"{path} is a TorchScript archive, not a state dict; give it without --model "
                                "(it holds its own code)", "--weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"a pickled {refused.group(1)}" if refused else "pickled Python objects"
        raise ForeignModelError(
            f"{path} cannot be read with torch.load(weights_only=True): it holds {what} (a whole model saved with "
            "torch.save(model, FILE)?), and cnnlens never runs code from a weights file. Where the model's class is "
            "defined, save its weights instead: torch.save(model.state_dict(), 'weights.pt') (or safetensors' "
            "save_file), and name the class's builder with --model package.module:builder", "--weights") from None
    except Exception as exc:  # RuntimeError for a corrupt zip, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ForeignModelError(f"{path} cannot be read with torch.load(weights_only=True): {first}. Save the weights with "
                                "torch.save(model.state_dict(), FILE) or safetensors", "--weights") from None

    def tensors(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if tensors(obj):
        return obj
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and tensors(obj.get(key)):
            return obj[key]
    raise ForeignModelError(f"{path} holds a {type(obj).__name__}, not a state dict (parameter name -> tensor), nor a "
                            "checkpoint with one under 'state_dict' or 'model'", "--weights")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError unless ``state`` has exactly ``model``'s keys, shapes and dtypes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: {tuple(state[k].shape)} {state[k].dtype} (model: {tuple(v.shape)} {v.dtype})"
             for k, v in expected.items() if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)]
    if missing or unexpected or wrong:
        parts = [f"{name} {items[:5]}{' ...' if len(items) > 5 else ''}"
                 for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape/dtype", wrong)) if items]
        raise ValueError(f"{source} does not fit the model {type(model).__name__}: " + "; ".join(parts))


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` after :func:`check_state_dict` (a clear error listing missing and
    unexpected keys); a ``module.`` prefix left by ``nn.DataParallel`` is taken off first."""
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in model.state_dict()):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        check_state_dict(model, state, source)
    except ValueError as exc:
        raise ForeignModelError(str(exc), "--weights") from None
    model.load_state_dict(state)


# ------------------------------------------------------------------------------------------- the adapter

def select_output(output: Any, selector: Output) -> Any:
    """The class scores in a model's ``output``: the output itself (``selector=None``), ``output[i]`` of a
    tuple/list, or ``output[key]`` of a dict (or an attribute, for output objects)."""
    if selector is None:
        return output
    if isinstance(output, torch.Tensor):
        raise ForeignModelError(f"output={selector!r} selects from a tuple or dict, but the model returns one tensor "
                                f"of shape {tuple(output.shape)}; leave the output selector out", "--output")
    if isinstance(output, (tuple, list)):
        if not isinstance(selector, int) or not -len(output) <= selector < len(output):
            raise ForeignModelError(f"output={selector!r}: the model returns a {type(output).__name__} of {len(output)} "
                                    f"({describe_output(output)}); pass an index 0..{len(output) - 1}", "--output")
        return output[selector]
    if isinstance(output, dict):
        if selector not in output:
            raise ForeignModelError(f"output={selector!r}: the model returns a dict with keys "
                                    f"{', '.join(map(str, output))} ({describe_output(output)}); pass one of them",
                                    "--output")
        return output[selector]
    if isinstance(selector, str) and hasattr(output, selector):
        return getattr(output, selector)
    raise ForeignModelError(f"output={selector!r} cannot select from a {type(output).__name__}", "--output")


def describe_output(output: Any) -> str:
    """``"[1, 7], [1, 7]"`` / ``"logits: [1, 7], aux: [1, 4]"``: the shapes in a model's output."""
    def shape(v: Any) -> str:
        return str(list(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__

    if isinstance(output, dict):
        return ", ".join(f"{k}: {shape(v)}" for k, v in output.items())
    if isinstance(output, (tuple, list)):
        return ", ".join(shape(v) for v in output)
    return shape(output)


class Scored(nn.Module):
    """The user's model as cnnlens explains it: ``[0,1]`` images in, one ``[N, K]`` logit-like score out.

    ``forward(x) = scores(select(model(normalize(x))))``: ``normalize`` is ``(x - mean) / std`` (the model's
    training preprocessing; none without ``mean``), ``select`` picks ``output`` (an index or key) from a
    tuple/dict output, and ``scores`` is the identity for logits and log-probabilities and ``log`` for
    probabilities (a model ending in ``nn.Softmax``), so ``softmax(forward(x))`` is the model's probability
    and gradients are those of the log-probability.

    The user's model is held unchanged as ``self.model``; layers keep the names the user wrote:
    ``layer_prefix`` tells cnnlens' layer lookup (``explain.core.get_layer``) to accept ``"conv1"`` for
    ``"model.conv1"``, and the summary shows the user's names.

    >>> scored = Scored(net, output="logits", mean=(0.5,), std=(0.25,))   # doctest: +SKIP
    >>> grad_cam(scored, images, layer="features.3")                      # doctest: +SKIP
    """

    layer_prefix = MODEL_ATTR + "."

    def __init__(self, model: nn.Module, *, output: Output = None, scores: str = "logits",
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        if scores not in SCORES:
            raise ValueError(f"scores must be one of {', '.join(SCORES)}; got {scores!r}")
        if output is not None and not (is_int(output) or isinstance(output, str)):
            raise TypeError(f"output must be an index (int), a key (str) or None, got {output!r}")
        preprocess = Preprocess(mean=mean, std=std)  # its checks: both or neither, positive std
        self.model = model
        self.output = output
        self.scores = scores
        if preprocess.normalizes:
            mean_t, std_t = preprocess.tensors()
            # buffers, so .to(device) moves them; not persistent: the run's weights are the user's model's
            self.register_buffer("mean", mean_t, persistent=False)
            self.register_buffer("std", std_t, persistent=False)
        else:
            self.mean = self.std = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = (x - self.mean) / self.std
        out = self.model(x)
        if self.output is not None:
            # indexing traces with torch.fx; a one-tensor output (a wrong config) is the clear error instead
            out = select_output(out, self.output) if isinstance(out, torch.Tensor) else out[self.output]
        if self.scores == "probabilities":
            out = out.clamp_min(torch.finfo(out.dtype).tiny).log()  # log 0 would be -inf, and NaN gradients
        return out

    @property
    def cam_layer(self) -> str | None:
        """The wrapped model's ``cam_layer`` (if it names one), under this adapter's prefix."""
        named = getattr(self.model, "cam_layer", None)
        return self.layer_prefix + named if isinstance(named, str) else None

    def extra_repr(self) -> str:
        parts = [f"output={self.output!r}"] if self.output is not None else []
        parts.append(f"scores={self.scores!r}")
        if self.mean is not None:
            parts.append(f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}")
        return ", ".join(parts)


def model_label(model: nn.Module, model_section: Any = None) -> str:
    """How a model is named for people: a built-in's name, an imported model's builder (``pkg.mod:build``,
    its class), "TorchScript archive" or "Keras model (its name)", else the class of the user's model
    (never the adapter's)."""
    section = model_section if isinstance(model_section, dict) else {}
    inner = getattr(model, MODEL_ATTR, model) if isinstance(model, Scored) else model
    if section.get("name"):
        return str(section["name"])
    if section.get("builder"):
        return f"{section['builder']} ({type(inner).__name__})"
    if section.get("torchscript") or isinstance(inner, torch.jit.ScriptModule):
        return "TorchScript archive"
    keras_model = getattr(inner, "keras_model", None)  # cnnlens.models.keras.KerasModel
    if section.get("keras") or keras_model is not None:
        return f"Keras model ({keras_model.name})" if keras_model is not None else "Keras model"
    return type(inner).__name__


def user_layer_name(model: nn.Module, name: str) -> str:
    """``name`` as the user spells it: without the adapter's ``layer_prefix`` (``"model.conv1"`` -> ``"conv1"``)."""
    prefix = getattr(model, "layer_prefix", "")
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


# ------------------------------------------------------------------------------------------- inspecting

def probe_batch(input_shape: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """An all-zero image, an all-one image and :data:`PROBE_IMAGES` seeded random ones, ``[N, C, H, W]``."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.zeros(1, *input_shape), torch.ones(1, *input_shape),
                   torch.rand(PROBE_IMAGES, *input_shape, generator=g)])
    return x.to(device)


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor) -> Any:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(x)
    finally:
        for m, mode in modes:
            m.training = mode


def detect_scores(model: nn.Module, input_shape: tuple[int, int, int], *, output: Output = None,
                  preprocess: Any = None) -> tuple[str, str | None]:
    """``(scores, note)``: whether ``model``'s (selected) output is logits, probabilities or log-probabilities,
    and a sentence saying so (None for logits).

    Probabilities: every row of a probe batch (:func:`probe_batch`) non-negative and summing to 1;
    log-probabilities: every row non-positive with ``logsumexp = 0``. A trailing ``nn.Softmax`` /
    ``nn.LogSoftmax`` module is named in the note. ``preprocess`` (a :class:`cnnlens.data.preprocess.Preprocess`)
    normalises the probe images as the model expects.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = probe_batch(input_shape, device)
    if preprocess is not None:
        x = preprocess.normalize(x)
    try:
        raw = _run(model, x)
    except Exception:  # the model cannot run on input_shape: check_scores says so, with the model's message
        return "logits", None
    out = select_output(raw, output)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.is_floating_point():
        return "logits", None  # check_scores says what is wrong with it
    out = out.double()
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    last = [type(m).__name__ for m in leaves]
    ends = f" (it ends in nn.{last[-1]})" if last and last[-1] in ("Softmax", "LogSoftmax") else ""
    keras_layer = getattr(leaves[-1], "keras_layer", None) if leaves else None  # cnnlens.models.keras views
    activation = getattr(getattr(keras_layer, "activation", None), "__name__", "")
    if activation in ("softmax", "sigmoid", "log_softmax"):
        ends = f" (its last Keras layer, {keras_layer.name}, applies {activation})"
    if bool((out >= -1e-7).all()) and bool(((out.sum(1) - 1).abs() < PROBABILITY_TOLERANCE).all()):
        return "probabilities", (f"the model outputs probabilities{ends}: every row of a probe batch is non-negative "
                                 "and sums to 1, so cnnlens explains the log-probability log p (the log of its output) "
                                 "as the class score, where logits are not available")
    if bool((out <= 1e-7).all()) and bool((out.logsumexp(1).abs() < PROBABILITY_TOLERANCE).all()):
        return "log_probabilities", (f"the model outputs log-probabilities{ends}: every row of a probe batch has "
                                     "logsumexp 0, so cnnlens explains its output, the log-probability log p, as the "
                                     "class score")
    return "logits", None


def check_scores(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Run ``model`` (the adapter) on a zero batch of ``input_shape``; raise :class:`ForeignModelError`
    unless it returns finite ``[1, num_classes]`` scores."""
    try:
        out = _run(model, torch.zeros(1, *input_shape, device=next((p.device for p in model.parameters()), "cpu")))
    except ForeignModelError:
        raise
    except Exception as exc:  # the user's forward raised: shape mismatch, a wrong channel count, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ForeignModelError(f"the model cannot run on a batch of one zero image of shape {tuple(input_shape)}: "
                                f"{type(exc).__name__}: {first}. Check --input-shape C,H,W", "--input-shape") from None
    if isinstance(out, (tuple, list, dict)):
        how = (f"--output 0..{len(out) - 1}" if not isinstance(out, dict) else f"--output with one of {', '.join(map(str, out))}")
        raise ForeignModelError(f"the model returns a {type(out).__name__} ({describe_output(out)}), not one tensor of "
                                f"class scores; choose the scores with {how}", "--output")
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ForeignModelError(f"the model returns {got} for one image, but [1, {num_classes}] class scores are needed "
                                f"for the {num_classes} classes; check --classes (and --output)", "--classes")
    if not bool(torch.isfinite(out).all()):
        raise ForeignModelError(f"the model returns non-finite scores ({out.tolist()}) on a zero image", "--weights")
