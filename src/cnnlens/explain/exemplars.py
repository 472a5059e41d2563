"""Dataset exemplars (Zeiler & Fergus 2014; Olah et al. 2017): for every filter of a layer, the real images
that excite it most, the crop at its receptive field where it fires, and which filters matter.

One streaming pass over batches of images (for one layer or several at once) keeps, per channel, a running top-k of the images' peak
activation (the highest over positions), where it was, and that receptive-field crop; and the channel's
mean activation, the share of images it fires on (peak > 0) and, for a chosen class, its mean
gradient x activation contribution to that class's logit. Memory does not grow with the number of images.
:func:`choose_filters` picks the filters to show by one of those rules and names the ones that never fire.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlens._checks import check_count, is_int
from cnnlens.explain import accel, core
from cnnlens.explain.receptive_field import ReceptiveField, receptive_field

RULES = ("activation", "contribution")


@dataclass(frozen=True)
class Exemplars:
    """Per channel of one layer, the top-k images of a split and the channel's statistics.

    Attributes:
        layer: the layer's name.
        values: ``[C,k]`` peak activation (highest over positions) of each exemplar, highest first.
        index: ``[C,k]`` position of each exemplar in the stream of images (-1 where fewer than k were seen).
        position: ``[C,k,2]`` ``(row, column)`` on the layer's output where the peak is.
        crops: ``[C,k,ch,rh,rw]`` the receptive field there, cut from the image (gray outside it).
        mean: ``[C]`` mean activation over images and positions.
        firing: ``[C]`` share of images whose peak is > 0.
        peak: ``[C]`` highest activation seen.
        contribution: ``[C]`` mean over images of ``sum_{h,w} dlogit_target/dA * A``, or None without a target.
        target: the class of ``contribution``, or None.
        field: the layer's receptive field.
        count: images seen.
    """

    layer: str
    values: torch.Tensor
    index: torch.Tensor
    position: torch.Tensor
    crops: torch.Tensor
    mean: torch.Tensor
    firing: torch.Tensor
    peak: torch.Tensor
    contribution: torch.Tensor | None
    target: int | None
    field: ReceptiveField
    count: int


class _Stop(Exception):
    """Raised once the layer has run when no logit is needed."""


def dataset_exemplars(model: nn.Module, layer: str, batches: Iterable[torch.Tensor], *, k: int = 6,
                      target: int | None = None, field: ReceptiveField | None = None, fast: bool = True) -> Exemplars:
    """Stream ``batches`` (each ``[B,C,H,W]`` float in [0,1]) through ``model`` once and keep, per channel
    of ``layer``, the ``k`` images with the highest peak activation ``max_{h,w} A[c,h,w]`` (ties: the
    earlier image), the peak's position and its receptive-field crop; and each channel's mean activation,
    firing share and (with ``target``) mean contribution ``sum_{h,w} dS_target/dA * A`` to that logit
    (gradient x activation, Shrikumar et al. 2016, per channel). ``field``: the layer's receptive field
    (measured by :func:`~cnnlens.explain.receptive_field.receptive_field` when None). ``fast`` (default):
    the folded-BatchNorm, channels-last copy of the model (:func:`cnnlens.explain.accel.prepared`, the layer
    kept as it is); ``fast=False``: the model itself. Lucent has no equivalent; Lucid's notebooks sort a
    dataset by activation the same way. The model is left as it was. For several layers in one pass, see
    :func:`layer_exemplars`.

    >>> ex = dataset_exemplars(model, "block2.relu", (images[i:i + 64] for i in range(0, len(images), 64)))
    >>> ex.crops[5, 0]   # the patch that excites filter 5 most
    """
    name = core.layer_name(model, layer)
    return layer_exemplars(model, [name], batches, k=k, target=target, fields=None if field is None else {name: field},
                           fast=fast)[name]


def layer_exemplars(model: nn.Module, layers: Sequence[str], batches: Iterable[torch.Tensor], *, k: int = 6,
                    target: int | None = None, fields: Mapping[str, ReceptiveField] | None = None,
                    fast: bool = True) -> dict[str, Exemplars]:
    """:func:`dataset_exemplars` of every layer in ``layers``, from one pass over ``batches``: each batch runs
    the model once, up to the last of the layers (the whole model with ``target``). ``fields``: layer name
    -> receptive field (measured for the layers it lacks). Returns layer name -> :class:`Exemplars`.

    >>> ex = layer_exemplars(model, ["block2.relu", "block3.relu"], batches)
    >>> ex["block3.relu"].values[:, 0]   # each block3 filter's best peak
    """
    check_count(k, "k")
    if target is not None and not is_int(target, 0):
        raise TypeError(f"target must be a class index (int >= 0) or None, got {target!r}")
    if isinstance(layers, str) or not len(layers):
        raise ValueError(f"layers must be a non-empty sequence of layer names, got {layers!r}")
    names = list(dict.fromkeys(core.layer_name(model, layer) for layer in layers))
    stream = iter(batches)
    first = next(stream, None)
    if first is None:
        raise ValueError("batches gave no images; pass at least one batch [B,C,H,W]")
    core.check_images(first, "batch")
    captured: dict[str, torch.Tensor] = {}
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    seen = 0
    with core.guarded(model), core.hooks() as handles:
        for p in model.parameters():
            p.requires_grad_(False)
        net = accel.prepared(model, keep=names, example=first) if fast else model
        fields = {**{name: receptive_field(net, name, tuple(first.shape[1:])) for name in names if name not in (fields or {})},
                  **(fields or {})}

        def hook(name: str) -> Callable[[nn.Module, object, object], torch.Tensor | None]:
            def capture(_m: nn.Module, _inp: object, out: object) -> torch.Tensor | None:
                if not isinstance(out, torch.Tensor) or out.dim() != 4:
                    raise ValueError(f"layer {name!r} outputs {getattr(out, 'shape', type(out).__name__)}, not a feature "
                                     "map [N,C,H,W]; exemplars need channels and positions")
                if target is not None:  # the logit's gradient must reach what we keep: the rest of the pass reads a clone
                    captured[name] = out
                    return out.clone()  # a later in-place op (ReLU(inplace=True)) changes the clone, not what we keep
                # without a target, keep a contiguous copy (the merge reads it so; a later in-place op cannot reach it)
                kept = out.contiguous()
                captured[name] = out.clone() if kept is out else kept
                if len(captured) == len(names):
                    raise _Stop
                return None
            return capture

        for name in names:
            handles.append(net.get_submodule(name).register_forward_hook(hook(name)))
        for x in itertools.chain([first], stream):
            core.check_images(x, "batch")
            captured.clear()
            contrib: dict[str, torch.Tensor] = {}
            with torch.enable_grad() if target is not None else torch.no_grad():
                try:  # with a target the input carries a gradient, so the activations do (parameters do not)
                    logits = net(accel.copy_input(net, x.detach().requires_grad_(target is not None)))
                except _Stop:
                    logits = None
                missing = [name for name in names if name not in captured]
                if missing:
                    raise ValueError(f"layer {missing[0]!r} did not run in the model's forward pass")
                if target is not None:
                    if not 0 <= target < logits.shape[1]:
                        raise ValueError(f"target {target} is out of range: the model has {logits.shape[1]} classes")
                    grads = torch.autograd.grad(logits[:, target].sum(), [captured[name] for name in names])
                    contrib = {name: (g * captured[name]).sum((2, 3)).detach() for name, g in zip(names, grads)}
            for name in names:
                _merge(states[name], captured[name].detach().contiguous(), x.detach(), seen, k, fields[name], contrib.get(name))
            seen += x.shape[0]
    return {name: Exemplars(layer=name, values=s["values"].T.contiguous(), index=s["index"].T.contiguous(),
                            position=s["position"].transpose(0, 1).contiguous(), crops=s["crops"].transpose(0, 1).contiguous(),
                            mean=s["sum"] / s["positions"], firing=s["fires"] / seen, peak=s["values"][0].clone(),
                            contribution=s["contribution"] / seen if target is not None else None, target=target,
                            field=fields[name], count=seen)
            for name, s in states.items()}


def _merge(state: dict[str, torch.Tensor], acts: torch.Tensor, x: torch.Tensor, start: int, k: int,
           field: ReceptiveField, contrib: torch.Tensor | None) -> None:
    """Fold one batch into the running statistics and top-k (kept as ``[k,C,...]``, best first)."""
    b, c, h, w = acts.shape
    peak, where = acts.flatten(2).max(2)  # [B,C]
    if not state:
        state.update(values=acts.new_full((0, c), float("-inf")), index=torch.zeros((0, c), dtype=torch.long, device=acts.device),
                     position=torch.zeros((0, c, 2), dtype=torch.long, device=acts.device),
                     crops=x.new_zeros((0, c, x.shape[1], *field.size)),
                     sum=acts.new_zeros(c, dtype=torch.float64), positions=torch.tensor(0.0, dtype=torch.float64),
                     fires=acts.new_zeros(c, dtype=torch.float64), contribution=acts.new_zeros(c, dtype=torch.float64))
    state["sum"] += acts.sum((0, 2, 3)).double()
    state["positions"] += b * h * w
    state["fires"] += (peak > 0).sum(0).double()
    if contrib is not None:
        state["contribution"] += contrib.sum(0).double()
    index = torch.arange(start, start + b, device=acts.device)[:, None].expand(b, c)
    pos = torch.stack([where // w, where % w], -1)  # [B,C,2]
    values = torch.cat([state["values"], peak])
    order = torch.sort(values, dim=0, descending=True, stable=True).indices[:k]  # [k',C]; earlier images win ties
    kept = state["values"].shape[0]
    new_crops = x.new_zeros((order.shape[0], c, x.shape[1], *field.size))
    cols = torch.arange(c, device=acts.device)
    old = order < kept
    if kept:
        new_crops[old] = state["crops"][order.clamp(max=kept - 1), cols][old]
    fresh = (~old).nonzero()  # only the batch's entries that enter some top-k are cut, all at once
    if fresh.numel():
        j, ch = fresh[:, 0], fresh[:, 1]
        i = order[j, ch] - kept
        new_crops[j, ch] = _crops(x, i, pos[i, ch], field)
    state["values"] = values.gather(0, order)
    state["index"] = torch.cat([state["index"], index]).gather(0, order)
    state["position"] = torch.cat([state["position"], pos]).gather(0, order[..., None].expand(*order.shape, 2))
    state["crops"] = new_crops


def _crops(x: torch.Tensor, image: torch.Tensor, pos: torch.Tensor, field: ReceptiveField, fill: float = 0.5) -> torch.Tensor:
    """The receptive fields at output positions ``pos`` ``[M,2]`` of images ``x[image]`` (``image``: ``[M]``): ``[M,C,rh,rw]``,
    ``fill`` outside the image (the same as :meth:`ReceptiveField.crop`, for many crops at once)."""
    (rh, rw), (sh, sw), (oh, ow) = field.size, field.stride, field.offset
    top, left = oh + pos[:, 0] * sh, ow + pos[:, 1] * sw  # may be negative or run past the image
    ph, pw = max(0, -oh, rh), max(0, -ow, rw)
    padded = torch.nn.functional.pad(x - fill, (pw, pw, ph, ph)) + fill
    rows = (top + ph)[:, None] + torch.arange(rh, device=x.device)  # [M,rh]
    cols = (left + pw)[:, None] + torch.arange(rw, device=x.device)  # [M,rw]
    m = image[:, None, None]
    return padded[m, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@dataclass(frozen=True)
class FilterChoice:
    """Which filters of a layer to show, by which rule, and which never fire.

    Attributes:
        units: the chosen filters, most important first.
        rule: ``"activation"`` or ``"contribution"``.
        reason: one sentence saying how they were chosen, for the page.
        dead: filters whose peak was never > 0 on any image (left out of ``units``).
        score: ``[C]`` the rule's score of every filter.
    """

    units: tuple[int, ...]
    rule: str
    reason: str
    dead: tuple[int, ...]
    score: torch.Tensor


def choose_filters(ex: Exemplars, n: int, rule: str = "activation", *, class_name: str | None = None) -> FilterChoice:
    """The ``n`` filters to show: highest mean activation on the data (``rule="activation"``), or highest
    mean contribution to ``ex.target``'s logit (``"contribution"``, needs exemplars computed with a
    target). Filters that never fire (peak <= 0 on every image) are never chosen and are listed in ``dead``.

    >>> choose_filters(ex, 8).reason
    'the 8 of 128 filters with the highest mean activation on 500 images'
    """
    check_count(n, "n")
    if rule not in RULES:
        raise ValueError(f"rule must be 'activation' or 'contribution', got {rule!r}")
    if rule == "contribution" and ex.contribution is None:
        raise ValueError("rule='contribution' needs exemplars computed with target= (the class to explain)")
    score = ex.mean if rule == "activation" else ex.contribution
    dead = tuple(int(c) for c in (ex.values[:, 0] <= 0).nonzero().flatten())
    alive = ex.values[:, 0] > 0
    order = torch.sort(score.masked_fill(~alive, float("-inf")), descending=True, stable=True).indices
    units = tuple(int(c) for c in order[: min(n, int(alive.sum()))])
    count = score.shape[0]
    what = ("highest mean activation" if rule == "activation"
            else f"highest mean contribution (gradient x activation) to class {class_name or ex.target}")
    reason = f"the {len(units)} of {count} filters with the {what} on {ex.count} images"
    if dead:
        reason += f"; {len(dead)} never fire{'s' * (len(dead) == 1)} on them and are left out"
    return FilterChoice(units=units, rule=rule, reason=reason, dead=dead, score=score)

