"""``cnnlens summary``: the layer table of a model (by name) or of a trained run."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_INPUT_SHAPE = (1, 48, 48)
DEFAULT_CLASSES = 7


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"1,48,48"`` -> ``(1, 48, 48)``: channels, height, width, all positive."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"expected C,H,W as three positive ints such as 1,48,48 or 3,128,128; got {text!r}",
                                 param_hint="--input-shape")
    c, h, w = (int(p) for p in parts)
    return c, h, w


@click.command(name="summary")
@click.argument("model_or_run", metavar="MODEL_NAME_OR_RUN_DIR")
@click.option("--input-shape", "input_shape", default=None, metavar="C,H,W",
              help="Input shape without the batch dimension, for a model name (default 1,48,48).")
@click.option("--classes", "classes", type=click.IntRange(min=1), default=None,
              help=f"Number of classes, for a model name (default {DEFAULT_CLASSES}).")
def command(model_or_run: str, input_shape: str | None, classes: int | None) -> None:
    """Print the layer table (name, type, output shape, parameters) of MODEL_NAME_OR_RUN_DIR.

    MODEL_NAME_OR_RUN_DIR is a model name (small_cnn, vgg_fer, resnet18) or a run folder written by
    `cnnlens train`. The table comes from forward hooks on one real forward pass.

    \b
    Examples:
      cnnlens summary small_cnn
      cnnlens summary resnet18 --input-shape 3,128,128 --classes 11
      cnnlens summary runs/fer
    """
    from cnnlens.models import MODELS, build, format_summary, summary

    path = Path(model_or_run)
    if path.is_dir():
        if input_shape is not None or classes is not None:
            raise click.UsageError("--input-shape and --classes apply to a model name; a run folder has its own")
        from cnnlens.train import load_run  # the train package is heavy; import only for run folders

        try:
            run = load_run(path, device="cpu")
        except ValueError as exc:  # not a run, a truncated config.json, missing weights: the message names the file
            raise click.ClickException(str(exc)) from None
        model, shape, title = run.model, tuple(run.input_shape), f"{path} ({len(run.classes)} classes)"
    elif model_or_run in MODELS:
        shape = parse_input_shape(input_shape) if input_shape is not None else DEFAULT_INPUT_SHAPE
        n = classes if classes is not None else DEFAULT_CLASSES
        try:
            model = build(model_or_run, in_channels=shape[0], num_classes=n, input_size=shape[1:])
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc), param_hint="--input-shape") from exc
        title = f"{model_or_run} ({n} classes)"
    else:
        raise click.BadParameter(f"{model_or_run!r} is neither a run folder nor a model name; "
                                 f"models: {', '.join(MODELS)}", param_hint="MODEL_NAME_OR_RUN_DIR")
    try:
        rows = summary(model, shape)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{title}, input {tuple(shape)}")
    click.echo(format_summary(rows, model=model))
