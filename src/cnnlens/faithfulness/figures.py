"""Faithfulness figures: matplotlib ``Figure`` objects built without pyplot, so no global state is touched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cnnlens.faithfulness.deletion import CurveResult
from cnnlens.faithfulness.randomization import RandomizationResult, scale_abs
from cnnlens.faithfulness.stats import mean_ci

#: Baselines are drawn gray and dashed so the methods stand out.
BASELINE_STYLE = {"color": "0.45", "linestyle": "--"}
HEAT_CMAP = "turbo"
#: More entries than this and a legend inside the axes hides the curves (``--methods all``: ~35): it goes
#: below them instead, in columns, and the figure grows by :func:`legend_height`.
LEGEND_INSIDE = 10


def legend_height(entries: int, columns: int = 2) -> float:
    """Inches a legend of ``entries`` in ``columns`` below an axes takes (0 while it fits inside)."""
    return 0.0 if entries <= LEGEND_INSIDE else 0.4 + 0.15 * -(-entries // columns)


def legend(ax: Axes, entries: int, *, columns: int = 2, **inside: Any) -> None:
    """The axes' legend, inside it (``inside``: where) while it fits, else below it in ``columns``."""
    if entries <= LEGEND_INSIDE:
        ax.legend(fontsize=7, **inside)
    else:
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=columns, frameon=False)


