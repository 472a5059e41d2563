"""``cnnlens demo``: the whole pipeline on built-in synthetic faces, as a list of stages.

Each stage is a function of the shared :class:`Demo` state, registered in :data:`STAGES` with one line;
it writes under ``demo.out`` and records what it wrote in ``demo.outputs`` so the summary can say where
everything is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

#: Defaults chosen so that the whole demo takes under 4 minutes on the slowest 2-core machine we run on (an
#: AMD EPYC with AVX2 only, where small_cnn trains at ~35 s an epoch of these faces) and reaches >= 90%
#: validation accuracy, with the confusions where the faces were designed to be confusable.
#: Calibration (seed 0): 3500 faces, batch 64, 10 epochs with 10-degree rotations reached 89%; 5000
#: faces, batch 32 (twice the steps for the same compute), no rotation reached 96% by epoch 5 of 8; with
#: the one-cycle schedule over 3 epochs: 34.8%, 81.1%, 95.1% validation accuracy (6 epochs: 96.3%, at
#: twice the training time, which dominates the demo).
DEMO_IMAGES = 5000
DEMO_EPOCHS = 3
DEMO_BATCH_SIZE = 32
DEMO_LR = 2e-3
#: The faces already vary in position and rotation; rotating them again blurs their one-pixel strokes
#: (brows, wrinkles) and slowed learning, so the demo only shifts and flips.
DEMO_SHIFT = 3
DEMO_ROTATION = 0.0
DEMO_SEED = 0


@dataclass
class Demo:
    """What the stages share: the options, and what earlier stages produced.

    Attributes:
        out: the demo folder (``data/``, ``run/``, ``run/eval/`` ...).
        outputs: ``label -> path`` of everything written, in order, for the final summary.
        results: objects later stages use (``"run"``: the trained :class:`~cnnlens.train.Run`,
            ``"evaluation"``: the :class:`~cnnlens.evaluate.Evaluation`, ...).
    """

    out: Path
    n_images: int = DEMO_IMAGES
    epochs: int = DEMO_EPOCHS
    seed: int = DEMO_SEED
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    outputs: dict[str, Path] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"


def synthesise(demo: Demo) -> None:
    """Draw the synthetic faces (FER2013 CSV layout, with ground-truth masks) into ``DIR/data``."""
    from cnnlens.data.synth import write_faces

    demo.outputs["faces"] = write_faces(demo.data_dir, demo.n_images, seed=demo.seed, overwrite=demo.overwrite)


def train_model(demo: Demo) -> None:
    """Train small_cnn on the faces into ``DIR/run``."""
    from cnnlens.train import TrainConfig, train

    config = TrainConfig(data=f"synth:{demo.data_dir}", model="small_cnn", epochs=demo.epochs, batch_size=DEMO_BATCH_SIZE,
                         lr=DEMO_LR, schedule="onecycle", shift=DEMO_SHIFT, rotation=DEMO_ROTATION, flip=True,
                         seed=demo.seed, device=demo.device)
    run = train(config, demo.run_dir, overwrite=demo.overwrite, progress=demo.progress)
    demo.results["run"] = run
    demo.outputs["run"] = run.path
    demo.outputs["training curves"] = run.path / "curves.png"


def evaluate_run(demo: Demo) -> None:
    """Evaluate the best weights on the validation split into ``DIR/run/eval``."""
    from cnnlens.evaluate import describe, evaluate

    run = demo.results["run"]
    evaluation = evaluate(run.model, run.dataset("val"))
    out = run.path / "eval"
    evaluation.save(out, source={"run": str(run.path), "split": "val", "data": run.config.data}, overwrite=demo.overwrite)
    demo.results["evaluation"] = evaluation
    demo.outputs["evaluation"] = out
    demo.outputs["confusion matrix"] = out / "confusion.png"
    for line in describe(evaluation):
        click.echo(f"  {line}")


#: The demo's faithfulness check, sized to keep the demo within minutes: the single-pass methods on 100
#: validation faces, occlusion (5x5 patches every 2 pixels, mean fill: black patches on dark faces hid
#: little) on 20, the randomisation check on 8. Integrated gradients is left out here (16 steps cost ~40x
#: a saliency map); `cnnlens faithfulness RUN` runs every method.
DEMO_FAITHFULNESS = dict(methods=("saliency", "guided-backprop", "grad-cam", "occlusion"),
                         n_images=100, n_perturbation_images=20, n_randomization_images=8,
                         method_kwargs={"occlusion": {"fill": "mean", "patch": 5, "stride": 2}})


def score_explanations(demo: Demo) -> None:
    """Measure the explanations' faithfulness against the faces' known deciding parts (``DIR/run/faithfulness``)."""
    from cnnlens.faithfulness import evaluate_run_faithfulness

    run = demo.results["run"]
    result = evaluate_run_faithfulness(run, seed=demo.seed, progress=demo.progress, **DEMO_FAITHFULNESS)
    out = run.path / "faithfulness"
    result.save(out, overwrite=demo.overwrite)
    demo.outputs["faithfulness"] = out


def write_report(demo: Demo) -> None:
    """Explain the run and write the HTML report into ``DIR/report``."""
    from cnnlens.report import ReportOptions, build_report

    page = build_report(demo.run_dir, demo.out / "report", options=ReportOptions(device=demo.device, progress=demo.progress),
                        overwrite=demo.overwrite)
    demo.outputs["report (open in a browser)"] = page


#: The demo, in order: (what a person reads while it runs, the stage). Adding a stage is one line here.
STAGES: list[tuple[str, Callable[[Demo], None]]] = [
    ("synthesise faces", synthesise),
    ("train small_cnn", train_model),
    ("evaluate", evaluate_run),
    ("score the explanations' faithfulness", score_explanations),
    ("explain and write the report", write_report),
]


def run_demo(demo: Demo, stages: Sequence[tuple[str, Callable[[Demo], None]]] | None = None) -> dict[str, float]:
    """Run ``stages`` (default :data:`STAGES`) in order on ``demo``; return seconds per stage.

    An existing non-empty ``demo.out`` is refused unless it holds an earlier demo and ``demo.overwrite``
    (:func:`cnnlens._atomic.claim_dir`); each stage then replaces its own part whole, so a demo stopped
    midway leaves every part either old or new, never half-written.
    """
    from cnnlens._atomic import claim_dir

    claim_dir(demo.out, kind="demo", overwrite=demo.overwrite)
    seconds: dict[str, float] = {}
    stages = STAGES if stages is None else stages
    for i, (title, stage) in enumerate(stages, start=1):
        click.secho(f"[{i}/{len(stages)}] {title}", bold=True)
        t0 = time.perf_counter()
        stage(demo)
        seconds[title] = time.perf_counter() - t0
        click.echo(f"  done in {seconds[title]:.1f} s")
    return seconds


@click.command(name="demo")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for everything the demo writes (data/, run/, run/eval/, report/).")
@click.option("--n-images", type=click.IntRange(min=70), default=DEMO_IMAGES, show_default=True,
              help="Synthetic faces to draw (10% are held out as the test split).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEMO_EPOCHS, show_default=True,
              help="Training epochs (one-cycle learning-rate schedule over all of them).")
@click.option("--seed", type=int, default=DEMO_SEED, show_default=True, help="Seeds the faces, the split and the training.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when available, else CPU.")
@click.option("--overwrite", is_flag=True,
              help="Replace the outputs of an earlier demo in --out; never a folder cnnlens did not write.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the training progress bar.")
def command(out_dir: Path, n_images: int, epochs: int, seed: int, device: str, overwrite: bool, progress: bool) -> None:
    """Run the whole pipeline on built-in synthetic faces: draw the faces, train the small CNN,
    evaluate it, explain it, write the HTML report and print where the outputs are. Takes a few
    minutes on a laptop CPU.

    \b
    Example:
      cnnlens demo --out demo-run
    """
    demo = Demo(out=out_dir, n_images=n_images, epochs=epochs, seed=seed, device=device, overwrite=overwrite,
                progress=progress)
    try:
        seconds = run_demo(demo)
    except (ValueError, TypeError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    click.secho(f"\nDemo finished in {sum(seconds.values()):.0f} s. Outputs:", bold=True)
    width = max(map(len, demo.outputs))
    for label, path in demo.outputs.items():
        click.echo(f"  {label:<{width}}  {path}")
