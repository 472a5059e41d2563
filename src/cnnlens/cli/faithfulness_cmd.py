"""``cnnlens faithfulness``: deletion/insertion, randomisation sanity checks and localisation of every
method on a run's images, with baselines and confidence intervals, written as a table and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cnnlens.cli._options import RegistryOption, parse_methods, parse_options
from cnnlens.faithfulness.deletion import SUBSTRATES
from cnnlens.faithfulness.runner import METRIC_GROUPS
from cnnlens.jobs.cli import faithfulness_job_options, run_job


def _report_methods() -> tuple[str, ...]:
    """The report's default methods (registered with ``in_report``), read when the option is used."""
    from cnnlens.report.context import default_methods

    return default_methods()


def _metric_groups(text: str) -> list[str] | None:
    """``"deletion,road"`` -> the groups (checked); ``"all"`` -> None (every group)."""
    if text.strip().lower() == "all":
        return None
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in METRIC_GROUPS]
    if unknown or not groups:
        raise click.BadParameter(f"unknown metric group {unknown[0]!r}; choose from {', '.join(METRIC_GROUPS)} or all"
                                 if unknown else "no metric group given", param_hint="--metrics")
    return groups


def _defaulted(param: str) -> bool:
    """Whether ``--param`` was left at its default (the report's methods: skip one the model cannot support)."""
    return click.get_current_context().get_parameter_source(param) is click.core.ParameterSource.DEFAULT


def _step(text: str) -> int | float:
    """``"0.05"`` -> a share of the pixels; ``"48"`` -> pixels per step."""
    try:
        return int(text) if text.strip().isdigit() else float(text)
    except ValueError:
        raise click.BadParameter(f"expected pixels per step (an int such as 48) or a share (a float such as 0.05); got {text!r}",
                                 param_hint="--step") from None


@click.command(name="faithfulness")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--methods", cls=RegistryOption, registry_default=lambda: _report_methods(), show_default=True,
              metavar="NAMES",
              help="Comma-separated methods ({methods}) or 'all' (every registered method; those the model cannot "
                   "support are skipped and listed). Default: the report's default methods.")
@click.option("--metrics", "metric_groups", default="all", show_default=True, metavar="GROUPS",
              help="Comma-separated metric groups (" + ", ".join(METRIC_GROUPS) + ") or 'all'. sensitivity, "
                   "random-logit and mprt re-explain the randomisation images, like randomization.")
@click.option("--n-images", type=click.IntRange(min=1), default=200, show_default=True,
              help="Evaluate on N images of the split drawn at random, stratified by class (seeded by --seed; "
                   "the draw is recorded in faithfulness.json).")
@click.option("--n-perturbation-images", cls=RegistryOption, type=click.IntRange(min=0), default=20, show_default=True,
              help="The perturbation methods ({perturbation_methods}: hundreds of forward passes per image) use only "
                   "the first N of those (a "
                   "stratified subset); every method and baseline is also scored on them, for a like-for-like table.")
@click.option("--n-randomization-images", type=click.IntRange(min=0), default=16, show_default=True,
              help="The randomisation sanity check re-explains these first N images once per layer (0: skip it).")
@click.option("--randomization-methods", cls=RegistryOption, default="auto", show_default=True, metavar="NAMES",
              help="Methods for the randomisation check; auto = all but {perturbation_methods} (they only read the "
                   "model's outputs, and would cost ~2000 passes per image per layer).")
@click.option("--split", type=click.Choice(["val", "test", "train", "all"]), default=None,
              help="Which of the run's images (default val); with --data, any split the dataset has (default all: "
                   "every image).")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Another dataset than the run's own (needed for a run made by `cnnlens import`); labels are not "
                   "needed: the predicted class is explained.")
@click.option("--masks", "mask_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of PNG ground-truth masks matched by image name (default: the dataset's own masks, "
                   "e.g. synthetic faces; without masks localisation is skipped).")
@click.option("--step", default="0.05", show_default=True,
              help="Deletion/insertion step: a share of the pixels (0.05) or pixels per step (48).")
@click.option("--deletion-substrate", type=click.Choice(list(SUBSTRATES)), default="blur", show_default=True,
              help="What deleted pixels become (blur: a blurred copy, sigma = 10% of the image side; dataset-mean; "
                   "road: noisy linear imputation from the pixels left, Rong et al. 2022, slower). A warning says "
                   "when the fully deleted image still shows the class.")
@click.option("--insertion-substrate", type=click.Choice(list(SUBSTRATES)), default="blur", show_default=True,
              help="What insertion starts from.")
