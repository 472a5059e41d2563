"""evaluate(): metrics of hand-made predictions worked out by hand, saved files, figures, sentences."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from cnnlens._atomic import MARKER
from cnnlens.cli import main
from cnnlens.data.imageset import ImageSet
from cnnlens.evaluate import FILES, Evaluation, class_distribution_figure, confusion_figure, describe, evaluate
from cnnlens.models import build

CLASSES = ("A", "B", "C")
# Worked by hand. Rows true, columns predicted:
#        A  B  C
#   A  [ 3, 1, 0 ]   recall 3/4, precision 3/4
#   B  [ 1, 2, 0 ]   recall 2/3, precision 2/4
#   C  [ 0, 1, 2 ]   recall 2/3, precision 2/2
LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDICTED = [0, 0, 0, 1, 1, 1, 0, 2, 1, 2]


def probabilities(predicted: list[int], k: int = 3) -> np.ndarray:
    """0.8 on the predicted class, the rest shared equally."""
    p = np.full((len(predicted), k), 0.2 / (k - 1), dtype=np.float32)
    p[np.arange(len(predicted)), predicted] = 0.8
    return p


@pytest.fixture
def hand() -> Evaluation:
    return Evaluation.from_probabilities(probabilities(PREDICTED), LABELS, CLASSES, [f"img{i}" for i in range(10)])


def test_metrics_by_hand(hand: Evaluation) -> None:
    assert hand.accuracy == pytest.approx(0.7)
    np.testing.assert_array_equal(hand.confusion, [[3, 1, 0], [1, 2, 0], [0, 1, 2]])
    np.testing.assert_allclose(hand.confusion_normalized, [[0.75, 0.25, 0], [1 / 3, 2 / 3, 0], [0, 1 / 3, 2 / 3]])
    np.testing.assert_allclose(hand.precision, [0.75, 0.5, 1.0])
    np.testing.assert_allclose(hand.recall, [0.75, 2 / 3, 2 / 3])
    # F1 = 2PR/(P+R): A 0.75; B 2*(1/2)(2/3)/(7/6) = 4/7; C 2*(2/3)/(5/3) = 0.8
    np.testing.assert_allclose(hand.f1, [0.75, 4 / 7, 0.8])
    np.testing.assert_array_equal(hand.support, [4, 3, 3])
    np.testing.assert_array_equal(hand.predicted_counts, [4, 4, 2])
    assert hand.macro()["f1"] == pytest.approx((0.75 + 4 / 7 + 0.8) / 3)
    assert hand.weighted()["recall"] == pytest.approx(0.7)  # support-weighted recall is accuracy
    # every mistake is a single image; ties broken by the larger share of the true class, then by class
    assert [(p.true, p.predicted, p.count) for p in hand.confused_pairs] == [(1, 0, 1), (2, 1, 1), (0, 1, 1)]
    assert [p.share for p in hand.confused_pairs] == pytest.approx([1 / 3, 1 / 3, 0.25])
    assert hand.most_confused(1) == hand.confused_pairs[:1]


def test_evaluation_is_immutable(hand: Evaluation) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        hand.accuracy = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        hand.confusion[0, 0] = 10
    mine = probabilities(PREDICTED)
    Evaluation.from_probabilities(mine, LABELS, CLASSES)
    mine[0, 0] = 0.5  # the caller's array stays writable: the result holds a copy


def test_describe_by_hand(hand: Evaluation) -> None:
    assert describe(hand) == [
        "Accuracy 70.0% on 10 images (3 classes); macro F1 0.71.",
        "Most common mistake: B taken for A (1 image, 33% of B).",
        "A: 75% recall (4 images), most often confused with B (25%).",
        "B: 67% recall (3 images), most often confused with A (33%).",
        "C: 67% recall (3 images), most often confused with B (33%).",
    ]


def test_describe_never_rounds_a_mistake_away() -> None:
    labels = [0] * 250 + [1] * 2
    predicted = [0] * 249 + [1] + [1, 1]  # one A of 250 taken for B: 99.6% recall, 0.4% confused
    lines = describe(Evaluation.from_probabilities(probabilities(predicted, 2), labels, ("A", "B")))
    assert lines[2] == "A: >99% recall (250 images), most often confused with B (<1%)."
    assert lines[3] == "B: 100% recall (2 images), never confused with another class."


def test_absent_class_is_described_and_left_out_of_macro() -> None:
    e = Evaluation.from_probabilities(probabilities([0, 2, 1, 1]), [0, 0, 1, 1], CLASSES)
    assert describe(e)[-1] == "C: no images of this class; predicted for 1 image."
    # present classes: A precision 1, recall 1/2; B precision 1, recall 1; C absent
    assert e.macro()["recall"] == pytest.approx(0.75)
    assert e.macro()["precision"] == pytest.approx(1.0)


def test_no_mistakes() -> None:
    e = Evaluation.from_probabilities(probabilities([0, 1, 2]), [0, 1, 2], CLASSES)
    assert e.confused_pairs == ()
    assert describe(e)[1] == "No image was misclassified."


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"probabilities": np.ones((2, 2))}, ValueError, r"probabilities must have shape \[N>=1, 3\]"),
    ({"labels": [0, 1]}, ValueError, r"labels must have shape \(10,\)"),
    ({"labels": [0] * 9 + [3]}, ValueError, r"labels must be class indices in \[0, 2\]; image 9 has 3"),
    ({"labels": [0] * 9 + [-1]}, ValueError, r"-1 marks an unlabelled image"),
    ({"labels": [0.0] * 10}, TypeError, r"labels must hold integer class indices"),
    ({"names": ["a"]}, ValueError, r"names has 1 entries for 10 images"),
])
def test_from_probabilities_bad_input(kwargs: dict, error: type, match: str) -> None:
    args = {"probabilities": probabilities(PREDICTED), "labels": LABELS, "classes": CLASSES, "names": None, **kwargs}
    with pytest.raises(error, match=match):
        Evaluation.from_probabilities(**args)


class PixelVote(nn.Module):
    """Predicts the class written into pixel (0, 0) as ``class * 100`` grey levels; dropout in training mode
    would scramble it, so a right answer proves evaluate() ran in eval mode."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.dropout = nn.Dropout(p=0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = x[:, 0, 0, 0] * 255 / 100
        return self.dropout(-self.scale * (code[:, None] - torch.arange(self.k, dtype=x.dtype)) ** 2)


