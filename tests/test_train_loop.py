"""The training loop on a tiny, easy dataset: the loss falls, the run folder is complete and consistent,
existing runs are protected, schedules and early stopping behave, and a killed run resumes exactly."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cnnlens._atomic import MARKER
from cnnlens.data.fer import write_fer_csv
from cnnlens.models import MODELS
from cnnlens.train import TrainConfig, load_checkpoint, load_run, train
from cnnlens.train import run as runfiles

TINY = "tiny_test_net"


class TinyNet(nn.Module):
    """conv(stride 4) + BN + ReLU + GAP + linear: learns the easy data below in a few epochs, in milliseconds."""

    def __init__(self, in_channels: int, num_classes: int, input_size: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 5, stride=4, padding=2)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.gap = nn.AdaptiveAvgPool2d((2, 1))  # keeps top vs bottom apart
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gap(self.relu(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture(autouse=True)
def _tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, TINY, TinyNet)


def write_easy_faces(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A FER-layout CSV whose class is where a bright square sits: Happy (3) top half, Sad (4) bottom half."""
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(n) % 2 == 0, 3, 4)
    images = rng.integers(0, 90, size=(n, 48, 48)).astype(np.uint8)
    for i, label in enumerate(labels):
        top = rng.integers(4, 12) if label == 3 else rng.integers(28, 36)
        left = rng.integers(4, 30)
        images[i, top : top + 12, left : left + 14] = 230
    write_fer_csv(path, images, labels)
    return path


@pytest.fixture
def easy_spec(tmp_path: Path) -> str:
    return f"fer:{write_easy_faces(tmp_path / 'easy.csv')}"