@click.option("--option", "-o", "option_items", multiple=True, metavar="METHOD.NAME=VALUE",
              help="A method option, repeatable: -o occlusion.stride=4 -o lime.n_samples=500.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/faithfulness).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier faithfulness folder at --out (kept until the new one is complete); never "
                   "a folder cnnlens did not write, nor one holding the run or its data.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds random baselines, noise and the bootstrap.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Perturbed images per forward pass.")
@faithfulness_job_options
def command(run_dir: Path, methods: str, metric_groups: str, n_images: int, n_perturbation_images: int, n_randomization_images: int,
            randomization_methods: str, split: str | None, data_spec: str | None, mask_dir: Path | None, step: str,
            deletion_substrate: str, insertion_substrate: str,
            option_items: tuple[str, ...], out_dir: Path | None, overwrite: bool, seed: int, device: str,
            batch_size: int | None, save_maps: bool = False, **job: Any) -> None:
    """Measure whether each explanation method tells the truth about the model in RUN_DIR.

    \b
    Deletion/insertion (Petsiuk et al. 2018) beside a random pixel order; the model-randomisation
    sanity check (Adebayo et al. 2018, cascading and independent, Spearman and SSIM); localisation
    against ground-truth masks (pointing game, relevance mass and rank) beside a centre prior and a
    random map; the peers' metrics: Average Drop and Increase in Confidence (torch-cam), infidelity and
    max-sensitivity (Captum), ROAD MoRF/LeRF, random logit and MPRT (Quantus). Every mean has a 95%
    bootstrap interval over images. Writes faithfulness.json/.csv, per_image.csv, randomization.csv and
    figures (.png with their arrays in .npz).

    \b
    Examples:
      cnnlens faithfulness runs/faces                          # -> runs/faces/faithfulness
      cnnlens faithfulness runs/faces --methods saliency,grad-cam,occlusion --n-images 100
      cnnlens faithfulness runs/faces --methods all --metrics deletion,road,confidence
      cnnlens faithfulness runs/food --masks food-masks/ --out runs/food/faith --overwrite
      cnnlens faithfulness runs/imported --data folder:photos --methods saliency,grad-cam
      cnnlens faithfulness runs/faces --split test --methods grad-cam --out scores --engine ray   # per image, resumable
    """
    if job["engine"] is not None:  # every image of the split, deletion/insertion AUC per image (cnnlens.jobs)
        return run_job(run_dir=run_dir, out=out_dir, methods=methods, option_items=option_items, split=split or
                       ("val" if data_spec is None else None), data=data_spec, seed=seed, device=device,
                       batch_size=None, overwrite=overwrite, scores=("deletion", "insertion"), save_maps=save_maps,
                       step=_step(step), deletion_substrate=deletion_substrate, insertion_substrate=insertion_substrate,
                       **job)
    from cnnlens._atomic import check_output
    from cnnlens.explain.runner import check_methods, check_options
    from cnnlens.faithfulness.runner import evaluate_run_faithfulness
    from cnnlens.train import load_run
    from cnnlens.train.run import run_inputs, spec_path

    out = out_dir if out_dir is not None else run_dir / "faithfulness"
    inputs = [*run_inputs(run_dir), mask_dir, spec_path(data_spec)]
    check_output(out, kind="faithfulness", overwrite=overwrite, inputs=inputs)  # before any work

    names = parse_methods(methods)
    metrics = _metric_groups(metric_groups)
    options = parse_options(option_items)
    step_value = _step(step)
    try:  # names and options are checked before the run is loaded
        chosen = check_methods(names)
        check_options(chosen, options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--methods/--option") from None
    randomized = None
    if randomization_methods.strip().lower() != "auto":
        randomized = [p.strip() for p in randomization_methods.split(",") if p.strip()]
        unknown = [m for m in randomized if m not in chosen]
        if unknown:
            raise click.BadParameter(f"{', '.join(unknown)} not among the evaluated methods {', '.join(chosen)}",
                                     param_hint="--randomization-methods")
    try:
        run = load_run(run_dir, device=device)
        if data_spec is None:
            split = split or "val"
        result = evaluate_run_faithfulness(  # masks are read for the images it draws
            run, split=split, data=data_spec, n_images=n_images, mask_dir=mask_dir, methods=chosen,
            n_perturbation_images=n_perturbation_images, n_randomization_images=n_randomization_images,
            randomization_methods=randomized, step=step_value, deletion_substrate=deletion_substrate,
            insertion_substrate=insertion_substrate, method_kwargs=options, seed=seed, batch_size=batch_size, metrics=metrics,
            skip_unsupported=names is None or _defaulted("methods"), progress=True)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    result.save(out, overwrite=overwrite, inputs=[*run_inputs(run_dir, run.manifest), mask_dir, spec_path(data_spec)])
    click.echo(result.table())
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"Wrote {out}/ (faithfulness.json, faithfulness.csv, per_image.csv, randomization.csv, figures)")
