"""Section 3, Training: the run's loss and accuracy curves, its history, and where the TensorBoard logs are."""

from __future__ import annotations

import math
from typing import Any

from cnnlens.report import text
from cnnlens.report.context import ReportContext
from cnnlens.report.sections._common import figure
from cnnlens.train.run import read_history


def _fmt(v: float | None, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return text.pct(v, 1) if kind == "acc" else f"{v:.4f}" if kind == "loss" else f"{v:g}"


def training_section(ctx: ReportContext) -> dict[str, Any] | None:
    """History table and sentences from ``history.csv``, ``curves.png`` embedded; absent without a history."""
    if ctx.run_dir is None or not (ctx.run_dir / "history.csv").is_file():
        return None
    rows = read_history(ctx.run_dir)
    curves = ctx.run_dir / "curves.png"
    chart = None
    if curves.is_file():
        chart = figure(ctx.assets.copy_png("curves", curves), "Loss and accuracy per epoch", title="Training curves",
                       kind="chart")
    best = max(rows, key=lambda r: r.get("val_acc", float("-inf"))) if rows else None
    table = [{"epoch": int(r["epoch"]), "best": r is best,
              "cells": [_fmt(r.get("train_loss"), "loss"), _fmt(r.get("train_acc"), "acc"),
                        _fmt(r.get("val_loss"), "loss"), _fmt(r.get("val_acc"), "acc"),
                        _fmt(r.get("lr"), "lr"), _fmt(r.get("seconds"), "s")]} for r in rows]
    tb = ctx.run_dir / "tensorboard"
    tensorboard = str(tb.resolve()) if tb.is_dir() else None
    files = [ctx.assets.copy_file("data", "history.csv", ctx.run_dir / "history.csv")]
    return {"id": "training", "title": "Training", "text": text.training_sentences(rows), "figure": chart,
            "table": table, "header": ["train loss", "train acc", "val loss", "val acc", "lr", "seconds"],
            "tensorboard": tensorboard, "files": files}
