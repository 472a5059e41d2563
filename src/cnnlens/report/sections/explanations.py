"""Section 5, Explanations per class: the most confidently right and wrong images of each class, every
method side by side, and for mistakes the contrastive view (why the true class, why the predicted one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cnnlens.explain import registry
from cnnlens.explain.class_average import contrastive
from cnnlens.explain.runner import misclassified, per_class
from cnnlens.explain.saliency import masked_image
from cnnlens.report import text
from cnnlens.report.context import ReportContext, method_label
from cnnlens.report.images import image_hwc
from cnnlens.viz import scale
from cnnlens.report.sections._common import constant_sentences, figure, overlay_figure

def contrastive_methods() -> list[str]:
    """Methods whose maps toward the true and the predicted class make the contrastive view of a mistake,
    the first of them that ran being used (``contrastive`` rank in the registry: Grad-CAM, then saliency)."""
    ranked = sorted((m for m in registry.registered() if m.contrastive is not None), key=lambda m: m.contrastive)
    return [m.name for m in ranked]


def selected_images(ctx: ReportContext) -> dict[int, tuple[list[int], list[int]]]:
    """Class -> (most confidently right, most confidently wrong) image indices, ``images_per_class`` each."""
    probs = torch.from_numpy(ctx.probabilities)
    labels = torch.from_numpy(ctx.labels)
    k = ctx.options.images_per_class
    right = per_class(probs, labels, k).tolist() if len(labels) else []
    wrong = misclassified(probs, labels, k, per_class=True).tolist() if len(labels) else []
    return {c: ([i for i in right if ctx.labels[i] == c], [i for i in wrong if ctx.labels[i] == c])
            for c in range(len(ctx.classes))}


def contrastive_maps(ctx: ReportContext, wrong: list[int], method: str) -> dict[int, tuple[np.ndarray, ...]]:
    """Image -> (map toward its true class, toward its predicted class, true - predicted), from
    :func:`cnnlens.explain.class_average.contrastive` in one batched call."""
    if not wrong:
        return {}
    c = contrastive(method, ctx.model, ctx.float_images(wrong), true=[int(ctx.labels[i]) for i in wrong],
                    predicted=[int(ctx.predictions[i]) for i in wrong], **ctx.method_options([method]).get(method, {}))
    maps = [m.detach().float().cpu().numpy() for m in (c.true_maps, c.predicted_maps, c.difference)]
    return {i: tuple(m[j] for m in maps) for j, i in enumerate(wrong)}


def _row(ctx: ReportContext, i: int, j: int, maps: dict[str, np.ndarray], masked: torch.Tensor | None,
         contrast: tuple[np.ndarray, ...] | None, contrast_method: str | None) -> dict[str, Any]:
    """One image: original, each method's overlay (the masked original after saliency), and for a
    mistake the contrastive view. ``j`` is the image's position in ``maps``."""
    a, classes = ctx.assets, ctx.classes
    pred, true = int(ctx.predictions[i]), int(ctx.labels[i])
    prob = float(ctx.probabilities[i, pred])
    name = ctx.dataset.names[i]
    head = f"{name}: true {classes[true]}, predicted {classes[pred]} (p={prob:.2f})"
    base = image_hwc(ctx.dataset.images[i])
    base_src = a.png(f"explain-{i}-original", base)
    cells = [figure(base_src, "original", title=head)]
    for m in ctx.options.methods:
        if m not in maps:
            continue
        label = method_label(m)
        cells.append(overlay_figure(ctx, f"explain-{i}-{m}", base, maps[m][j], label, style=registry.style_of(m), method=m,
                                    title=f"{label}: {head}", base_src=base_src))
        if m == "saliency" and masked is not None:
            top = f"{100 - ctx.options.mask_percentile:g}%"
            cells.append(figure(a.png(f"explain-{i}-masked", image_hwc(masked[j])), f"masked (top {top})", method=m,
                                title=f"Original where saliency is in its top {top}: {head}"))
    row: dict[str, Any] = {"index": i, "name": name, "true": classes[true], "pred": classes[pred], "prob": f"{prob:.2f}",
                           "correct": pred == true, "cells": cells, "contrastive": None}
    if contrast is not None and contrast_method is not None:
        t_map, p_map, diff = contrast
        label = method_label(contrast_method)
        views = [(t_map, "contrast-true", f"for true {classes[true]}", "auto",
                  f"{label} toward the true class {classes[true]}: {name}"),
                 (p_map, "contrast-pred", f"for predicted {classes[pred]}", "auto",
                  f"{label} toward the predicted class {classes[pred]}: {name}"),
                 (diff, "contrast-diff", "true − predicted", "signed",
                  f"{label}, true {classes[true]} (red) minus predicted {classes[pred]} (blue): {name}")]
        row["contrastive"] = [overlay_figure(ctx, f"explain-{i}-{key}", base, m, cap, style=style, method=contrast_method,
                                             title=title, base_src=base_src) for m, key, cap, style, title in views]
        row["contrastive_method"], row["contrastive_label"] = contrast_method, label
    return row


