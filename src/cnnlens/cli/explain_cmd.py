"""``cnnlens explain``: figures and arrays of several explanation methods for chosen images.

Works on a run folder (``cnnlens explain RUN_DIR``) or on a user's own model
(``--model package.module:builder --weights FILE --data SPEC``). Everything is checked before any
work starts, and the output folder is built aside and swapped in whole
(:func:`cnnlens._atomic.output_dir`), so a bad option or a crash leaves an existing folder as it was;
``--overwrite`` replaces only earlier explanations, never a folder that holds an input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from cnnlens.cli._options import RegistryOption, parse_methods, parse_options
from cnnlens.jobs.cli import job_options, run_job
from cnnlens.viz.defaults import LIME_TOP_K, MASK_PERCENTILE
from cnnlens.data.imageset import ImageSet

INDEX_VERSION = 1
#: Rows per overview page: more would make a figure taller than a screen is useful for.
OVERVIEW_ROWS = 12
#: Columns of a grid (the original and 9 methods): ``--methods all`` wraps into bands, not one very wide row.
GRID_COLUMNS = 10
#: Default image choice when none is given: the most confidently right image of each class.
DEFAULT_PER_CLASS = 1


@dataclass
class Source:
    """What to explain: a model, its class names, the images and where they all came from."""

    model: nn.Module
    classes: tuple[str, ...]
    dataset: ImageSet
    device: torch.device
    description: dict[str, Any]


# ----------------------------------------------------------------------------------------- parsing


def parse_ints(text: str, option: str) -> list[int]:
    """``"0,5,17"`` -> ``[0, 5, 17]``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 0,5,17; got {text!r}", param_hint=option) from None
    if not values:
        raise click.BadParameter("expected comma-separated integers such as 0,5,17; got nothing", param_hint=option)
    return values


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"1,48,48"`` -> ``(1, 48, 48)``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"expected C,H,W as three positive ints such as 1,48,48 or 3,128,128; got {text!r}",
                                 param_hint="--input-shape")
    c, h, w = (int(p) for p in parts)
    return c, h, w


# ----------------------------------------------------------------------------------------- sources


def user_source(model_spec: str, weights: Path | None, classes: str | None, input_shape: str | None,
                data: str | None, split: str | None, device: torch.device) -> Source:
    """A user's own model and data, checked piece by piece with a clear message for each (the loading is
    :mod:`cnnlens.models.foreign`'s, shared with ``cnnlens import``)."""
    from cnnlens.models import foreign

    if weights is None or data is None:
        raise click.UsageError("--model needs --weights FILE and --data SPEC (e.g. fer:faces.csv, folder:DIR)")
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    names = tuple(c.strip() for c in classes.split(",")) if classes is not None else None
    if names is not None and (len(names) < 2 or not all(names) or len(set(names)) != len(names)):
        raise click.BadParameter(f"expected at least two distinct comma-separated class names; got {classes!r}",
                                 param_hint="--classes")
    try:
        model = foreign.build_model(model_spec)
        foreign.load_state_into(model, foreign.load_state(weights), str(weights))
        model.to(device).eval()
        # the scores explained: a model ending in Softmax is explained on log p (cnnlens import does the same)
        scores, note = foreign.detect_scores(model, shape, output=None) if shape is not None else ("logits", None)
    except foreign.ForeignModelError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from None
    except Exception:  # the model cannot run on --input-shape: said below, on the real images
        scores, note = "logits", None
    if note:
        click.echo(f"note: {note}", err=True)
    model = foreign.Scored(model, scores=scores)
    # loaders resize to a square image_size (as `cnnlens train --image-size`) and convert gray <-> RGB;
    # a shape they cannot produce is reported below
    dataset = load_data(data, split, shape[1] if shape is not None and shape[1] == shape[2] else None,
                        None if shape is None else shape[0], names)
    if shape is not None and dataset.input_shape != shape:
        raise click.BadParameter(f"--data {data} has images of shape {dataset.input_shape}, but --input-shape is {shape}",
                                 param_hint="--input-shape")
    names = names if names is not None else dataset.classes
    return Source(model, names, dataset, device, {"model": model_spec, "weights": str(weights), "data": data, "split": split})


