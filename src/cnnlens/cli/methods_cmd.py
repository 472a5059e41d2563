"""``cnnlens methods``: every registered explanation method, its kind, paper and options, from the registry.

Everything shown is read from :mod:`cnnlens.explain.registry` (the facts), the method's function (its
signature's defaults, its docstrings) and :attr:`~cnnlens.explain.registry.Method.options` (what
``cnnlens explain`` and ``cnnlens report`` pass instead): nothing here is a table of its own.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
import shutil
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import click

from cnnlens.cli._options import RegistryOption

if TYPE_CHECKING:
    from cnnlens.explain.registry import Method

#: Version of the ``--json`` document.
JSON_VERSION = 1
_EQUATION = re.compile(r"``[^`]*[=~][^`]*``")
#: Options shown but never worth an example: how a map is computed, not what it is.
_NOT_EXAMPLES = ("fast", "batch_size", "layer", "generator", "progress")


def _paragraphs(doc: str | None) -> list[str]:
    """A docstring's paragraphs, each on one line."""
    return [" ".join(p.split()) for p in inspect.cleandoc(doc or "").split("\n\n") if p.strip()]


def _docs(m: Method) -> tuple[str, str | None]:
    """The method's summary (its module docstring's first paragraph, or its help) and its formula: the module
    docstring's first later paragraph with an equation in a ``literal`` (``= ...`` or ``~ ...``: the house's
    formula line), else None (the help, the function docstring's first paragraph, then carries it)."""
    module = sys.modules.get(getattr(m.fn, "__module__", "") or "")
    paras = _paragraphs(getattr(module, "__doc__", None))
    summary = paras[0] if paras else m.help
    formula = next((p for p in paras[1:] if _EQUATION.search(p)), None)
    return summary, formula


