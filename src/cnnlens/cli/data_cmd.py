"""``cnnlens data``: make the synthetic faces, look at a dataset."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group("data")
def command() -> None:
    """Make the built-in synthetic faces or look at a dataset.

    \b
    Dataset specs: synth:DIR  fer:FILE.csv  food11:DIR  folder:DIR
    """


@command.command("synth")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write faces.csv (FER2013 layout), faces.masks.npy and synth.json into.")
@click.option("--n", "n", default=3500, show_default=True, type=click.IntRange(min=1), help="Number of faces.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed: the same seed gives the same bytes.")
@click.option("--test-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Stratified fraction marked PrivateTest (split 'test').")
@click.option("--val-fraction", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Stratified fraction marked PublicTest (split 'val'); training makes its own split anyway.")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier synthetic faces in OUT (the old folder stays until the new one is complete); "
                   "never a folder cnnlens did not write.")
def synth(out: Path, n: int, seed: int, test_fraction: float, val_fraction: float, overwrite: bool) -> None:
    """Draw synthetic 48x48 faces with the 7 FER expressions and their ground-truth masks.

    The expression is carried only by the brows, eyes, mouth and nose wrinkles (the mask); everything else
    is random and independent of the class. Load them with --data synth:OUT.

    \b
    Example:  cnnlens data synth --out data/faces --n 3500 --seed 0
    """
    from cnnlens._atomic import OutputRefused
    from cnnlens.data.fer import FER_CLASSES
    from cnnlens.data.synth import write_faces

    start = time.perf_counter()
    try:
        csv = write_faces(out, n, seed, test_fraction=test_fraction, val_fraction=val_fraction, overwrite=overwrite)
    except OutputRefused:
        raise  # printed by cnnlens.cli, like every refused --out
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    seconds = time.perf_counter() - start
    click.echo(f"wrote {n} faces ({len(FER_CLASSES)} classes, balanced) in {seconds:.1f} s: {csv}")
    click.echo(f"      masks: {csv.with_name('faces.masks.npy')}")
    click.echo(f"use:  --data synth:{out}")


@command.command("info")
@click.argument("spec")
@click.option("--split", default="all", show_default=True, type=click.Choice(["train", "val", "test", "all"]),
              help="Which split to count.")
@click.option("--image-size", type=click.IntRange(min=1), default=None, help="Resize to this square side.")
@click.option("--skip-bad-rows", is_flag=True, help="Count bad rows/files instead of stopping at the first.")
def info(spec: str, split: str, image_size: int | None, skip_bad_rows: bool) -> None:
    """Print a dataset's size, image shape and images per class.

    \b
    Example:  cnnlens data info fer:fer2013.csv --split train
    """
    from cnnlens.data import DataError, load_dataset

    skipped: list[DataError] = []
    try:
        data = load_dataset(spec, split, image_size=image_size, skip_bad_rows=skip_bad_rows, skipped=skipped)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    c, h, w = data.input_shape
    click.echo(f"{spec} ({split}): {len(data)} images, {c}x{h}x{w}, masks: {'yes' if data.masks is not None else 'no'}")
    if skip_bad_rows:
        click.echo(f"skipped bad rows/files: {len(skipped)}")
        for err in skipped[:10]:
            click.echo(f"  {err}")
    counts = [int((data.labels == k).sum()) for k in range(len(data.classes))]
    unknown = int((data.labels < 0).sum())
    width = max(len(name) for name in data.classes)
    for k, (name, count) in enumerate(zip(data.classes, counts)):
        click.echo(f"  {k:>2} {name:<{width}} {count:>7} {100.0 * count / len(data):5.1f}%")
    if unknown:
        click.echo(f"  -1 {'(unlabelled)':<{width}} {unknown:>7} {100.0 * unknown / len(data):5.1f}%")
