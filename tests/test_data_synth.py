"""Synthetic faces: determinism, masks, class-independence of everything outside the mask, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats
from torch import nn

from cnnlens.cli import main
from cnnlens.data import FER_CLASSES, load_dataset, make_faces, write_faces
from cnnlens.data.synth import _dilate


def test_same_seed_same_bytes_other_seed_other_faces():
    a = make_faces(40, seed=3)
    b = make_faces(40, seed=3)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    c = make_faces(40, seed=4)
    assert not np.array_equal(a[0], c[0])


def test_shapes_dtypes_and_balanced_classes():
    images, labels, masks = make_faces(71, seed=0)
    assert images.shape == (71, 48, 48) and images.dtype == np.uint8
    assert labels.shape == (71,) and labels.dtype == np.int64
    assert masks.shape == (71, 48, 48) and masks.dtype == np.bool_
    counts = np.bincount(labels, minlength=7)
    assert counts.sum() == 71 and counts.max() - counts.min() <= 1  # 71 = 7 * 10 + 1
    assert images.std() > 20  # real images, not a constant


def test_parts_false_draws_the_same_faces_without_the_expression():
    images, labels, masks = make_faces(60, seed=1)
    blank, labels2, masks2 = make_faces(60, seed=1, parts=False)
    assert np.array_equal(labels, labels2) and np.array_equal(masks, masks2)
    # outside the mask the face is exactly the face without its expression parts ...
    assert np.array_equal(images[~masks], blank[~masks])
    # ... and inside it the parts really are drawn: every face differs from its blank somewhere in the mask
    changed = (np.abs(images.astype(int) - blank.astype(int)) > 20) & masks
    assert changed.any(axis=(1, 2)).all()


def test_masks_are_non_empty_compact_and_inside_the_face():
    images, labels, masks = make_faces(140, seed=2)
    area = masks.mean(axis=(1, 2))
    assert (area > 0.03).all() and (area < 0.35).all()
    # the parts sit in the face, away from the image border, and cover both halves (two eyes, two brows)
    assert not masks[:, :2, :].any() and not masks[:, :, :2].any() and not masks[:, :, -2:].any()
    assert masks[:, :, :24].any(axis=(1, 2)).all() and masks[:, :, 24:].any(axis=(1, 2)).all()
    # the mask is tight: nearly every mask pixel is within one pixel of a pixel the parts visibly changed
    blank = make_faces(140, seed=2, parts=False)[0]
    changed = images != blank
    assert (masks & ~_dilate(changed)).sum() < 0.02 * masks.sum()


def test_nuisance_is_class_independent():
    """Brightness of the faces without parts, and of the background corner, do not depend on the class."""
    blank, labels, _ = make_faces(700, seed=5, parts=False)
    mean = blank.reshape(len(blank), -1).mean(axis=1)
    corner = blank[:, :6, :6].reshape(len(blank), -1).mean(axis=1)
    for values in (mean, corner):
        groups = [values[labels == k] for k in range(7)]
        assert stats.f_oneway(*groups).pvalue > 0.001
    # whereas the expression parts do differ by class (so the test above could fail)
    images, labels, _ = make_faces(700, seed=5)
    mouth = images[:, 32:42, 16:32].reshape(len(images), -1).astype(float).std(axis=1)
    assert stats.f_oneway(*[mouth[labels == k] for k in range(7)]).pvalue < 1e-6


def test_write_faces_loads_back_with_aligned_masks(tmp_path):
    out = tmp_path / "faces"
    csv = write_faces(out, 70, seed=7, test_fraction=0.2, val_fraction=0.1)
    assert csv == out / "faces.csv" and (out / "faces.masks.npy").is_file()
    images, labels, masks = make_faces(70, seed=7)
    everything = load_dataset(f"synth:{out}", "all")
    assert np.array_equal(everything.images[:, 0].numpy(), images)
    assert np.array_equal(everything.labels.numpy(), labels)
    assert np.array_equal(everything.masks.numpy(), masks)
    train, val, test = (load_dataset(f"synth:{out}", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (49, 7, 14)
    assert set(test.labels.tolist()) == set(range(7)) and set(val.labels.tolist()) == set(range(7))
    rows = [int(name.split(":")[1]) - 2 for name in test.names]  # line - header line - 1
    assert np.array_equal(test.masks.numpy(), masks[rows]) and np.array_equal(test.images[:, 0].numpy(), images[rows])
    meta = json.loads((out / "synth.json").read_text())
    assert meta["n"] == 70 and meta["seed"] == 7 and meta["classes"] == list(FER_CLASSES)
    assert meta["class_counts"] == np.bincount(labels, minlength=7).tolist()


def test_write_faces_same_seed_same_files_and_refuses_to_overwrite(tmp_path):
    write_faces(tmp_path / "a", 30, seed=1)
    write_faces(tmp_path / "b", 30, seed=1)
    for name in ("faces.csv", "faces.masks.npy", "synth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    before = (tmp_path / "a" / "faces.csv").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        write_faces(tmp_path / "a", 30, seed=2)
    assert (tmp_path / "a" / "faces.csv").read_bytes() == before  # untouched
    write_faces(tmp_path / "a", 30, seed=2, overwrite=True)
    assert (tmp_path / "a" / "faces.csv").read_bytes() != before


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), r"n must be a positive int"),
    (dict(n=5, seed=-1), r"seed must be a non-negative int, got -1"),
    (dict(n=1), r"n=1 face cannot be split; pass test_fraction=0"),
    (dict(n=10, test_fraction=1.0), r"test_fraction must be a number in \[0, 1\)"),
    (dict(n=10, test_fraction=0.6, val_fraction=0.5), r"test_fraction \+ val_fraction must be below 1"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_faces(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_synth_and_info(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["data", "synth", "--out", str(tmp_path / "f"), "--n", "35", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote 35 faces" in result.output and "synth:" in result.output
    result = runner.invoke(main, ["data", "info", f"synth:{tmp_path / 'f'}", "--split", "all"])
    assert result.exit_code == 0, result.output
    assert "35 images, 1x48x48, masks: yes" in result.output
    assert all(f"{name}" in result.output for name in FER_CLASSES)
    assert "Angry" in result.output and "      5  14.3%" in result.output  # 35 / 7 per class
    again = runner.invoke(main, ["data", "synth", "--out", str(tmp_path / "f"), "--n", "35"])
    assert again.exit_code != 0 and "--overwrite" in again.output
    for args in (["data", "--help"], ["data", "synth", "--help"], ["data", "info", "--help"]):
        assert runner.invoke(main, args).exit_code == 0


def test_cli_info_reports_bad_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,feature\n0," + " ".join(["1"] * 2304) + "\n1,1 2\n")
    runner = CliRunner()
    result = runner.invoke(main, ["data", "info", f"fer:{path}"])
    assert result.exit_code != 0 and "t.csv line 3: expected 2304 pixel values, got 2" in result.output
    result = runner.invoke(main, ["data", "info", f"fer:{path}", "--skip-bad-rows"])
    assert result.exit_code == 0 and "skipped bad rows/files: 1" in result.output and "1 images" in result.output
    result = runner.invoke(main, ["data", "info", "nope:x"])
    assert result.exit_code != 0 and "expected one of synth:DIR" in result.output


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(32, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _train_and_score(x_train, y_train, x_val, y_val, epochs: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = _TinyCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    steps = epochs * ((len(x_train) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return (model(x_val).argmax(1) == y_val).float().mean().item()


@pytest.mark.slow
def test_the_mask_is_the_whole_story():
    """Blank the masked pixels with the face's own skin (the same face drawn without its parts): a CNN then
    scores near chance (1/7), while the same CNN on the intact faces scores far higher."""
    n_train, n_val = 1400, 700
    images, labels, masks = make_faces(n_train + n_val, seed=11)
    blank, _, _ = make_faces(n_train + n_val, seed=11, parts=False)
    blanked = np.where(masks, blank, images)
    y = torch.from_numpy(labels)
    scores = {}
    for name, data in (("intact", images), ("blanked", blanked)):
        x = torch.from_numpy(data).float().div(255.0)[:, None]
        scores[name] = _train_and_score(x[:n_train], y[:n_train], x[n_train:], y[n_train:], epochs=8)
    # chance is 1/7 = 0.143; with 700 validation images its standard error is 0.013
    assert scores["blanked"] < 0.22, scores
    assert scores["intact"] > 0.5, scores
