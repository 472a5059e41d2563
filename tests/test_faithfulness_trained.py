"""Issue 5's properties on a model trained on synthetic faces, and the CLI end to end (slow).

One small CNN is trained once per session (a plain loop, ~20-40 s on 2 cores) and written as a run
folder, so the CLI reads it like any run. The properties are those of Adebayo et al. 2018 and Petsiuk
et al. 2018 and of the faces' ground truth; each is asserted with a margin, not just an ordering.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cnnlens.data import load_dataset
from cnnlens.data.split import stratified_split
from cnnlens.data.synth import write_faces
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.guided_backprop import guided_backprop
from cnnlens.explain.occlusion import occlusion
from cnnlens.explain.saliency import saliency
from cnnlens.faithfulness import evaluate_faithfulness
from cnnlens.models import build
from cnnlens.train import TrainConfig
from cnnlens.train.run import run_manifest, save_weights, write_history, write_json, write_split

pytestmark = pytest.mark.slow

N_FACES, EPOCHS, CHANNELS = 1750, 7, (16, 32, 64)


def occlusion_5(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Occlusion with each face's mean grey: black patches on a grey face are features of their own, and
    their maxima sat beside the parts (pointing game 0.54 with black vs 0.88 with the mean, 24 faces)."""
    return occlusion(model, images, target, patch=5, stride=2, fill="mean")


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Adam + one-cycle, random horizontal flips (the faces' expressions are left-right symmetric but one)."""
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-4)
    bs = 32
    steps = EPOCHS * (len(y) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps, pct_start=0.25)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(y), generator=g)
        for i in range(len(y) // bs):
            idx = perm[i * bs:(i + 1) * bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@pytest.fixture(scope="session")
def faces_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A run folder (config.json, weights, split, history) of a small CNN trained on synthetic faces."""
    root = tmp_path_factory.mktemp("faithfulness_run")
    write_faces(root / "data", N_FACES, seed=0, test_fraction=0.0)
    spec = f"synth:{root / 'data'}"
    data = load_dataset(spec, "train")
    train_idx, val_idx = stratified_split(data.labels, 0.2, seed=0)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kwargs = {"in_channels": 1, "num_classes": len(data.classes), "input_size": [48, 48], "channels": list(CHANNELS)}
        model = build("small_cnn", **{**kwargs, "input_size": (48, 48)})
        _train(model, data.float_images(train_idx), data.labels[train_idx])
    seconds = time.perf_counter() - start
    val = data.subset(val_idx)
    with torch.no_grad():
        acc = (model(val.float_images()).argmax(1) == val.labels).float().mean().item()
    run = root / "run"
    run.mkdir()
    config = TrainConfig(data=spec, epochs=EPOCHS, device="cpu")
    write_json(run / "config.json", run_manifest(config, kwargs, data.input_shape, data.classes, len(data)))
    save_weights(run / "weights.safetensors", model)
    write_split(run, 0, train_idx, val_idx, len(data))
    write_history(run, [{"epoch": EPOCHS, "train_loss": 0.0, "train_acc": 0.0, "val_loss": 0.0, "val_acc": acc,
                         "lr": 0.0, "seconds": seconds}])
    print(f"\nfaithfulness fixture: trained in {seconds:.1f} s, validation accuracy {acc:.3f}")
    return SimpleNamespace(path=run, model=model, val=val, accuracy=acc, seconds=seconds)


@pytest.fixture(scope="session")
def trained_result(faces_run: SimpleNamespace):
    val = faces_run.val.subset(range(120))
    methods = {"saliency": saliency, "grad-cam": grad_cam, "guided-backprop": guided_backprop, "occlusion": occlusion_5}
    return evaluate_faithfulness(faces_run.model, val.float_images(), None, val.masks, methods,
                                 n_perturbation_images=40, n_randomization_images=12,
                                 randomization_modes=("cascading",), names=val.names,
                                 metrics=("deletion", "localization", "randomization"))  # the groups checked here


def test_the_fixture_model_learned(faces_run) -> None:
    assert faces_run.accuracy > 0.5  # 7 classes: chance is 0.14


def test_cascading_randomisation_separates_gradients_from_guided_backprop(trained_result) -> None:
    """Adebayo et al. 2018: gradients and Grad-CAM change when the weights go, guided backprop hardly does."""
    r = trained_result.randomization["cascading"]
    for sim in ("spearman", "ssim"):
        mean = {m: trained_result.row(m, f"cascading_{sim}").mean for m in r.spearman}  # over the cascade
        assert mean["guided-backprop"] > mean["saliency"] + 0.15, (sim, mean)
        assert mean["guided-backprop"] > mean["grad-cam"] + 0.15, (sim, mean)
    # with only the output layer random, guided backprop still looks like the original; the others do not
    top = {m: r.spearman[m][0].mean().item() for m in r.spearman}
    assert top["guided-backprop"] > 0.6 and top["guided-backprop"] > max(top["saliency"], top["grad-cam"]) + 0.2, top


@pytest.mark.parametrize("method", ["grad-cam", "occlusion"])
def test_deletion_below_and_insertion_above_random_order(trained_result, method) -> None:
    d = trained_result.row(method, "deletion_auc")
    i = trained_result.row(method, "insertion_auc")
    rd = trained_result.row("random-order", "deletion_auc", n_images=d.n_images)
    ri = trained_result.row("random-order", "insertion_auc", n_images=i.n_images)
    assert d.ci_high < rd.ci_low, (d, rd)  # separated beyond the confidence intervals
    assert i.ci_low > ri.ci_high, (i, ri)


@pytest.mark.parametrize("method", ["grad-cam", "occlusion"])
def test_pointing_game_beats_the_centre_prior(trained_result, method) -> None:
    pg = trained_result.row(method, "pointing_game")
    prior = trained_result.row("centre-prior", "pointing_game", n_images=pg.n_images)
    assert pg.mean > prior.mean + 0.15, (pg, prior)
    assert pg.mean > trained_result.row("random-map", "pointing_game", n_images=pg.n_images).mean


def test_cli_writes_the_table_and_refuses_to_overwrite(faces_run, tmp_path) -> None:
    from cnnlens.cli import main
    from cnnlens.faithfulness.runner import stratified_order

    out = tmp_path / "faith"
    args = ["faithfulness", str(faces_run.path), "--methods", "saliency,grad-cam,occlusion", "--n-images", "24",
            "--n-perturbation-images", "6", "--n-randomization-images", "4", "--device", "cpu", "--out", str(out),
            "-o", "occlusion.patch=6", "-o", "occlusion.stride=3"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "occlusion: a perturbation method, evaluated on the first 6 of 24 images" in res.output
    assert "randomisation check: left out occlusion" in res.output
    manifest = json.loads((out / "faithfulness.json").read_text())
    assert manifest["settings"]["methods"] == ["saliency", "grad-cam", "occlusion"]
    drawn = stratified_order(faces_run.val.labels, seed=0)[:24]  # not the first 24 of the split: a stratified draw
    assert manifest["images"] == [faces_run.val.names[i] for i in drawn]
    assert manifest["settings"]["sampling"]["indices"] == drawn and manifest["settings"]["sampling"]["seed"] == 0
    assert "substrate_check" in manifest and manifest["substrate_check"]["deletion"]["substrate"] == "blur"
    assert {r["method"] for r in manifest["rows"]} == {"saliency", "grad-cam", "occlusion", "random-order",
                                                       "centre-prior", "random-map"}
    from cnnlens.faithfulness.runner import METRIC_GROUPS, METRICS

    assert manifest["settings"]["metrics"] == list(METRIC_GROUPS)  # --metrics all: the peers' metrics in the table too
    assert {r["metric"] for r in manifest["rows"] if r["method"] == "saliency"} == set(METRICS)
    assert {r["metric"] for r in manifest["rows"] if r["method"] == "occlusion"} == set(METRICS) - {
        "cascading_spearman", "cascading_ssim", "independent_spearman", "independent_ssim", "max_sensitivity",
        "random_logit", "mprt"}  # a perturbation method: not re-explained
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "already exists; pass --overwrite" in again.output


def test_cli_bad_input(faces_run, tmp_path) -> None:
    from cnnlens.cli import main

    res = CliRunner().invoke(main, ["faithfulness", str(faces_run.path), "--methods", "saliency,nope",
                                    "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert res.exit_code != 0 and "unknown method" in res.output and "nope" in res.output
    masks = tmp_path / "masks"
    masks.mkdir()
    res = CliRunner().invoke(main, ["faithfulness", str(faces_run.path), "--methods", "saliency", "--masks", str(masks),
                                    "--out", str(tmp_path / "y"), "--device", "cpu"])
    assert res.exit_code != 0 and "no mask for image 0" in res.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_default_out_dir_is_inside_the_run(faces_run) -> None:
    from cnnlens.cli import main

    res = CliRunner().invoke(main, ["faithfulness", str(faces_run.path), "--methods", "grad-cam", "--n-images", "8",
                                    "--n-randomization-images", "0", "--device", "cpu", "--step", "96"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((Path(faces_run.path) / "faithfulness" / "faithfulness.json").read_text())
    assert manifest["settings"]["step"] == 96 and manifest["settings"]["n_images"] == 8
