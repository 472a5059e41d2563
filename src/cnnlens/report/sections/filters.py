"""Section 7, Filters: what chosen layers' filters respond to most, in pictures a person can read: per
filter the synthetic image of one neuron (readable activation maximisation, Olah et al. 2017) beside the
real image patches that excite it most (dataset exemplars, one streaming pass over the split for all layers), the filters
chosen by what the data says (mean activation, or contribution to a class) and the dead ones named; the
class-model images (Simonyan et al. 2014); and what two layers output for one image (the seeds' "filter
outputs")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens.explain.activation_max import activation_maximization, class_model_images, color_correlation, spectrum_decay
from cnnlens.explain.core import layer_name
from cnnlens.explain.exemplars import Exemplars, choose_filters, layer_exemplars
from cnnlens.explain.feature_maps import feature_maps
from cnnlens.explain.robustness import Transforms
from cnnlens.report import text
from cnnlens.report.context import ReportContext
from cnnlens.report.images import image_hwc, tile_normalise
from cnnlens.report.sections._common import figure
from cnnlens.viz import scale


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's ``nn.Conv2d`` layers, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def rectifier_after(model: nn.Module, conv: str) -> str:
    """The first ``nn.ReLU`` registered after layer ``conv`` and before the next convolution (where a filter
    "fires" means > 0), or ``conv`` itself when there is none."""
    names = [(name, m) for name, m in model.named_modules()]
    start = next(i for i, (name, _) in enumerate(names) if name == conv)
    for name, m in names[start + 1:]:
        if isinstance(m, nn.Conv2d):
            break
        if isinstance(m, nn.ReLU):
            return name
    return conv


def default_filter_layers(model: nn.Module) -> list[str]:
    """Filter layers: the rectified outputs (the ReLU after) of the middle and the last convolution. (The
    first one's filters are edges and blobs that its weights already show.)"""
    convs = conv_layers(model)
    chosen = list(dict.fromkeys([convs[len(convs) // 2], convs[-1]])) if convs else []
    return list(dict.fromkeys(rectifier_after(model, c) for c in chosen))


def default_feature_map_layers(model: nn.Module) -> list[str]:
    """Feature-map layers: the first and the last convolution, a face-like and an abstract depth."""
    convs = conv_layers(model)
    return list(dict.fromkeys([convs[0], convs[-1]])) if convs else []


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def _tile(ctx: ReportContext, name: str, array: torch.Tensor, caption: str, title: str, *,
          with_range: bool = False) -> dict[str, Any]:
    """One tile, stretched to its own min … max (printed under it with ``with_range``; a constant one flagged)."""
    flag = "constant: this channel gives one value on this image" if with_range and scale.is_constant(array) else None
    return figure(ctx.assets.png(name, tile_normalise(array)), caption, title=title, kind="filter",
                  value_range=scale.range_text(array) if with_range else None, flag=flag)


def value_sentence(out: torch.Tensor) -> str:
    """What a layer's output values are, said without assuming its activation: their range, and the share
    that is exactly zero (after a ReLU: inactive units) or negative.

    >>> value_sentence(torch.tensor([[-1.0, 0.0], [2.0, 3.0]]))
    'values from -1 to 3; 25% negative, 25% exactly zero'
    """
    lo, hi = float(out.min()), float(out.max())
    parts = [f"values from {scale.number(lo)} to {scale.number(hi)}"]
    negative, zero = float((out < 0).float().mean()), float((out == 0).float().mean())
    shares = ([f"{text.pct(negative)} negative"] if lo < 0 else []) + ([f"{text.pct(zero)} exactly zero"] if zero > 0 else [])
    return parts[0] + ("; " + ", ".join(shares) if shares else "")


def _rgb(image: torch.Tensor) -> np.ndarray:
    """A [C,H,W] float image in [0,1] as uint8 for a tile, without stretching (so tiles compare)."""
    return image_hwc(image.clamp(0, 1).cpu())


def parse_filter_rule(rule: str, classes: Sequence[str]) -> tuple[str, int | None]:
    """``ReportOptions.filter_rule`` read against the classes: ``("activation", None)`` or
    ``("contribution", class index)`` (the class given by name or index).

    >>> parse_filter_rule("contribution:Happy", ["Angry", "Happy"])
    ('contribution', 1)
    """
    kind, _, cls = rule.partition(":")
    if kind == "activation":
        return kind, None
    names = list(classes)
    if cls in names:
        return kind, names.index(cls)
    if cls.isdigit() and int(cls) < len(names):
        return kind, int(cls)
    raise ValueError(f"ReportOptions.filter_rule: unknown class {cls!r} in {rule!r}; pass 'activation' or "
                     f"'contribution:CLASS' with one of {names}")


def _exemplars(ctx: ReportContext, layers: list[str]) -> dict[str, Exemplars]:
    """Every filter layer's exemplars and statistics from one streaming pass over the split."""
    o = ctx.options
    _, target = parse_filter_rule(o.filter_rule, ctx.classes)
    n, bs = len(ctx.dataset), 128
    return layer_exemplars(ctx.model, layers, (ctx.float_images(range(i, min(i + bs, n))) for i in range(0, n, bs)),
                           k=o.exemplars, target=target)


def _filters(ctx: ReportContext, layer: str, ex: Exemplars) -> dict[str, Any]:
    """One layer: choose its filters from its exemplars' statistics, optimise one neuron image per chosen
    filter (all in one batch) and pair it with the filter's top exemplars."""
    o = ctx.options
    rule, target = parse_filter_rule(o.filter_rule, ctx.classes)
    class_name = ctx.classes[target] if target is not None else None
    choice = choose_filters(ex, o.filters_per_layer, rule, class_name=class_name)
    safe, rf = _safe(layer), ex.field
    centre = (rf.output[0] // 2, rf.output[1] // 2)
    rows, record = [], {"layer": layer, "rule": choice.rule, "reason": choice.reason, "dead": list(choice.dead),
                        "receptive_field": {"size": list(rf.size), "stride": list(rf.stride), "offset": list(rf.offset)},
                        "filters": []}
    dead = f" Never fire on {ex.count} images: filter{'s' * (len(choice.dead) != 1)} {_list(choice.dead)}." if choice.dead else ""
    if not choice.units:
        return {"layer": layer, "rows": [], "record": record,
                "sentence": f"{layer}: no filter fires (> 0) on any of the {ex.count} images; nothing to show.{dead}"}
    warp = Transforms.for_size(*rf.size)  # what activation_maximization picks for a neuron, without measuring rf again
    decay = exemplar_decay(ex, choice.units)
    res = activation_maximization(ctx.model, layer, list(choice.units), objective="neuron", position=centre,
                                  input_shape=tuple(ctx.dataset.input_shape), steps=o.am_steps, lr=o.am_lr,
                                  transforms=warp, field=rf, generator=torch.Generator().manual_seed(o.seed),
                                  **exemplar_colors(ex, choice.units), **decay)
    synth = torch.stack([rf.crop(im.cpu(), *centre) for im in res.images])
    ctx.assets.npy(f"filters-{safe}", res.images.cpu().numpy())
    reached = 0
    for j, u in enumerate(choice.units):
        act, best = float(res.activation[j]), float(ex.values[u, 0])
        reached += act >= best
        tiles = [figure(ctx.assets.png(f"filters-{safe}-{u}", _rgb(synth[j])), f"synthetic: {act:.2f}",
                        title=f"{layer}, filter {u}: the synthetic image of its centre neuron ({rf.size[0]}x{rf.size[1]} "
                              f"receptive field), activation {act:.3f}", kind="filter")]
        for r in range(ex.values.shape[1]):
            idx = int(ex.index[u, r])
            if idx < 0:
                break
            name = ctx.dataset.names[idx]
            tiles.append(figure(ctx.assets.png(f"filters-{safe}-{u}-top{r + 1}", _rgb(ex.crops[u, r])),
                                f"{float(ex.values[u, r]):.2f}",
                                title=f"{layer}, filter {u}: exemplar {r + 1}, {name}, peak activation "
                                      f"{float(ex.values[u, r]):.3f} at output position {tuple(ex.position[u, r].tolist())}",
                                kind="filter"))
        rows.append({"unit": u, "label": f"#{u}", "mean": f"{float(ex.mean[u]):.2f}",
                     "firing": text.pct(float(ex.firing[u])), "tiles": tiles})
        record["filters"].append({"filter": u, "synthetic_activation": act, "exemplar_activation": ex.values[u].tolist(),
                                  "exemplar_index": ex.index[u].tolist(), "mean_activation": float(ex.mean[u]),
                                  "firing": float(ex.firing[u]), "score": float(choice.score[u]),
                                  **({"spectrum_decay": float(decay["decay_power"][j])} if decay else {})})
    shift = warp.pad + warp.jitter + warp.fine_jitter
    moves = (f"random shifts of up to {shift} px, scales and rotations" if shift else
             "random scales and rotations (no shifts: under half a pixel at this field's size)")
    colours = " in the colours and spectral slope of its real patches" if ex.crops.shape[2] == 3 else ""
    sentence = (f"{layer}: {choice.reason}. Each synthetic image ({o.am_steps} Adam steps on a decorrelated spectrum{colours}, "
                f"{moves} at every step) maximises the filter's centre neuron and is cut to its "
                f"{rf.size[0]}x{rf.size[1]} receptive field, like the {ex.values.shape[1]} real patches beside it; "
                f"{reached} of {len(choice.units)} reach the best real patch's activation.{dead}")
    return {"layer": layer, "rows": rows, "sentence": sentence, "record": record}


def exemplar_colors(ex: Exemplars, units: Sequence[int]) -> dict[str, torch.Tensor]:
    """For RGB, each filter's colours from its own real patches: the square root of their colour covariance
    and their mean colour (``colors=`` and ``color_mean=`` of activation maximisation); nothing for gray.
    ImageNet's colour matrix, or the whole split's, let the ascent leave the colours the data holds
    (docs/feature-visualization.md, "RGB")."""
    if ex.crops.shape[2] != 3:
        return {}
    patches = [ex.crops[u][ex.index[u] >= 0] for u in units]
    return {"colors": torch.stack([color_correlation(p) for p in patches]),
            "color_mean": torch.stack([p.mean((0, 2, 3)) for p in patches])}


def exemplar_decay(ex: Exemplars, units: Sequence[int]) -> dict[str, torch.Tensor]:
    """For RGB, each filter's spectrum decay fitted to its own real patches (``decay_power=`` of activation
    maximisation, :func:`~cnnlens.explain.activation_max.spectrum_decay`); nothing for gray. On the RGB
    plates Lucid's fixed 1/f left the images with twice the patches' high-frequency energy (block2: 0.43
    against 0.20; fitted: 0.22); gray faces already match at 1/f in the last layer, where a fitted decay
    made them twice too smooth (docs/feature-visualization.md, "A spectrum fitted")."""
    if ex.crops.shape[2] != 3:
        return {}
    return {"decay_power": torch.tensor([spectrum_decay(ex.crops[u][ex.index[u] >= 0]) for u in units])}


def _list(units: tuple[int, ...], most: int = 12) -> str:
    shown = ", ".join(str(u) for u in units[:most])
    return shown + (f" and {len(units) - most} more" if len(units) > most else "")


def _classes(ctx: ReportContext) -> tuple[list[dict[str, Any]], str]:
    """Class-model images (Simonyan et al. 2014), one per class, in one batch."""
    o = ctx.options
    res = class_model_images(ctx.model, list(range(len(ctx.classes))), input_shape=tuple(ctx.dataset.input_shape),
                             steps=o.am_steps, lr=o.am_lr, generator=torch.Generator().manual_seed(o.seed))
    ctx.assets.npy("class-models", res.images.cpu().numpy())
    tiles = [figure(ctx.assets.png(f"class-model-{k}", _rgb(res.images[k])), f"{name}: {float(res.activation[k]):.1f}",
                    title=f"What the model thinks {name} looks like: logit {float(res.activation[k]):.2f} "
                          f"(from {float(res.start_activation[k]):.2f} on the starting noise)", kind="filter")
             for k, name in enumerate(ctx.classes)]
    sentence = (f"Class-model images (Simonyan et al. 2014): per class, {o.am_steps} steps of ascent on its logit "
                f"minus an L2 penalty, from the same readable parameterisation; caption: the logit reached.")
    return tiles, sentence


def filters_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Per filter of ``filter_layers`` (default: the ReLU after the middle and the last convolution), its
    synthetic image beside its dataset exemplars; class-model images; and feature maps of the most confidently right image at two depths (``feature_map_layers``, default:
    the first and the last convolution). Absent for a model with neither named layers nor convolutions."""
    o = ctx.options
    am_layers = list(o.filter_layers) if o.filter_layers is not None else default_filter_layers(ctx.model)
    fm_layers = list(o.feature_map_layers) if o.feature_map_layers is not None else default_feature_map_layers(ctx.model)
    if (not am_layers and not fm_layers) or len(ctx.dataset) == 0:
        return None
    conf = ctx.probabilities.max(1)
    right = np.flatnonzero(ctx.predictions == ctx.labels)
    pick = int(right[np.argmax(conf[right])]) if right.size else 0  # the clearest case the model gets right
    x = ctx.float_images([pick])
    every = list(dict.fromkeys(am_layers + fm_layers))
    outputs = feature_maps(ctx.model, x, every)  # also gives each layer's channel count
    sentences, grids, records = [], [], []
    mapped = [layer for layer in am_layers if outputs[layer].dim() == 4]
    exemplars = _exemplars(ctx, mapped) if mapped else {}
    for layer in am_layers:
        if outputs[layer].dim() != 4:
            sentences.append(f"{layer}: its output has shape {tuple(outputs[layer].shape[1:])}, not channels x height x "
                             "width; no filter images shown.")
            continue
        block = _filters(ctx, layer, exemplars[layer_name(ctx.model, layer)])
        grids.append({"layer": layer, "rows": block["rows"]})
        sentences.append(block["sentence"])
        records.append(block["record"])
    class_tiles, class_sentence = _classes(ctx) if am_layers else ([], "")
    if class_tiles:
        sentences.append(class_sentence)
    name = ctx.dataset.names[pick]
    fm_blocks = []
    for layer in fm_layers:
        out = outputs[layer][0].cpu()
        if out.dim() != 3:
            sentences.append(f"{layer}: its output has shape {tuple(out.shape)}, not channels x height x width; no feature maps shown.")
            continue
        means = out.flatten(1).mean(1)
        top = torch.argsort(means, descending=True, stable=True)[: o.feature_maps].tolist()
        ctx.assets.npy(f"feature-maps-{_safe(layer)}", out.numpy())
        tiles = [_tile(ctx, f"feature-maps-{_safe(layer)}-{c}", out[c], f"#{c}: mean {scale.number(float(means[c]))}",
                       f"{layer}, channel {c} for {name}: mean {means[c]:.3f}", with_range=True) for c in top]
        c_, h, w = out.shape
        sentences.append(f"{layer} ({c_} channels, {h}x{w}) on {name}: the {len(top)} channels with the highest mean "
                         f"output are shown, each stretched to its own min … max (under it); {value_sentence(out)}.")
        fm_blocks.append({"layer": layer, "tiles": tiles, "shape": f"{c_} x {h} x {w}"})
    image = None
    if fm_blocks:
        image = figure(ctx.assets.png("feature-maps-input", image_hwc(ctx.dataset.images[pick])), name,
                       title=f"{name}: true {ctx.classes[int(ctx.labels[pick])]}, predicted "
                             f"{ctx.classes[int(ctx.predictions[pick])]} (p={conf[pick]:.2f})")
    files = [ctx.assets.json("filters", {"filters": records, "feature_maps": {"image": name, "layers": fm_layers}})]
    return {"id": "filters", "title": "Filters", "text": sentences, "grids": grids, "class_models": class_tiles,
            "feature_maps": fm_blocks, "image": image, "files": files}