def pixel_set(predicted: list[int], labels: list[int]) -> ImageSet:
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(predicted) * 100
    return ImageSet(images=images, labels=torch.tensor(labels), classes=CLASSES,
                    names=tuple(f"img{i}" for i in range(len(labels))))


@pytest.mark.parametrize("batch_size", [3, 256])
def test_evaluate_model_matches_hand(hand: Evaluation, batch_size: int) -> None:
    model = PixelVote().train()
    result = evaluate(model, pixel_set(PREDICTED, LABELS), batch_size=batch_size)
    assert model.training and model.dropout.training  # mode restored
    assert model.scale.grad is None
    np.testing.assert_array_equal(result.predictions, PREDICTED)
    np.testing.assert_array_equal(result.confusion, hand.confusion)
    np.testing.assert_allclose(result.f1, hand.f1)
    assert result.names == hand.names
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_evaluate_real_model_agrees_with_a_direct_forward_pass() -> None:
    torch.manual_seed(0)
    model = build("small_cnn", in_channels=1, num_classes=3, input_size=8, channels=(4, 8)).eval()
    g = torch.Generator().manual_seed(3)
    data = ImageSet(images=torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=g),
                    labels=torch.randint(0, 3, (20,), generator=g), classes=CLASSES,
                    names=tuple(map(str, range(20))))
    result = evaluate(model, data, batch_size=7)
    with torch.no_grad():
        probs = torch.softmax(model(data.float_images()), dim=1).numpy()
    np.testing.assert_allclose(result.probabilities, probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.predictions, probs.argmax(axis=1))
    assert result.accuracy == pytest.approx(float((probs.argmax(axis=1) == data.labels.numpy()).mean()))


def test_evaluate_bad_input() -> None:
    data = pixel_set(PREDICTED, LABELS)
    with pytest.raises(ValueError, match=r"model returns shape \(3, 4\) but the images have 3 classes"):
        evaluate(PixelVote(k=4), data, batch_size=3)
    with pytest.raises(ValueError, match=r"unlabelled image: evaluate needs a labelled split"):
        evaluate(PixelVote(), pixel_set([0, 1], [0, -1]))
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        evaluate(PixelVote(), data, batch_size=0)
    with pytest.raises(TypeError, match=r"images must be a cnnlens.data.ImageSet, got Tensor"):
        evaluate(PixelVote(), data.images)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"move it first with model.to\('cuda'\)"):
        evaluate(PixelVote(), data, device="cuda")