def load_data(spec: str, split: str | None, image_size: int | None, channels: int | None,
              classes: tuple[str, ...] | None = None) -> ImageSet:
    """``load_dataset`` with its errors turned into a message about ``--data`` (a ``folder:`` is matched to ``classes``)."""
    from cnnlens.data import load_dataset

    kwargs: dict[str, Any] = {"image_size": image_size, "channels": channels, "classes": classes}
    try:
        return load_dataset(spec, split, **kwargs) if split is not None else load_dataset(spec, **kwargs)
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from None


def run_source(run_dir: Path, split: str | None, device: torch.device, data: str | None = None) -> Source:
    """A run folder written by ``cnnlens train`` or ``cnnlens import``, on its own data or on ``data``."""
    from cnnlens.train import load_run

    try:
        run = load_run(run_dir, device=device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="RUN_DIR") from None
    try:
        dataset = run.dataset(split, data=data) if data is not None else run.dataset(split or "val")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--data" if data is not None or run.manifest["data"] is None
                                 else "RUN_DIR") from None
    description = {"run": str(run_dir), "split": split if data is not None else split or "val"}
    return Source(run.model, tuple(run.classes), dataset, device, {**description, **({"data": data} if data else {})})


# -------------------------------------------------------------------------------------- selection


def choose_images(source: Source, probs: torch.Tensor, images: str | None, per_class_k: int | None,
                  misclassified_k: int | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The split's indices to explain and a description of how they were chosen."""
    from cnnlens.explain.selection import by_index, misclassified, per_class

    labels = source.dataset.labels
    n = len(source.dataset)
    if images is not None:
        chosen = parse_ints(images, "--images")
        negative = [i for i in chosen if i < 0]
        if negative:  # Python's -1 = the last image would be a silent surprise here
            raise click.BadParameter(f"image indices count from 0 (the first image) to {n - 1}; got {negative[0]}",
                                     param_hint="--images")
        try:
            return by_index(chosen, n), {"mode": "images"}
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--images") from None
    if bool((labels < 0).all()):
        if misclassified_k is not None:
            raise click.UsageError("these images have no labels, so --misclassified cannot choose; use --per-class K "
                                   "(by predicted class) or --images 0,1,2")
        # unlabelled data: the K most confident images of each predicted class
        k = per_class_k if per_class_k is not None else DEFAULT_PER_CLASS
        return per_class(probs, probs.argmax(1), k), {"mode": "per-predicted-class", "k": k}
    if misclassified_k is not None:
        idx = misclassified(probs, labels, misclassified_k)
        if idx.numel() == 0:
            raise click.ClickException("the model gets every labelled image of this split right: nothing for --misclassified; "
                                       "use --per-class K or --images")
        return idx, {"mode": "misclassified", "k": misclassified_k}
    k = per_class_k if per_class_k is not None else DEFAULT_PER_CLASS
    idx = per_class(probs, labels, k)
    if idx.numel() == 0:
        raise click.ClickException("the model gets no labelled image of this split right: nothing for --per-class; "
                                   "use --misclassified K or --images")
    return idx, {"mode": "per-class", "k": k}


# ----------------------------------------------------------------------------------------- writing


def write_outputs(folder: Path, source: Source, index: torch.Tensor, images: torch.Tensor, probs: torch.Tensor,
                  explained: Any, *, mask_percentile: float, lime_top_k: int, progress: Any) -> dict[str, Any]:
    """Figures (grid per image, saliency three-panel, LIME regions, overview pages) and ``maps.npz`` into
    ``folder``. Returns ``{"entries": one dict per image with its files, "overview": the page files}``."""
    from cnnlens import viz
    from cnnlens.explain import registry

    classes = source.classes
    maps = {m: v.detach().float().cpu().numpy() for m, v in explained.maps.items()}
    x = images.detach().float().cpu().numpy()
    idx = index.tolist()
    labels = source.dataset.labels[index].tolist()
    conf, pred = probs.max(dim=1)
    targets = explained.targets.cpu().tolist()
    lime = lime_parts(explained.details.get("lime"))
    relative = [m for m in maps if registry.style_of(m) == "relative"]
    width = len(str(len(source.dataset) - 1))
    titles = [viz.prediction_title(labels[r], int(pred[r]), float(conf[r]), classes,
                                   name=f"#{i} {source.dataset.names[i]}") for r, i in enumerate(idx)]
    entries = []
    task = progress.add_task("figures", total=len(idx)) if progress is not None else None
    for r, i in enumerate(idx):  # figures are drawn one image at a time by nature
        stem = f"img{i:0{width}d}"
        files: dict[str, str] = {}

        def save(kind: str, fig: Any, arrays: dict[str, Any]) -> None:
            png, raw = viz.save_figure(fig, folder / f"{stem}_{kind}.png", arrays)
            files[kind], files[f"{kind}_arrays"] = png.name, raw.name

        one = {m: v[r:r + 1] for m, v in maps.items()}
        title = titles[r].replace("\n", "  ")
        save("grid", viz.method_grid(x[r:r + 1], one, row_titles=[titles[r]], max_cols=GRID_COLUMNS, relative=relative),
             {"image": x[r], **{m: v[0] for m, v in one.items()}})
        if "saliency" in maps:
            sal = maps["saliency"][r]
            save("saliency", viz.three_panel(x[r], sal, percentile=mask_percentile, title=title),
                 {"image": x[r], "saliency": sal, "masked": viz.mask_below_percentile(x[r], sal, mask_percentile)})
        if lime is not None:
            segments, weights = lime[r]
            save("lime", viz.lime_regions(x[r], segments, weights, lime_top_k, title=title),
                 {"image": x[r], "segments": segments, "weights": weights})
        entries.append({
            "index": i, "name": source.dataset.names[i], "label": labels[r],
            "label_name": classes[labels[r]] if 0 <= labels[r] < len(classes) else None,
            "predicted": int(pred[r]), "predicted_name": classes[int(pred[r])], "probability": round(float(conf[r]), 6),
            "target": targets[r], "target_name": classes[targets[r]], "files": files,
        })
        if progress is not None:
            progress.advance(task)
    overview = []
    for p, s in enumerate(range(0, len(idx), OVERVIEW_ROWS), start=1):
        rows = slice(s, s + OVERVIEW_ROWS)
        page = {m: v[rows] for m, v in maps.items()}
        png, raw = viz.save_figure(viz.method_grid(x[rows], page, row_titles=titles[rows], max_cols=GRID_COLUMNS,
                                                   relative=relative),
                                   folder / f"overview-{p:02d}.png", {"images": x[rows], **page})
        overview += [png.name, raw.name]
    np.savez_compressed(folder / "maps.npz", indices=np.asarray(idx), images=x, targets=np.asarray(targets),
                        labels=np.asarray(labels), probabilities=probs.cpu().numpy(), **maps)
    return {"entries": entries, "overview": overview}


def lime_parts(results: list[tuple[int, Any]] | None) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per image ``(segments [H,W], weights [S])`` from LIME's chunked results, or None without them."""
    if not results:
        return None
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for _, result in results:
        segments = np.asarray(result.segments.cpu() if isinstance(result.segments, torch.Tensor) else result.segments)
        weights = result.weights
        for j in range(segments.shape[0]):
            w = weights[j]
            w = np.asarray(w.cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64).reshape(-1)
            seg = segments[j].astype(np.int64)
            out.append((seg, w[: int(seg.max()) + 1]))
    return out


# ----------------------------------------------------------------------------------------- command


@click.command(name="explain")
@click.argument("run_dir", required=False, type=click.Path(path_type=Path), metavar="[RUN_DIR]")
@click.option("--methods", cls=RegistryOption, default="all", show_default=True, metavar="NAMES",
              help="Comma-separated methods ({methods}) or 'all'; `cnnlens methods` shows each one's kind, paper "
                   "and options.")
@click.option("--images", "images", default=None, metavar="I,J,...", help="Explain these images of the split (0-based).")
@click.option("--per-class", "per_class_k", type=click.IntRange(min=1), default=None, metavar="K",
              help=f"Explain the K most confidently right images of each class (default: {DEFAULT_PER_CLASS}).")
@click.option("--misclassified", "misclassified_k", type=click.IntRange(min=1), default=None, metavar="K",
              help="Explain the K most confidently wrong images.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--split", default=None,
              help="Split to take images from: train, val or test (a run's own split; default val), or with --data "
                   "any split it has (train, val, test, all; default: all for a run, the dataset's own with --model).")
@click.option("--target", type=click.Choice(["predicted", "true"]), default="predicted", show_default=True,
              help="Explain the predicted class or the true class.")
@click.option("--layer", cls=RegistryOption, default=None,
              help="Layer for {layer_methods} (default: the last conv layer).")
@click.option("--option", "-o", "option_items", cls=RegistryOption, multiple=True, metavar="METHOD.NAME=VALUE",
              help="A method option, repeatable: -o occlusion.stride=4 -o lime.n_samples=500. Defaults are those of "
                   "`cnnlens report` ({defaults}); index.json records every option each method ran with.")
@click.option("--mask-percentile", type=click.FloatRange(0, 100), default=MASK_PERCENTILE, show_default=True,
              help="Saliency figure: keep pixels at or above this saliency percentile.")
@click.option("--lime-top", "lime_top_k", type=click.IntRange(min=1), default=LIME_TOP_K, show_default=True,
              help="LIME figure: regions shown for and against the class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of SmoothGrad's and LIME's noise.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images through the model at once.")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier explanations at --out (kept until the new ones are complete); never a folder "
                   "cnnlens did not write, nor one holding an input.")
