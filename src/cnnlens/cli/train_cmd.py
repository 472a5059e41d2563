"""``cnnlens train``: train a model on a dataset and write a run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from cnnlens.train.augment import describe_augmentation
from cnnlens.train.config import DEVICES, OPTIMIZERS, SCHEDULES, TrainConfig

_D = TrainConfig.__dataclass_fields__  # defaults shown in --help come from the dataclass, stated once


def _default(name: str) -> Any:
    return _D[name].default


@click.command(name="train")
@click.option("--data", default=None, metavar="SPEC",
              help="Dataset: synth:DIR, fer:FILE.csv, food11:DIR or folder:DIR. Not needed with --resume.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder to write (refused if it exists, unless --overwrite or --resume).")
@click.option("--model", default=_default("model"), show_default=True, help="small_cnn, vgg_fer or resnet18.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Resize images to SIZE x SIZE when loading (default: the dataset's own size).")
@click.option("--resize", type=click.Choice(["squash", "crop"]), default=_default("resize"), show_default=True,
              help="How photos of another shape get to --image-size: resized whole, or the shorter side resized "
                   "and the centre cut out. Stored with the run; every later command loads images the same way.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=_default("val_fraction"), show_default=True, help="Stratified validation share of the train split.")
@click.option("--seed", type=int, default=_default("seed"), show_default=True,
              help="Seeds the split, initial weights, shuffling and augmentation.")
@click.option("--epochs", type=click.IntRange(min=1), default=_default("epochs"), show_default=True,
              help="Passes over the training images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_default("batch_size"), show_default=True,
              help="Images per optimisation step.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_default("optimizer"), show_default=True,
              help="adam (AdamW) or sgd (Nesterov momentum).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_default("lr"), show_default=True,
              help="Learning rate (the peak of the one-cycle schedule).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=_default("schedule"), show_default=True,
              help="Learning-rate schedule, stepped every batch.")
@click.option("--weight-decay", type=click.FloatRange(0), default=_default("weight_decay"), show_default=True,
              help="Weight decay (decoupled, AdamW-style, for adam).")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=_default("momentum"), show_default=True,
              help="SGD momentum.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=_default("label_smoothing"),
              show_default=True, help="Cross-entropy label smoothing.")
@click.option("--flip/--no-flip", default=None, show_default="on for faces (fer:, synth:) and food (food11:), off for folder:",
              help="Random horizontal flips.")
@click.option("--shift", type=click.IntRange(min=0), default=_default("shift"), show_default=True,
              help="Random shifts of up to this many pixels (0: none).")
@click.option("--rotation", type=click.FloatRange(0, 180), default=_default("rotation"), show_default=True,
              help="Random rotations of up to this many degrees (0: none).")
@click.option("--patience", type=click.IntRange(min=0), default=_default("patience"), show_default=True,
              help="Stop after this many epochs without a better validation accuracy (0: never).")
@click.option("--skip-bad-rows", is_flag=True, default=False,
              help="Leave out unreadable data rows (their count goes to train.log) instead of stopping.")
@click.option("--device", type=click.Choice(DEVICES), default=_default("device"), show_default=True,
              help="auto: CUDA when available, else CPU.")
@click.option("--num-threads", type=click.IntRange(min=1), default=None, help="CPU threads for PyTorch (default: PyTorch's).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last completed epoch, with its own settings (with "
                   "--schedule constant, a larger --epochs extends it).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier cnnlens run in --out (kept until the new one starts); never a folder "
                   "cnnlens did not write, nor one holding the data.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the progress bar.")
@click.pass_context
def command(ctx: click.Context, out_dir: Path, resume: bool, overwrite: bool, progress: bool, **options: Any) -> None:
    """Train a CNN and write a run folder: config.json, weights.safetensors (best by validation
    accuracy), checkpoint.pt, history.csv, curves.png, split.json, tensorboard/ and train.log.

    \b
    Examples:
      cnnlens data synth --out data/faces --n 3500
      cnnlens train --data synth:data/faces --out runs/faces --epochs 12
      cnnlens train --data fer:train.csv --model vgg_fer --out runs/fer --epochs 60 --patience 10
      cnnlens train --out runs/fer --resume          # after an interruption
      tensorboard --logdir runs/fer/tensorboard
    """
    from cnnlens.train import train
    from cnnlens.train.run import read_manifest

    _show_warnings()

    try:
        if resume:
            # Start from the run's own config; options given on the command line must agree with it
            # (train() names any that differ), except --device and --num-threads (and --epochs, which
            # train() accepts only where the schedule does not depend on it).
            stored = TrainConfig.from_dict(read_manifest(out_dir)["train"])
            given = {k: v for k, v in options.items()
                     if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}
            config = stored.replace(**given)
        else:
            if options["data"] is None:
                raise click.UsageError("--data is required (e.g. --data synth:data/faces), except with --resume")
            config = TrainConfig(**options)
        click.echo(describe_augmentation(config.data, bool(config.flip), config.shift, config.rotation))
        run = train(config, out_dir, overwrite=overwrite, resume=resume, progress=progress)
    except (ValueError, TypeError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    best = max(run.history, key=lambda row: (row["val_acc"], -row["epoch"]))
    click.echo(f"Best validation accuracy {best['val_acc']:.1%} at epoch {best['epoch']} of {len(run.history)}.")
    click.echo(f"Wrote {out_dir}/ (config.json, weights.safetensors, checkpoint.pt, history.csv, curves.png, "
               "split.json, tensorboard/, train.log)")
    click.echo(f"Next: cnnlens evaluate {out_dir}")


def _show_warnings() -> None:
    """Print cnnlens warnings (e.g. the data loader's count of skipped bad rows) on stderr; train.log gets
    them too, with the progress lines."""
    logger = logging.getLogger("cnnlens")
    if not any(getattr(h, "_cnnlens_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler._cnnlens_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
