"""The model's class names reach the folder loader from the CLI: ``explain --model ... --classes`` and
``evaluate RUN --data folder:`` label each folder by its name, not its alphabetical position; FER's unlabelled
``id,feature`` file is explained on the predicted class."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnlens.cli import main
from cnnlens.models import MODELS
from cnnlens.train import TrainConfig, train

from test_explain_cli import user  # noqa: F401  (fixture: the user's tinynet module and weights)
from test_train_loop import TINY, TinyNet

FER7 = "Angry,Disgust,Fear,Happy,Sad,Surprise,Neutral"


def _folder(root: Path, folders: list[str], size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    for name in folders:
        (root / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


def _invoke(*args: str | Path):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


@pytest.mark.slow
def test_explain_user_model_labels_a_folder_subset_by_class_name(user: Path) -> None:  # noqa: F811
    data = _folder(user / "photos", ["happy", "06_Neutral", "surprise"])
    out = user / "ex"
    res = _invoke("explain", "--model", "tinynet:build", "--weights", "w.pt", "--data", f"folder:{data}",
                  "--classes", FER7, "--methods", "saliency", "--images", "0,2,4", "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    index = json.loads((out / "index.json").read_text())
    # sorted folders: 06_Neutral, happy, surprise -> Neutral=6, Happy=3, Surprise=5 (not 0, 1, 2)
    assert [(e["name"].split("/")[0], e["label"]) for e in index["images"]] == [("06_Neutral", 6), ("happy", 3),
                                                                                 ("surprise", 5)]
    bad = _folder(user / "bad", ["happy", "smiling"])
    res = _invoke("explain", "--model", "tinynet:build", "--weights", "w.pt", "--data", f"folder:{bad}",
                  "--classes", FER7, "--out", user / "ex2", "--device", "cpu")
    assert res.exit_code == 2 and "folder 'smiling' matches none of the 7 class names" in res.output
    assert not (user / "ex2").exists()


@pytest.mark.slow
def test_explain_user_model_on_the_unlabelled_fer_test_file(user: Path) -> None:  # noqa: F811
    rng = np.random.default_rng(1)
    rows = [" ".join(map(str, rng.integers(0, 256, 48 * 48))) for _ in range(3)]
    (user / "test.csv").write_text("id,feature\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rows)))
    out = user / "ex"
    res = _invoke("explain", "--model", "tinynet:build", "--weights", "w.pt", "--data", f"fer:{user / 'test.csv'}",
                  "--methods", "saliency", "--images", "0,2", "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    index = json.loads((out / "index.json").read_text())
    assert [e["label"] for e in index["images"]] == [-1, -1]
    assert [e["name"] for e in index["images"]] == ["test.csv:2", "test.csv:4"]
    assert all(e["target"] == e["predicted"] for e in index["images"])


@pytest.mark.slow
def test_evaluate_on_another_folder_uses_the_runs_class_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, TINY, TinyNet)
    own = _folder(tmp_path / "own", ["angry", "happy", "sad"], size=16)
    run = tmp_path / "run"
    train(TrainConfig(data=f"folder:{own}", model=TINY, epochs=1, batch_size=4, val_fraction=0.5, num_threads=1,
                      device="cpu"), run, progress=False)
    other = _folder(tmp_path / "other", ["02_SAD", "Happy"], size=16)
    res = _invoke("evaluate", run, "--data", f"folder:{other}", "--split", "train", "--out", tmp_path / "eval",
                  "--device", "cpu")
    assert res.exit_code == 0, res.output
    with open(tmp_path / "eval" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["name"].split("/")[0], r["label"], r["label_name"]) for r in rows] == [
        ("02_SAD", "2", "sad"), ("02_SAD", "2", "sad"), ("Happy", "1", "happy"), ("Happy", "1", "happy")]
