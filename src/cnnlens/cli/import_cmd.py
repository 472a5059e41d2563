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
@click.option("--weights", default=None, type=click.Path(path_type=Path),
              help="A state dict (.pt/.pth saved with torch.save(model.state_dict(), FILE), or .safetensors), or a "
                   "TorchScript archive (torch.jit.save).")
@click.option("--keras", "keras_file", default=None, type=click.Path(path_type=Path),
              help="A Keras 3 model file (.keras, or a legacy .h5), instead of --weights: run on Keras's PyTorch "
                   "backend (pip install 'cnnlens[keras]'), its layers by their Keras names.")
@click.option("--trust-keras-code", is_flag=True,
              help="Load a Keras file whose layers hold Python code (a Lambda layer): loading runs that code, so "
                   "it is refused without this flag.")
@click.option("--classes", default=None, metavar="A,B,...", help="Class names in the order of the model's outputs.")
@click.option("--classes-file", type=click.Path(path_type=Path), default=None,
              help="Class names, one per line, in the order of the model's outputs.")
@click.option("--input-shape", default=None, metavar="C,H,W",
              help="The input the model takes, e.g. 1,48,48 or 3,224,224 (for --keras: the model's own by default).")
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
def command(builder: str | None, weights: Path | None, keras_file: Path | None, trust_keras_code: bool,
            classes: str | None, classes_file: Path | None, input_shape: str | None, normalize: str | None,
            resize: str, output_text: str | None, scores: str, builder_kwargs: str | None, out: Path,
            overwrite: bool) -> None:
    """Make a run folder from a model trained elsewhere, for evaluate, explain, faithfulness, report and summary.

    The model is built, its weights are loaded strictly (every key and shape), and it is run on a zero
    image, which must give one score per class, before anything is written. config.json stores the
    builder, the output selector, the preprocessing and the classes; the weights are copied as
    weights.safetensors. Opening the run later imports the builder's module again, so keep it importable.
    A Keras file (--keras) is copied into the run and read with Keras on the PyTorch backend; a
    probability output (softmax, sigmoid) is explained as its log-probability.

    \b
    Examples:
      cnnlens import --model mynets:build --weights net.pt --classes cat,dog --input-shape 3,64,64 \\
                     --normalize 0.485,0.456,0.406/0.229,0.224,0.225 --resize crop --out runs/pets
      cnnlens import --weights traced.pt --classes-file classes.txt --input-shape 1,48,48 --out runs/fer
      cnnlens import --keras fer_mini_xception.h5 --classes-file classes.txt --normalize 0.5/0.5 --out runs/kfer
      cnnlens explain runs/pets --data folder:photos --out runs/pets/explain
    """
    from cnnlens.cli.explain_cmd import parse_input_shape
    from cnnlens.data.preprocess import Preprocess, parse_normalize
    from cnnlens.models.foreign import ForeignModelError
    from cnnlens.train.importing import import_keras, import_model

    if (weights is None) == (keras_file is None):
        raise click.UsageError("give the model once: --weights FILE (with --model for a state dict) or --keras FILE")
    if keras_file is not None:
        given = [o for o, v in (("--model", builder), ("--output", output_text), ("--builder-kwargs", builder_kwargs))
                 if v is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} not with --keras: a Keras file holds its own model and one output")
    elif trust_keras_code:
        raise click.UsageError("--trust-keras-code is for --keras files")
    elif input_shape is None:
        raise click.UsageError("--input-shape C,H,W is needed with --weights")
    names = read_classes(classes, classes_file)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
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
        if keras_file is not None:
            run, notes = import_keras(out, keras_file=keras_file, classes=names, input_shape=shape, preprocess=prep,
                                      scores=scores, trust_code=trust_keras_code, overwrite=overwrite)
        else:
            run, notes = import_model(out, weights=weights, classes=names, input_shape=shape, builder=builder,
                                      builder_kwargs=kwargs, preprocess=prep, output=parse_output(output_text),
                                      scores=scores, overwrite=overwrite)
    except ForeignModelError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for note in notes:
        click.echo(f"note: {note}")
    from cnnlens.models.foreign import model_label

    kind = model_label(run.model, run.manifest["model"])
    click.echo(f"imported {kind} ({len(run.classes)} classes, input {'x'.join(map(str, run.input_shape))}; "
               f"{run.preprocess.describe()}): {out}")
    click.echo(f"next: cnnlens explain {out} --data SPEC --out {out}/explain   (evaluate, faithfulness, report and "
               "summary take it too)")
