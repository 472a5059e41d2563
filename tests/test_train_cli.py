"""`cnnlens train` on the command line: options map onto TrainConfig, errors are clear, --resume needs only --out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnnlens.cli import main
from cnnlens.models import MODELS
from cnnlens.train.config import TrainConfig

from test_train_loop import TINY, TinyNet, write_easy_faces


@pytest.fixture(autouse=True)
def _tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, TINY, TinyNet)


def _invoke(*args: str):
    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


FAST = ["--model", TINY, "--batch-size", "16", "--lr", "0.05", "--num-threads", "1", "--device", "cpu", "--no-progress"]


def test_help_lists_the_options() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0
    for option in ("--data", "--out", "--epochs", "--optimizer", "--label-smoothing", "--patience", "--resume",
                   "--overwrite", "--skip-bad-rows", "--device", "--flip / --no-flip", "--rotation", "--schedule"):
        assert option in result.output


def test_help_defaults_are_the_dataclass_defaults() -> None:
    result = _invoke("--help")
    epochs = TrainConfig.__dataclass_fields__["epochs"].default
    flat = " ".join(result.output.split())  # help is wrapped to the terminal width
    assert f"--epochs INTEGER RANGE Passes over the training images. [default: {epochs};" in flat


def test_data_is_required_without_resume(tmp_path: Path) -> None:
    result = _invoke("--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "--data is required" in result.output


def test_bad_choice_is_a_usage_error(tmp_path: Path) -> None:
    result = _invoke("--data", "synth:x", "--out", str(tmp_path / "run"), "--optimizer", "rmsprop")
    assert result.exit_code == 2 and "'rmsprop' is not one of 'adam', 'sgd'" in result.output


@pytest.mark.slow
def test_train_then_refuse_then_resume(tmp_path: Path) -> None:
    spec = f"fer:{write_easy_faces(tmp_path / 'easy.csv')}"
    out = tmp_path / "run"
    result = _invoke("--data", spec, "--out", str(out), "--epochs", "2", "--no-flip", "--rotation", "0", *FAST)
    assert result.exit_code == 0, result.output
    assert "Best validation accuracy" in result.output and f"Next: cnnlens evaluate {out}" in result.output
    stored = json.loads((out / "config.json").read_text())["train"]
    assert stored["epochs"] == 2 and stored["flip"] is False and stored["rotation"] == 0.0 and stored["model"] == TINY
    line = "augmentation: shifts up to 4 px; no flips (--no-flip; the default for fer: data is on)"
    assert line in result.output and line in (out / "train.log").read_text()

    again = _invoke("--data", spec, "--out", str(out), *FAST)
    assert again.exit_code == 1 and "already exists; pass --overwrite" in " ".join(again.output.split())

    # --resume needs only --out; the run's own settings are used
    resumed = _invoke("--out", str(out), "--resume", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    # an option given with --resume must agree with the run
    clash = _invoke("--out", str(out), "--resume", "--lr", "0.5", "--no-progress")
    assert clash.exit_code == 1 and "lr: run has 0.05, given 0.5" in clash.output


def test_resume_without_a_run(tmp_path: Path) -> None:
    result = _invoke("--out", str(tmp_path / "none"), "--resume")
    assert result.exit_code == 1 and "not a cnnlens run folder: config.json is missing" in result.output


def test_help_says_flips_depend_on_the_data() -> None:
    flat = " ".join(_invoke("--help").output.split())
    assert "[default: (on for faces (fer:, synth:) and food (food11:), off for folder:)]" in flat


@pytest.mark.parametrize(("kind", "line"), [
    ("folder", "no flips (default for folder: data: a folder may hold digits, text or signs, which a mirror changes; "
               "--flip turns them on)"),
    ("food11", "horizontal flips (default for food11: data: food looks alike mirrored; --no-flip turns them off)"),
])
def test_the_augmentation_line_is_printed_first(tmp_path: Path, kind: str, line: str) -> None:
    result = _invoke("--data", f"{kind}:{tmp_path / 'missing'}", "--out", str(tmp_path / "run"), *FAST)
    assert result.exit_code == 1 and "no such folder" in result.output
    assert result.output.startswith("augmentation: shifts up to 4 px, rotations up to 10 degrees; " + line)
    flipped = _invoke("--data", f"{kind}:{tmp_path / 'missing'}", "--out", str(tmp_path / "run"), "--flip", *FAST)
    assert "horizontal flips (" in flipped.output.splitlines()[0]


def test_a_one_image_dataset_names_the_spec_and_the_flags(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "d" / "cat").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "d" / "cat" / "a.png")
    result = _invoke("--data", f"folder:{tmp_path / 'd'}", "--out", str(tmp_path / "run"), *FAST)
    assert result.exit_code == 1 and not (tmp_path / "run").exists()
    assert f"folder:{tmp_path / 'd'}: labels has 1 entries; a split needs at least 2" in result.output
    assert "--val-fraction" in result.output and "--data" in result.output
