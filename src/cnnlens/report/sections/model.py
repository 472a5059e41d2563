"""Section 2, Model: the layer table from a real forward pass, and the parameter counts."""

from __future__ import annotations

from typing import Any

from cnnlens.models.foreign import model_label
from cnnlens.models.summary import summary, total_params
from cnnlens.report import text
from cnnlens.report.context import ReportContext


def _shape(shape: tuple) -> str:
    if shape and all(isinstance(s, tuple) for s in shape):
        return ", ".join(_shape(s) for s in shape)
    return " x ".join(str(int(s)) for s in shape[1:]) if shape else "-"


def model_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Rows of :func:`cnnlens.models.summary` (name, type, output shape without the batch, params) and totals."""
    input_shape = tuple(int(s) for s in ctx.dataset.input_shape)
    rows = summary(ctx.model, input_shape, device=ctx.device)
    table = [{"name": r.name, "type": r.type, "shape": _shape(r.output_shape), "params": f"{r.params:,}"} for r in rows]
    total = total_params(ctx.model)
    trainable = total_params(ctx.model, trainable_only=True)
    model_cfg = ctx.inputs.config.get("model", {}) if isinstance(ctx.inputs.config, dict) else {}
    name = model_label(ctx.model, model_cfg)
    csv = ctx.assets.csv("layers", ["layer", "type", "output_shape", "params", "trainable_params"],
                         [(r.name, r.type, _shape(r.output_shape), r.params, r.trainable_params) for r in rows])
    sentences = text.model_sentences(name, total, trainable, len(rows), input_shape)
    scores = getattr(ctx.model, "scores", "logits")  # cnnlens.models.foreign.Scored says what the model outputs
    if scores in ("probabilities", "log_probabilities"):
        sentences.append(f"The model outputs {scores.replace('_', '-')}, not logits: every method explains the "
                         "log-probability log p of a class as its score.")
    return {"id": "model", "title": "Model", "text": sentences, "rows": table, "total": f"{total:,}",
            "trainable": f"{trainable:,}", "files": [csv]}