@click.option("--model", "model_spec", default=None, metavar="MODULE:BUILDER",
              help="Your own model: package.module:builder, called with no arguments.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="With --model: safetensors or torch state dict.")
@click.option("--classes", default=None, metavar="A,B,...", help="With --model: class names (default: the data's).")
@click.option("--input-shape", default=None, metavar="C,H,W", help="With --model: the input shape, e.g. 1,48,48.")
@click.option("--data", default=None, metavar="SPEC",
              help="The images, e.g. fer:test.csv or folder:DIR: needed with --model and for an imported run; for "
                   "a trained run, another dataset than its own (labels matched by class name; unlabelled images "
                   "are explained for the predicted class).")
@job_options
def command(run_dir: Path | None, methods: str, images: str | None, per_class_k: int | None, misclassified_k: int | None,
            out: Path, split: str | None, target: str, layer: str | None, option_items: tuple[str, ...],
            mask_percentile: float, lime_top_k: int, seed: int, device: str, batch_size: int | None, overwrite: bool,
            model_spec: str | None, weights: Path | None, classes: str | None, input_shape: str | None,
            data: str | None, **job: Any) -> None:
    """Explain chosen images of a run (or of your own model) with several methods.

    Writes, per image, a grid of every method (IMG_grid.png), the saliency three-panel figure
    (IMG_saliency.png) and LIME's regions (IMG_lime.png); overview pages of all images; each figure's
    arrays beside it (.npy/.npz); all maps in maps.npz; and index.json listing it all.

    \b
    Examples:
      cnnlens explain runs/fer --per-class 2 --out runs/fer/explain
      cnnlens explain runs/fer --methods saliency,grad-cam --images 0,5,17 --out ex
      cnnlens explain runs/fer --misclassified 8 --target true --out wrong
      cnnlens explain --model mynet:build --weights net.pt --data fer:test.csv \\
                      --classes angry,happy --input-shape 1,48,48 --out ex
      cnnlens explain runs/fer --split test --methods grad-cam --out test-maps --engine ray   # every image, resumable
    """
    if job["engine"] is not None:  # the whole split as a dataset job (cnnlens.jobs)
        if sum(v is not None for v in (images, per_class_k, misclassified_k)):
            raise click.UsageError("--engine explains every image of --split: drop --images/--per-class/--misclassified")
        return run_job(run_dir=run_dir, out=out, methods=methods, option_items=option_items, split=split, data=data,
                       seed=seed, device=device, batch_size=batch_size, overwrite=overwrite, layer=layer, target=target,
                       model_spec=model_spec, weights=weights, classes=classes, input_shape=input_shape, **job)
    from rich.console import Console

    from cnnlens._atomic import check_output, output_dir
    from cnnlens._progress import progress_bar
    from cnnlens.explain import core, registry
    from cnnlens.explain.runner import check_methods, check_options, method_accepts, probabilities, run_methods
    from cnnlens.train.run import read_manifest, resolve_device, run_inputs, spec_path

    # ---- everything that can be checked without the model, before any work
    if (run_dir is None) == (model_spec is None):
        raise click.UsageError("give either RUN_DIR or --model MODULE:BUILDER (with --weights and --data), not both")
    if run_dir is not None and any(v is not None for v in (weights, classes, input_shape)):
        raise click.UsageError("--weights, --classes and --input-shape go with --model; a run folder has its own")
    if sum(v is not None for v in (images, per_class_k, misclassified_k)) > 1:
        raise click.UsageError("choose images one way: --images, --per-class or --misclassified")
    if run_dir is not None:
        try:
            manifest = read_manifest(run_dir)
        except ValueError:
            manifest = None  # run_source says what is wrong with it
        inputs = run_inputs(run_dir, manifest)
    else:
        inputs = [weights, spec_path(data)]
    check_output(out, kind="explain", overwrite=overwrite, inputs=inputs)  # before any work
    names = parse_methods(methods)
    options = parse_options(option_items)
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None

    source = run_source(run_dir, split, dev, data) if run_dir is not None else \
        user_source(model_spec or "", weights, classes, input_shape, data, split, dev)
    model = source.model
    chosen = check_methods(names)
    for m, kw in registry.default_options(chosen).items():  # the defaults `cnnlens report` uses too, under what was given
        options[m] = {**kw, **options.get(m, {})}
    if layer is not None:
        try:
            core.get_layer(model, layer)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--layer") from None
        for m in chosen:
            if method_accepts(m, "layer"):
                options.setdefault(m, {}).setdefault("layer", layer)
    try:
        check_options(chosen, options)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--option") from None

    all_images = source.dataset.float_images()
    try:
        probs = probabilities(model, all_images.to(dev), batch_size).cpu()
    except RuntimeError as exc:  # a shape mismatch between the data and the model
        raise click.ClickException(f"the model cannot run on these images {tuple(all_images.shape[1:])}: {exc}") from None
    if probs.shape[1] != len(source.classes):
        raise click.BadParameter(f"the model returns {probs.shape[1]} scores per image but there are {len(source.classes)} "
                                 f"class names ({', '.join(source.classes)})", param_hint="--classes")
    index, selection = choose_images(source, probs, images, per_class_k, misclassified_k)
    labels = source.dataset.labels[index]
    if target == "true":
        if bool((labels < 0).any()):
            raise click.UsageError("--target true needs labelled images; some chosen images have no label")
        targets: torch.Tensor | None = labels.to(dev)
    else:
        targets = None

    console = Console(stderr=True)
    with progress_bar(console=console, transient=True) as bar, \
            output_dir(out, kind="explain", overwrite=overwrite, inputs=inputs) as tmp:
        x = all_images[index].to(dev)
        try:
            # with every method asked for (no --methods), one that does not apply to this model
            # (CAM without a GAP head, guided backprop without ReLU modules) is skipped, not fatal
            explained = run_methods(model, x, targets, chosen, options=options, batch_size=batch_size, seed=seed,
                                    progress=bar, details="lime" in chosen, skip_unsupported=names is None)
        except (ValueError, TypeError) as exc:  # a method refusing this model or option, e.g. CAM without GAP
            raise click.ClickException(str(exc)) from None
        for m, why in explained.skipped.items():
            console.print(f"[yellow]skipped {m}[/]: {why}", highlight=False)
        if not explained.maps:
            raise click.ClickException("no method could explain this model: " +
                                       "; ".join(f"{m}: {why}" for m, why in explained.skipped.items()))
        written = write_outputs(tmp, source, index, x, probs[index], explained, mask_percentile=mask_percentile,
                                lime_top_k=lime_top_k, progress=bar)
        index_doc = {
            "version": INDEX_VERSION, "source": source.description, "classes": list(source.classes),
            "methods": list(explained.maps), "skipped": explained.skipped, "options": explained.options,
            "figure_options": {"mask_percentile": mask_percentile, "lime_top": lime_top_k},
            "target": target, "selection": selection, "seed": seed,
            "images": written["entries"], "overview": written["overview"],
            "arrays": "maps.npz",
        }
        (tmp / "index.json").write_text(json.dumps(index_doc, indent=2) + "\n", encoding="utf-8")
    click.echo(f"explained {len(index)} image(s) with {', '.join(index_doc['methods'])}: {out}/index.json")
