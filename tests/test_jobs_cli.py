"""``cnnlens explain/faithfulness RUN --engine local``: the whole split into shards, resumable, errors before work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cnnlens.cli import main
from cnnlens.jobs import load_explanations
from cnnlens.jobs.shards import MANIFEST, SHARDS, shard_name

pytest.importorskip("pyarrow")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnlens.data.synth import write_faces
    from cnnlens.train import TrainConfig, train

    root = tmp_path_factory.mktemp("jobcli")
    write_faces(root / "faces", 40, seed=2)
    train(TrainConfig(data=f"synth:{root / 'faces'}", epochs=1, batch_size=16, val_fraction=0.4, device="cpu",
                      num_threads=1), root / "run", progress=False)
    return root / "run"


def invoke(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_explain_engine_local_writes_and_resumes(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    args = ["explain", run_dir, "--split", "val", "--methods", "saliency,grad-cam", "--out", out, "--engine", "local",
            "--shard-size", "4", "--float16", "--target", "true"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "14 of 14 image(s) computed" in res.output and "images/s" in res.output
    got = load_explanations(out)
    assert got.maps["grad-cam"].dtype == np.float16 and len(got.ids) == 14
    assert np.array_equal(got.targets, got.labels)  # --target true
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["data"]["run"] == str(run_dir) and manifest["data"]["split"] == "val"
    (out / SHARDS / shard_name(1)).unlink()
    again = invoke(*args)
    assert again.exit_code == 0 and "4 of 14 image(s) computed" in again.output and "3 of 4 shard(s) already" in again.output
    other = invoke(*[a if a != "saliency,grad-cam" else "saliency" for a in args])
    assert other.exit_code != 0 and "other settings" in other.output and "--overwrite" in other.output
    mixed = invoke(*args, "--per-class", "2")
    assert mixed.exit_code != 0 and "--engine explains every image" in mixed.output


def test_faithfulness_engine_local_scores_every_image(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    res = invoke("faithfulness", run_dir, "--split", "val", "--methods", "grad-cam", "--out", out, "--engine", "local",
                 "--step", "0.1")
    assert res.exit_code == 0, res.output
    assert "grad-cam:deletion_auc" in res.output and "95% CI" in res.output
    got = load_explanations(out)
    assert got.maps == {} and set(got.scores) == {"grad-cam:deletion_auc", "grad-cam:insertion_auc"}
    assert ((got.scores["grad-cam:insertion_auc"] >= 0) & (got.scores["grad-cam:insertion_auc"] <= 1)).all()
    missing = invoke("faithfulness", run_dir, "--methods", "grad-cam", "--engine", "local")
    assert missing.exit_code != 0 and "--out DIR" in missing.output


def test_report_reads_the_explanations_of_a_job(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlens.jobs.job import maps_from_job
    from cnnlens.train import load_run

    job = tmp_path / "maps"
    res = invoke("explain", run_dir, "--split", "val", "--methods", "grad-cam", "--out", job, "--engine", "local")
    assert res.exit_code == 0, res.output
    run = load_run(run_dir)
    val = run.dataset("val")
    stored = load_explanations(job)
    got = maps_from_job(job, run.model, val, [5, 2], stored.targets[[5, 2]], ["grad-cam", "saliency"])
    assert list(got) == ["grad-cam"] and np.array_equal(got["grad-cam"], stored.maps["grad-cam"][[5, 2]])
    assert maps_from_job(job, run.model, val, [5], [int(stored.targets[5]) + 1], ["grad-cam"]) == {}  # other class
    with pytest.raises(ValueError, match="other images"):
        maps_from_job(job, run.model, run.dataset("train"), [0], [0], ["grad-cam"])
    with torch.no_grad():
        next(run.model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="other model weights"):
        maps_from_job(job, run.model, val, [0], [0], ["grad-cam"])

    import cnnlens.explain.runner as runner

    real = runner.run_methods

    def no_grad_cam(model, images, targets=None, methods=None, **kw):  # type: ignore[no-untyped-def]
        assert "grad-cam" not in (methods or []), "the report computed Grad-CAM instead of reading the job"
        return real(model, images, targets, methods, **kw)

    monkeypatch.setattr(runner, "run_methods", no_grad_cam)
    report = invoke("report", run_dir, "--out", tmp_path / "report", "--split", "val", "--methods", "grad-cam",
                    "--average-methods", "none", "--filter-layers", "none", "--feature-map-layers", "none",
                    "--explanations", job, "--no-progress")
    assert report.exit_code == 0, report.output
    assert (tmp_path / "report" / "index.html").is_file()