def curves_figure(curves: Mapping[str, Mapping[str, CurveResult]], baseline: str = "random-order") -> Figure:
    """Mean deletion and insertion curves, one line per method, the random-order baseline dashed.

    ``curves``: method -> {"deletion": CurveResult, "insertion": CurveResult}. The legend gives each
    curve's mean AUC and the number of images.
    """
    fig = Figure(figsize=(10, 4 + legend_height(len(curves))), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, mode in zip(axes, ("deletion", "insertion")):
        for method, by_mode in curves.items():
            if mode not in by_mode:
                continue
            c = by_mode[mode]
            style = BASELINE_STYLE if method == baseline else {}
            label = f"{method}: AUC {float(c.auc.mean()):.3f} (n={c.probs.shape[0]})"
            ax.plot(c.fractions.cpu().numpy(), c.probs.mean(0).cpu().numpy(), label=label, **style)
        better = "lower" if mode == "deletion" else "higher"
        ax.set_title(f"{mode.capitalize()} ({better} AUC = more faithful)")
        ax.set_xlabel(f"share of pixels {'removed' if mode == 'deletion' else 'inserted'} (most relevant first)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        legend(ax, len(curves), loc="upper right" if mode == "deletion" else "lower right")
    axes[0].set_ylabel("target probability (mean over images)")
    return fig


def curves_arrays(curves: Mapping[str, Mapping[str, CurveResult]]) -> dict[str, np.ndarray]:
    """The numbers :func:`curves_figure` shows: ``<method>/<mode>`` -> ``[2, S+1]`` (fractions; mean prob)."""
    return {f"{m}/{mode}": np.stack([c.fractions.cpu().numpy(), c.probs.mean(0).cpu().numpy()])
            for m, by_mode in curves.items() for mode, c in by_mode.items()}


def similarity_curve(values: torch.Tensor, *, seed: int = 0) -> np.ndarray:
    """``[3, L+1]`` mean and 95% bootstrap interval per stage of a ``[L,N]`` similarity, stage 0 = 1 (intact)."""
    stats = np.array([mean_ci(v.numpy(), seed=seed) for v in values]).T
    return np.concatenate([np.ones((3, 1)), stats], axis=1)


def randomization_figure(results: Mapping[str, RandomizationResult], *, seed: int = 0) -> Figure:
    """Similarity to the original map against the layers randomised: rows = modes, columns = Spearman, SSIM.

    One line per method (mean over images, shaded 95% bootstrap interval). A method that passes the
    sanity check falls towards 0; one that stays high does not depend on the learned weights.
    """
    modes = list(results)
    entries = max(len(r.spearman) for r in results.values())
    shared = entries > LEGEND_INSIDE  # one legend under all panels (same methods in each), below the tick labels
    fig = Figure(figsize=(11, 3.8 * len(modes) + legend_height(entries, 4)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(modes), 2, squeeze=False))
    for row, mode in enumerate(modes):
        r = results[mode]
        ticks = ["none", *r.layers] if mode == "independent" else ["none", *[f"+{name}" for name in r.layers]]
        x = np.arange(len(ticks))
        for col, (label, values) in enumerate((("Spearman rank correlation of |map|", r.spearman),
                                               ("SSIM of |map| / max", r.ssim))):
            ax = axes[row, col]
            for method, v in values.items():
                mean, low, high = similarity_curve(v, seed=seed)
                (line,) = ax.plot(x, mean, marker="o", markersize=3, label=f"{method} (n={v.shape[1]})")
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
            ax.axhline(0, color="0.6", linewidth=0.8)
            ax.set_xticks(x, ticks, rotation=45, ha="right", fontsize=7)
            ax.set_ylim(-0.3 if col == 0 else -0.05, 1.05)
            ax.set_ylabel(label)
            ax.set_title(f"{mode} randomisation, output layer first" if mode == "cascading"
                         else "independent randomisation (one layer at a time)", fontsize=10)
            ax.grid(alpha=0.3)
            if not shared:
                ax.legend(fontsize=7)
    if shared:
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=7,
                   frameon=False)
    return fig


def randomization_arrays(results: Mapping[str, RandomizationResult], *, seed: int = 0) -> dict[str, np.ndarray]:
    """``<mode>/<similarity>/<method>`` -> ``[3, L+1]`` (mean, CI low, CI high per stage)."""
    return {f"{mode}/{sim}/{method}": similarity_curve(v, seed=seed)
            for mode, r in results.items() for sim, d in (("spearman", r.spearman), ("ssim", r.ssim))
            for method, v in d.items()}


def cascade_figure(result: RandomizationResult, image: torch.Tensor | None = None) -> Figure:
    """The visual cascade for one image: a row per method, the original map then one per stage.

    Each map is shown as ``|m| / max|m|`` (the scale SSIM compares). ``image`` ``[C,H,W]`` in [0,1], if
    given, opens each row.
    """
    methods = list(result.example_maps)
    stages = ["original", *[f"+{name}" for name in result.layers]] if result.mode == "cascading" \
        else ["original", *result.layers]
    cols = len(stages) + (image is not None)
    fig = Figure(figsize=(1.3 * cols, 1.45 * len(methods) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(methods), cols, squeeze=False))
    for row, method in enumerate(methods):
        maps = scale_abs(result.example_maps[method]).cpu().numpy()
        offset = 0
        if image is not None:
            img = image.detach().cpu().float().clamp(0, 1)
            axes[row, 0].imshow(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(),
                                cmap="gray", vmin=0, vmax=1)
            offset = 1
        for k, m in enumerate(maps):
            axes[row, k + offset].imshow(m, cmap=HEAT_CMAP, vmin=0, vmax=1)
        axes[row, 0].set_ylabel(method, fontsize=8)
    for k, name in enumerate((["image"] if image is not None else []) + stages):
        axes[0, k].set_title(name, fontsize=7, rotation=30 if len(name) > 10 else 0)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{result.mode} randomisation of image {result.example_index}", fontsize=9)
    return fig


def localization_figure(rows: Sequence[Mapping[str, object]], metrics: Sequence[str]) -> Figure:
    """Grouped bars: for each localisation metric, each method and baseline with its 95% interval.

    ``rows``: dicts with ``method``, ``metric``, ``kind``, ``n_images``, ``mean``, ``ci_low``, ``ci_high``.
    """
    names = list(dict.fromkeys(f"{r['method']} (n={r['n_images']})" for r in rows if r["metric"] in metrics))
    # wider with more bars, up to a page's width (--methods all: thinner bars, not a 40-inch figure)
    fig = Figure(figsize=(min(20.0, max(6.0, 1.2 * len(metrics) * max(1, len(names)) * 0.35 + 2)),
                          4 + legend_height(len(names), 4)), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        sel = {r["metric"]: r for r in rows if f"{r['method']} (n={r['n_images']})" == name and r["metric"] in metrics}
        xs = [i + (j - (len(names) - 1) / 2) * width for i, m in enumerate(metrics) if m in sel]
        vals = [sel[m] for m in metrics if m in sel]
        mean = np.array([float(v["mean"]) for v in vals])
        err = np.array([[mean[i] - float(v["ci_low"]), float(v["ci_high"]) - mean[i]] for i, v in enumerate(vals)]).T
        baseline = vals and vals[0]["kind"] == "baseline"
        ax.bar(xs, mean, width, yerr=err, capsize=2, label=name, hatch="//" if baseline else None,
               alpha=0.6 if baseline else 1.0)
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (1 = all inside the mask)")
    ax.set_title("Localisation against the ground-truth masks (hatched: baselines)")
    legend(ax, len(names), columns=4, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return fig
