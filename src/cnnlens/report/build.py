"""``build_report``: a run folder in, one self-contained HTML page (with its figures, CSV and JSON beside
it) out, written atomically.

Each section is a small function ``section(ctx) -> dict | None`` that gathers its data from the run and
the cnnlens APIs into plain data; None means its inputs are absent and the section is left out. The
Jinja2 templates only render those dicts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cnnlens import __version__
from cnnlens._atomic import check_output, output_dir
from cnnlens._progress import progress_bar
from cnnlens._types import PathArg
from cnnlens.models.foreign import model_label
from cnnlens.report.assets import Assets
from cnnlens.report.context import ReportContext, ReportInputs, ReportOptions, method_label
from cnnlens.report.render import render_page
from cnnlens.report.sections.class_average import class_average_section
from cnnlens.report.sections.data import data_section
from cnnlens.report.sections.evaluation import evaluation_section
from cnnlens.report.sections.explanations import explanations_section
from cnnlens.report.sections.faithfulness import faithfulness_section
from cnnlens.report.sections.filters import filters_section, parse_filter_rule
from cnnlens.report.sections.model import model_section
from cnnlens.report.sections.training import training_section

Section = Callable[[ReportContext], "dict[str, Any] | None"]

#: The page's sections, in order: (stage name for the progress bar, function).
SECTIONS: list[tuple[str, Section]] = [
    ("data", data_section),
    ("model", model_section),
    ("training", training_section),
    ("evaluation", evaluation_section),
    ("explanations", explanations_section),
    ("class averages", class_average_section),
    ("filters", filters_section),
    ("faithfulness", faithfulness_section),
]
#: Version of report.json; bump when its fields change meaning.
REPORT_VERSION = 1
#: Initial opacity of the heat layers.
DEFAULT_OPACITY = 0.7


def default_out(run_dir: PathArg) -> Path:
    """Where a run's report goes unless told otherwise: ``RUN/report``."""
    return Path(run_dir) / "report"


def build_report(run_dir: PathArg, out_dir: PathArg | None = None, *, options: ReportOptions | None = None,
                 overwrite: bool = False, data: str | None = None) -> Path:
    """Write the report of the run at ``run_dir`` to ``out_dir`` (default ``RUN/report``); return the page.

    The folder is built under a temporary sibling and moved into place only when complete; a failure
    leaves an earlier report at ``out_dir`` untouched and no temporary folder behind. An earlier report
    at the default ``RUN/report`` is replaced; one at an explicit ``out_dir`` only with ``overwrite``.
    Never replaced: a folder cnnlens did not write, or one that is or holds the run or its data.
    ``data``: another dataset's spec to show instead of the run's own (``options.split`` of it; see
    ``Run.dataset``); an imported run has none of its own.

    >>> build_report("demo-run/run")                       # doctest: +SKIP
    PosixPath('demo-run/run/report/index.html')
    """
    from cnnlens.train import load_run
    from cnnlens.train.run import read_manifest, run_inputs, spec_path

    options = options or ReportOptions()
    if not isinstance(options, ReportOptions):
        raise TypeError(f"options must be a cnnlens.report.ReportOptions, got {type(options).__name__}")
    run_path = Path(run_dir)
    out = default_out(run_path) if out_dir is None else Path(out_dir)
    overwrite = overwrite or out_dir is None  # a re-run replaces its own default report
    try:
        manifest = read_manifest(run_path)
    except ValueError:
        manifest = None  # load_run says what is wrong
    protected = [*run_inputs(run_path, manifest), spec_path(data)]
    check_output(out, kind="report", overwrite=overwrite, inputs=protected)  # before the slow part
    run = load_run(run_path, device=options.device)
    options = dataclasses.replace(options, device=str(run.device))  # "auto" resolved once, by load_run
    name = "/".join(run_path.resolve().parts[-2:])  # "demo-run/run", "runs/fer": the folder and its parent
    dataset = run.dataset(options.split) if data is None else run.dataset(options.split, data=data)
    inputs = ReportInputs(model=run.model, dataset=dataset, name=name, run_dir=run_path,
                          config=run.manifest, data=data)
    return write_report(inputs, out, options=options, overwrite=overwrite)


def check_options(options: ReportOptions, inputs: ReportInputs) -> None:
    """Every method and layer named in ``options`` exists, checked before any work: a clear error listing
    the valid ones otherwise."""
    from cnnlens.explain.core import get_layer
    from cnnlens.explain.runner import check_methods as check

    for field in ("filter_layers", "feature_map_layers"):
        for layer in getattr(options, field) or ():
            try:
                get_layer(inputs.model, layer)
            except ValueError as exc:
                raise ValueError(f"ReportOptions.{field}: {exc}") from None

    parse_filter_rule(options.filter_rule, inputs.dataset.classes)

    for field in ("methods", "average_methods"):
        names = getattr(options, field)
        if names:
            try:
                check(names)
            except ValueError as exc:
                raise ValueError(f"ReportOptions.{field}: {exc}") from None