def test_evaluate_restores_mode_after_an_error() -> None:
    model = PixelVote(k=4).train()
    with pytest.raises(ValueError):
        evaluate(model, pixel_set(PREDICTED, LABELS))
    assert all(m.training for m in model.modules())


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_save_writes_every_file_with_the_right_values(hand: Evaluation, tmp_path: Path) -> None:
    out = hand.save(tmp_path / "eval", source={"split": "val"})
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, MARKER])
    assert json.loads((out / MARKER).read_text())["kind"] == "evaluation"
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["version"] == 1 and meta["source"] == {"split": "val"}
    assert meta["accuracy"] == pytest.approx(0.7) and meta["classes"] == list(CLASSES)
    assert meta["confusion"] == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert meta["most_confused"][0] == {"true": "B", "predicted": "A", "count": 1, "share": pytest.approx(1 / 3)}
    assert meta["per_class"][1] == {"class": "B", "precision": 0.5, "recall": pytest.approx(2 / 3),
                                    "f1": pytest.approx(4 / 7), "support": 3, "predicted": 4}
    assert meta["class_distribution"] == {"true": [4, 3, 3], "predicted": [4, 4, 2]}
    assert meta["summary"] == describe(hand)

    confusion = read_csv(out / "confusion.csv")
    assert confusion[0] == ["true \\ predicted", "A", "B", "C"]
    assert [[int(v) for v in r[1:]] for r in confusion[1:]] == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    normalized = read_csv(out / "confusion_normalized.csv")
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in normalized[1:]], hand.confusion_normalized, rtol=1e-8)
    per_class = read_csv(out / "per_class.csv")
    assert per_class[0] == ["class", "precision", "recall", "f1", "support", "predicted"]
    assert per_class[3][0] == "C" and float(per_class[3][1]) == 1.0 and per_class[3][4:] == ["3", "2"]

    predictions = read_csv(out / "predictions.csv")
    assert predictions[0] == ["index", "name", "label", "label_name", "predicted", "predicted_name", "probability",
                              "p_A", "p_B", "p_C"]
    assert len(predictions) == 11
    assert predictions[4][:7] == ["3", "img3", "0", "A", "1", "B", "0.800000012"]  # the float32 0.8, exactly
    assert [int(r[4]) for r in predictions[1:]] == PREDICTED

    for name in ("confusion.png", "class_distribution.png"):
        with Image.open(out / name) as image:
            image.load()
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            assert np.asarray(image.convert("L")).std() > 10  # something is drawn


def test_save_and_load_round_trip(hand: Evaluation, tmp_path: Path) -> None:
    loaded = Evaluation.load(hand.save(tmp_path))
    np.testing.assert_array_equal(loaded.probabilities, hand.probabilities)
    np.testing.assert_array_equal(loaded.predictions, hand.predictions)
    np.testing.assert_array_equal(loaded.confusion, hand.confusion)
    assert (loaded.names, loaded.classes, loaded.accuracy) == (hand.names, hand.classes, hand.accuracy)


