"""``cnnlens report``: one self-contained HTML page about a run, with its figures, CSV and JSON beside it."""

from __future__ import annotations

from pathlib import Path

import click

from cnnlens.cli._options import RegistryOption
from cnnlens.explain.occlusion import FILLS
from cnnlens.report.context import ReportOptions, default_average_methods, default_methods

_D = ReportOptions()


def _names(text: str | None, option: str) -> tuple[str, ...] | None:
    """``"a,b"`` -> ``("a", "b")``; ``"none"`` -> ``()``; None stays None (the default)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise click.BadParameter(f"expected comma-separated names; got {text!r}", param_hint=option)
    return names


@click.command(name="report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/report, where a re-run replaces the earlier report once the new "
                   "one is complete).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier report at --out; never a folder cnnlens did not write, nor one holding the "
                   "run or its data.")
@click.option("--split", type=click.Choice(["val", "test", "train", "all"]), default=None,
              help=f"Which images the report shows and scores (default {_D.split}); with --data, any split the dataset "
                   "has (default all: every image).")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Another dataset than the run's own (needed for a run made by `cnnlens import`), labelled by the "
                   "run's class names; unlabelled images are explained for the predicted class.")
@click.option("--images-per-class", type=click.IntRange(min=1), default=_D.images_per_class, show_default=True,
              help="Most confidently right and most confidently wrong images explained per class (each).")
@click.option("--examples-per-class", type=click.IntRange(min=1), default=_D.examples_per_class, show_default=True,
              help="Example images per class in the Data section.")
@click.option("--methods", cls=RegistryOption, registry_default=default_methods, show_default=True,
              help="Explanation methods shown side by side, comma-separated, or 'all' (every registered method; "
                   "those the model cannot support are left out, saying why). `cnnlens methods` lists them.")
@click.option("--occlusion-stride", type=click.IntRange(min=1), default=_D.occlusion_stride, show_default=True,
              help="Occlusion: pixels between patch positions (smaller = finer, slower).")
@click.option("--occlusion-patch", type=click.IntRange(min=1), default=_D.occlusion_patch, show_default=True,
              help="Occlusion: patch size in pixels.")
@click.option("--occlusion-fill", type=click.Choice(list(FILLS)), default=_D.occlusion_fill,
              show_default=True, help="Occlusion: what a patch hides with (black+white: both maps summed, as in the seeds).")
@click.option("--lime-samples", type=click.IntRange(min=1), default=_D.lime_samples, show_default=True,
              help="LIME: perturbed samples per image (LIME's own default is 1000).")
@click.option("--smoothgrad-samples", type=click.IntRange(min=1), default=_D.smoothgrad_samples, show_default=True,
              help="SmoothGrad: noisy copies per image.")
@click.option("--ig-steps", type=click.IntRange(min=1), default=_D.ig_steps, show_default=True,
              help="Integrated gradients: integration steps.")
@click.option("--average-methods", cls=RegistryOption, registry_default=default_average_methods, show_default=True,
              help="Methods averaged per class in the class-average maps ('none' to leave the section out).")
@click.option("--average-images", type=click.IntRange(min=1), default=_D.average_images, show_default=True,
              help="Images per class in each class-average map.")
@click.option("--filter-layers", default=None, metavar="LAYERS",
              help="Layers whose filters are shown, comma-separated, or 'none' (default: the ReLU after the middle and the last convolution).")
@click.option("--filters-per-layer", type=click.IntRange(min=1), default=_D.filters_per_layer, show_default=True,
              help="Filters shown per filter layer.")
@click.option("--filter-rule", default=_D.filter_rule, show_default=True, metavar="RULE",
              help="How the filters are chosen: 'activation' (highest mean activation on the split) or "
                   "'contribution:CLASS' (highest gradient x activation toward that class).")
@click.option("--exemplars", type=click.IntRange(min=1), default=_D.exemplars, show_default=True,
              help="Real image patches shown beside each filter's synthetic image.")
@click.option("--am-steps", type=click.IntRange(min=1), default=_D.am_steps, show_default=True,
              help="Adam steps of the synthetic (activation-maximisation) images.")
@click.option("--feature-map-layers", default=None, metavar="LAYERS",
              help="Layers whose outputs are shown for one image, or 'none' (default: the first and the last convolution).")
@click.option("--seed", type=int, default=_D.seed, show_default=True, help="Seeds LIME, SmoothGrad, sampling and activation maximisation.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per perturbation pass (default: per device).")
@click.option("--title", default=None, help="Page title (default: 'cnnlens report: RUN').")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar over the stages.")
@click.option("--explanations", "explanations", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="A dataset job of this run and split (`cnnlens explain RUN --split S --engine ...`): the explanations "
                   "section reads its maps from there instead of computing them.")
def command(run_dir: Path, out_dir: Path | None, overwrite: bool, split: str | None, data_spec: str | None,
            images_per_class: int,
            examples_per_class: int, methods: str, occlusion_stride: int, occlusion_patch: int, occlusion_fill: str,
            lime_samples: int, smoothgrad_samples: int, ig_steps: int, average_methods: str, average_images: int,
            filter_layers: str | None, filters_per_layer: int, filter_rule: str, exemplars: int, am_steps: int,
            feature_map_layers: str | None, seed: int,
            device: str, batch_size: int | None, title: str | None, progress: bool, explanations: str | None = None) -> None:
    """Write the report of the run in RUN_DIR: data, model, training, evaluation, explanations per class,
    class-average maps, filters and (once `cnnlens faithfulness` has run) faithfulness, as one HTML page
    that opens from disk with no network.

    \b
    Examples:
      cnnlens report runs/fer                         # -> runs/fer/report/index.html
      cnnlens report runs/fer --out site --images-per-class 3 --lime-samples 1000
      cnnlens report runs/fer --out site --overwrite  # replace the report written there before
      cnnlens report runs/fer --methods saliency,grad-cam --average-methods none
      cnnlens report runs/fer --methods all           # every method, not only the default eight
      cnnlens report runs/imported --data folder:photos
    """
    from cnnlens.report import build_report

    if methods.strip().lower() == "all":  # every registered method, in the registry's order
        from cnnlens.explain import registry

        methods = ",".join(registry.names())
    method_names = _names(methods, "--methods")
    average = _names(average_methods, "--average-methods")
    try:
        options = ReportOptions(
            split=split or (_D.split if data_spec is None else "all"), images_per_class=images_per_class,
            examples_per_class=examples_per_class,
            methods=method_names or (), occlusion_stride=occlusion_stride, occlusion_patch=occlusion_patch,
            occlusion_fill=occlusion_fill, lime_samples=lime_samples, smoothgrad_samples=smoothgrad_samples, ig_steps=ig_steps,
            average_methods=average or (), average_images=average_images,
            filter_layers=_names(filter_layers, "--filter-layers"), filters_per_layer=filters_per_layer,
            filter_rule=filter_rule, exemplars=exemplars, am_steps=am_steps, feature_map_layers=_names(feature_map_layers, "--feature-map-layers"), seed=seed,
            device=device, batch_size=batch_size, title=title, progress=progress, explanations=explanations)
        page = build_report(run_dir, out_dir, options=options, overwrite=overwrite, data=data_spec)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"report: {page}")
