"""Every zoo model (foreign models in the styles people write) through `cnnlens import` and every command,
with each command's default methods, on synthetic faces brought to the model's input by the run's
preprocessing (gray 48x48 faces become 3x24x24, 1x16x16, 3x20x32...).

What must hold: each command exits 0 and writes its output; a method that does not apply to a model is
left out with its reason, never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo_models
from cnnlens.cli import main

FER = "angry,disgust,fear,happy,sad,surprise,neutral"

#: name -> (builder, builder kwargs, input shape, extra import options)
IMPORTS: dict[str, tuple[str, dict, str, list[str]]] = {
    "view_tanh": ("build_view_tanh", {}, "1,48,48", []),
    "functional_relu": ("build_functional", {}, "1,20,20", []),
    "tiny_resnet": ("build_tiny_resnet", {"num_classes": 7}, "3,24,24", []),
    "mobile_hardswish_se": ("build_mobile", {"num_classes": 7}, "3,24,24", []),
    "sequential": ("build_sequential", {"size": 16}, "1,16,16", []),
    "elu": ("build_activation", {"name": "ELU"}, "1,16,16", []),
    "gelu": ("build_activation", {"name": "GELU"}, "1,16,16", []),
    "tanh": ("build_activation", {"name": "Tanh"}, "1,16,16", []),
    "non_square_rgb": ("build_tiny_resnet", {"num_classes": 7}, "3,20,32", ["--resize", "crop"]),
    "tuple_output": ("build_tuple", {}, "1,16,16", ["--output", "0"]),
    "dict_output": ("build_dict", {}, "1,16,16", ["--output", "logits"]),
    "trailing_softmax": ("build_softmax", {}, "1,16,16", []),
    "trained_with_normalize": ("build_normalized", {"num_classes": 7}, "3,24,24",
                               ["--normalize", "0.5,0.5,0.5/0.25,0.25,0.25"]),
}


def invoke(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> str:
    from cnnlens.data.synth import write_faces

    out = tmp_path_factory.mktemp("zoo-faces") / "faces"
    write_faces(out, 42, seed=2)
    return f"synth:{out}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(IMPORTS))
def test_every_command_on_every_imported_zoo_model(name: str, faces: str, tmp_path: Path) -> None:
    builder, kwargs, shape, extra = IMPORTS[name]
    model = getattr(zoo_models, builder)(**kwargs)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    run = tmp_path / "run"
    res = invoke("import", "--model", f"zoo_models:{builder}", "--builder-kwargs", json.dumps(kwargs), "--weights",
                 tmp_path / "weights.pt", "--classes", FER, "--input-shape", shape, *extra, "--out", run)
    assert res.exit_code == 0, res.output
    res = invoke("summary", run)
    assert res.exit_code == 0 and "Scored" not in res.output, res.output
    res = invoke("evaluate", run, "--data", faces)
    assert res.exit_code == 0, res.output
    assert (run / "eval" / "metrics.json").is_file()
    # every default method; the cheap settings are options, not a shorter method list
    res = invoke("explain", run, "--data", faces, "--per-class", "1", "-o", "lime.n_samples=40",
                 "-o", "smoothgrad.n_samples=3", "-o", "integrated-gradients.n_steps=4", "--out", tmp_path / "ex")
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "ex" / "index.json").read_text())
    assert {"saliency", "grad-cam", "occlusion", "lime"} <= set(index["methods"]), index["methods"]
    res = invoke("faithfulness", run, "--data", faces, "--n-images", "14", "--n-perturbation-images", "3",
                 "--n-randomization-images", "2", "-o", "lime.n_samples=40")
    assert res.exit_code == 0, res.output
    assert (run / "faithfulness" / "faithfulness.json").is_file()
    res = invoke("report", run, "--data", faces, "--images-per-class", "1", "--lime-samples", "40",
                 "--smoothgrad-samples", "3", "--ig-steps", "4", "--average-images", "2", "--filters-per-layer", "2",
                 "--am-steps", "4", "--no-progress")
    assert res.exit_code == 0, res.output
    html = (run / "report" / "index.html").read_text()
    assert ">Scored<" not in html and "Scored:" not in html  # the user's model is named, not cnnlens's adapter