def explanations_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Per class, its most confidently right and wrong images, each explained toward its predicted class
    by every method (one batched run per method for all the images), grouped by true class."""
    chosen = selected_images(ctx)
    index = [i for c in range(len(ctx.classes)) for i in chosen[c][0] + chosen[c][1]]
    if not index:
        return None
    maps, skipped = ctx.explain(ctx.options.methods, index, [int(ctx.predictions[i]) for i in index])
    masked = None
    if "saliency" in maps:
        x = ctx.float_images(index)
        masked = masked_image(x, torch.from_numpy(maps["saliency"]).to(x.device), ctx.options.mask_percentile).cpu()
    wrong = [i for i in index if ctx.predictions[i] != ctx.labels[i]]
    contrast_method = next((m for m in contrastive_methods() if m in maps), None)
    contrast = contrastive_maps(ctx, wrong, contrast_method) if contrast_method else {}
    for m, arr in maps.items():
        ctx.assets.npy(f"explanations-{m}", arr)  # rows in the order of data/explanations.json

    classes, conf = ctx.classes, ctx.probabilities.max(1)
    position = {i: j for j, i in enumerate(index)}
    blocks, records = [], []
    for c, name in enumerate(classes):
        right, mistakes = chosen[c]
        rows = [_row(ctx, i, position[i], maps, masked, contrast.get(i), contrast_method) for i in right + mistakes]
        records += [{k: r[k] for k in ("index", "name", "true", "pred", "correct")} | {"probability": float(conf[r["index"]])}
                    for r in rows]
        members = ctx.labels == c
        sentence = text.explanation_sentence(
            name, int((members & (ctx.predictions == c)).sum()), int(members.sum()),
            float(conf[right[0]]) if right else None, float(conf[mistakes[0]]) if mistakes else None,
            classes[int(ctx.predictions[mistakes[0]])] if mistakes else None, where=ctx.split_name)
        blocks.append({"cls": c, "name": name, "sentence": sentence, "images": rows})
    sentences = [f"{text.count(len(index), 'image')} ({len(index) - len(wrong)} right, {len(wrong)} wrong), each "
                 f"explained toward its predicted class by {text.count(len(maps), 'method')}: "
                 f"{', '.join(method_label(m) for m in maps)}."]
    sentences.append("Each map is drawn on its own scale (its min … max under it), so the colours show where a method "
                     "looks, not how strongly: compare the numbers for that.")
    flags = {m: [scale.constant_reason(m, a) for a in arr if scale.is_constant(a)] for m, arr in maps.items()}
    sentences += constant_sentences(flags, {m: method_label(m) for m in maps}, {m: len(arr) for m, arr in maps.items()})
    sentences += [f"{method_label(m)} is left out: {reason}" for m, reason in skipped.items()]
    files = [ctx.assets.json("explanations", {"methods": list(maps), "images": records})]
    return {"id": "explanations", "title": "Explanations per class", "text": sentences, "classes": blocks, "files": files}
