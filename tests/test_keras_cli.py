"""``cnnlens import --keras FILE.h5|FILE.keras`` and ``import_keras``: a Keras file becomes a run that every command
takes (evaluate, explain, faithfulness, report, summary); files that would run code, options that do not apply
and a missing Keras are clear errors that write nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_import import FER, faces, invoke, message  # noqa: F401 (faces: the 35 synthetic FER faces, a fixture)
from test_keras import functional_cnn, keras, keras_output, lambda_model, layers, saved, sequential_cnn

from cnnlens.data.preprocess import Preprocess
from cnnlens.models.foreign import ForeignModelError, Scored
from cnnlens.models.keras import KerasModel
from cnnlens.train import load_run
from cnnlens.train.importing import import_keras

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def fer_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeds' Keras FER classifier (48x48 gray, 7 classes, softmax), saved as a legacy .h5 file."""
    return saved(sequential_cnn(1, 48, 7, dtype="float32"), tmp_path_factory.mktemp("keras") / "fer.h5")


def test_import_keras_writes_a_run_that_keeps_the_file_and_computes_what_keras_does(fer_h5, tmp_path):
    run_dir = tmp_path / "run"
    res = invoke("import", "--keras", fer_h5, "--classes", FER, "--normalize", "0.5/0.5", "--out", run_dir)
    assert res.exit_code == 0, res.output
    assert "note: the model outputs probabilities (its last Keras layer, dense, applies softmax)" in res.output
    assert "imported Keras model (seed_cnn) (7 classes, input 1x48x48" in message(res)
    assert (run_dir / "model.h5").read_bytes() == fer_h5.read_bytes()
    assert not (run_dir / "weights.safetensors").exists()
    section = json.loads((run_dir / "config.json").read_text())["model"]
    assert section["keras"] == "model.h5" and section["scores"] == "probabilities" and section["trust_code"] is False
    run = load_run(run_dir)
    assert isinstance(run.model, Scored) and isinstance(run.model.model, KerasModel) and run.input_shape == (1, 48, 48)
    x = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # log p, explained as the score; compared as p (p below float32's smallest normal is clamped before the log)
        torch.testing.assert_close(run.model(x).exp(), keras_output(run.model.model.keras_model, (x - 0.5) / 0.5),
                                   rtol=1e-5, atol=1e-7)


def test_the_python_route_takes_a_keras_file_and_an_input_shape_that_fits(tmp_path):
    path = saved(functional_cnn(1, 16, 3, dtype="float32"), tmp_path / "res.keras")
    run, notes = import_keras(tmp_path / "run", keras_file=path, classes=["a", "b", "c"],
                              preprocess=Preprocess(mean=(0.5,), std=(0.25,)))
    assert notes == [] and run.manifest["model"]["scores"] == "logits" and (tmp_path / "run" / "model.keras").is_file()
    with pytest.raises(ForeignModelError, match="--input-shape 1,32,32 does not fit .*which takes 1x16x16") as err:
        import_keras(tmp_path / "other", keras_file=path, classes=["a", "b", "c"], input_shape=(1, 32, 32))
    assert err.value.option == "--input-shape" and not (tmp_path / "other").exists()
    with pytest.raises(ForeignModelError, match=r"\[1, 2\] class scores are needed"):
        import_keras(tmp_path / "other", keras_file=path, classes=["a", "b"])
    assert not (tmp_path / "other").exists()