def fast_config(spec: str, **changes: object) -> TrainConfig:
    values = {"data": spec, "model": TINY, "epochs": 4, "batch_size": 16, "lr": 0.05, "val_fraction": 0.25,
              "num_threads": 1, "device": "cpu", **changes}
    return TrainConfig(**values)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_lowers_the_loss_and_writes_the_run_folder(tmp_path: Path, easy_spec: str) -> None:
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    run = train(fast_config(easy_spec, epochs=5), tmp_path / "run", progress=False)
    out = tmp_path / "run"

    # the loss falls and the easy task is learnt
    losses = [row["train_loss"] for row in run.history]
    assert losses[-1] < 0.6 * losses[0]
    assert max(row["val_acc"] for row in run.history) >= 0.9
    # nothing global was changed for the caller
    assert torch.equal(torch.get_rng_state(), rng_before) and torch.get_num_threads() == threads_before

    assert {p.name for p in out.iterdir()} == {"config.json", "weights.safetensors", "checkpoint.pt", "history.csv",
                                                "curves.png", "split.json", "tensorboard", "train.log", MARKER}
    # history.csv: the documented columns, one row per epoch, the same numbers as run.history
    rows = _rows(out / "history.csv")
    assert list(rows[0]) == list(runfiles.HISTORY_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [float(r["val_acc"]) for r in rows] == pytest.approx([r["val_acc"] for r in run.history], abs=1e-6)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    log = (out / "train.log").read_text()
    assert "epoch 5/5" in log and "best validation accuracy" in log

    # split.json: a stratified partition of the 120 images (30 validation = 15 per class)
    split = json.loads((out / "split.json").read_text())
    train_idx, val_idx = set(split["train"]), set(split["val"])
    assert not train_idx & val_idx and train_idx | val_idx == set(range(120)) and split["seed"] == 0
    val = run.dataset("val")
    assert len(val) == 30 and torch.bincount(val.labels).tolist() == [0, 0, 0, 15, 15]
    assert len(run.dataset("train")) == 90

    # config.json alone rebuilds the model; its weights are the best epoch's: accuracy on the validation
    # images equals the best val_acc in the history
    manifest = json.loads((out / "config.json").read_text())
    assert manifest["model"] == {"name": TINY, "kwargs": {"in_channels": 1, "num_classes": 7, "input_size": [48, 48]}}
    assert manifest["input_shape"] == [1, 48, 48] and manifest["classes"][3] == "Happy"
    assert manifest["train"] == fast_config(easy_spec, epochs=5).to_dict()
    again = load_run(out)
    with torch.no_grad():
        acc = (again.model(val.float_images()).argmax(1) == val.labels).float().mean().item()
    assert acc == pytest.approx(max(row["val_acc"] for row in run.history), abs=1e-6)

    # the checkpoint holds the last epoch, readable with weights_only
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 5 and ckpt["finished"] and len(ckpt["history"]) == 5


def test_existing_run_is_not_overwritten(tmp_path: Path, easy_spec: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for overwrite in (False, True):  # a folder cnnlens did not write is never replaced
        with pytest.raises(FileExistsError, match="not written by cnnlens .* not even with --overwrite"):
            train(fast_config(easy_spec, epochs=1), out, overwrite=overwrite, progress=False)
        assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1
    out = tmp_path / "run2"
    train(fast_config(easy_spec, epochs=1), out, progress=False)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite .* or pass --resume"):
        train(fast_config(easy_spec, epochs=1), out, progress=False)
    first = (out / "split.json").read_bytes()
    train(fast_config(easy_spec, epochs=1, seed=1), out, overwrite=True, progress=False)  # an earlier run: replaced
    assert (out / "split.json").read_bytes() != first and (out / "weights.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["easy.csv", "run", "run2"]  # no temporary folder left
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        train(fast_config(easy_spec, epochs=1), out, overwrite=True, resume=True, progress=False)
    with pytest.raises(FileExistsError, match="holds the input"):  # --out the data's own folder
        train(fast_config(easy_spec, epochs=1), tmp_path, overwrite=True, progress=False)


def test_a_failed_start_changes_nothing_on_disk(tmp_path: Path, easy_spec: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown dataset spec 'nope:x'"):
        train(fast_config("nope:x"), out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
        train(fast_config(easy_spec, model="no_such_net"), out, progress=False)
    assert not out.exists()
    # --overwrite with a mistyped spec keeps the old run
    train(fast_config(easy_spec, epochs=1), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="missing.csv"):
        train(fast_config(f"fer:{tmp_path / 'missing.csv'}"), out, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_bad_rows_fail_or_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write_easy_faces(tmp_path / "easy.csv")
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = "3,1 2 3,Training\n"  # line 6 of the file: 3 pixels instead of 2304
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match="easy.csv line 6: .*2304"):
        train(fast_config(f"fer:{path}", epochs=1), tmp_path / "strict", progress=False)
    assert not (tmp_path / "strict").exists()
    run = train(fast_config(f"fer:{path}", epochs=1, skip_bad_rows=True), tmp_path / "lenient", progress=False)
    log = (tmp_path / "lenient" / "train.log").read_text()
    assert "skipped bad rows: 1 (--skip-bad-rows)" in log and "easy.csv line 6" in log
    assert json.loads((tmp_path / "lenient" / "split.json").read_text())["n"] == 119
    assert len(run.dataset("train")) + len(run.dataset("val")) == 119


def test_resume_refuses_a_different_config(tmp_path: Path, easy_spec: str) -> None:
    out = tmp_path / "run"
    train(fast_config(easy_spec, epochs=1), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"cannot resume .* with a different config \(lr: run has 0.05, given 0.5\)"):
        train(fast_config(easy_spec, epochs=2, lr=0.5), out, resume=True, progress=False)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    # device and thread count may change on resume
    train(fast_config(easy_spec, epochs=1, num_threads=2), out, resume=True, progress=False)
    with pytest.raises(ValueError, match="nothing to resume at .*nowhere: it has no config.json"):
        train(fast_config(easy_spec), tmp_path / "nowhere", resume=True, progress=False)


def test_resume_of_a_finished_run_changes_nothing(tmp_path: Path, easy_spec: str) -> None:
    out = tmp_path / "run"
    first = train(fast_config(easy_spec, epochs=2), out, progress=False)
    weights = (out / "weights.safetensors").read_bytes()
    again = train(fast_config(easy_spec, epochs=2), out, resume=True, progress=False)
    assert again.history == first.history and (out / "weights.safetensors").read_bytes() == weights


@pytest.mark.parametrize(("schedule", "optimizer"), [("constant", "sgd"), ("cosine", "adam"), ("onecycle", "adam")])
def test_schedules(tmp_path: Path, easy_spec: str, schedule: str, optimizer: str) -> None:
    run = train(fast_config(easy_spec, epochs=4, schedule=schedule, optimizer=optimizer, label_smoothing=0.1),
                tmp_path / "run", progress=False)
    lrs = [row["lr"] for row in run.history]  # the rate of each epoch's last step
    assert all(np.isfinite(row["train_loss"]) for row in run.history)
    if schedule == "constant":
        assert lrs == pytest.approx([0.05] * 4)
    elif schedule == "cosine":
        assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.01 * 0.05
    else:  # one-cycle: warm up over the first quarter, then anneal far below the start (lr/25)
        assert lrs[0] > 0.05 / 25 and lrs[0] == pytest.approx(0.05, rel=1e-3) and lrs[-1] < 1e-4


def test_early_stopping_stops_patience_epochs_after_the_best(tmp_path: Path, easy_spec: str) -> None:
    run = train(fast_config(easy_spec, epochs=40, patience=2, schedule="constant"), tmp_path / "run", progress=False)
    accs = [row["val_acc"] for row in run.history]
    best_epoch = accs.index(max(accs)) + 1
    assert len(accs) == best_epoch + 2 < 40
    assert "early stopping" in (tmp_path / "run" / "train.log").read_text()


def test_progress_bar_shows_live_loss_and_validation(tmp_path: Path, easy_spec: str, capsys: pytest.CaptureFixture) -> None:
    run = train(fast_config(easy_spec, epochs=2), tmp_path / "run", progress=True)
    shown = " ".join(capsys.readouterr().out.split())
    last = run.history[-1]
    assert "epoch 2/2" in shown
    assert f"loss {last['train_loss']:.3f} acc {last['train_acc']:.1%}" in shown
    assert f"val loss {last['val_loss']:.3f} acc {last['val_acc']:.1%}" in shown


def test_bad_config_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="config must be a cnnlens.train.TrainConfig"):
        train({"data": "synth:x"}, tmp_path / "run")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- kill and resume

_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_train_loop import TINY, TinyNet
from cnnlens.models import MODELS
from cnnlens.train import TrainConfig, train
MODELS[TINY] = TinyNet
train(TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], resume=sys.argv[3] == "resume", progress=False)
"""


def _train_in_subprocess(config: TrainConfig, out: Path, mode: str) -> subprocess.Popen:
    script = _SCRIPT.format(tests=str(Path(__file__).parent))
    return subprocess.Popen([sys.executable, "-c", script, json.dumps(config.to_dict()), str(out), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    spec = f"fer:{write_easy_faces(tmp_path / 'easy.csv', n=400)}"
    config = fast_config(spec, epochs=8, lr=0.02, label_smoothing=0.05)
    reference = train(config, tmp_path / "reference", progress=False)

    out = tmp_path / "killed"
    proc = _train_in_subprocess(config, out, "fresh")
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill of a real process, in the middle of epoch 2
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert 1 <= interrupted_at < config.epochs

    proc = _train_in_subprocess(config, out, "resume")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()

    resumed = load_run(out)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)
    assert len(resumed.history) == config.epochs
    ref_w, res_w = load_file(str(tmp_path / "reference" / "weights.safetensors")), load_file(str(out / "weights.safetensors"))
    assert ref_w.keys() == res_w.keys() and all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)
    ref_c, res_c = load_checkpoint(tmp_path / "reference" / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert all(torch.equal(ref_c["model"][k], res_c["model"][k]) for k in ref_c["model"])
    assert "resuming" in (out / "train.log").read_text()