def _options(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(library defaults, the commands' values where they differ)``, both as JSON values, in signature order."""
    from cnnlens.explain import registry
    from cnnlens.explain.runner import used_options

    try:
        library = used_options(name, {})
    except (TypeError, ValueError):  # a callable without a readable signature
        library = {}
    commands = registry.get(name).options
    return library, {k: v for k, v in used_options(name, commands).items() if k in commands and library.get(k) != v}


def _value_text(value: Any) -> str:
    """An option value as ``-o`` reads it back (JSON; a plain string as it is)."""
    return value if isinstance(value, str) else json.dumps(value)


def example(name: str) -> str:
    """A ``cnnlens explain`` line running ``name`` with one of its options set: the first the commands set
    (at their value), else the first plain-valued one (a flag turned over, anything else at its default)."""
    from cnnlens.explain import registry

    library, _ = _options(name)
    given = dict(registry.get(name).options)
    key = next(iter(given), None)
    plain = [k for k, v in library.items() if isinstance(v, (bool, int, float, str))]
    if key is None:  # what a map is before how it is computed (FullGrad has only ``fast``)
        key = next((k for k in plain if k not in _NOT_EXAMPLES), next(iter(plain), None))
    line = f"cnnlens explain RUN --methods {name}"
    if key is not None:
        value = given[key] if key in given else library[key]
        line += f" -o {name}.{key}={_value_text(not value if isinstance(value, bool) and key not in given else value)}"
    return line + " --out OUT"


def report_ranks() -> dict[str, int]:
    """Method -> its 1-based place among ``cnnlens report``'s default methods (``in_report``'s order), as
    :func:`cnnlens.report.context.default_methods` (not imported: it loads the report's figures)."""
    from cnnlens.explain import registry

    chosen = sorted((m for m in registry.registered() if m.in_report is not None), key=lambda m: m.in_report)
    return {m.name: i for i, m in enumerate(chosen, 1)}


def describe(name: str) -> dict[str, Any]:
    """Everything ``cnnlens methods`` knows about method ``name``, as plain JSON data."""
    from cnnlens.explain import registry

    m = registry.get(name)
    summary, formula = _docs(m)
    library, commands = _options(name)
    p = m.paper
    return {
        "name": m.name, "label": m.label, "kind": m.kind,
        "paper": None if p is None else {"authors": p.authors, "year": p.year, "title": p.title, "cite": p.cite,
                                         "text": str(p)},
        "summary": summary, "formula": formula, "help": m.help,
        "function": f"{m.fn.__module__}.{getattr(m.fn, '__qualname__', m.fn.__name__)}",
        "options": library, "command_options": commands,
        "layer": m.layer, "streamable": m.streamable, "style": m.style,
        "report_default": report_ranks().get(m.name), "class_average": m.class_average, "contrastive": m.contrastive,
        "example": example(name),
    }


def _unknown(name: str, known: list[str]) -> click.BadParameter:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5) or \
        [k for k in known if name.lower() in k or k in name.lower()][:5]
    hint = f"close names: {', '.join(close)}" if close else f"registered: {', '.join(known)}"
    return click.BadParameter(f"unknown method {name!r}; {hint} (`cnnlens methods` lists all {len(known)})",
                              param_hint="NAME")


def _option_items(d: dict[str, Any]) -> list[str]:
    """``["n_samples=50 [commands: 12]", "sigma=0.15", ...]``: each option as ``-o`` spells its value."""
    commands = d["command_options"]
    return [f"{k}={_value_text(v)}" + (f" [commands: {_value_text(commands[k])}]" if k in commands else "")
            for k, v in d["options"].items()] or ["(none)"]


def _pack(items: list[str], width: int, first: str, indent: str) -> list[str]:
    """``items`` joined by ", " into lines of at most ``width`` characters, never breaking an item."""
    lines, line = [], first
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if line.strip() and line not in (first, indent) and len(line) + 1 + len(piece) > width:
            lines.append(line.rstrip())
            line = indent
        line += ("" if line in (first, indent) else " ") + piece
    return [*lines, line.rstrip()]


def _table(rows: list[dict[str, Any]], width: int) -> str:
    cols = [("NAME", "name"), ("LABEL", "label"), ("KIND", "kind"), ("PAPER", "paper"), ("REPORT", "report")]
    cells = [{"name": d["name"], "label": d["label"], "kind": d["kind"],
              "paper": d["paper"]["cite"] if d["paper"] else "-",
              "report": f"default {d['report_default']}" if d["report_default"] else "--methods all"} for d in rows]
    widths = {k: max(len(h), *(len(c[k]) for c in cells)) for h, k in cols}
    lines = ["  ".join(h.ljust(widths[k]) for h, k in cols).rstrip()]
    for d, c in zip(rows, cells):
        lines.append("  ".join(c[k].ljust(widths[k]) for _, k in cols).rstrip())
        lines += _pack(_option_items(d), max(width, 40), "    options: ", " " * 13)
    return "\n".join(lines)


def _full(d: dict[str, Any], width: int) -> str:
    w = max(width, 40)

    def field(label: str, text: str) -> list[str]:
        return textwrap.wrap(text, width=w, initial_indent=f"{label:<10}", subsequent_indent=" " * 10,
                             break_on_hyphens=False) or [label]

    paper = "-" if d["paper"] is None else d["paper"]["text"]
    facts = ["takes --layer (default: the last conv layer)" if d["layer"] else "",
             "streamable (whole splits in constant memory)" if d["streamable"] else "",
             f"in the report's defaults (#{d['report_default']})" if d["report_default"]
             else "in the report with --methods all (or by name)",
             "in its class-average defaults" if d["class_average"] else "",
             "the report's contrastive view of a mistake" if d["contrastive"] is not None else ""]
    lines = [f"{d['name']}: {d['label']} ({d['kind']})"]
    lines += field("paper", paper) + field("summary", d["summary"])
    if d["formula"]:
        lines += field("formula", d["formula"])
    lines += field("call", f"{d['function']}(model, images, target=None, **options): {d['help']}")
    lines += field("facts", "; ".join(f for f in facts if f))
    lines.append("options   (default; [commands: what `cnnlens explain` and `cnnlens report` pass instead])")
    commands = d["command_options"]
    for k, v in d["options"].items():
        lines.append(f"  {k:<20}{_value_text(v)}" + (f"  [commands: {_value_text(commands[k])}]" if k in commands else ""))
    if not d["options"]:
        lines.append("  (none)")
    lines += field("example", d["example"])
    return "\n".join(lines)


@click.command(name="methods")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--kind", cls=RegistryOption, default=None, metavar="KIND", help="List only one kind: {kinds}.")
@click.option("--json", "as_json", is_flag=True, help="Print it all as JSON (version, methods) for machine use.")
def command(names: tuple[str, ...], kind: str | None, as_json: bool) -> None:
    """List every explanation method: name, label, kind, paper, options and whether the report shows it.

    The options are the method's own defaults (its paper's); where `cnnlens explain` and `cnnlens report`
    pass another value it is shown as [commands: VALUE]. Set one with -o NAME.OPTION=VALUE. The report
    shows its default methods unless told otherwise; `--methods all` adds the rest.

    \b
    Examples:
      cnnlens methods                 # the table
      cnnlens methods grad-cam        # one method in full: paper, formula, options, an example
      cnnlens methods --kind cam
      cnnlens methods --json
    """
    from cnnlens.explain import registry

    known = registry.names()
    if names and kind is not None:
        raise click.UsageError("give NAMEs or --kind, not both")
    for name in names:
        if name not in known:
            raise _unknown(name, known)
    if kind is not None:
        try:
            chosen = registry.names(kind=kind.strip())
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--kind") from None
    else:
        chosen = list(dict.fromkeys(names)) or known
    rows = [describe(n) for n in chosen]
    if as_json:
        click.echo(json.dumps({"version": JSON_VERSION, "methods": rows}, indent=2))
        return
    width = shutil.get_terminal_size((100, 24)).columns - 1
    if names:
        click.echo("\n\n".join(_full(d, width) for d in rows))
        return
    click.echo(_table(rows, width))
    click.echo(f"\n{len(rows)} method{'s' * (len(rows) != 1)}; `cnnlens methods NAME` shows one in full, "
               "`--json` all of it.")
