"""``cnnlens import``: a model trained elsewhere becomes a run folder that every command takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cnnlens.train.importing import SCORE_CHOICES


def parse_output(text: str | None) -> int | str | None:
    """``"0"`` -> index 0; ``"logits"`` -> key ``"logits"``; None -> None (the model returns one tensor)."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        raise click.BadParameter("expected an index (0, 1, ...) or a key of the model's output", param_hint="--output")
    return int(text) if text.lstrip("-").isdigit() else text


def read_classes(classes: str | None, classes_file: Path | None) -> list[str]:
    """Class names from ``--classes a,b,c`` or ``--classes-file`` (one per line; blank lines and ``#`` comments skipped)."""
    if (classes is None) == (classes_file is None):
        raise click.UsageError("give the class names once: --classes a,b,... or --classes-file FILE")
    if classes is not None:
        return [c.strip() for c in classes.split(",")]
    try:
        lines = classes_file.read_text(encoding="utf-8").splitlines()  # type: ignore[union-attr]
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {classes_file}: {exc}", param_hint="--classes-file") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@click.command(name="import")
@click.option("--model", "builder", default=None, metavar="MODULE:BUILDER",
              help="The code that builds the model: package.module:callable (the current folder is importable). "
                   "Not for a TorchScript archive.")
@click.option("--weights", required=True, type=click.Path(path_type=Path),
              help="A state dict (.pt/.pth saved with torch.save(model.state_dict(), FILE), or .safetensors), or a "
                   "TorchScript archive (torch.jit.save).")
@click.option("--classes", default=None, metavar="A,B,...", help="Class names in the order of the model's outputs.")
@click.option("--classes-file", type=click.Path(path_type=Path), default=None,
              help="Class names, one per line, in the order of the model's outputs.")
@click.option("--input-shape", required=True, metavar="C,H,W", help="The input the model takes, e.g. 1,48,48 or 3,224,224.")
@click.option("--normalize", default=None, metavar="MEAN/STD",
              help="The normalisation the model was trained with, on [0,1] images: 0.5/0.25, or per channel "
                   "0.485,0.456,0.406/0.229,0.224,0.225. cnnlens applies it as the model's first step.")
@click.option("--resize", type=click.Choice(["squash", "crop"]), default="squash", show_default=True,
              help="Images of another size: squash to H,W, or resize the shorter side and cut out the centre.")
@click.option("--output", "output_text", default=None, metavar="KEY",
              help="For a model returning a tuple or dict: the index or key of the class scores (e.g. 0 or logits).")
@click.option("--scores", type=click.Choice(SCORE_CHOICES), default="auto", show_default=True,
              help="What the model outputs; auto detects probabilities (a trailing Softmax) and log-probabilities.")
@click.option("--builder-kwargs", default=None, metavar="JSON",
              help='Keyword arguments for the builder, as a JSON object: \'{"num_classes": 7}\'.')
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="The run folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run folder there (kept until the new one is complete).")
def command(builder: str | None, weights: Path, classes: str | None, classes_file: Path | None, input_shape: str,
            normalize: str | None, resize: str, output_text: str | None, scores: str, builder_kwargs: str | None,
            out: Path, overwrite: bool) -> None:
    """Make a run folder from a model trained elsewhere, for evaluate, explain, faithfulness, report and summary.

    The model is built, its weights are loaded strictly (every key and shape), and it is run on a zero
    image, which must give one score per class, before anything is written. config.json stores the
    builder, the output selector, the preprocessing and the classes; the weights are copied as
    weights.safetensors. Opening the run later imports the builder's module again, so keep it importable.

    \b
    Examples:
      cnnlens import --model mynets:build --weights net.pt --classes cat,dog --input-shape 3,64,64 \\
                     --normalize 0.485,0.456,0.406/0.229,0.224,0.225 --resize crop --out runs/pets
      cnnlens import --weights traced.pt --classes-file classes.txt --input-shape 1,48,48 --out runs/fer
      cnnlens explain runs/pets --data folder:photos --out runs/pets/explain
    """
    from cnnlens.cli.explain_cmd import parse_input_shape
    from cnnlens.data.preprocess import Preprocess, parse_normalize
    from cnnlens.models.foreign import ForeignModelError
    from cnnlens.train.importing import import_model

    names = read_classes(classes, classes_file)
    shape = parse_input_shape(input_shape)
    kwargs: dict[str, Any] | None = None
    if builder_kwargs is not None:
        try:
            kwargs = json.loads(builder_kwargs)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"expected a JSON object such as '{{\"num_classes\": 7}}' ({exc})",
                                     param_hint="--builder-kwargs") from None
        if not isinstance(kwargs, dict):
            raise click.BadParameter(f"expected a JSON object such as '{{\"num_classes\": 7}}', got {builder_kwargs!r}",
                                     param_hint="--builder-kwargs")
    try:
        mean, std = parse_normalize(normalize) if normalize is not None else (None, None)
        prep = Preprocess(mean=mean, std=std, resize=resize)  # channels and size: import_model's, from --input-shape
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--normalize") from None
    try:
        run, notes = import_model(out, weights=weights, classes=names, input_shape=shape, builder=builder,
                                  builder_kwargs=kwargs, preprocess=prep, output=parse_output(output_text),
                                  scores=scores, overwrite=overwrite)
    except ForeignModelError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for note in notes:
        click.echo(f"note: {note}")
    kind = "TorchScript archive" if "torchscript" in run.manifest["model"] else run.manifest["model"]["builder"]
    click.echo(f"imported {kind} ({len(run.classes)} classes, input {'x'.join(map(str, run.input_shape))}; "
               f"{run.preprocess.describe()}): {out}")
    click.echo(f"next: cnnlens explain {out} --data SPEC --out {out}/explain   (evaluate, faithfulness, report and "
               "summary take it too)")
