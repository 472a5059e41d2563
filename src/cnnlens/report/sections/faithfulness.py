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
#: The metrics that re-explain the images (the randomisation check's subset and methods): their own table.
REEXPLAINED = ("cascading_", "independent_", "max_sensitivity", "random_logit", "mprt")


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


def sampling_sentence(sampling: dict[str, Any] | None, n: int | None) -> str:
    """How the images were drawn, from the manifest's ``settings["sampling"]``.

    >>> sampling_sentence({"method": "stratified by class, at random", "seed": 0, "split": "val",
    ...                    "n_available": 90, "n_images": 6, "class_counts": {"a": 3, "b": 3}}, 6)
    'Images: 6 of the val split\'s 90, drawn at random stratified by class (seed 0): a 3, b 3.'
    """
    if not isinstance(sampling, dict):
        return (f"Images: the first {n} of the split, as this faithfulness run took them (older cnnlens: no stratified "
                "draw recorded); rerun `cnnlens faithfulness` for a stratified random sample.")
    k = sampling.get("n_images", n)
    if "class_counts" not in sampling:
        return f"Images: {k}, {sampling.get('method', 'as given')}."
    where = f"{sampling['data']}" if sampling.get("data") else f"the {sampling.get('split') or 'val'} split's"
    counts = ", ".join(f"{c} {v}" for c, v in sampling["class_counts"].items())
    plural = "" if k == 1 else "s"
    return (f"Image{plural}: {k} of {where} {sampling.get('n_available', '?')}, drawn at random stratified by class "
            f"(seed {sampling.get('seed', 0)}): {counts}.")


def substrate_sentences(checks: dict[str, Any] | None) -> list[str]:
    """One sentence per substrate in use: what the fully deleted image still shows, against chance."""
    out: list[str] = []
    seen: set[str] = set()
    for mode in ("deletion", "insertion"):
        c = (checks or {}).get(mode)
        if not isinstance(c, dict) or c.get("substrate") in seen:
            continue
        seen.add(c["substrate"])
        verdict = "above chance" if c.get("above_chance") else "not above chance"
        use = "deletion and insertion" if (checks or {}).get("insertion", {}).get("substrate") == c["substrate"] \
            and mode == "deletion" else mode
        ci = f" (95% CI {c['ci_low']:.2f}-{c['ci_high']:.2f})" if "ci_low" in c and "ci_high" in c else ""
        out.append(f"Substrate check ({use}, {c['substrate']}): on the fully deleted images the class keeps p = "
                   f"{c['mean_probability']:.2f} on average{ci}, {verdict} (1/{round(1 / c['chance'])} = {c['chance']:.2f}); "
                   f"{100 * c['still_predicted']:.0f}% of them are still predicted as it.")
    return out


def _table(rows: list[dict[str, Any]], metrics_info: dict[str, dict[str, str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Header and rows of one table: one row per method or baseline, one column per metric."""
    metrics = [m for m in metrics_info if any(r["metric"] == m for r in rows)]
    cell = {(r["method"], r["metric"]): r for r in rows}
    table = []
    for name in dict.fromkeys(r["method"] for r in rows):
        kind = next(r["kind"] for r in rows if r["method"] == name)
        cells = []
        for m in metrics:
            r = cell.get((name, m))
            cells.append({"mean": f"{r['mean']:.3f}", "ci": f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", "n": r["n_images"]}
                         if r else None)
        table.append({"name": _label(name), "kind": kind, "method": name if kind == "method" else None, "cells": cells})
    header = [{"name": m.replace("_", " "), "better": metrics_info[m].get("better", ""),
               "description": metrics_info[m].get("description", "")} for m in metrics]
    return header, table


def faithfulness_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Method x metric tables (mean and 95% CI, with the baselines), one per image set: every row of a
    table is scored on the same images (the perturbation methods' subset gets its own table, with every
    other method and baseline on it too); how the images were drawn, the substrate check and its warning,
    sentences and figures. Absent without ``RUN/faithfulness/faithfulness.json``."""
    if ctx.run_dir is None:
        return None
    folder = ctx.run_dir / FOLDER
    path = folder / MANIFEST
    if not path.is_file():
        return None
    data = read_manifest(path)
    rows = [r for r in data["rows"] if isinstance(r, dict)]
    info = {m: v for m, v in data["metrics"].items() if isinstance(v, dict)}
    sizes = sorted({int(r["n_images"]) for r in rows}, reverse=True)
    blocks = []
    for k, n in enumerate(sizes):
        at = [r for r in rows if int(r["n_images"]) == n]
        header, table = _table(at, info)
        if not table:
            continue
        img = "image" if n == 1 else "images"
        title = f"Scored on the same {n} {img}"
        if k:
            # methods run on these images only (the perturbation methods), or the randomisation check's images
            only = [_label(m) for m in dict.fromkeys(r["method"] for r in at if r["kind"] == "method")
                    if max(int(q["n_images"]) for q in rows if q["method"] == m) == n]
            randomised = all(r["metric"].startswith(REEXPLAINED) for r in at)
            why = (f", where {', '.join(only)} ran: every method and baseline is scored on them" if only and not randomised
                   else ", the randomisation check's" if randomised else "")
            title += f" (the first {n} of the {sizes[0]}{why})"
        used = {m: info[m] for m in info if any(r["metric"] == m for r in at)}
        blocks.append({"n": n, "title": title, "header": header, "rows": table,
                       "text": faithfulness_sentences(at, used)})
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
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    sentences = [sampling_sentence(settings.get("sampling"), settings.get("n_images", sizes[0] if sizes else None))]
    checks = data.get("substrate_check") if isinstance(data.get("substrate_check"), dict) else None
    sentences += substrate_sentences(checks)
    if checks is None:
        sentences.append("No substrate check recorded (older cnnlens): rerun `cnnlens faithfulness` to learn whether the "
                         "fully deleted images still show their class.")
    sentences += [str(n) for n in data.get("notes", [])]
    ci = data.get("confidence_interval")
    return {"id": "faithfulness", "title": "Faithfulness", "text": sentences, "blocks": blocks,
            "warnings": [str(w) for w in data.get("warnings", [])], "figures": figs, "ci": str(ci) if ci else None,
            "files": files}
