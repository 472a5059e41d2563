"""Option parsers the subcommands share (method lists, per-method options)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def parse_methods(text: str) -> list[str] | None:
    """``"saliency,grad-cam"`` -> the names (checked against ``METHODS``); ``"all"`` -> None (every method)."""
    from cnnlens.explain.runner import check_methods

    if text.strip().lower() == "all":
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return check_methods(names)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--methods") from None


def parse_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["occlusion.stride=4", "lime.n_samples=500"]`` -> ``{"occlusion": {"stride": 4}, "lime": {...}}``.

    Values are read as JSON (numbers, true/false, lists) and otherwise kept as text.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not eq or not dot or not method.strip() or not name.strip():
            raise click.BadParameter(f"expected METHOD.NAME=VALUE such as occlusion.stride=4; got {item!r}", param_hint="--option")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method.strip(), {})[name.strip()] = value
    return out
