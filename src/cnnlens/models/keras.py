"""Keras models in cnnlens: a Keras 3 model run on the PyTorch backend, seen as an ordinary ``nn.Module``.

With ``KERAS_BACKEND=torch`` a Keras model computes with torch tensors and autograd, so every cnnlens
method can run through it. :class:`KerasModel` is the adapter that makes it look like a PyTorch model:

- it takes ``[N, C, H, W]`` images and hands the Keras model its own layout (``[N, H, W, C]`` for the
  usual ``channels_last``);
- every Keras layer is a submodule under its Keras name (``conv2d_7``), a view that holds the layer's
  variables as its parameters (the same tensors, counted once) and presents 4-D tensors as ``[N, C, h, w]``:
  the graph runs through these views, so a forward hook on ``conv2d_7`` sees its input and output in
  cnnlens's layout, and a tensor a hook returns replaces the layer's output downstream;
- Conv2D, Dense, BatchNormalization and ReLU views are also ``nn.Conv2d`` / ``nn.Linear`` /
  ``nn.BatchNorm2d`` / ``nn.ReLU`` (with ``weight`` etc. as views of the Keras variables in PyTorch's
  layout), so Grad-CAM's default layer, CAM's head and the report's filter layers are found as for a
  PyTorch model; their output is the Keras layer's (a fused ``activation="relu"`` included);
- layers always run with ``training=False`` (BatchNorm uses its moving statistics, Dropout does nothing);
- a one-unit sigmoid output becomes the two class probabilities ``[1 - p, p]``.

Wrapped in :class:`cnnlens.models.foreign.Scored`, a probability output (softmax, or the sigmoid pair) is
explained as its log-probability, as for an imported PyTorch model ending in ``nn.Softmax``.

Files are read with ``keras.saving.load_model(FILE, compile=False)`` in Keras's safe mode: a file whose
layers carry Python code (a ``Lambda`` layer's pickled function) is refused unless ``trust_code=True``.

>>> net = KerasModel(load_keras("fer.h5"))                        # doctest: +SKIP
>>> grad_cam(Scored(net, scores="probabilities"), images, layer="conv2d_7")   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from cnnlens._types import PathArg
from cnnlens.models.foreign import ForeignModelError

#: The Keras backend cnnlens runs Keras models on.
BACKEND = "torch"
#: File kinds ``keras.saving.load_model`` reads: the Keras 3 zip archive and the legacy HDF5 file.
SUFFIXES = (".keras", ".h5", ".hdf5")
#: How to get Keras when it is missing.
INSTALL = "pip install 'cnnlens[keras]'"
#: The CLI option errors about the Keras file point at.
OPTION = "--keras"


# ----------------------------------------------------------------------------------------------- loading

def require_keras() -> ModuleType:
    """The ``keras`` module on the PyTorch backend (``KERAS_BACKEND`` is set to ``torch`` before the import).

    Raises :class:`ForeignModelError` when Keras 3 is not installed (saying how to install it), or when
    Keras was already imported, or is configured, with another backend.
    """
    wanted = os.environ.setdefault("KERAS_BACKEND", BACKEND)
    if "keras" not in sys.modules and wanted != BACKEND:
        raise ForeignModelError(f"KERAS_BACKEND={wanted} is set, but cnnlens runs Keras models on the PyTorch "
                                f"backend: unset it or set KERAS_BACKEND={BACKEND}", OPTION)
    try:
        import keras
    except ImportError as exc:
        raise ForeignModelError(f"reading a Keras model needs Keras 3 ({exc}); install it with {INSTALL}", OPTION) from None
    version = getattr(keras, "__version__", "0")
    parts = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:2])
    if not (3, 12) <= parts < (4, 0):
        raise ForeignModelError(f"cnnlens reads Keras models with Keras 3.12 or later (earlier versions' safe mode "
                                f"could be bypassed by a crafted file), found Keras {version}; install it with {INSTALL}",
                                OPTION)
    backend = keras.backend.backend()
    if backend != BACKEND:
        raise ForeignModelError(f"Keras was imported with the {backend!r} backend before cnnlens set KERAS_BACKEND="
                                f"{BACKEND}; cnnlens runs Keras models on PyTorch: start Python with "
                                f"KERAS_BACKEND={BACKEND} (or import cnnlens's Keras support before keras)", OPTION)
    return keras


def load_keras(path: PathArg, *, trust_code: bool = False) -> Any:
    """The Keras model in ``path`` (``.keras`` or legacy ``.h5``), on the CPU, not compiled.

    Loaded with ``keras.saving.load_model(path, compile=False, safe_mode=not trust_code)``: without
    ``trust_code`` a layer holding Python code (a ``Lambda`` layer's function, stored as bytecode) is
    refused, since loading it would run that code. Raises :class:`ForeignModelError` saying why.
    """
    path = Path(path)
    if not path.is_file():
        what = ("a folder (a TensorFlow SavedModel?): Keras 3 reads .keras and .h5 files; in TensorFlow, "
                "save the model with model.save('model.keras')") if path.is_dir() else "missing"
        raise ForeignModelError(f"{path} is {what}", OPTION)
    if path.suffix.lower() not in SUFFIXES:
        raise ForeignModelError(f"{path} is not a Keras model file: expected {', '.join(SUFFIXES)} "
                                "(model.save('model.keras'), or a legacy model.save('model.h5'))", OPTION)
    keras = require_keras()
    try:
        with keras.device("cpu"):
            return keras.saving.load_model(str(path), compile=False, safe_mode=not trust_code)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError for bad, unsafe or custom files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "safe_mode" in str(exc) or "unsafe_deserialization" in str(exc):
            raise ForeignModelError(
                f"{path} holds Python code inside a layer (Keras: {first}). Loading it would run that code, so "
                "cnnlens refuses; if you trust the file's source, pass --trust-keras-code (trust_code=True)",
                "--trust-keras-code") from None
        if "locate" in str(exc) or "Unknown" in str(exc):
            raise ForeignModelError(f"{path} uses a layer or object that is not part of Keras ({first}); cnnlens "
                                    "loads models built from Keras's own layers", OPTION) from None
        raise ForeignModelError(f"Keras cannot load {path}: {type(exc).__name__}: {first}", OPTION) from None


# ------------------------------------------------------------------------------------------------ layout

def _map(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor in ``obj`` (a tensor, or lists / tuples / dicts of them)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _to_cnnlens(t: torch.Tensor) -> torch.Tensor:
    """A channels-last 4-D tensor ``[N,h,w,C]`` as ``[N,C,h,w]`` (a view); other tensors as they are."""
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t


def _to_keras(t: torch.Tensor) -> torch.Tensor:
    """``[N,C,h,w]`` back to channels-last ``[N,h,w,C]`` (a view); other tensors as they are."""
    return t.permute(0, 2, 3, 1) if t.dim() == 4 else t


def _takes(layer: Any, arg: str) -> bool:
    try:
        return arg in inspect.signature(layer.call).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _graph(model: Any) -> Any:
    """The functional graph a Sequential or functional model runs (None for a subclassed model).

    Its ``_run_through_graph(inputs, operation_fn)`` is what Keras's own ``Functional.call`` runs, calling
    ``operation_fn(layer)`` for each node: cnnlens passes its views there (:func:`_run`). The method is
    Keras-internal (Keras 3.0 to 3.15 at least); the tests run every model through it."""
    graph = getattr(model, "_functional", None) or model  # a Sequential runs its inner functional model
    return graph if hasattr(graph, "_run_through_graph") and hasattr(graph, "operations") else None


# ------------------------------------------------------------------------------------------------- views

class KerasLayer(nn.Module):
    """One Keras layer as a submodule: its variables as parameters, its tensors in cnnlens's layout.

    ``forward(*inputs)`` takes the layer's inputs with 4-D tensors as ``[N,C,h,w]`` (in a channels-last
    model), hands them to the Keras layer in its layout with ``training=False``, and returns its output
    the same way. ``keras_layer`` is the Keras layer itself (not a submodule: its variables are this
    module's parameters, ``kernel``, ``bias``, ``gamma``, ... by their Keras names).
    """

    def __init__(self, layer: Any, channels_last: bool) -> None:
        nn.Module.__init__(self)
        object.__setattr__(self, "keras_layer", layer)  # a torch module itself: kept out of the module tree
        self.channels_last = channels_last
        self.layer_type = type(layer).__name__  # the summary's "type" column: Conv2D, as Keras calls it
        self.takes_training = _takes(layer, "training")
        if _graph(layer) is None:  # a nested model's variables are held by its own layers' views
            for variable in layer.weights:
                value = variable.value
                if isinstance(value, nn.Parameter) and value.is_floating_point():
                    name = variable.name
                    while hasattr(self, name):  # a Keras variable named like an attribute ("weight")
                        name += "_"
                    self.register_parameter(name, value)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if self.channels_last:
            inputs, kwargs = _map(inputs, _to_keras), _map(kwargs, _to_keras)
        if self.takes_training:
            kwargs["training"] = False
        out = self.keras_layer(*inputs, **kwargs)
        return _map(out, _to_cnnlens) if self.channels_last else out

    def keras(self, *inputs: Any, **kwargs: Any) -> Any:
        """Run this view on tensors in the Keras layout (how the graph calls it): through ``self(...)``, so
        its hooks fire on the cnnlens layout."""
        if self.channels_last:
            inputs, kwargs = _map(inputs, _to_cnnlens), _map(kwargs, _to_cnnlens)
        out = self(*inputs, **kwargs)
        return _map(out, _to_keras) if self.channels_last else out

    def extra_repr(self) -> str:
        return f"{self.layer_type} {self.keras_layer.name!r}"


class KerasConv2D(KerasLayer, nn.Conv2d):
    """A Keras ``Conv2D`` as an ``nn.Conv2d``: ``weight`` is its kernel ``[kh,kw,in,out]`` as ``[out,in,kh,kw]``.
    Its output is the Keras layer's, its ``activation`` applied."""

    def __init__(self, layer: Any, channels_last: bool) -> None:
        KerasLayer.__init__(self, layer, channels_last)
        kh, kw, cin, cout = (int(s) for s in layer.kernel.shape)
        self.in_channels, self.out_channels = cin * int(getattr(layer, "groups", 1)), cout
        self.kernel_size, self.stride = (kh, kw), tuple(layer.strides)
        self.dilation, self.groups = tuple(layer.dilation_rate), int(getattr(layer, "groups", 1))
        self.padding, self.padding_mode = layer.padding, "zeros"
        self.transposed, self.output_padding = False, (0, 0)
        if "bias" not in self._parameters:  # use_bias=False: torch's convention, bias None
            self.bias = None

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.kernel.permute(3, 2, 0, 1)


class KerasDense(KerasLayer, nn.Linear):
    """A Keras ``Dense`` as an ``nn.Linear``: ``weight`` is its kernel ``[in,out]`` transposed. Its output is
    the Keras layer's, its ``activation`` applied (CAM needs a Dense without one)."""

    def __init__(self, layer: Any, channels_last: bool) -> None:
        KerasLayer.__init__(self, layer, channels_last)
        self.in_features, self.out_features = (int(s) for s in layer.kernel.shape)
        if "bias" not in self._parameters:
            self.bias = None

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.kernel.t()


class KerasBatchNorm(KerasLayer, nn.BatchNorm2d):
    """A Keras ``BatchNormalization`` over channels as an ``nn.BatchNorm2d`` in eval mode: ``weight``,
    ``bias``, ``running_mean``, ``running_var`` are its ``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance``; ``reset_parameters`` sets them to 1, 0, 0, 1 (what re-initialising means)."""

    def __init__(self, layer: Any, channels_last: bool) -> None:
        KerasLayer.__init__(self, layer, channels_last)
        self.num_features, self.eps, self.momentum = int(layer.moving_mean.shape[0]), float(layer.epsilon), None
        self.affine, self.track_running_stats = bool(layer.scale and layer.center), True

    @property
    def weight(self) -> torch.Tensor | None:  # type: ignore[override]
        return self._parameters.get("gamma")

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return self._parameters.get("beta")

    @property
    def running_mean(self) -> torch.Tensor:  # type: ignore[override]
        return self._parameters["moving_mean"]

    @property
    def running_var(self) -> torch.Tensor:  # type: ignore[override]
        return self._parameters["moving_variance"]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # torch's BatchNorm adds a num_batches_tracked entry to old state dicts; Keras's variables have none
        nn.Module._load_from_state_dict(self, *args, **kwargs)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, value in (("gamma", 1.0), ("beta", 0.0), ("moving_mean", 0.0), ("moving_variance", 1.0)):
            if name in self._parameters:
                self._parameters[name].fill_(value)


class KerasReLU(KerasLayer, nn.ReLU):
    """A Keras ``ReLU`` layer (or ``Activation("relu")``) with no slope, cap or threshold, as an ``nn.ReLU``."""

    def __init__(self, layer: Any, channels_last: bool) -> None:
        KerasLayer.__init__(self, layer, channels_last)
        self.inplace = False


class KerasSubmodel(KerasLayer):
    """A Keras model used as a layer of another: its own layers are this module's submodules."""

    def __init__(self, layer: Any, channels_last: bool) -> None:
        KerasLayer.__init__(self, layer, channels_last)
        object.__setattr__(self, "views", _add_views(self, layer, channels_last))  # not a module: id -> view

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if self.channels_last:
            inputs = _map(inputs, _to_keras)
        out = _run(self.keras_layer, self.views, inputs[0] if len(inputs) == 1 else list(inputs))
        return _map(out, _to_cnnlens) if self.channels_last else out


def _view_class(layer: Any) -> type[KerasLayer]:
    kind = type(layer).__name__
    if _graph(layer) is not None:
        return KerasSubmodel
    if kind == "Conv2D" and len(layer.kernel.shape) == 4:
        return KerasConv2D
    if kind == "Dense" and len(layer.kernel.shape) == 2:
        return KerasDense
    if kind == "BatchNormalization" and layer.axis in (-1, 3) and "moving_mean" in {v.name for v in layer.weights}:
        return KerasBatchNorm
    relu = (kind == "ReLU" and not layer.negative_slope and layer.max_value is None and not layer.threshold) or \
           (kind == "Activation" and getattr(layer.activation, "__name__", "") == "relu")
    return KerasReLU if relu else KerasLayer


def _add_views(owner: nn.Module, model: Any, channels_last: bool) -> dict[int, KerasLayer]:
    """A view per layer of ``model``'s graph, added to ``owner`` under the layer's Keras name; id(layer) -> view."""
    views: dict[int, KerasLayer] = {}
    graph = _graph(model)
    keras = require_keras()
    for op in graph.operations:
        if not isinstance(op, keras.layers.Layer) or isinstance(op, keras.layers.InputLayer) or id(op) in views:
            continue
        name = op.name.replace(".", "_") or type(op).__name__
        while hasattr(owner, name):  # a Keras name that is a torch attribute ("training", "forward")
            name += "_"
        view = _view_class(op)(op, channels_last)
        owner.add_module(name, view)
        views[id(op)] = view
    return views


def _run(model: Any, views: dict[int, KerasLayer], inputs: Any) -> Any:
    """``model``'s graph on ``inputs`` (Keras layout), each layer called through its view."""
    def operation(op: Any) -> Callable[..., Any]:
        view = views.get(id(op))
        if view is not None:
            return view.keras
        if _takes(op, "training"):
            return lambda *args, **kwargs: op(*args, training=False, **kwargs)
        return op

    graph = _graph(model)
    out = graph._run_through_graph(inputs if isinstance(inputs, list) else [inputs], operation_fn=operation)
    return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out


# ---------------------------------------------------------------------------------------------- adapter

class KerasModel(nn.Module):
    """A Keras model (Sequential or functional, one image input) as an ``nn.Module`` taking ``[N,C,H,W]``.

    See the module docstring. ``keras_model`` is the Keras model (not a submodule: its variables are the
    parameters of the layer views, each counted once). ``input_shape`` is ``(C, H, W)``; ``binary_sigmoid``
    says that a one-unit sigmoid output is returned as ``[1 - p, p]``.

    >>> net = KerasModel(keras_model)                 # doctest: +SKIP
    >>> net(torch.rand(2, 1, 48, 48)).shape           # doctest: +SKIP
    torch.Size([2, 7])
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        keras = require_keras()
        if not isinstance(model, keras.Model):
            raise TypeError(f"expected a keras.Model, got {type(model).__name__}")
        if _graph(model) is None:
            raise ForeignModelError(f"{model.name} is a subclassed Keras model ({type(model).__name__}); cnnlens "
                                    "reads Sequential and functional models, whose layers it can see", OPTION)
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ForeignModelError(f"{model.name} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                                    "cnnlens explains models with one image input and one output of class scores",
                                    OPTION)
        shape = tuple(model.inputs[0].shape)
        if len(shape) != 4:
            raise ForeignModelError(f"{model.name} takes inputs of shape {shape}; cnnlens explains image models "
                                    "(batch, height, width, channels)", OPTION)
        formats = [getattr(op, "data_format", None) for op in _graph(model).operations]
        layout = next((f for f in formats if f in ("channels_last", "channels_first")), keras.config.image_data_format())
        self.channels_last = layout == "channels_last"
        object.__setattr__(self, "keras_model", model)
        self.input_shape = (shape[3], shape[1], shape[2]) if self.channels_last else shape[1:]
        out = tuple(model.outputs[0].shape)
        last = model.layers[-1] if model.layers else None
        self.binary_sigmoid = out[1:] == (1,) and getattr(getattr(last, "activation", None), "__name__", "") == "sigmoid"
        object.__setattr__(self, "views", _add_views(self, model, self.channels_last))  # not a module: id -> view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # a torch.fx Proxy: the Keras layers run eagerly, on real tensors
            raise TypeError(f"a Keras model runs on tensors, not {type(x).__name__} (torch.fx cannot trace it)")
        keras = require_keras()
        with keras.device(str(x.device)):  # tensors Keras makes go where the input is
            out = _run(self.keras_model, self.views, _to_keras(x) if self.channels_last else x)
        if self.binary_sigmoid:
            out = torch.cat([1 - out, out], dim=1)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> KerasModel:
        """An independent copy (the Keras model deep-copied, its views made anew), in this one's modes."""
        clone = KerasModel(copy.deepcopy(self.keras_model, memo))
        for (_, mine), (_, theirs) in zip(self.named_modules(), clone.named_modules()):
            theirs.training = mine.training
        for mine, theirs in zip(self.parameters(), clone.parameters()):
            theirs.requires_grad_(mine.requires_grad)
        return clone

    def extra_repr(self) -> str:
        return f"Keras model {self.keras_model.name!r}, input {'x'.join(map(str, self.input_shape))}"


#: ``--normalize`` for a model trained on 0..255 pixels: ``(x - 0) / (1/255)`` gives them back from ``[0, 1]``.
PIXELS_0_255 = "0/0.00392156862745098"


def rescaling_note(model: KerasModel, normalizes: bool) -> str | None:
    """A sentence when the model starts with ``Rescaling(1/255)`` (it expects 0..255 pixels, cnnlens gives
    ``[0, 1]``) and no normalisation was given; else None."""
    first = next((layer for layer in model.keras_model.layers if type(layer).__name__ != "InputLayer"), None)
    if normalizes or type(first).__name__ != "Rescaling" or float(getattr(first, "offset", 0.0) or 0.0) != 0.0:
        return None
    scale = getattr(first, "scale", None)
    if not isinstance(scale, (int, float)) or abs(scale * 255 - 1) > 1e-6:
        return None
    return (f"the model starts with Rescaling(scale=1/255): it expects pixel values 0..255, and cnnlens gives it "
            f"[0, 1] images; if it was trained on 0..255 pixels, import it again with --normalize {PIXELS_0_255}")


def is_keras_file(path: PathArg) -> bool:
    """Whether ``path`` names a Keras model file by its suffix (``.keras``, ``.h5``, ``.hdf5``)."""
    return Path(path).suffix.lower() in SUFFIXES
