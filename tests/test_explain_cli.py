"""``cnnlens explain`` end to end: a user's own model, a tiny trained run, and every bad input."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from cnnlens._atomic import MARKER
from cnnlens.cli import main

TINYNET = textwrap.dedent('''
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, classes=7):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, classes)

        def forward(self, x):
            return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))

    def build():
        torch.manual_seed(0)
        return Tiny()

    def build3():
        return Tiny(3)

    def broken():
        raise RuntimeError("no GPU here")

    def not_a_model():
        return 42

    NUMBER = 3
''')


@pytest.fixture
def methods(method_registry: ModuleType) -> ModuleType:
    """The method registry (every built-in method registered), restored after the test."""
    return method_registry


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """35 synthetic faces (train 31 / test 4), the built-in FER-layout data."""
    from cnnlens.data.synth import write_faces

    out = tmp_path_factory.mktemp("faces") / "faces"
    write_faces(out, 35, seed=1)
    return out


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the user's module ``tinynet.py`` and its weights, as the working directory."""
    (tmp_path / "tinynet.py").write_text(TINYNET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tinynet", raising=False)
    sys.path_importer_cache.clear()
    import importlib

    tinynet = importlib.import_module("tinynet")
    torch.save(tinynet.build().state_dict(), tmp_path / "w.pt")
    from safetensors.torch import save_file

    save_file(tinynet.build().state_dict(), str(tmp_path / "w.safetensors"))
    return tmp_path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["explain", *map(str, args)], catch_exceptions=False)


def png_ok(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    assert Image.open(path).format == "PNG"


def user_args(faces: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "tinynet:build", "--weights", "w.pt", "--data", f"synth:{faces}", "--split", "train",
            "--out", str(out), "--device", "cpu", *extra]


@pytest.mark.slow
def test_user_model_images_end_to_end(user: Path, faces: Path, methods: ModuleType) -> None:
    from cnnlens.data import load_dataset
    from cnnlens.explain.saliency import saliency
    from cnnlens.viz import mask_below_percentile

    out = user / "ex"
    res = invoke(*user_args(faces, out, "--methods", "saliency,grad-cam", "--images", "0,3,20"))
    assert res.exit_code == 0, res.output
    index = json.loads((out / "index.json").read_text())
    assert index["methods"] == ["saliency", "grad-cam"] and index["selection"] == {"mode": "images"}
    assert [e["index"] for e in index["images"]] == [0, 3, 20]
    data = load_dataset(f"synth:{faces}", "train")
    x = data.float_images([0, 3, 20])
    import tinynet

    model = tinynet.build()
    model.load_state_dict(torch.load(user / "w.pt", weights_only=True))
    with torch.no_grad():
        probs = model.eval()(x).softmax(1)
    e = index["images"][1]
    assert e["name"] == data.names[3] and e["label"] == int(data.labels[3])
    assert e["predicted"] == int(probs[1].argmax()) == e["target"]
    assert e["probability"] == pytest.approx(float(probs[1].max()), abs=1e-5)
    for entry in index["images"]:
        for kind in ("grid", "saliency"):
            png_ok(out / entry["files"][kind])
    png_ok(out / index["overview"][0])
    with np.load(out / index["images"][2]["files"]["saliency_arrays"]) as z:
        np.testing.assert_array_equal(z["image"], x[2].numpy())
        expected = saliency(model, x)[2].detach().numpy()
        np.testing.assert_allclose(z["saliency"], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(z["masked"], mask_below_percentile(x[2], z["saliency"], 75.0))
    with np.load(out / "maps.npz") as z:
        assert z["indices"].tolist() == [0, 3, 20]
        assert z["grad-cam"].shape == (3, 48, 48)
    assert sorted(p.name for p in user.iterdir() if p.name.startswith(".")) == []  # no temporary folder left


@pytest.mark.slow
def test_user_model_safetensors_per_class_true_target(user: Path, faces: Path, methods: ModuleType) -> None:
    out = user / "ex"
    names = "an,di,fe,ha,sa,su,ne"
    res = invoke("--model", "tinynet:build", "--weights", "w.safetensors", "--data", f"synth:{faces}", "--split", "train",
                 "--classes", names, "--input-shape", "1,48,48", "--methods", "grad-cam", "--per-class", "1",
                 "--target", "true", "--layer", "conv", "--out", out)
    assert res.exit_code == 0, res.output
    index = json.loads((out / "index.json").read_text())
    assert index["classes"] == names.split(",") and list(index["options"]) == ["grad-cam"]
    # every option grad-cam ran with, its own defaults included, not only those given
    assert index["options"]["grad-cam"] == {"layer": "conv", "relu": True, "upsample": True, "fast": True,
                                            "images_per_call": index["options"]["grad-cam"]["images_per_call"]}
    for e in index["images"]:
        assert e["predicted"] == e["label"] == e["target"]  # per-class picks right images; target = true class
        assert "saliency" not in e["files"]
    # most confidently right per class: no other right image of that class is more confident
    assert len({e["label"] for e in index["images"]}) == len(index["images"])


def _sentinel(out: Path) -> None:
    """Earlier explanations at ``out``, as cnnlens wrote them (so --overwrite may replace them)."""
    from cnnlens._atomic import output_dir

    with output_dir(out, kind="explain") as tmp:
        (tmp / "keep.txt").write_text("previous results")


def _intact(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "keep.txt"]
    assert (out / "keep.txt").read_text() == "previous results"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".ex")] == []


