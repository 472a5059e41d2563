"""``cnnlens evaluate``: metrics, confusion matrix and figures of a trained run on a split or a dataset."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["val", "test", "train", "all"]), default=None,
              help="Which images: the run's validation (default) or training part, or the dataset's test split; with "
                   "--data, any split it has (default all: every image).")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Evaluate on another dataset (synth:DIR, fer:FILE.csv, food11:DIR, folder:DIR), labelled by the run's "
                   "class names; needed for a run made by `cnnlens import`.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/eval, where a re-run replaces the earlier evaluation).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier evaluation at --out (kept until the new one is complete).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Images per forward pass.")
def command(run_dir: Path, split: str | None, data_spec: str | None, out_dir: Path | None, overwrite: bool, device: str,
            batch_size: int) -> None:
    """Evaluate the run in RUN_DIR: accuracy, per-class precision/recall/F1, confusion matrix, most-confused
    pairs and class distribution, written as metrics.json, CSV files and PNG figures.

    The output folder is written whole. The default RUN_DIR/eval replaces an earlier evaluation there; an
    existing --out needs --overwrite, and a folder cnnlens did not write, or one holding the run or its
    data, is never replaced.

    \b
    Examples:
      cnnlens evaluate runs/fer                      # validation split -> runs/fer/eval
      cnnlens evaluate runs/fer --split test --out runs/fer/eval-test
      cnnlens evaluate runs/fer --data fer:other.csv --out runs/fer/eval-other
    """
    from cnnlens._atomic import check_output
    from cnnlens.evaluate import describe, evaluate
    from cnnlens.train import load_run
    from cnnlens.train.run import run_inputs, spec_path

    out = out_dir if out_dir is not None else run_dir / "eval"
    replace = overwrite or out_dir is None  # a re-run replaces its own default output
    inputs = [*run_inputs(run_dir), spec_path(data_spec)]
    check_output(out, kind="evaluation", overwrite=replace, inputs=inputs)  # before the slow part
    try:
        run = load_run(run_dir, device=device)
        # another dataset is brought to the model's input by the run's preprocessing and labelled by class name
        images = run.dataset(split or "val") if data_spec is None else run.dataset(split, data=data_spec)
        if len(images) and bool((images.labels < 0).all()):
            where = f"--data {data_spec}" if data_spec is not None else f"the run's {split or 'val'} split"
            raise ValueError(f"{where} has no labels, and evaluate measures predictions against labels; give labelled "
                             "data (e.g. folder:DIR with one sub-folder per class). `cnnlens explain` and `cnnlens "
                             "report` take unlabelled images")
        result = evaluate(run.model, images, batch_size=batch_size)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    source = {"run": str(run_dir), "split": split or ("val" if data_spec is None else None),
              "data": data_spec or (run.manifest.get("data") or {}).get("spec")}
    result.save(out, source=source, overwrite=replace, inputs=[*run_inputs(run_dir, run.manifest), spec_path(data_spec)])
    for line in describe(result):
        click.echo(line)
    click.echo(f"Wrote {out}/ (metrics.json, per_class.csv, confusion.csv, confusion_normalized.csv, "
               "predictions.csv, confusion.png, class_distribution.png)")
