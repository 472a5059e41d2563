"""The prepared copy of a model for explanation passes: folded BatchNorm, channels-last, bfloat16.

Everything here works on a *copy* of the user's model (the model itself is never modified) and keeps
the arithmetic of the explanation the same up to float rounding:

- :func:`fold_batchnorm`: ``bn(conv(x)) = conv'(x)`` with ``W' = W * g / sqrt(v + eps)``,
  ``b' = (b - m) * g / sqrt(v + eps) + beta`` (eval mode), found on the traced graph (``torch.fx``),
  written back into the copy's own module tree so every layer name still exists.
- :func:`prepare`: folded, ``channels_last`` weights (oneDNN then picks its NHWC kernels: measured
  ~1.8x faster convolutions on CPU), convolution weights reordered once for oneDNN's forward-only passes
  (:mod:`.packed`), eval mode, no parameter gradients. Any gradient method can take
  the prepared copy instead of the model: its input gradients are the same function.
- :func:`prepared`: the same copy, cached per model and rebuilt when the model changes; what the
  gradient methods run by default (``fast=True``).
- :func:`fast_forward`: the prepared copy's forward under ``torch.inference_mode``, optionally under
  bfloat16 autocast (``precision="bfloat16"``, opt-in; :func:`precision_agreement` reports what it
  changes).
- :func:`fast_scorer`: :func:`fast_forward` and a batch size measured once per shape
  (:func:`cnnlens.explain.accel.tuning.tuned_batch_size`).
- :func:`fold_conv_bn`: the one BatchNorm fold (also used by incremental occlusion's plans).

>>> forward, bs = fast_scorer(model, images[:1])   # prepared forward + batch size measured once per shape
>>> logits = forward(images[:bs])                   # under inference_mode
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cnnlens._ranks import rank_correlation
from cnnlens.explain.accel.packed import pack_convolutions
from cnnlens.explain.accel.tuning import architecture_key, tuned_batch_size
from cnnlens.explain.core import to_channels_last

PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> None:
    """Raise unless ``precision`` names a supported arithmetic."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")


def _traced_graph(model: nn.Module) -> torch.fx.Graph | None:
    """The model's ``torch.fx`` graph, or None where the forward cannot be traced symbolically."""
    try:
        return torch.fx.symbolic_trace(model).graph
    except Exception:  # fx raises many kinds (TraceError, TypeError, NotImplementedError...): not traceable
        return None


