"""A layer table like Keras' ``model.summary()``, measured with forward hooks on one real forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnlens._checks import is_int
from cnnlens.models.foreign import user_layer_name


@dataclass(frozen=True)
class LayerRow:
    """One executed layer.

    Attributes:
        name: qualified module name, as ``model.named_modules()`` and every ``layer=`` argument spell it.
        type: the module's class name (``Conv2d``; a Keras layer's own, ``Conv2D``).
        output_shape: the output's shape for a batch of one, batch dimension included (``(1, 64, 48, 48)``);
            for a module returning several tensors, a tuple of such shapes.
        params: parameters held directly by this module (counted once, on its first call).
        trainable_params: how many of ``params`` have ``requires_grad``.
    """

    name: str
    type: str
    output_shape: tuple
    params: int
    trainable_params: int


def _shape(output: object) -> tuple:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, (list, tuple)):
        return tuple(_shape(o) for o in output)
    if isinstance(output, dict):
        return tuple(_shape(o) for o in output.values())
    return ()


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape:
        raise TypeError(f"input_shape must be a sequence of positive ints without the batch dimension, e.g. (1, 48, 48); got {input_shape!r}")
    if not all(is_int(v, 1) for v in input_shape):
        raise ValueError(f"input_shape must hold positive ints without the batch dimension, e.g. (1, 48, 48); got {tuple(input_shape)!r}")
    return tuple(input_shape)


def summary(model: nn.Module, input_shape: Sequence[int], *, device: torch.device | str | None = None) -> list[LayerRow]:
    """Run ``model`` once on a batch of one zero image of ``input_shape`` and list every layer it executed.

    Rows follow execution order. A row is written for every leaf module (and any module holding its own
    parameters); a module called twice gives two rows, its parameters counted on the first. The pass runs
    in eval mode under ``torch.no_grad`` (BatchNorm statistics stay untouched); every module's mode is
    restored and every hook removed afterwards, also on error. ``device`` defaults to the model's.
    TorchScript modules run compiled code that takes no hooks: their rows follow registration order,
    without output shapes. Layers inside an adapter (:class:`cnnlens.models.foreign.Scored`) keep the
    user's names.

    >>> rows = summary(build("small_cnn", in_channels=1, num_classes=7, input_size=48), (1, 48, 48))
    >>> rows[1].name, rows[1].output_shape, rows[1].params
    ('block1.conv', (1, 64, 48, 48), 576)
    """
    shape = _check_input_shape(input_shape)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    rows: list[LayerRow] = []
    seen: set[int] = set()

    def record(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            own = list(module.parameters(recurse=False)) if id(module) not in seen else []
            seen.add(id(module))
            kind = getattr(module, "layer_type", None)  # a Keras layer's view names its Keras class (Conv2D)
            rows.append(LayerRow(name=name, type=kind if isinstance(kind, str) else type(module).__name__,
                                 output_shape=_shape(output),
                                 params=sum(p.numel() for p in own),
                                 trainable_params=sum(p.numel() for p in own if p.requires_grad)))
        return hook

    modes = [(m, m.training) for m in model.modules()]
    handles: list[RemovableHandle] = []
    unhooked: list[tuple[str, nn.Module]] = []
    try:
        for name, module in model.named_modules():
            if module is model and next(model.children(), None) is not None:
                continue  # the whole model is not a layer, unless it is a single layer
            if next(module.children(), None) is None or next(module.parameters(recurse=False), None) is not None:
                name = user_layer_name(model, name) or type(module).__name__
                if isinstance(module, torch.jit.ScriptModule):  # compiled code: no hooks, so no output shapes
                    unhooked.append((name, module))
                else:
                    handles.append(module.register_forward_hook(record(name)))
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros((1, *shape), device=device))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"the model cannot take an input of shape {shape} (without the batch dimension): {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    for name, module in unhooked:  # in registration order, output shape unknown ("-")
        own = list(module.parameters(recurse=False))
        rows.append(LayerRow(name=name, type=module.original_name if hasattr(module, "original_name") else type(module).__name__,
                             output_shape=(), params=sum(p.numel() for p in own),
                             trainable_params=sum(p.numel() for p in own if p.requires_grad)))
    return rows


def total_params(model_or_rows: nn.Module | Sequence[LayerRow], *, trainable_only: bool = False) -> int:
    """Parameter count of a model (each shared parameter once) or of summary rows."""
    if isinstance(model_or_rows, nn.Module):
        return sum(p.numel() for p in model_or_rows.parameters() if p.requires_grad or not trainable_only)
    return sum(r.trainable_params if trainable_only else r.params for r in model_or_rows)


def _format_shape(shape: tuple) -> str:
    if shape and all(isinstance(s, tuple) for s in shape):
        return ", ".join(_format_shape(s) for s in shape)
    if not shape:
        return "-"
    return "(" + ", ".join(["N", *map(str, shape[1:])]) + ")"


def format_summary(rows: Sequence[LayerRow], *, model: nn.Module | None = None) -> str:
    """The rows as a text table with totals, like Keras' ``model.summary()``.

    With ``model``, a parameter count the rows miss (parameters of modules that never ran) is reported too.
    """
    header = ("Layer (type)", "Output shape", "Param #")
    body = [(f"{r.name} ({r.type})", _format_shape(r.output_shape), f"{r.params:,}") for r in rows]
    w0 = max(len(header[0]), *(len(b[0]) for b in body)) if body else len(header[0])
    w1 = max(len(header[1]), *(len(b[1]) for b in body)) if body else len(header[1])
    w2 = max(len(header[2]), *(len(b[2]) for b in body)) if body else len(header[2])
    width = w0 + w1 + w2 + 4
    lines = [f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>{w2}}", "=" * width]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in body]
    total, trainable = total_params(rows), total_params(rows, trainable_only=True)
    lines += ["=" * width, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}"]
    if model is not None and total_params(model) != total:
        lines.append(f"Parameters in modules that did not run: {total_params(model) - total:,}")
    lines.append("-" * width)
    return "\n".join(lines)
