"""``cnnlens import``: foreign models (``zoo_models``) become run folders, by value, and every bad input
is a clear error that writes nothing; then every command runs on the imported run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo_models
from click.testing import CliRunner, Result
from conftest import assert_model_untouched
from PIL import Image
from torch import nn

from cnnlens.cli import main
from cnnlens.data.imageset import ImageSet
from cnnlens.data.preprocess import Preprocess, align_classes, parse_normalize
from cnnlens.explain import core, grad_cam, saliency
from cnnlens.models.foreign import ForeignModelError, Scored, detect_scores, load_state
from cnnlens.train import load_run

FER = "angry,disgust,fear,happy,sad,surprise,neutral"
SEVEN = tuple(FER.split(","))


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [*map(str, args)])


def message(res: Result) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """35 synthetic 48x48 gray faces in the Kaggle FER layout (classes Angry..Neutral)."""
    from cnnlens.data.synth import write_faces

    out = tmp_path_factory.mktemp("faces") / "faces"
    write_faces(out, 35, seed=1)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 40x60 RGB photos for two of five classes ('B/', '03_d/': matched by name)."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    rng = np.random.default_rng(0)
    for folder in ("B", "03_d"):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
    return root


def save_state(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def probe(shape: tuple[int, ...], n: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ preprocessing

def test_preprocess_crop_cuts_the_centre_and_squash_resizes_whole() -> None:
    x = torch.arange(4 * 8, dtype=torch.uint8).view(1, 1, 4, 8)
    images = ImageSet(images=x, labels=torch.tensor([0]), classes=("a", "b"), names=("x",),
                      masks=torch.zeros(1, 4, 8, dtype=torch.bool).index_fill_(2, torch.tensor([2]), True))
    crop = Preprocess(resize="crop", size=(4, 4)).fit(images)
    assert torch.equal(crop.images, x[:, :, :, 2:6])  # the shorter side already fits: only the centre is cut
    assert crop.masks is not None and crop.masks[0, :, 0].all() and not crop.masks[0, :, 1:].any()
    squash = Preprocess(resize="squash", size=(4, 4)).fit(images)
    assert torch.equal(squash.images, images.resized((4, 4)).images)
    # crop scales the shorter side up to the target first: 4x8 -> 8x16, then 8x8 from the middle
    big = Preprocess(resize="crop", size=(8, 8)).fit(images)
    assert big.input_shape == (1, 8, 8) and torch.equal(big.images, images.resized((8, 16)).images[:, :, :, 4:12])
    rgb = Preprocess(channels=3).fit(images)
    assert rgb.input_shape == (3, 4, 8) and torch.equal(rgb.images[:, 2], x[:, 0])


def test_preprocess_normalises_per_channel_and_round_trips() -> None:
    prep = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0), resize="crop", channels=3, size=(5, 7))
    x = torch.full((2, 3, 5, 7), 0.5)
    out = prep.normalize(x)
    assert out[:, 0].eq(0.0).all() and out[:, 1].eq(1.0).all() and out[:, 2].eq(0.25).all()
    assert Preprocess.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    assert Preprocess().normalize(x) is x


@pytest.mark.parametrize(("text", "expected"), [
    ("0.5/0.25", ((0.5,), (0.25,))),
    ("0.485,0.456,0.406/0.229,0.224,0.225", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
])
def test_parse_normalize(text: str, expected: tuple) -> None:
    assert parse_normalize(text) == expected


@pytest.mark.parametrize(("text", "match"), [
    ("0.5", "expected MEAN/STD"),
    ("0.5,0.4/0.25", "as many means as positive standard deviations"),
    ("0.5/0", "as many means as positive standard deviations"),
    ("124,117,104/58,57,57", "looks like 0..255 pixel values"),
])
def test_parse_normalize_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_normalize(text)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mean": (0.5,)}, "mean and std go together"),
    ({"mean": (0.5, 0.5), "std": (0.2, 0.2), "channels": 3}, "give one value or 3"),
    ({"resize": "stretch"}, "resize must be one of 'squash', 'crop', got 'stretch'"),
    ({"mean": (0.5,), "std": (-1.0,)}, "std must be positive"),
])
def test_preprocess_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Preprocess(**kwargs)


def test_align_classes_matches_names_and_keeps_unlabelled() -> None:
    images = ImageSet(images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8), labels=torch.tensor([0, 1, -1, 1]),
                      classes=("Happy", "Angry"), names=tuple("abcd"))
    aligned = align_classes(images, ("angry", "sad", "happy"))
    assert aligned.classes == ("angry", "sad", "happy") and aligned.labels.tolist() == [2, 0, -1, 0]
    with pytest.raises(ValueError, match=r"class\(es\) 'Happy' of the data match none of the model's 2 classes"):
        align_classes(images, ("angry", "sad"), "fer:x.csv")
    unlabelled = ImageSet(images=images.images, labels=torch.full((4,), -1), classes=("x", "y"), names=images.names)
    assert align_classes(unlabelled, ("a", "b", "c")).labels.tolist() == [-1] * 4


# -------------------------------------------------------------------------------------------- the adapter

def test_scored_normalises_first_selects_the_output_and_keeps_the_users_names() -> None:
    model = zoo_models.build_dict(in_channels=3)
    modes = [m.training for m in model.modules()]
    scored = Scored(model, output="logits", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    x = probe((3, 12, 12))
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(scored(x), model((x - mean) / std)["logits"], rtol=0, atol=0)
    assert core.get_layer(scored, "features.0") is model.features[0]
    assert core.get_layer(scored, "model.features.0") is model.features[0]  # the full name works too
    assert core.layer_names(scored) == [n for n, _ in model.named_modules() if n]
    with pytest.raises(ValueError, match="unknown layer 'nope'; valid layer names: features, features.0"):
        core.get_layer(scored, "nope")
    grad_cam(scored, x, layer="features.0")
    assert_model_untouched(model, modes)
    assert not hasattr(model, "mean") and set(model.state_dict()) == {k[len("model."):] for k in scored.state_dict()}


def test_a_softmax_model_is_explained_on_its_log_probability() -> None:
    model = zoo_models.build_softmax(num_classes=4)
    scores, note = detect_scores(model, (1, 10, 10))
    assert scores == "probabilities" and "ends in nn.Softmax" in note and "log-probability" in note
    scored = Scored(model, scores=scores)
    x = probe((1, 10, 10))
    target = torch.tensor([0, 3, 1])
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf).log().gather(1, target[:, None]).sum(), leaf)
    got = saliency(scored, x, target=target, reduce=None, abs=False, fast=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(scored(x).softmax(1), model(x))  # probabilities are the model's own


class LogSoftmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.out = nn.Conv2d(1, 4, 3), nn.Linear(4, 3), nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.conv(x).mean(dim=(2, 3))))


def test_log_softmax_and_logits_are_told_apart_without_touching_the_random_state() -> None:
    log_softmax, logits = LogSoftmaxNet(), zoo_models.build_view_tanh()
    state = torch.get_rng_state()
    scores, note = detect_scores(log_softmax, (1, 8, 8))
    assert scores == "log_probabilities" and "ends in nn.LogSoftmax" in note
    assert detect_scores(logits, (1, 48, 48)) == ("logits", None)
    assert torch.equal(torch.get_rng_state(), state)


def test_whole_model_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    torch.save(zoo_models.build_view_tanh(), tmp_path / "whole.pt")
    with pytest.raises(ForeignModelError, match=r"a pickled zoo_models\.ViewTanhNet .*torch\.save\(model\.state_dict\(\)"):
        load_state(tmp_path / "whole.pt")


# ------------------------------------------------------------------------------------------ cnnlens import

def test_import_view_flatten_tanh_model(tmp_path: Path) -> None:
    model = zoo_models.build_view_tanh()
    weights = save_state(model, tmp_path / "net.pth")
    res = invoke("import", "--model", "zoo_models:build_view_tanh", "--weights", weights, "--classes", FER,
                 "--input-shape", "1,48,48", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["builder"] == "zoo_models:build_view_tanh" and config["model"]["scores"] == "logits"
    assert config["train"] is None and config["data"] is None and config["classes"] == list(SEVEN)
    assert config["preprocess"] == {"mean": None, "std": None, "resize": "squash", "channels": 1, "size": [48, 48]}
    assert (tmp_path / "run" / "weights.safetensors").is_file()
    run = load_run(tmp_path / "run")
    x = probe((1, 48, 48))
    with torch.no_grad():
        assert torch.equal(run.model(x), model(x))
    assert isinstance(run.model, Scored) and run.config is None and run.classes == SEVEN


def test_import_tuple_output_needs_and_takes_an_output_selector(tmp_path: Path) -> None:
    model = zoo_models.build_tuple()
    weights = save_state(model, tmp_path / "tuple.pt")
    base = ["import", "--model", "zoo_models:build_tuple", "--weights", weights, "--classes", FER, "--input-shape",
            "1,16,16", "--out", tmp_path / "run"]
    res = invoke(*base)
    assert res.exit_code == 2 and "the model returns a tuple ([1, 7], [1, 7])" in message(res)
    assert "--output 0..1" in message(res) and not (tmp_path / "run").exists()
    res = invoke(*base, "--output", "1")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["output"] == 1
    x = probe((1, 16, 16))
    with torch.no_grad():
        assert torch.equal(load_run(tmp_path / "run").model(x), model(x)[1])


def test_import_dict_output_by_key(tmp_path: Path) -> None:
    model = zoo_models.build_dict()
    weights = save_state(model, tmp_path / "dict.pt")
    base = ["import", "--model", "zoo_models:build_dict", "--weights", weights, "--classes", FER, "--input-shape",
            "1,16,16", "--out", tmp_path / "run"]
    res = invoke(*base, "--output", "logit")
    assert res.exit_code == 2 and "output='logit': the model returns a dict with keys logits, aux" in message(res)
    res = invoke(*base, "--output", "logits")
    assert res.exit_code == 0, res.output
    x = probe((1, 16, 16))
    with torch.no_grad():
        assert torch.equal(load_run(tmp_path / "run").model(x), model(x)["logits"])


def test_import_trailing_softmax_is_detected_noted_and_stored(tmp_path: Path) -> None:
    model = zoo_models.build_softmax()
    weights = save_state(model, tmp_path / "soft.pt")
    res = invoke("import", "--model", "zoo_models:build_softmax", "--weights", weights, "--classes", FER,
                 "--input-shape", "1,16,16", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "note: the model outputs probabilities (it ends in nn.Softmax)" in res.output
    section = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert section["scores"] == "probabilities" and "log-probability" in section["notes"][0]
    x = probe((1, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_run(tmp_path / "run").model(x), model(x).log())


def test_import_model_trained_with_normalize(tmp_path: Path) -> None:
    model = zoo_models.build_normalized()
    weights = tmp_path / "norm.safetensors"
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(weights))
    res = invoke("import", "--model", "zoo_models:build_normalized", "--weights", weights, "--classes", "a,b,c,d,e",
                 "--input-shape", "3,16,16", "--normalize", "0.485,0.456,0.406/0.229,0.224,0.225", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "normalised (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] inside the model" in message(res)
    run = load_run(tmp_path / "run")
    x = probe((3, 16, 16))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(run.model(x), model((x - mean) / std), rtol=0, atol=0)
    assert run.preprocess.mean == (0.485, 0.456, 0.406)


def test_import_non_square_rgb_model_and_crop_other_photos(tmp_path: Path, photos: Path) -> None:
    model = zoo_models.build_tiny_resnet(3, 5)
    weights = save_state(model, tmp_path / "res.pt")
    res = invoke("import", "--model", "zoo_models:build_tiny_resnet", "--builder-kwargs", '{"in_channels": 3, "num_classes": 5}',
                 "--weights", weights, "--classes", "a,b,c,d,e", "--input-shape", "3,20,32", "--resize", "crop",
                 "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    run = load_run(tmp_path / "run")
    data = run.dataset(data=f"folder:{photos}")
    assert data.input_shape == (3, 20, 32) and data.classes == ("a", "b", "c", "d", "e")
    assert sorted(set(data.labels.tolist())) == [1, 3]  # B/ is b, 03_d/ is d
    # 40x60 photos: scaled to 22x32 (the width fits), then rows 1..20 of the middle (decoded by Pillow, each
    # photo from its full resolution: within 2 levels of torch's antialiased resize of the same photo)
    from cnnlens.data import load_dataset

    raw = load_dataset(f"folder:{photos}", "all", classes=run.classes)
    expected = raw.resized((22, 32)).images[:, :, 1:21]
    assert (data.images.int() - expected.int()).abs().max() <= 2


def test_import_torchscript_archive(tmp_path: Path, faces: Path) -> None:
    model = zoo_models.build_view_tanh()
    torch.jit.save(torch.jit.script(model), tmp_path / "traced.pt")
    (tmp_path / "classes.txt").write_text("# FER order\n" + "\n".join(SEVEN) + "\n")
    res = invoke("import", "--weights", tmp_path / "traced.pt", "--classes-file", tmp_path / "classes.txt",
                 "--input-shape", "1,48,48", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")) == ["config.json", "model.pt"]
    run = load_run(tmp_path / "run")
    assert run.manifest["model"]["torchscript"] == "model.pt" and run.classes == SEVEN
    x = probe((1, 48, 48))
    with torch.no_grad():
        torch.testing.assert_close(run.model(x), model(x))
    torch.testing.assert_close(saliency(run.model, x), saliency(model, x, fast=False))
    res = invoke("explain", tmp_path / "run", "--data", f"synth:{faces}", "--methods", "saliency,occlusion",
                 "-o", "occlusion.stride=8", "-o", "occlusion.patch=8", "--images", "0", "--out", tmp_path / "ex")
    assert res.exit_code == 0, res.output
    res = invoke("import", "--model", "zoo_models:build_view_tanh", "--weights", tmp_path / "traced.pt", "--classes", FER,
                 "--input-shape", "1,48,48", "--out", tmp_path / "other")
    assert res.exit_code == 2 and "TorchScript archive, which holds its own code: leave --model out" in message(res)


BAD_IMPORTS = [
    (["--weights", "whole.pt"], r"it holds a pickled zoo_models\.ViewTanhNet \(a whole model saved with torch\.save\(model, "
                                r"FILE\)\?\).*torch\.save\(model\.state_dict\(\), 'weights\.pt'\)"),
    (["--weights", "other.pt"], r"other\.pt does not fit the model ViewTanhNet: missing \['conv1\.weight', 'conv1\.bias', "
                                r"'conv2\.weight', 'conv2\.bias', 'fc1\.weight'\] \.\.\.; unexpected \['features\.0\.weight'"),
    (["--weights", "missing.pt"], "missing.pt does not exist"),
    (["--model", "zoo_models:nope"], "module 'zoo_models' has no 'nope'"),
    (["--model", "zoo_models:build_view_tanh", "--builder-kwargs", '{"num_classes": 3}'],
     r"does not fit the model ViewTanhNet: wrong shape/dtype \['fc3\.weight: \(7, 16\)"),
    (["--builder-kwargs", "[3]"], "expected a JSON object"),
    (["--builder-kwargs", '{"colour": 1}'], r"calling zoo_models:build_view_tanh\(colour=1\) failed: TypeError"),
    (["--classes", "a,b,c"], r"the model returns \(1, 7\) for one image, but \[1, 3\] class scores are needed"),
    (["--classes", "a,a,b,c,d,e,f"], "at least two distinct"),
    (["--input-shape", "1,32,32"], r"cannot run on a batch of one zero image of shape \(1, 32, 32\): RuntimeError"),
    (["--input-shape", "2,48,48"], "cnnlens reads gray \\(1\\) or RGB \\(3\\) images"),
    (["--output", "0"], "output=0 selects from a tuple or dict, but the model returns one tensor"),
    (["--normalize", "0.5"], "expected MEAN/STD"),
    (["--normalize", "0.5,0.5,0.5/0.2,0.2,0.2"], "mean/std have 3 values for 1-channel images"),
]


@pytest.mark.parametrize(("extra", "pattern"), BAD_IMPORTS, ids=[p[:30] for _, p in BAD_IMPORTS])
def test_bad_import_is_clear_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str],
                                                pattern: str) -> None:
    monkeypatch.chdir(tmp_path)
    save_state(zoo_models.build_view_tanh(), tmp_path / "net.pt")
    save_state(zoo_models.build_tuple(), tmp_path / "other.pt")
    torch.save(zoo_models.build_view_tanh(), tmp_path / "whole.pt")
    out = tmp_path / "run"
    base = ["import", "--model", "zoo_models:build_view_tanh", "--weights", "net.pt", "--classes", FER,
            "--input-shape", "1,48,48", "--out", str(out), "--overwrite"]
    assert invoke(*base).exit_code == 0  # an earlier import, which a failed one must leave as it was
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = invoke(*base, *extra)  # later options win in click
    assert res.exit_code in (1, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert re.search(pattern, message(res)), res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []


def test_import_needs_the_builder_for_a_state_dict_and_one_class_list(tmp_path: Path) -> None:
    weights = save_state(zoo_models.build_view_tanh(), tmp_path / "net.pt")
    res = invoke("import", "--weights", weights, "--classes", FER, "--input-shape", "1,48,48", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "holds weights only: name the code that builds the model with --model" in message(res)
    res = invoke("import", "--model", "zoo_models:build_view_tanh", "--weights", weights, "--input-shape", "1,48,48",
                 "--out", tmp_path / "r")
    assert res.exit_code == 2 and "give the class names once" in message(res)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------- every command on the run

@pytest.fixture
def imported(tmp_path: Path) -> Path:
    """A small nn.Sequential model (16x16 gray input) imported with the FER class names."""
    weights = save_state(zoo_models.build_sequential(size=16), tmp_path / "seq.pt")
    run = tmp_path / "run"
    res = invoke("import", "--model", "zoo_models:build_sequential", "--builder-kwargs", '{"size": 16}', "--weights",
                 weights, "--classes", FER, "--input-shape", "1,16,16", "--out", run)
    assert res.exit_code == 0, res.output
    return run


def test_commands_on_an_imported_run_need_data(imported: Path) -> None:
    for args in (["evaluate", imported], ["explain", imported, "--out", imported / "ex"],
                 ["faithfulness", imported], ["report", imported]):
        res = invoke(*args)
        assert res.exit_code in (1, 2) and "holds an imported model with no dataset of its own; name one with --data" \
            in message(res), (args, res.output)
    res = invoke("summary", imported)
    assert res.exit_code == 0 and "0 (Conv2d)" in res.output and "model." not in res.output, res.output


def test_unlabelled_data_explains_the_predicted_class_and_evaluate_says_it_needs_labels(imported: Path,
                                                                                        tmp_path: Path) -> None:
    rows = ["id,feature"] + [f"{i}," + " ".join(str((7 * i + j) % 256) for j in range(48 * 48)) for i in range(5)]
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    spec = f"fer:{tmp_path / 'test.csv'}"
    res = invoke("evaluate", imported, "--data", spec)
    assert res.exit_code == 1 and "has no labels, and evaluate measures predictions against labels" in message(res)
    res = invoke("explain", imported, "--data", spec, "--methods", "saliency", "--out", tmp_path / "ex")
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "ex" / "index.json").read_text())
    assert index["selection"]["mode"] == "per-predicted-class" and index["source"]["data"] == spec
    assert all(e["label"] == -1 and e["target"] == e["predicted"] for e in index["images"])


def test_every_command_on_an_imported_run(imported: Path, faces: Path, tmp_path: Path) -> None:
    data = f"synth:{faces}"
    res = invoke("evaluate", imported, "--data", data)
    assert res.exit_code == 0, res.output
    metrics = json.loads((imported / "eval" / "metrics.json").read_text())
    assert metrics["source"]["data"] == data and sum(map(sum, metrics["confusion"])) == 35  # split all: every face
    res = invoke("explain", imported, "--data", data, "--methods", "saliency,grad-cam,occlusion", "--images", "0,3",
                 "--layer", "4", "-o", "occlusion.stride=4", "--out", tmp_path / "ex")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ex" / "index.json").read_text())["methods"] == ["saliency", "grad-cam", "occlusion"]
    res = invoke("faithfulness", imported, "--data", data, "--methods", "saliency,grad-cam", "--n-images", "6",
                 "--n-randomization-images", "2")
    assert res.exit_code == 0, res.output
    assert (imported / "faithfulness" / "faithfulness.json").is_file()
    res = invoke("report", imported, "--data", data, "--methods", "saliency,grad-cam", "--average-methods", "none",
                 "--filter-layers", "none", "--feature-map-layers", "4", "--no-progress")
    assert res.exit_code == 0, res.output
    assert (imported / "report" / "index.html").is_file()
    res = invoke("summary", imported)
    assert res.exit_code == 0 and "Linear" in res.output


def test_the_report_names_the_users_model_not_the_adapter(imported: Path, faces: Path) -> None:
    res = invoke("report", imported, "--data", f"synth:{faces}", "--methods", "saliency", "--average-methods", "none",
                 "--filter-layers", "none", "--feature-map-layers", "none", "--no-progress")
    assert res.exit_code == 0, res.output
    page = (imported / "report" / "index.html").read_text()
    assert "zoo_models:build_sequential (Sequential)" in page and "Scored" not in page