@contextlib.contextmanager
def _stages(enabled: bool, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar over the report's stages; ``advance(name)`` marks the start of the next."""
    if not enabled:
        yield lambda name: None
        return
    with progress_bar("report: {task.description:<16}") as bar:
        task = bar.add_task("starting", total=total)
        started = [False]

        def advance(name: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=name)

        yield advance
        bar.update(task, completed=total, description="done")


def _meta(inputs: ReportInputs, ctx: ReportContext) -> list[tuple[str, str]]:
    cfg = inputs.config if isinstance(inputs.config, dict) else {}
    meta = [("Run", inputs.name)]
    meta.append(("Model", model_label(inputs.model, cfg.get("model"))))
    spec = cfg.get("data", {}).get("spec") if isinstance(cfg.get("data"), dict) else None
    if inputs.data is not None:  # another dataset than the run's own (--data)
        meta.append(("Data", f"{inputs.data} (given with --data)"))
    elif spec:
        meta.append(("Data", str(spec)))
    c, h, w = ctx.dataset.input_shape
    shown = f"{len(ctx.dataset):,} image{'s' * (len(ctx.dataset) != 1)}, {c}x{h}x{w}, {len(ctx.classes)} classes"
    meta.append(("Split", f"{ctx.options.split}: {shown}") if inputs.data is None else ("Images", shown))
    known = ctx.labels >= 0
    if known.any():
        acc = float((ctx.predictions[known] == ctx.labels[known]).mean())
        meta.append(("Accuracy", f"{100 * acc:.1f}%"))
    if inputs.run_dir is not None:
        meta.append(("Run folder", str(Path(inputs.run_dir).resolve())))
    return meta


def _page(inputs: ReportInputs, ctx: ReportContext, sections: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """The dict the template renders: metadata, the choosers' classes and methods, and the sections."""
    tagged = set().union(*(_methods_in(s) for s in sections))
    order = dict.fromkeys([*ctx.options.methods, *ctx.options.average_methods, *sorted(tagged)])
    methods = [{"id": m, "label": method_label(m)} for m in order if m in tagged]  # only methods the page shows
    return {
        "title": ctx.options.title or f"cnnlens report: {inputs.name}",
        "version": __version__,
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip(),
        "elapsed": f"{elapsed:.1f} s",
        "meta": _meta(inputs, ctx),
        "classes": list(ctx.classes),
        "methods": methods,
        "sections": sections,
        "opacity": DEFAULT_OPACITY,
        "pixelated": max(ctx.dataset.input_shape[1:]) <= 64,  # small images: crisp pixels when enlarged
        "client": {"classes": list(ctx.classes), "methods": methods, "run": inputs.name},
    }


def write_report(inputs: ReportInputs, out_dir: PathArg, *, options: ReportOptions | None = None,
                 overwrite: bool = False) -> Path:
    """Write the report of ``inputs`` (a model, its labelled split, optionally its run folder) to ``out_dir``.

    Use this for a model that is not a cnnlens run; :func:`build_report` calls it for a run folder.
    Every section is built into a temporary folder that replaces ``out_dir`` only when the page is
    written (:func:`cnnlens._atomic.output_dir`): an earlier report there only with ``overwrite``, never
    a folder cnnlens did not write, nor one that is or holds the run folder or its data. Returns
    ``out_dir/index.html``.
    """
    options = options or ReportOptions()
    if not isinstance(options, ReportOptions):
        raise TypeError(f"options must be a cnnlens.report.ReportOptions, got {type(options).__name__}")
    if len(inputs.dataset) == 0:
        raise ValueError(f"the {options.split} split has no images; a report needs at least one")
    check_options(options, inputs)
    started = time.perf_counter()
    out = Path(out_dir)
    timings: dict[str, float] = {}
    with output_dir(out, kind="report", overwrite=overwrite, inputs=_protected(inputs)) as tmp:
        assets = Assets(tmp)
        ctx = ReportContext(inputs, options, assets)
        sections: list[dict[str, Any]] = []
        with _stages(options.progress, len(SECTIONS) + 2) as advance:
            advance("predictions")
            t0 = time.perf_counter()
            ctx.probabilities  # noqa: B018  (one batched pass, shared by every section)
            timings["predictions"] = time.perf_counter() - t0
            for name, section in SECTIONS:
                advance(name)
                t0 = time.perf_counter()
                result = section(ctx)
                timings[name] = time.perf_counter() - t0
                if result is not None:
                    sections.append(result)
            advance("writing")
            page = _page(inputs, ctx, sections, time.perf_counter() - started)
            assets.json("report", {
                "version": REPORT_VERSION, "cnnlens": __version__, "run": inputs.name,
                "run_dir": str(Path(inputs.run_dir).resolve()) if inputs.run_dir is not None else None,
                "generated": page["generated"], "options": dataclasses.asdict(options),
                "sections": [s["id"] for s in sections], "seconds": {k: round(v, 3) for k, v in timings.items()}})
            page["files"] = list(assets.files)
            (tmp / "index.html").write_text(render_page(page), encoding="utf-8")
    return out / "index.html"


def _protected(inputs: ReportInputs) -> list[Path]:
    """What the report must never replace: the run folder and the data its config names."""
    from cnnlens.train.run import run_inputs

    return [] if inputs.run_dir is None else run_inputs(inputs.run_dir, inputs.config)


def _methods_in(obj: Any) -> set[str]:
    """Method ids that figures anywhere inside a section dict are tagged with."""
    found: set[str] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("method"), str):
                found.add(item["method"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found