def test_a_lambda_file_is_refused_and_nothing_is_written_unless_trusted(tmp_path):
    path = saved(lambda_model(), tmp_path / "lam.keras")
    res = invoke("import", "--keras", path, "--classes", "a,b", "--out", tmp_path / "run")
    assert res.exit_code == 2 and "--trust-keras-code" in res.output
    assert "holds Python code inside a layer" in message(res) and "Loading it would run that code" in message(res)
    assert not (tmp_path / "run").exists()
    res = invoke("import", "--keras", path, "--classes", "a,b", "--trust-keras-code", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["trust_code"] is True
    assert load_run(tmp_path / "run").model(torch.rand(1, 1, 16, 16)).shape == (1, 2)


def test_options_that_do_not_apply_to_a_keras_file_are_usage_errors(fer_h5, tmp_path):
    out = tmp_path / "run"
    for extra, why in ((["--model", "m:b"], "--model not with --keras"), (["--output", "0"], "--output not with --keras"),
                       (["--weights", fer_h5], "give the model once")):
        res = invoke("import", "--keras", fer_h5, "--classes", FER, *extra, "--out", out)
        assert res.exit_code == 2 and why in message(res), res.output
    res = invoke("import", "--weights", fer_h5, "--classes", FER, "--trust-keras-code", "--out", out)
    assert res.exit_code == 2 and "--trust-keras-code is for --keras files" in message(res)
    assert not out.exists()


def test_without_keras_the_import_says_how_to_install_it(fer_h5, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)
    res = invoke("import", "--keras", fer_h5, "--classes", FER, "--out", tmp_path / "run")
    assert res.exit_code == 2 and "pip install 'cnnlens[keras]'" in res.output and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_every_command_on_a_keras_run(fer_h5, faces, tmp_path):
    run_dir = tmp_path / "run"
    assert invoke("import", "--keras", fer_h5, "--classes", FER, "--normalize", "0.5/0.5", "--out", run_dir).exit_code == 0
    data = f"synth:{faces}"
    res = invoke("evaluate", run_dir, "--data", data)
    assert res.exit_code == 0, res.output
    assert sum(map(sum, json.loads((run_dir / "eval" / "metrics.json").read_text())["confusion"])) == 35
    res = invoke("explain", run_dir, "--data", data, "--methods", "saliency,grad-cam,occlusion", "--images", "0,3",
                 "--layer", "conv", "-o", "occlusion.stride=4", "--out", tmp_path / "ex")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ex" / "index.json").read_text())["methods"] == ["saliency", "grad-cam", "occlusion"]
    res = invoke("faithfulness", run_dir, "--data", data, "--methods", "saliency,grad-cam", "--n-images", "6",
                 "--n-randomization-images", "2")
    assert res.exit_code == 0, res.output
    assert (run_dir / "faithfulness" / "faithfulness.json").is_file()
    res = invoke("report", run_dir, "--data", data, "--methods", "saliency,grad-cam", "--average-methods", "none",
                 "--filter-layers", "conv", "--feature-map-layers", "conv,bn", "--no-progress")
    assert res.exit_code == 0, res.output
    page = (run_dir / "report" / "index.html").read_text()
    assert "Keras model (seed_cnn)" in page and "KerasModel" not in page
    assert "BatchNormalization" in page and "MaxPooling2D" in page  # the layer table, in Keras's names
    assert "explains the log-probability log p of a class" in page
    res = invoke("summary", run_dir)
    assert res.exit_code == 0 and "conv (Conv2D)" in res.output and "Total params: 16,191" in res.output, res.output


def test_a_model_that_rescales_by_1_255_gets_a_note_on_its_pixel_range(tmp_path):
    image = keras.Input((16, 16, 1))
    x = layers.Flatten()(layers.Rescaling(1 / 255)(image))
    path = saved(keras.Model(image, layers.Dense(2, activation="softmax")(x)), tmp_path / "r.keras")
    run, notes = import_keras(tmp_path / "run", keras_file=path, classes=["a", "b"])
    assert "starts with Rescaling(scale=1/255): it expects pixel values 0..255" in notes[0]
    assert "--normalize 0/0.00392156862745098" in notes[0] and "probabilities" in notes[1]
    run, notes = import_keras(tmp_path / "run255", keras_file=path, classes=["a", "b"],
                              preprocess=Preprocess(mean=(0.0,), std=(1 / 255,)))
    assert len(notes) == 1  # given: no note
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():  # the model then sees 0..255 again, and divides it back to [0, 1]
        torch.testing.assert_close(run.model(x).exp(), keras_output(run.model.model.keras_model, x * 255), rtol=1e-5,
                                   atol=1e-7)