def test_failed_save_leaves_earlier_results_as_they_were(hand: Evaluation, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = hand.save(tmp_path / "eval")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    worse = Evaluation.from_probabilities(probabilities([1] * 10), LABELS, CLASSES)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        worse.save(out)

    def broken(evaluation: Evaluation) -> None:
        raise RuntimeError("figure failed")

    monkeypatch.setattr("cnnlens.evaluate.figures.class_distribution_figure", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        worse.save(out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing changed
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no temporary folder left
    monkeypatch.undo()
    assert Evaluation.load(worse.save(out, overwrite=True)).accuracy == worse.accuracy  # replaced whole


def test_save_never_replaces_files_cnnlens_did_not_write(hand: Evaluation, tmp_path: Path) -> None:
    out = hand.save(tmp_path / "eval")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"also holds .*notes.txt, which cnnlens did not write"):
        hand.save(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").is_file()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("three years")
    with pytest.raises(FileExistsError, match="not written by cnnlens.*not even with --overwrite"):
        hand.save(tmp_path / "docs", overwrite=True)
    assert [p.name for p in (tmp_path / "docs").iterdir()] == ["thesis.txt"]


def test_save_into_a_file_path_is_refused(hand: Evaluation, tmp_path: Path) -> None:
    target = tmp_path / "eval"
    target.write_text("a file")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        hand.save(target)
    assert target.read_text() == "a file"


def test_load_refuses_a_foreign_metrics_version(hand: Evaluation, tmp_path: Path) -> None:
    hand.save(tmp_path)
    meta = json.loads((tmp_path / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="metrics version 99, this cnnlens reads 1"):
        Evaluation.load(tmp_path)


def test_confusion_figure_is_labelled(hand: Evaluation) -> None:
    fig = confusion_figure(hand)
    counts, shares = fig.axes[0], fig.axes[1]
    for ax in (counts, shares):
        assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(CLASSES)
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("Predicted", "True")
    assert [t.get_text() for t in counts.texts] == ["3", "1", "0", "1", "2", "0", "0", "1", "2"]
    assert [t.get_text() for t in shares.texts] == ["75%", "25%", "0", "33%", "67%", "0", "0", "33%", "67%"]
    np.testing.assert_array_equal(counts.images[0].get_array(), hand.confusion)


def test_class_distribution_figure_bars(hand: Evaluation) -> None:
    ax = class_distribution_figure(hand).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == [4, 3, 3, 4, 4, 2]  # true counts, then predicted counts
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)


# ------------------------------------------------------------------ `cnnlens evaluate` (wiring; run loading replaced)

@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Replace load_run with one giving PixelVote and the hand-made set; record (path, device) calls."""
    calls: list[tuple[str, str]] = []

    def dataset(split: str):
        return pixel_set(PREDICTED, LABELS) if split != "test" else pixel_set([0, 1], [0, -1])

    def load_run(path, device="cpu"):
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"{path} is not a cnnlens run folder: config.json is missing")
        calls.append((str(path), str(device)))
        return SimpleNamespace(model=PixelVote().eval(), classes=("A", "B", "C"), input_shape=(1, 4, 4),
                               manifest={"data": {"spec": "synth:faces"}}, dataset=dataset)

    monkeypatch.setattr("cnnlens.train.load_run", load_run)
    return calls


def make_run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    return run


def test_evaluate_writes_run_eval(fake_run: list, tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert fake_run == [(str(run), "cpu")]
    assert sorted(p.name for p in (run / "eval").iterdir()) == sorted([*FILES, MARKER])
    meta = json.loads((run / "eval" / "metrics.json").read_text())
    assert meta["source"] == {"run": str(run), "split": "val", "data": "synth:faces"}
    assert meta["accuracy"] == pytest.approx(0.7)
    assert "Accuracy 70.0% on 10 images (3 classes)" in result.output
    assert "B: 67% recall (3 images), most often confused with A (33%)." in result.output


def test_evaluate_out_and_split(fake_run: list, tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    out = tmp_path / "elsewhere"
    result = CliRunner().invoke(main, ["evaluate", str(run), "--split", "train", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["source"]["split"] == "train"
    assert not (run / "eval").exists()


def test_evaluate_unlabelled_split_is_a_clear_error(fake_run: list, tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--split", "test"])
    assert result.exit_code == 1
    assert "unlabelled image: evaluate needs a labelled split" in result.output
    assert not (run / "eval").exists()


def test_evaluate_not_a_run(fake_run: list, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a cnnlens run folder" in result.output
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.slow
def test_evaluate_and_summary_of_a_real_run(tmp_path: Path) -> None:
    """End to end: train small_cnn for one epoch on a tiny FER CSV, then `cnnlens evaluate` and `summary`."""
    from cnnlens.data.fer import write_fer_csv
    from cnnlens.train import TrainConfig, load_run, train

    rng = np.random.default_rng(0)
    labels = np.arange(28) % 7
    write_fer_csv(tmp_path / "faces.csv", rng.integers(0, 256, (28, 48, 48)).astype(np.uint8), labels)
    run_dir = tmp_path / "run"
    train(TrainConfig(data=f"fer:{tmp_path / 'faces.csv'}", epochs=1, batch_size=16, val_fraction=0.5, device="cpu"),
          run_dir, progress=False)

    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--device", "cpu", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    meta = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert meta["num_images"] == 14 and sum(meta["class_distribution"]["true"]) == 14
    assert meta["source"]["split"] == "val" and meta["source"]["data"].startswith("fer:")
    run = load_run(run_dir)  # the CLI's numbers equal the library's on the same split
    expected = evaluate(run.model, run.dataset("val"))
    assert meta["confusion"] == expected.confusion.tolist()
    assert meta["accuracy"] == pytest.approx(expected.accuracy)

    other = tmp_path / "other.csv"  # another dataset: all 28 images as Training rows, so split "train"
    write_fer_csv(other, rng.integers(0, 256, (28, 48, 48)).astype(np.uint8), labels)
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--data", f"fer:{other}", "--split", "train",
                                       "--out", str(tmp_path / "eval-other")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "eval-other" / "metrics.json").read_text())
    assert meta["num_images"] == 28 and meta["source"]["data"] == f"fer:{other}"
    assert meta["class_distribution"]["true"] == [4] * 7

    result = CliRunner().invoke(main, ["summary", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "Total params: 669,127" in result.output  # small_cnn, 1 channel, 7 FER classes
    result = CliRunner().invoke(main, ["summary", str(run_dir), "--classes", "3"])
    assert result.exit_code == 2 and "a run folder has its own" in result.output
