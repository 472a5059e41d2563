"""Section 8, Faithfulness: the table and figures ``cnnlens faithfulness`` wrote into ``RUN/faithfulness``
(absent until it has run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnlens.report.context import ReportContext, method_label
from cnnlens.report.sections._common import figure

#: Where ``cnnlens faithfulness RUN_DIR`` writes, inside the run folder.
FOLDER = "faithfulness"
MANIFEST = "faithfulness.json"
#: The manifest version this section reads.
VERSION = 1
#: Figures shown, in order, with their captions (others in the folder are shown after these).
FIGURES = {
    "deletion_insertion": "Deletion and insertion curves (target probability as pixels are removed / inserted)",
    "localization": "Localisation against the ground-truth masks, with baselines",
    "randomization": "Similarity to the original map as the model's layers are randomised",
    "randomization_cascade": "Maps of one image as the layers are randomised from the top down",
}
BASELINE_LABELS = {"random-order": "random order", "centre-prior": "centre prior", "random-map": "random map"}


def read_manifest(path: Path) -> dict[str, Any]:
    """``faithfulness.json``, checked for the fields and version this section reads."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); rerun `cnnlens faithfulness`") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"{path}: expected a faithfulness manifest with version {VERSION}, got "
                         f"{data.get('version') if isinstance(data, dict) else type(data).__name__!r}; rerun `cnnlens faithfulness`")
    for key in ("rows", "metrics"):
        if key not in data:
            raise ValueError(f"{path}: the field {key!r} is missing; rerun `cnnlens faithfulness`")
    return data


def _label(name: str) -> str:
    return BASELINE_LABELS.get(name, method_label(name))


def faithfulness_sentences(rows: list[dict[str, Any]], metrics: dict[str, dict[str, str]]) -> list[str]:
    """Per metric: the best method, its mean, and the best baseline's mean (which direction is better).

    >>> faithfulness_sentences([{"method": "grad-cam", "metric": "deletion_auc", "kind": "method", "mean": 0.1},
    ...                         {"method": "random-order", "metric": "deletion_auc", "kind": "baseline", "mean": 0.3}],
    ...                        {"deletion_auc": {"better": "lower"}})
    ['deletion auc (lower is better): best Grad-CAM 0.100; random order 0.300.']
    """
    out = []
    for metric, info in metrics.items():
        better = info.get("better", "higher")
        pick = min if better == "lower" else max
        ms = [r for r in rows if r["metric"] == metric and r["kind"] == "method"]
        bs = [r for r in rows if r["metric"] == metric and r["kind"] == "baseline"]
        if not ms:
            continue
        best = pick(ms, key=lambda r: r["mean"])
        s = f"{metric.replace('_', ' ')} ({better} is better): best {_label(best['method'])} {best['mean']:.3f}"
        if bs:
            s += "; " + ", ".join(f"{_label(b['method'])} {b['mean']:.3f}" for b in bs)
            beaten = [b for b in bs if (best["mean"] < b["mean"]) != (better != "lower")]
            if len(beaten) < len(bs):
                s += " (the best method does not beat every baseline)"
        out.append(s + ".")
    return out


def faithfulness_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Method x metric table (mean and 95% CI, with the baselines), sentences and figures; absent without
    ``RUN/faithfulness/faithfulness.json``."""
    if ctx.run_dir is None:
        return None
    folder = ctx.run_dir / FOLDER
    path = folder / MANIFEST
    if not path.is_file():
        return None
    data = read_manifest(path)
    rows = [r for r in data["rows"] if isinstance(r, dict)]
    # one row per (method, metric): the one over the most images, as FaithfulnessResult.row does
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["method"], r["metric"])
        if key not in best or r["n_images"] > best[key]["n_images"]:
            best[key] = r
    metrics = [m for m in data["metrics"] if any(k[1] == m for k in best)]
    names = list(dict.fromkeys(r["method"] for r in rows))
    table = []
    for name in names:
        kind = next(r["kind"] for r in rows if r["method"] == name)
        cells = []
        for m in metrics:
            r = best.get((name, m))
            cells.append({"mean": f"{r['mean']:.3f}", "ci": f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", "n": r["n_images"]}
                         if r else None)
        table.append({"name": _label(name), "kind": kind, "method": name if kind == "method" else None, "cells": cells})
    header = [{"name": m.replace("_", " "), "better": data["metrics"][m].get("better", ""),
               "description": data["metrics"][m].get("description", "")} for m in metrics]
    a = ctx.assets
    figs = []
    pngs = sorted(folder.glob("*.png"), key=lambda p: (list(FIGURES).index(p.stem) if p.stem in FIGURES else len(FIGURES), p.name))
    for p in pngs:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in p.stem)
        src = a.copy_png(f"faithfulness-{safe}", p)
        cap = FIGURES.get(p.stem, p.stem.replace("_", " "))
        figs.append(figure(src, cap, title=cap, kind="chart"))
    files = [a.copy_file("data", f"faithfulness.{ext}", folder / f"faithfulness.{ext}")
             for ext in ("json", "csv") if (folder / f"faithfulness.{ext}").is_file()]
    sentences = faithfulness_sentences(list(best.values()), {m: data["metrics"][m] for m in metrics})
    sentences += [str(n) for n in data.get("notes", [])]
    ci = data.get("confidence_interval")
    return {"id": "faithfulness", "title": "Faithfulness", "text": sentences, "header": header, "rows": table,
            "figures": figs, "ci": str(ci) if ci else None, "files": files}