def foldable_pairs(model: nn.Module, keep: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` pairs where a ``BatchNorm2d`` reads only the output of a ``Conv2d``.

    Found on the ``torch.fx`` graph, so a pair is only folded when the forward really is
    ``bn(conv(x))`` with nothing else reading ``conv(x)``; each module must run exactly once. Pairs
    naming a layer in ``keep`` are left alone (Grad-CAM on a convolution needs its own output).
    Untraceable models give no pairs.
    """
    graph = _traced_graph(model)
    if graph is None:
        return []
    keep = set(keep)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and type(modules.get(src.target)) is nn.Conv2d and len(src.users) == 1):
            continue
        bn = modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None or len(node.args) != 1 or node.kwargs:
            continue  # without running statistics BN normalises by the batch: not a fixed affine map
        if calls[node.target] != 1 or calls[src.target] != 1 or {node.target, src.target} & keep:
            continue
        pairs.append((src.target, node.target))
    return pairs


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing ``bn(conv(x))`` with ``bn``'s running statistics (eval mode); both untouched.

    ``W' = W g / sqrt(v + eps)``, ``b' = (b - m) g / sqrt(v + eps) + beta``: the one place cnnlens folds a
    BatchNorm (the prepared copy's :func:`fold_batchnorm` and incremental occlusion's plans both call it).
    """
    if conv.training or bn.training:  # fuse_conv_bn_eval takes eval-mode modules: fold copies in eval mode
        conv, bn = copy.deepcopy(conv).eval(), copy.deepcopy(bn).eval()
    return fuse_conv_bn_eval(conv, bn)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def fold_batchnorm(model: nn.Module, *, keep: Iterable[str] = ()) -> nn.Module:
    """An eval-mode copy of ``model`` with each ``BatchNorm2d`` folded into the convolution before it.

    ``bn(conv(x)) = conv'(x)``: ``W' = W g / sqrt(v + eps)``, ``b' = (b - m) g / sqrt(v + eps) + beta``
    (Ioffe & Szegedy 2015 in inference mode). The folded BN becomes ``nn.Identity`` so every layer name
    of the model still exists. ``model`` itself is not touched. See :func:`foldable_pairs` for which
    pairs fold (``keep`` names layers to leave as they are).

    >>> fast = fold_batchnorm(model)
    >>> torch.testing.assert_close(fast(x), model.eval()(x))
    """
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for conv_name, bn_name in foldable_pairs(folded, keep):
        _set_submodule(folded, conv_name, fold_conv_bn(modules[conv_name], modules[bn_name]))
        _set_submodule(folded, bn_name, nn.Identity())
    return folded


def prepare(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True, pack: bool = True,
            keep: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` for explanation passes: eval mode, BatchNorm folded, channels-last weights,
    parameters without ``requires_grad``, and (``pack``, with ``channels_last``) convolutions whose forward-only
    CPU passes run on weights reordered once for oneDNN (:mod:`.packed`). Same function of the input up to
    float rounding.

    ``keep``: layer names that must keep their own outputs (Grad-CAM's layer). The user's model is
    untouched. Pass the copy to any method: ``saliency(prepare(model), images)``. Made under a caller's
    ``torch.inference_mode`` too, its tensors are ordinary ones: the cached copy serves later gradient passes,
    and its packed convolutions read their weights' versions.
    """
    with torch.inference_mode(False):
        fast = fold_batchnorm(model, keep=keep) if fold_bn else copy.deepcopy(model).eval()
        for p in fast.parameters():
            p.requires_grad_(False)
            if channels_last and p.dim() == 4:
                p.data = to_channels_last(p.data)
    if pack and channels_last:  # a packed convolution serves channels-last maps only
        pack_convolutions(fast)
    setattr(fast, PREPARED_ATTR, True)
    setattr(fast, CHANNELS_LAST_ATTR, channels_last)
    return fast


#: Set on every copy :func:`prepare` makes, so that preparing a prepared copy is a no-op.
PREPARED_ATTR = "_cnnlens_prepared"
#: Set on a prepared copy whose weights are channels-last (its inputs may then be made channels-last too).
CHANNELS_LAST_ATTR = "_cnnlens_channels_last"
#: A prepared copy is used only where its outputs on the first real batch match the model's to this
#: fraction of the largest |output| (float32 folding and channels-last kernels change ~1e-6 of it).
VERIFY_TOLERANCE = 1e-4
#: Images of the first real batch a prepared copy is checked on.
VERIFY_IMAGES = 2
#: model -> (its state when copied, its tensors' bit sums, {keep: _Copy}).
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

log = logging.getLogger("cnnlens.explain")


def clear_cache() -> None:
    """Forget every prepared copy (``cnnlens.explain.accel.clear_caches`` calls this)."""
    _PREPARED.clear()


@dataclasses.dataclass
class _Copy:
    """One prepared copy of a model (None: run the model itself) and the input shapes it was checked on."""

    module: nn.Module | None
    checked: set[tuple] = dataclasses.field(default_factory=set)


def has_hooks(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries a hook of the user's (a copy would not run it on their model)."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())


def _bits_sum(t: torch.Tensor, *, weighted: bool = False) -> torch.Tensor:
    """A fingerprint of ``t``'s values ``[3]`` (int64) that tells a changed tensor from an unchanged one
    without keeping a copy: the sum of its raw bits read as int64 words (wrapping around, so changing any
    one value changes it), for floating tensors the bits of the float sum of their first
    :data:`FLOAT_SUM_VALUES` values (all of them with ``weighted``), which a change of many values that
    balances in the words, such as every sign flipped, still moves (summing all of a large tensor's values
    would read it twice), and with ``weighted`` the values' bits summed weighted by their position (for a
    concatenation of several tensors: a change in one that the change of another balances still moves it,
    and so does a swap of two values; 0 otherwise). The words are summed without widening: 0.4 ms for 1.2M
    float32 values on one core, against 1.2 ms summing them as int32 into int64."""
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    floating = flat.is_floating_point()
    total = None
    if floating:
        head = flat if weighted else flat[:FLOAT_SUM_VALUES]
        total = head.sum().reshape(1).view(_INT_OF_WIDTH[flat.element_size()]).to(torch.int64)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.int8)
    elif floating:
        flat = flat.view(_INT_OF_WIDTH[flat.element_size()])
    per_word = 8 // flat.element_size()
    whole = flat.numel() - flat.numel() % per_word
    if per_word > 1 and whole and flat.storage_offset() % per_word == 0:
        words = flat[:whole].view(torch.int64).sum() + flat[whole:].sum(dtype=torch.int64)
    else:
        words = flat.sum(dtype=torch.int64)
    if weighted:
        wide = flat.to(torch.int64)
        spread = (wide * torch.arange(1, wide.numel() + 1, device=wide.device)).sum().reshape(1)
    else:
        spread = words.new_zeros(1)
    return torch.cat([words.reshape(1), total if total is not None else words.new_zeros(1), spread])


_INT_OF_WIDTH = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
#: Values of a tensor whose float sum joins its word sum (all of a small tensor's; ResNet-18's conv weights:
#: model_state 5.2 -> 3.4 ms a call with the float sum over a prefix, against over every value).
FLOAT_SUM_VALUES = 1 << 14
#: Tensors with fewer values than this are fingerprinted together, one concatenation per dtype and device
#: (ResNet-18's 109 BatchNorm vectors and biases: 1.9 ms one by one, mostly dispatch, against ~0.3 ms).
SMALL_TENSOR = 1 << 16


def model_state(model: nn.Module) -> tuple[tuple, torch.Tensor]:
    """What a prepared copy depends on: the module tree, each tensor's storage and version, and its values.

    In-place updates through the tensor (optimiser steps, ``load_state_dict``) bump ``_version``; a new
    ``p.data = ...`` changes the storage; writes through ``p.data`` bump nothing, so every value is read
    too, as each tensor's fingerprint (:func:`_bits_sum`; one pass over the weights: ~2 ms for ResNet-18's 11M
    values on one CPU core, 18-21 ms when the bits were summed as int32 into int64). The small tensors
    (BatchNorm's vectors, biases) are fingerprinted together, per dtype and device, position-weighted.
    """
    tensors = [*model.parameters(), *model.buffers()]
    key = (tuple((id(m), type(m)) for m in model.modules()),
           tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device) for t in tensors))
    if not tensors:
        return key, torch.zeros(0, dtype=torch.int64)
    device = tensors[0].device  # one device for the comparison: one synchronisation on a GPU, not one per tensor
    small: dict[tuple, list[torch.Tensor]] = {}
    prints = []
    for t in tensors:
        if t.numel() < SMALL_TENSOR:
            small.setdefault((t.dtype, t.device), []).append(t.detach().reshape(-1))
        else:
            prints.append(_bits_sum(t).to(device))
    prints += [_bits_sum(torch.cat(group), weighted=True).to(device) for group in small.values()]
    return key, torch.stack(prints)


def _tensors(output: object) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or a tuple / list / dict of them), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in _tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _tensors(v)]
    return []


def copy_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``module`` takes it fastest: channels-last for a channels-last prepared copy, else as it is."""
    return to_channels_last(x) if getattr(module, CHANNELS_LAST_ATTR, False) else x


def mismatch(model: nn.Module, copy_: nn.Module, example: torch.Tensor) -> str | None:
    """Why ``copy_`` cannot stand in for ``model`` on ``example`` (it raises, or its outputs differ), or None.

    Outputs are compared to :data:`VERIFY_TOLERANCE` of the model's largest |output|; where the model's
    own outputs are not finite there is nothing to compare and the copy is accepted.
    """
    x = example[:VERIFY_IMAGES].detach()
    with torch.no_grad():
        expected = _tensors(model(x))
        try:
            got = _tensors(copy_(copy_input(copy_, x)))
        except Exception as exc:  # the user's forward may reject the copy's layout in many ways (.view, asserts)
            return f"the copy raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected)):
        return "the copy's outputs have other shapes than the model's"
    for a, b in zip(got, expected):
        if not torch.isfinite(b).all() or not b.is_floating_point():
            continue
        scale = float(b.abs().max())
        diff = float((a.to(b.dtype) - b).abs().max())
        if not diff <= VERIFY_TOLERANCE * scale + 1e-12:
            return f"the copy's outputs differ from the model's by {diff:.3g} (largest |output| {scale:.3g})"
    return None


def prepared(model: nn.Module, keep: Iterable[str] = (), example: torch.Tensor | None = None) -> nn.Module:
    """:func:`prepare`'s copy of ``model``, checked against the model and reused while the model stays the same.

    What every method with ``fast=True`` runs. The copy is an optimisation the user never sees: given the
    first real batch as ``example``, the copy runs on its first :data:`VERIFY_IMAGES` images beside the model
    (once per input shape) and is used only where its outputs match (:func:`mismatch`). Where the
    channels-last copy raises (a ``.view`` after a convolution needs contiguous maps) or differs, a
    channels-last copy whose last map-producing module hands on contiguous maps is tried, then a
    copy with the model's own memory layout, then the model itself, with one log line
    (``cnnlens.explain``, warning) saying why. ``model`` itself is also returned for a model carrying
    hooks (they must see the passes) or one that cannot be copied; a prepared copy is returned as it is.
    The copy is rebuilt when the model's modules, parameters or buffers change (see :func:`model_state`) and
    dropped with the model.

    >>> grads = saliency(prepared(model, example=images), images)   # what saliency(model, images) does
    """
    if getattr(model, PREPARED_ATTR, False) or has_hooks(model):
        return model
    keep = tuple(sorted(keep))
    key, sample = model_state(model)
    entry = _PREPARED.get(model)
    if entry is None or entry[0] != key or not torch.equal(entry[1], sample):
        entry = (key, sample, {})
        _PREPARED[model] = entry
    copies: dict[tuple, _Copy] = entry[2]
    if keep not in copies:
        copies[keep] = _Copy(_make_copy(model, keep, channels_last=True))
    chosen = copies[keep]
    shape = None if example is None else (tuple(example.shape[1:]), example.dtype, str(example.device))
    if chosen.module is not None and shape is not None and shape not in chosen.checked:
        why = mismatch(model, chosen.module, example)
        if why is not None and getattr(chosen.module, CHANNELS_LAST_ATTR, False):
            plain = _make_copy(model, keep, channels_last=False)
            mixed, head = _channels_last_until_head(model, keep, plain, example)
            if mixed is not None:
                log.info("cnnlens: %s: channels-last copy not used whole (%s); channels-last up to %r, the "
                         "model's own layout after it", type(model).__name__, why, head)
                chosen.module, why = mixed, None
            elif plain is not None and mismatch(model, plain, example) is None:
                log.info("cnnlens: %s: channels-last copy not used (%s); using a copy in the model's own layout",
                         type(model).__name__, why)
                chosen.module, why = plain, None
        if why is not None:
            log.warning("cnnlens: the fast path does not apply to this %s (%s); running the model itself",
                        type(model).__name__, why)
            chosen.module = None
        chosen.checked.add(shape)
    return chosen.module if chosen.module is not None else model


class _ContiguousAt:
    """Hooks that hand on a module's output contiguous at its ``call``-th run (from 1) in each forward pass of
    ``root``, the other runs untouched: a ReLU module reused after every convolution keeps the earlier maps
    channels-last."""

    def __init__(self, root: nn.Module, module: nn.Module, call: int) -> None:
        self.call, self.runs = call, 0
        root.register_forward_pre_hook(self._reset)
        module.register_forward_hook(self._after)

    def _reset(self, module: nn.Module, inputs: tuple) -> None:
        self.runs = 0

    def _after(self, module: nn.Module, inputs: tuple, output: object) -> object:
        self.runs += 1
        if self.runs == self.call and isinstance(output, torch.Tensor):
            return output.contiguous()
        return output


def _last_map_run(copy_: nn.Module, example: torch.Tensor) -> tuple[str, int] | None:
    """The last module run (on ``example``'s first image) whose output is a 4-D map, in ``copy_`` (one of
    cnnlens's own copies: the hooks are put on it and taken off here): its name and which of its runs in the
    pass that was (a reused module runs several times); None where the copy raises or outputs no map."""
    names = {m: n for n, m in copy_.named_modules() if n}
    seen: list[str] = []

    def note(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            seen.append(names[module])

    handles = [m.register_forward_hook(note) for m in names]
    try:
        with torch.no_grad():
            copy_(example[:1].detach())
    except Exception:  # noqa: BLE001 (the copy's own check says what is wrong with it)
        return None
    finally:
        for h in handles:
            h.remove()
    return (seen[-1], seen.count(seen[-1])) if seen else None


def _channels_last_until_head(model: nn.Module, keep: tuple, plain: nn.Module | None, example: torch.Tensor
                              ) -> tuple[nn.Module | None, str | None]:
    """A channels-last copy whose last run of a map-producing module hands on contiguous maps, and that
    module's name, where that copy computes the model's outputs; else ``(None, None)``.

    The models people write flatten their last maps with ``x.view(x.size(0), -1)``, which a channels-last map
    refuses; the convolutions before it are where channels-last pays (fer_mlp's five: 1.44 against 2.05 ms
    per image on one CPU thread)."""
    last = _last_map_run(plain, example) if plain is not None else None
    if last is None:
        return None, None
    mixed = _make_copy(model, keep, channels_last=True)
    if mixed is None:
        return None, None
    _ContiguousAt(mixed, mixed.get_submodule(last[0]), last[1])
    return (mixed, last[0]) if mismatch(model, mixed, example) is None else (None, None)


def _make_copy(model: nn.Module, keep: tuple, *, channels_last: bool) -> nn.Module | None:
    """:func:`prepare`'s copy, or None (with a log line) where the model cannot be copied or folded."""
    try:
        return prepare(model, keep=keep, channels_last=channels_last)
    except Exception as exc:  # deepcopy / fx of an arbitrary user module can fail in many ways: run the model itself
        log.warning("cnnlens: the fast path does not apply to this %s (preparing a copy raised %s: %s); "
                    "running the model itself", type(model).__name__, type(exc).__name__, exc)
        return None


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``precision="bfloat16"``, a no-op context for float32."""
    check_precision(precision)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def fast_forward(model: nn.Module, example: torch.Tensor | None = None, *, precision: str = "float32",
                 fast: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits ``[B,K]`` under ``torch.inference_mode`` (float32 in bfloat16 mode) for scoring perturbed images.

    ``fast`` (default): the :func:`prepared` copy checked on ``example`` (folded BatchNorm, channels-last
    where the model accepts it), else the model itself; ``fast=False``: the model itself, as it is.
    ``precision="bfloat16"`` runs under bfloat16 autocast (opt-in: see :func:`precision_agreement`).

    >>> forward = fast_forward(model, images, precision="bfloat16")
    >>> logits = forward(images)
    """
    check_precision(precision)
    net = prepared(model, example=example) if fast else model

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(x.device, precision):
            out = net(copy_input(net, x))
        return out.float() if precision == "bfloat16" else out

    return forward


def fast_scorer(model: nn.Module, example: torch.Tensor, batch_size: int | None = None, *,
                precision: str = "float32") -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``(forward, batch_size)`` for scoring perturbed images: :func:`fast_forward` and, when
    ``batch_size`` is None, the measured best batch size for this architecture and image shape.

    >>> forward, bs = fast_scorer(model, images[:1])
    """
    forward = fast_forward(model, example, precision=precision)
    if batch_size is None:
        batch_size = tuned_batch_size(forward, example[:1], key=("forward", precision, *architecture_key(model)))
    return forward, batch_size


def precision_agreement(reference_maps: torch.Tensor, maps: torch.Tensor,
                        reference_logits: torch.Tensor | None = None,
                        logits: torch.Tensor | None = None) -> dict[str, float]:
    """How far a lower-precision explanation is from the float32 one.

    Returns ``spearman_mean`` / ``spearman_min`` (rank correlation of each image's two maps),
    ``max_abs_diff`` and ``max_rel_diff`` (over each map's largest value), and, given logits of the
    same images, ``changed_predictions`` (fraction of images whose predicted class changed).
    """
    rho = rank_correlation(reference_maps, maps)
    scale = reference_maps.reshape(reference_maps.shape[0], -1).abs().amax(1).clamp_min(1e-12)
    diff = (reference_maps.float() - maps.float()).reshape(maps.shape[0], -1).abs().amax(1)
    out = {"spearman_mean": float(rho.mean()), "spearman_min": float(rho.min()),
           "max_abs_diff": float(diff.max()), "max_rel_diff": float((diff / scale).max())}
    if reference_logits is not None and logits is not None:
        out["changed_predictions"] = float((reference_logits.argmax(1) != logits.argmax(1)).float().mean())
    return out
