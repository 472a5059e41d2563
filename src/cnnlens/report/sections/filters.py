"""Section 7, Filters: what chosen layers' filters respond to most (activation maximisation, the seeds'
gradient ascent), and what two layers output for one image (the seeds' "filter outputs")."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens.explain.activation_max import activation_maximization
from cnnlens.explain.feature_maps import feature_maps
from cnnlens.report import text
from cnnlens.report.context import ReportContext
from cnnlens.report.images import image_hwc, tile_normalise
from cnnlens.report.sections._common import figure
from cnnlens.viz import scale


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's ``nn.Conv2d`` layers, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def default_filter_layers(model: nn.Module) -> list[str]:
    """Activation-maximisation layers: the middle and the last convolution. (The first one's mean
    activation is maximised by a flat bright or dark image, which shows little.)"""
    convs = conv_layers(model)
    return list(dict.fromkeys([convs[len(convs) // 2], convs[-1]])) if convs else []


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


def _act_max(ctx: ReportContext, layer: str, channels: int) -> dict[str, Any]:
    o = ctx.options
    units = list(range(min(o.filters_per_layer, channels)))
    res = activation_maximization(ctx.model, layer, units, input_shape=tuple(ctx.dataset.input_shape),
                                  steps=o.am_steps, lr=o.am_lr, generator=torch.Generator().manual_seed(o.seed))
    act, start = res.activation.cpu().numpy(), res.start_activation.cpu().numpy()
    ctx.assets.npy(f"filters-{_safe(layer)}", res.images.cpu().numpy())
    tiles = [_tile(ctx, f"filters-{_safe(layer)}-{u}", res.images[j].cpu(), f"#{u}: {act[j]:.2f}",
                   f"{layer}, filter {u}: mean activation {act[j]:.3f} (from {start[j]:.3f} on noise)")
             for j, u in enumerate(res.units)]
    best = int(np.argmax(act))
    which = f"filter {res.units[0]}" if len(res.units) == 1 else f"filters {res.units[0]}-{res.units[-1]}"
    sentence = (f"{layer}: {which} of {channels}, {o.am_steps} ascent steps; mean activation "
                f"rose from {start.mean():.2f} on noise to {act.mean():.2f}; strongest filter {res.units[best]} ({act[best]:.2f}).")
    return {"layer": layer, "tiles": tiles, "sentence": sentence,
            "record": {"layer": layer, "filters": list(res.units), "activation": act.tolist(), "start_activation": start.tolist()}}


def filters_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Activation-maximisation grids for ``filter_layers`` (default: the middle and the last convolution)
    and feature maps of the most confidently right image at two depths (``feature_map_layers``, default:
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
    for layer in am_layers:
        block = _act_max(ctx, layer, int(outputs[layer].shape[1]))
        grids.append({"layer": layer, "tiles": block["tiles"]})
        sentences.append(block["sentence"])
        records.append(block["record"])
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
        tiles = [_tile(ctx, f"feature-maps-{_safe(layer)}-{c}", out[c], f"#{c}: mean {means[c]:.2f}",
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
    files = [ctx.assets.json("filters", {"activation_maximization": records, "feature_maps": {"image": name, "layers": fm_layers}})]
    return {"id": "filters", "title": "Filters", "text": sentences, "grids": grids, "feature_maps": fm_blocks,
            "image": image, "files": files}
