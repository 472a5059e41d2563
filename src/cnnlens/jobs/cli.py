"""The ``--engine`` mode of ``cnnlens explain`` and ``cnnlens faithfulness``: the whole split as a dataset job.

The commands add :func:`job_options` and, when ``--engine`` is given, hand over to :func:`explain_job` /
:func:`faithfulness_job` before their own work: every image of ``--split`` explained (and, for
faithfulness, scored by deletion/insertion AUC), into a resumable folder of Parquet shards at ``--out``
(:mod:`cnnlens.jobs.shards`), on this process (``local``) or a Ray cluster (``ray``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cnnlens.jobs.job import DEFAULT_SHARD_SIZE, ENGINES

JOB_HELP = ("Every image of --split, explained (faithfulness: also scored, deletion and insertion AUC per image; "
            "--n-images and the randomisation check do not apply), into a resumable folder of Parquet shards at --out "
            "(read it with cnnlens.jobs.load_explanations): local = this process, ray = a Ray cluster (pip install "
            "'cnnlens[ray]'). Re-running the same command resumes; without --engine, the command does what it says above.")


def job_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of the dataset-job mode (``--engine``, ``--ray-address``, ``--workers``, ``--shard-size``,
    ``--float16``); the command receives them as ``engine``, ``ray_address``, ``workers``, ``shard_size``, ``float16``."""
    options = [
        click.option("--engine", type=click.Choice(list(ENGINES)), default=None, help=JOB_HELP),
        click.option("--ray-address", default=None, metavar="HOST:PORT",
                     help="With --engine ray: an existing cluster (`ray start --head`); default: a local one for this job."),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="With --engine ray: actors, each with one model (one CPU each; one GPU each on CUDA)."),
        click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
                     help="With --engine: images per Parquet shard (the unit written atomically and skipped on resume)."),
        click.option("--float16", is_flag=True, help="With --engine: store the maps as float16 (half the disk)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def faithfulness_job_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`job_options` and ``--save-maps`` (a faithfulness job keeps only the per-image scores by default)."""
    command = click.option("--save-maps", is_flag=True,
                           help="With --engine: keep each method's maps in the shards too (default: only the scores).")(command)
    return job_options(command)


def _source(run_dir: Path | None, model_spec: str | None, weights: Path | None, classes: str | None,
            input_shape: str | None, data: str | None, split: str | None, device: str) -> tuple[Any, Any, dict[str, Any]]:
    """(the model or the run folder for the workers, the images, their description)."""
    from cnnlens.cli.explain_cmd import run_source, user_source
    from cnnlens.train.run import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    if (run_dir is None) == (model_spec is None):
        raise click.UsageError("give either RUN_DIR or --model MODULE:BUILDER (with --weights and --data), not both")
    if run_dir is not None:
        src = run_source(run_dir, split, dev, data)
        return (run_dir if data is None else src.model), src.dataset, src.description
    src = user_source(model_spec or "", weights, classes, input_shape, data, split, dev)
    return src.model, src.dataset, src.description


def _options(methods: str, option_items: tuple[str, ...], layer: str | None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    from cnnlens.cli._options import parse_methods, parse_options
    from cnnlens.explain import registry
    from cnnlens.explain.runner import check_methods, method_accepts

    chosen = check_methods(parse_methods(methods))
    options = parse_options(option_items)
    for m, kw in registry.default_options(chosen).items():  # the commands' defaults, under what was given
        options[m] = {**kw, **options.get(m, {})}
    if layer is not None:
        for m in chosen:
            if method_accepts(m, "layer"):
                options.setdefault(m, {}).setdefault("layer", layer)
    return chosen, options


def run_job(*, run_dir: Path | None, out: Path | None, methods: str, option_items: tuple[str, ...], split: str | None,
            data: str | None, seed: int, device: str, batch_size: int | None, overwrite: bool, engine: str,
            ray_address: str | None, workers: int, shard_size: int, float16: bool, layer: str | None = None,
            target: str = "predicted", scores: tuple[str, ...] = (), save_maps: bool = True, step: int | float = 0.05,
            deletion_substrate: str = "blur", insertion_substrate: str = "blur", model_spec: str | None = None,
            weights: Path | None = None, classes: str | None = None, input_shape: str | None = None,
            inputs: list[Path | None] | None = None) -> None:
    """The dataset job of a command's options; prints where it went and (with scores) the mean per method."""
    from cnnlens._atomic import CannotWrite, OutputRefused
    from cnnlens.jobs.job import explain_dataset
    from cnnlens.train.run import run_inputs, spec_path

    if out is None:
        raise click.UsageError("--engine writes a folder of Parquet shards: give it with --out DIR")
    try:
        chosen, options = _options(methods, option_items, layer)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--methods/--option") from None
    model, images, description = _source(run_dir, model_spec, weights, classes, input_shape, data, split, device)
    if inputs is None:
        inputs = [*run_inputs(run_dir), spec_path(data)] if run_dir is not None else [weights, spec_path(data)]
    from cnnlens.train.run import resolve_device

    dev = str(resolve_device(device))  # checked by _source already
    try:
        res = explain_dataset(model, images, chosen, out=out, options=options, seed=seed,
                              target="labels" if target == "true" else "predicted", save_maps=save_maps,
                              map_dtype="float16" if float16 else "float32", scores=scores, step=step,
                              deletion_substrate=deletion_substrate, insertion_substrate=insertion_substrate,
                              shard_size=shard_size, batch_size=batch_size, engine=engine, workers=workers,
                              ray_address=ray_address, device=dev, overwrite=overwrite, progress=True,
                              description=description, inputs=inputs,
                              skip_unsupported=methods.strip().lower() == "all")
    except (OutputRefused, CannotWrite, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    except (ValueError, TypeError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    from cnnlens.jobs.shards import read_manifest

    for m, why in (read_manifest(Path(out)) or {}).get("skipped", {}).items():
        click.echo(f"skipped {m}: {why}", err=True)
    skipped = f", {res.skipped} of {res.shards} shard(s) already complete" if res.skipped else ""
    rate = f" at {res.images_per_second:,.1f} images/s" if res.computed else ""
    click.echo(f"{engine}: {res.computed} of {res.n_images} image(s) computed{rate}{skipped}: {out}/ "
               "(read it with cnnlens.jobs.load_explanations)")
    if scores:
        _print_scores(out)


def _print_scores(out: Path) -> None:
    from cnnlens.faithfulness.stats import mean_ci
    from cnnlens.jobs.shards import load_explanations

    res = load_explanations(out, maps=False)
    for name, values in res.scores.items():
        mean, low, high = mean_ci(values)
        click.echo(f"  {name:<32} {mean:.4f}  (95% CI {low:.4f}-{high:.4f}, {len(values)} images)")
