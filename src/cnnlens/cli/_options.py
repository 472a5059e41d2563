"""Option parsers the subcommands share (method lists, per-method options), and :class:`RegistryOption`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click


def _registry_text() -> dict[str, str]:
    from cnnlens.explain import registry

    defaults = registry.default_options(registry.names())
    return {"methods": ",".join(registry.names()), "layer_methods": ", ".join(registry.names(layer=True)),
            "perturbation_methods": ", ".join(registry.names(kind="perturbation")),
            "kinds": ", ".join(registry.KINDS),
            "defaults": ", ".join(f"{m}.{k}={v}" for m, kw in defaults.items() for k, v in kw.items())}


class RegistryOption(click.Option):
    """A click option whose help, and with ``registry_default`` its default, is read from the method registry
    when shown or used rather than when the command's module is imported, so a method registered later (a
    module of your own) is listed too. ``help`` may name ``{methods}`` (every method, comma-separated),
    ``{layer_methods}`` (those taking ``layer=``, comma-separated), ``{perturbation_methods}`` (likewise), ``{kinds}`` (the
    method kinds) and ``{defaults}`` (the commands' default options as METHOD.NAME=VALUE).

    >>> @click.option("--methods", cls=RegistryOption, default="all", help="Methods ({methods}) or 'all'.")
    """

    def __init__(self, *args: Any, registry_default: Callable[[], Sequence[str]] | None = None, **kwargs: Any) -> None:
        self._registry_default = registry_default
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def help(self) -> str | None:
        return None if self._help is None else self._help.format(**_registry_text())

    @help.setter
    def help(self, value: str | None) -> None:
        self._help = value

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        if self._registry_default is not None:
            return ",".join(self._registry_default())
        return super().get_default(ctx, call=call)


def parse_methods(text: str) -> list[str] | None:
    """``"saliency,grad-cam"`` -> the names (checked against the registry); ``"all"`` -> None (every method)."""
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