BAD_USER_INPUTS = [
    (["--model", "nosuch_mod:build"], "cannot import module 'nosuch_mod'"),
    (["--model", "tinynet:nope"], "module 'tinynet' has no 'nope'; callables it defines: Tiny, broken, build"),
    (["--model", "tinynet"], "expected package.module:builder"),
    (["--model", "tinynet:broken"], r"calling tinynet:broken\(\) failed: RuntimeError: no GPU here"),
    (["--model", "tinynet:not_a_model"], r"returned a int, not a torch.nn.Module"),
    (["--model", "tinynet:NUMBER"], "not a function or class"),
    (["--model", "tinynet:build3"], r"does not fit the model Tiny.*fc\.weight"),
    (["--weights", "missing.pt"], "missing.pt does not exist"),
    (["--weights", "evil.pt"], r"cannot be read with torch.load\(weights_only=True\)"),
    (["--weights", "list.pt"], "not a state dict"),
    (["--weights", "junk.safetensors"], "not a readable safetensors file"),
    (["--classes", "a,b,c"], "the model returns 7 scores per image but there are 3 class names"),
    (["--classes", "a,a"], "two distinct"),
    (["--input-shape", "1,32,40"], r"has images of shape \(1, 48, 48\), but --input-shape is \(1, 32, 40\)"),
    (["--input-shape", "3,48,48"], r"the model cannot run on these images \(3, 48, 48\)"),
    (["--input-shape", "1,48"], "expected C,H,W"),
    (["--methods", "saliency,gradcam"], "unknown method 'gradcam'; available methods: "),
    (["--images", "0,999"], r"image index 999 is out of range: the split has \d+ images"),
    (["--images", "0,a"], "comma-separated integers"),
    (["--images", "1", "--per-class", "2"], "choose images one way"),
    (["--layer", "nope"], "unknown layer 'nope'; valid layer names: conv, relu, pool, fc"),
    (["--option", "stride4"], "expected METHOD.NAME=VALUE"),
    (["--option", "saliency.stride=4"], "method 'saliency' has no option 'stride'"),
    (["--device", "tpu"], "device must be auto, cpu or cuda"),
    (["--data", "synth:/no/such/folder"], "--data"),
    (["--out", "."], r"--out \. holds the input w\.pt"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_USER_INPUTS, ids=[m[:28] for _, m in BAD_USER_INPUTS])
def test_bad_user_input_is_clear_and_leaves_output_intact(user: Path, faces: Path, methods: ModuleType, extra: list[str],
                                                         message: str) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    torch.save({"w": Evil()}, user / "evil.pt")
    torch.save([1, 2], user / "list.pt")
    (user / "junk.safetensors").write_bytes(b"not safetensors at all")
    out = user / "ex"
    _sentinel(out)
    base = user_args(faces, out, "--methods", "saliency", "--images", "0", "--overwrite")
    # later options win in click: the bad value replaces the good one
    res = CliRunner().invoke(main, ["explain", *base, *extra])
    assert res.exit_code == 2 or (res.exit_code == 1 and "Error" in res.output), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    import re

    assert re.search(message, " ".join(res.output.split())), res.output
    assert "pwned" not in res.output
    _intact(out)


@pytest.mark.parametrize(("args", "message"), [
    ([], "give either RUN_DIR or --model"),
    (["--model", "tinynet:build"], "--model needs --weights FILE and --data SPEC"),
    (["somerun", "--model", "tinynet:build"], "give either RUN_DIR or --model"),
    (["somerun", "--weights", "w.pt"], "go with --model"),
])
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(main, ["explain", *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ex"
    _sentinel(out)
    run = tmp_path / "run"
    run.mkdir()
    res = CliRunner().invoke(main, ["explain", str(run), "--out", str(out)])
    assert res.exit_code == 1 and "already exists; pass --overwrite" in res.output
    _intact(out)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")  # a folder cnnlens did not write: not even --overwrite
    res = CliRunner().invoke(main, ["explain", str(run), "--out", str(tmp_path / "mine"), "--overwrite"])
    assert res.exit_code == 1 and "not written by cnnlens" in " ".join(res.output.split())
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_method_failure_mid_run_leaves_output_intact(user: Path, faces: Path, methods: ModuleType,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def exploding(model: torch.nn.Module, images: torch.Tensor, target: object = None) -> torch.Tensor:
        raise RuntimeError("out of memory")

    methods.method("exploding", "Exploding", kind="gradient")(exploding)
    out = user / "ex"
    _sentinel(out)
    with pytest.raises(RuntimeError, match="out of memory"):
        invoke(*user_args(faces, out, "--methods", "saliency,exploding", "--images", "0,1", "--overwrite"))
    _intact(out)


# ------------------------------------------------------------------------------------ a trained run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, faces: Path) -> Path:
    """A real run folder: small_cnn trained for one epoch on the synthetic faces."""
    from cnnlens.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(data=f"synth:{faces}", epochs=1, batch_size=16, val_fraction=0.4, device="cpu", num_threads=1),
          out, progress=False)
    return out


@pytest.mark.slow
def test_run_folder_per_class_with_lime_and_overwrite(tiny_run: Path, tmp_path: Path, methods: ModuleType) -> None:
    from cnnlens.train import load_run

    out = tmp_path / "ex"
    _sentinel(out)
    res = invoke(tiny_run, "--methods", "saliency,integrated-gradients,lime", "--misclassified", "3",
                 "-o", "lime.n_samples=50", "-o", "integrated-gradients.n_steps=8", "--out", out, "--overwrite",
                 "--device", "cpu", "--batch-size", "2")
    assert res.exit_code == 0, res.output
    assert not (out / "keep.txt").exists()  # replaced as a whole
    index = json.loads((out / "index.json").read_text())
    assert index["source"] == {"run": str(tiny_run), "split": "val"}
    lime, ig = index["options"]["lime"], index["options"]["integrated-gradients"]  # what each ran with, defaults too
    assert lime["n_samples"] == 50 and ig["n_steps"] == 8 and lime["batch_size"] == ig["batch_size"] == 2
    assert lime["hide"] == "mean" and lime["generator"] == "torch.Generator seeded with 0" and ig["baseline"] == "zeros"
    assert index["figure_options"] == {"mask_percentile": 75.0, "lime_top": 5}
    run = load_run(tiny_run)
    val = run.dataset("val")
    with torch.no_grad():
        probs = run.model(val.float_images()).softmax(1)
    conf, pred = probs.max(1)
    wrong = (pred != val.labels).nonzero().flatten()
    assert 1 <= len(index["images"]) <= 3
    chosen = [e["index"] for e in index["images"]]
    worst = wrong[conf[wrong].argsort(descending=True)][:3].tolist()
    assert chosen == worst  # the most confidently wrong, most confident first
    for e in index["images"]:
        assert e["predicted"] != e["label"]
        png_ok(out / e["files"]["lime"])
        with np.load(out / e["files"]["lime_arrays"]) as z:
            seg, w = z["segments"], z["weights"]
            assert seg.shape == (48, 48) and w.shape == (seg.max() + 1,)
        with np.load(out / e["files"]["grid_arrays"]) as z:
            lime_map = z["lime"]
            np.testing.assert_allclose(lime_map, w[seg], rtol=1e-6)  # the grid shows LIME's painted weights
    written = {p.name for p in out.iterdir()} - {MARKER}
    listed = {"index.json", "maps.npz", *index["overview"]}
    for e in index["images"]:
        listed |= set(e["files"].values())
    assert written == listed  # index.json lists everything written


def test_not_a_run_folder(tmp_path: Path) -> None:
    (tmp_path / "notrun").mkdir()
    res = CliRunner().invoke(main, ["explain", str(tmp_path / "notrun"), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 2 and "is not a cnnlens run folder: config.json is missing" in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "message"), [
    (["--split", "holdout"], "split must be one of 'train', 'val', 'test'"),
    (["--layer", "nope"], "unknown layer 'nope'; valid layer names: "),
    (["--per-class", "0"], "0 is not in the range x>=1"),
    (["--out", "RUN"], "is the input"),
    (["--out", "RUNPARENT"], "holds the input"),
])
def test_bad_run_input_leaves_output_intact(tiny_run: Path, tmp_path: Path, methods: ModuleType, extra: list[str],
                                            message: str) -> None:
    out = tmp_path / "ex"
    _sentinel(out)
    args = ["explain", str(tiny_run), "--methods", "saliency", "--out", str(out), "--overwrite", "--device", "cpu",
            *[{"RUN": str(tiny_run), "RUNPARENT": str(tiny_run.parent)}.get(a, a) for a in extra]]
    res = CliRunner().invoke(main, args)
    assert res.exit_code in (1, 2) and message in " ".join(res.output.split()), res.output
    _intact(out)
    assert sorted(p.name for p in tiny_run.iterdir() if p.name.startswith(".")) == [MARKER]


@pytest.mark.slow
def test_all_methods_skips_those_that_do_not_apply(user: Path, faces: Path, methods: ModuleType,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def needs_gap(model: torch.nn.Module, images: torch.Tensor, target: object = None) -> torch.Tensor:
        raise ValueError("CAM needs a global-average-pooling head")

    methods.method("needs-gap", "Needs GAP", kind="cam")(needs_gap)
    out = user / "ex"
    res = invoke(*user_args(faces, out, "--images", "0", "-o", "lime.n_samples=20"))  # no --methods: every method
    assert res.exit_code == 0, res.output
    assert "skipped needs-gap: CAM needs a global-average-pooling head" in res.output
    index = json.loads((out / "index.json").read_text())
    assert index["skipped"] == {"needs-gap": "CAM needs a global-average-pooling head"}
    assert index["methods"] == [m for m in methods.names() if m != "needs-gap"]
    with np.load(out / index["images"][0]["files"]["grid_arrays"]) as z:
        assert sorted(z.files) == sorted(["image", *index["methods"]])
    # asked for by name, the same refusal is an error, and nothing is written
    res = CliRunner().invoke(main, ["explain", *user_args(faces, user / "ex2", "--images", "0", "--methods", "needs-gap")])
    assert res.exit_code == 1 and "CAM needs a global-average-pooling head" in res.output
    assert not (user / "ex2").exists()
