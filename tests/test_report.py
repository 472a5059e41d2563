"""The report: pixel rendering, sentences from numbers, sections from a small model, escaping, atomic writes."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import replace_method
from PIL import Image
from torch import nn

from cnnlens.data.imageset import ImageSet
from cnnlens.report import ReportInputs, ReportOptions, write_report
from cnnlens.report import build as report_build
from cnnlens.report import text
from cnnlens.report.assets import Assets
from cnnlens.report.context import ReportContext
from cnnlens.report.images import data_uri, heat_layer, image_hwc, png_bytes, tile_normalise
from cnnlens.report.render import render_page
from cnnlens.report.sections.class_average import average_maps, mass_inside
from cnnlens.report.sections.data import data_section
from cnnlens.report.sections.evaluation import evaluation_section
from cnnlens.report.sections.explanations import explanations_section
from cnnlens.report.sections.faithfulness import faithfulness_section, faithfulness_sentences
from cnnlens.report.sections.training import training_section
from conftest import make_random_model

EVIL = "<script>alert(1)</script>"
CLASSES = ("Happy", EVIL, 'Sad "quoted" & \'single\'')
#: Options small enough that a whole report of a 16x16 model takes about a second.
TINY = ReportOptions(examples_per_class=2, lime_samples=16, smoothgrad_samples=2, ig_steps=2, average_images=3,
                     am_steps=2, filters_per_layer=3, feature_maps=3, occlusion_stride=4, occlusion_patch=4)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def methods(method_registry: ModuleType) -> ModuleType:
    """The method registry (every built-in method registered), restored after the test."""
    return method_registry


def tiny_set(n_per_class: int = 6, classes: tuple[str, ...] = CLASSES, seed: int = 0, masks: bool = True) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    k = len(classes)
    n = n_per_class * k
    images = torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % k
    m = torch.zeros(n, 16, 16, dtype=torch.bool)
    m[:, 4:8, 4:12] = True
    return ImageSet(images, labels, classes, tuple(f"img <{i}>.png" for i in range(n)), m if masks else None)


def tiny_inputs(classes: tuple[str, ...] = CLASSES, run_dir: Path | None = None) -> ReportInputs:
    return ReportInputs(model=make_random_model(in_channels=1, num_classes=len(classes), seed=3),
                        dataset=tiny_set(classes=classes), name="run <b>&", run_dir=run_dir)


def context(tmp_path: Path, inputs: ReportInputs | None = None, options: ReportOptions = TINY) -> ReportContext:
    (tmp_path / "assets").mkdir(parents=True, exist_ok=True)
    return ReportContext(inputs or tiny_inputs(), options, Assets(tmp_path / "assets"))


def decode_png(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


# ------------------------------------------------------------------------------------------- pixels


def test_heat_layer_alpha_follows_the_map_and_zero_is_transparent() -> None:
    a = np.zeros((4, 4))
    a[0, 0], a[1, 1], a[2, 2] = 1.0, 0.5, 0.2
    layer = heat_layer(a, "unsigned")
    assert layer.shape == (4, 4, 4) and layer.dtype == np.uint8
    # normalize() scales by the 99.5th percentile, here 0.9 * 1 + 0.1 * 0.5 ... of the sorted values
    h = np.clip(a / np.percentile(a, 99.5), 0, 1)
    np.testing.assert_array_equal(layer[..., 3], np.rint(np.minimum(1, 1.5 * h) * 255).astype(np.uint8))
    assert layer[3, 3, 3] == 0 and layer[0, 0, 3] == 255 and layer[2, 2, 3] < layer[1, 1, 3] < 255
    assert not heat_layer(np.zeros((3, 3)), "unsigned")[..., 3].any()


def test_relative_layer_starts_at_the_maps_minimum() -> None:
    from cnnlens.explain import registry

    g = np.random.default_rng(0)
    a = g.random((6, 6))
    a[0, 0] = 0.0
    offset = 0.55 + 0.1 * a  # RISE-like: about p(target) everywhere, the structure in the last digits
    relative = heat_layer(offset, "relative")
    # shifting a map changes nothing: the layer is the unsigned layer of the map minus its minimum
    np.testing.assert_array_equal(relative, heat_layer(offset - offset.min(), "unsigned"))
    assert relative[0, 0, 3] == 0  # the minimum is transparent
    assert heat_layer(offset, "unsigned")[..., 3].min() == 255  # from 0, the same map covers the whole image
    signed = np.array([[1.0, -1.0], [0.5, 0.0]])  # a map with a real negative part stays red/blue
    np.testing.assert_array_equal(heat_layer(signed, "relative"), heat_layer(signed, "signed"))
    assert {m.name for m in registry.registered() if m.style == "relative"} >= {"rise", "full-grad"}


def test_signed_and_lime_layers_colour_by_sign() -> None:
    a = np.zeros((2, 3))
    a[0, 0], a[1, 2] = 2.0, -2.0
    signed = heat_layer(a, "auto")  # half the mass is negative: drawn as signed
    assert signed[0, 0, 0] > signed[0, 0, 2]  # red for +
    assert signed[1, 2, 2] > signed[1, 2, 0]  # blue for -
    assert signed[0, 0, 3] == signed[1, 2, 3] == 255 and signed[0, 1, 3] == 0
    lime = heat_layer(a, "lime")
    assert lime[0, 0, 1] > lime[0, 0, 0] and lime[1, 2, 0] > lime[1, 2, 1]  # green for, red against
    with pytest.raises(ValueError, match="style must be"):
        heat_layer(a, "rainbow")
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        heat_layer(np.zeros((2, 3, 4)))


def test_image_conversions_and_png_round_trip() -> None:
    gray = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    np.testing.assert_array_equal(image_hwc(gray), [[0, 128], [255, 64]])
    rgb = torch.arange(12, dtype=torch.uint8).reshape(3, 2, 2)
    np.testing.assert_array_equal(image_hwc(rgb), rgb.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match=r"\[C,H,W\]"):
        image_hwc(torch.zeros(2, 4, 4))
    for arr in (image_hwc(gray), image_hwc(rgb), heat_layer(np.eye(3))):
        np.testing.assert_array_equal(decode_png(data_uri(png_bytes(arr))), arr)
    np.testing.assert_array_equal(tile_normalise(np.full((2, 2), 3.0)), np.full((2, 2), 128))
    np.testing.assert_array_equal(tile_normalise(np.array([[1.0, 3.0]])), [[0, 255]])


# -------------------------------------------------------------------------------------------- text


def test_sentences_are_the_numbers() -> None:
    assert text.data_sentences([30, 10, 0], ["a", "b", "c"], "val") == [
        "The val split holds 40 images in 3 classes.",
        "Largest class: a (30, 75%); smallest: c (0, 0%).",
        "c has no images in this split, so it cannot be evaluated here."]
    assert text.data_sentences([30, 10], ["a", "b"], "val")[2] == "The largest class has 3.0x the images of the smallest."
    cm = np.array([[93, 4, 3], [0, 10, 0], [0, 0, 0]])
    assert text.class_sentences(cm, ["Happy", "Neutral", "Sad"]) == [
        "Happy: 93% recall, most often confused with Neutral (4%).",
        "Neutral: 100% recall, never confused.",
        "Sad: no images in this split."]
    rows = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4, "seconds": 2.0},
            {"epoch": 2, "train_loss": 0.5, "train_acc": 0.9, "val_loss": 0.6, "val_acc": 0.85, "seconds": 3.0}]
    assert text.training_sentences(rows) == [
        "2 epochs; best validation accuracy 85.0% at epoch 2.",
        "Last epoch: train loss 0.500, validation loss 0.600.",
        "At the best epoch train accuracy is 90.0%, 5.0 points above validation.",
        "Training took 5 s in all."]
    a = np.zeros((4, 4))
    a[0, 3], a[3, 0] = 3.0, 1.0
    assert text.map_location_sentence("Grad-CAM", "Happy", a, inside=0.25, cover=0.1) == (
        "Happy, Grad-CAM: 75% of the positive mass in the upper half; peak at row 1, column 4 of 4x4; "
        "25% inside the deciding parts, which cover 10% of the image.")
    assert text.explanation_sentence("Sad", 3, 4, 0.9, 0.8, "Happy") == (
        "Sad: 3 of 4 right (75%); most confident right image p=0.90; most confident mistake: predicted Happy with p=0.80.")


def test_class_average_helpers_by_hand() -> None:
    maps = np.array([[[2.0, 0.0], [0.0, -2.0]], [[0.0, 1.0], [0.0, 0.0]]])
    np.testing.assert_allclose(average_maps(maps), [[0.5, 0.5], [0.0, -0.5]])
    masks = np.array([[[True, False], [False, False]], [[True, False], [False, False]]])
    assert mass_inside(maps, masks) == pytest.approx((1.0 + 0.0) / 2)


def test_faithfulness_sentences_pick_the_best_and_name_the_baselines() -> None:
    rows = [{"method": "grad-cam", "metric": "pointing_game", "kind": "method", "mean": 0.6},
            {"method": "saliency", "metric": "pointing_game", "kind": "method", "mean": 0.7},
            {"method": "centre-prior", "metric": "pointing_game", "kind": "baseline", "mean": 0.8}]
    assert faithfulness_sentences(rows, {"pointing_game": {"better": "higher"}}) == [
        "pointing game (higher is better): best Saliency 0.700; centre prior 0.800 "
        "(the best method does not beat every baseline)."]


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(("change", "match"), [
    ({"images_per_class": 0}, "images_per_class must be a positive int"),
    ({"lime_samples": 2.5}, "lime_samples must be a positive int"),
    ({"methods": "saliency"}, "methods must be a tuple"),
    ({"methods": ("saliency", "saliency")}, "lists a method twice"),
    ({"mask_percentile": 101}, r"mask_percentile must be in \[0, 100\]"),
    ({"filter_layers": "conv"}, "filter_layers must be a tuple"),
    ({"am_lr": 0}, "am_lr must be a positive number"),
])
def test_bad_options_say_what_is_accepted(change: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        ReportOptions(**change)


def test_unknown_method_or_layer_fails_before_any_work(tmp_path: Path, methods: ModuleType) -> None:
    with pytest.raises(ValueError, match="ReportOptions.methods: unknown method 'nope'; available methods: saliency"):
        write_report(tiny_inputs(), tmp_path / "r", options=ReportOptions(methods=("saliency", "nope")))
    with pytest.raises(ValueError, match="ReportOptions.filter_layers: unknown layer 'conv9'; valid layer names: stem"):
        write_report(tiny_inputs(), tmp_path / "r", options=ReportOptions(filter_layers=("conv9",)))
    assert not (tmp_path / "r").exists() and list(tmp_path.iterdir()) == []


def test_assets_refuse_names_that_could_leave_the_folder(tmp_path: Path) -> None:
    assets = Assets(tmp_path)
    for bad in ("../up", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="asset name"):
            assets.csv(bad, ["x"], [])
    assets.csv("ok", ["x"], [[1]])
    with pytest.raises(ValueError, match="written twice"):
        assets.csv("ok", ["x"], [[1]])


# ------------------------------------------------------------------------------------------ sections


def test_data_section_counts_and_examples(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    s = data_section(ctx)
    assert [b["count"] for b in s["bars"]] == [6, 6, 6] and [b["width"] for b in s["bars"]] == [100.0] * 3
    assert [len(e["figures"]) for e in s["examples"]] == [2, 2, 2]
    for e in s["examples"]:  # each example really is an image of its class
        for f in e["figures"]:
            i = ctx.dataset.names.index(f["caption"])
            assert int(ctx.dataset.labels[i]) == e["cls"]
            np.testing.assert_array_equal(decode_png(f["src"]), ctx.dataset.images[i, 0].numpy())
    assert (tmp_path / "assets/data/class_distribution.csv").read_text().splitlines()[1] == "Happy,6,0.333333"


def test_evaluation_section_matches_the_predictions(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    s = evaluation_section(ctx)
    with torch.no_grad():
        pred = ctx.model(ctx.dataset.float_images()).argmax(1).numpy()
    y = ctx.dataset.labels.numpy()
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (y, pred), 1)
    assert [[int(c["text"]) for c in row] for row in s["counts"]] == cm.tolist()
    counts = [p["count"] for p in s["pairs"]]
    assert counts == sorted(counts, key=lambda c: -int(c)) and all(int(c) == cm[y_, p_] for c, (y_, p_) in zip(
        counts, [(CLASSES.index(p["true"]), CLASSES.index(p["pred"])) for p in s["pairs"]]))
    assert s["text"][0].startswith(f"Accuracy {100 * (pred == y).mean():.1f}% on 18 images")


def test_explanations_pick_the_most_confident_images_and_show_every_method(tmp_path: Path, methods: ModuleType) -> None:
    ctx = context(tmp_path)
    s = explanations_section(ctx)
    probs = ctx.probabilities
    conf, pred, y = probs.max(1), probs.argmax(1), ctx.labels
    for block in s["classes"]:
        c = block["cls"]
        right = [i for i in np.argsort(-conf, kind="stable") if y[i] == c and pred[i] == c][:1]
        wrong = [i for i in np.argsort(-conf, kind="stable") if y[i] == c and pred[i] != c][:1]
        assert [r["index"] for r in block["images"]] == right + wrong
        for r in block["images"]:
            shown = [f["method"] for f in r["cells"]]
            assert shown == [None, "saliency", "saliency", "smoothgrad", "guided-backprop", "grad-cam", "guided-grad-cam",
                             "integrated-gradients", "occlusion", "lime"]
            assert r["prob"] == f"{conf[r['index']]:.2f}" and r["pred"] == CLASSES[pred[r["index"]]]
            overlays = [f for f in r["cells"] if f["kind"] == "overlay"]
            assert len(overlays) == 8 and all(decode_png(f["layer"]).shape == (16, 16, 4) for f in overlays)
            assert (r["contrastive"] is None) == r["correct"]
            if not r["correct"]:
                assert [f["caption"] for f in r["contrastive"]] == [
                    f"for true {r['true']}", f"for predicted {r['pred']}", "true − predicted"]
    saved = np.load(tmp_path / "assets/arrays/explanations-grad-cam.npy")
    index = [r["index"] for b in s["classes"] for r in b["images"]]
    from cnnlens.explain.grad_cam import grad_cam

    torch.testing.assert_close(torch.from_numpy(saved), grad_cam(ctx.model, ctx.float_images(index), torch.from_numpy(pred[index])))


def test_a_method_that_refuses_the_model_is_left_out_with_its_reason(tmp_path: Path, methods: ModuleType,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def needs_gap(model: nn.Module, images: torch.Tensor, target: object = None) -> torch.Tensor:
        raise ValueError("CAM needs a global-average-pooling head")

    replace_method(methods, "cam", needs_gap)
    ctx = context(tmp_path, options=ReportOptions(methods=("saliency", "cam")))
    s = explanations_section(ctx)
    assert "CAM is left out: CAM needs a global-average-pooling head" in s["text"]
    assert {f["method"] for b in s["classes"] for r in b["images"] for f in r["cells"]} == {None, "saliency"}


def test_sections_without_inputs_are_absent(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    assert training_section(ctx) is None and faithfulness_section(ctx) is None
    unlabelled = tiny_set()
    unlabelled = ImageSet(unlabelled.images, torch.full_like(unlabelled.labels, -1), unlabelled.classes, unlabelled.names)
    ctx = context(tmp_path / "u", ReportInputs(make_random_model(num_classes=3), unlabelled, "u"))
    assert evaluation_section(ctx) is None


def write_run_files(run: Path) -> None:
    """The parts of a run folder the report reads without loading a model: history, curves, TensorBoard,
    and a faithfulness folder."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "history.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
                                     "1,1.5,0.4,1.4,0.45,0.001,2.5\n2,0.9,0.7,1.0,0.65,0.0005,2.5\n"
                                     "3,0.6,0.8,1.1,0.6,0.0001,2.5\n")
    Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8)).save(run / "curves.png")
    (run / "tensorboard").mkdir(exist_ok=True)
    folder = run / "faithfulness"
    folder.mkdir(exist_ok=True)
    rows = [{"method": m, "metric": metric, "kind": kind, "n_images": n, "mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}
            for m, metric, kind, n, mean in [("grad-cam", "deletion_auc", "method", 10, 0.2),
                                            ("grad-cam", "deletion_auc", "method", 5, 0.25),
                                            ("saliency", "deletion_auc", "method", 10, 0.3),
                                            ("saliency", "deletion_auc", "method", 5, 0.35),
                                            ("occlusion", "deletion_auc", "method", 5, 0.1),
                                            ("random-order", "deletion_auc", "baseline", 10, 0.4),
                                            ("random-order", "deletion_auc", "baseline", 5, 0.45),
                                            ("grad-cam", "pointing_game", "method", 10, 0.9)]]
    check = {"substrate": "blur", "mean_probability": 0.62, "ci_low": 0.55, "ci_high": 0.69, "class_blind": 0.15,
             "keeps_class": True, "still_predicted": 0.8, "chance": 1 / 7, "n_images": 10, "above_chance": True}
    (folder / "faithfulness.json").write_text(json.dumps({
        "version": 1, "notes": ["occlusion: evaluated on the first 5 of 10 images"], "rows": rows,
        "metrics": {"deletion_auc": {"description": "d", "better": "lower"}, "insertion_auc": {"description": "i", "better": "higher"},
                    "pointing_game": {"description": "p", "better": "higher"}},
        "settings": {"n_images": 10, "sampling": {"method": "stratified by class, at random", "seed": 3, "split": "val",
                                                  "n_available": 40, "n_images": 10, "class_counts": {"a": 5, "b": 5}}},
        "substrate_check": {"deletion": check, "insertion": check},
        "warnings": ["deletion substrate blur: fully deleted images still get their class"],
        "confidence_interval": "95% percentile bootstrap"}))
    (folder / "faithfulness.csv").write_text("method,metric\n")
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(folder / "deletion_insertion.png")


def test_training_and_faithfulness_sections_from_run_files(tmp_path: Path) -> None:
    write_run_files(tmp_path / "run")
    ctx = context(tmp_path, tiny_inputs(run_dir=tmp_path / "run"))
    t = training_section(ctx)
    assert [r["epoch"] for r in t["table"] if r["best"]] == [2]
    assert t["text"][0] == "3 epochs; best validation accuracy 65.0% at epoch 2."
    assert t["tensorboard"] == str((tmp_path / "run/tensorboard").resolve())
    assert decode_png(t["figure"]["src"]).shape == (20, 30, 3)
    f = faithfulness_section(ctx)
    # one table per image set, every row in it over the same images; the 5-image one has occlusion too
    assert [b["n"] for b in f["blocks"]] == [10, 5]
    big, small = f["blocks"]
    assert [h["name"] for h in big["header"]] == ["deletion auc", "pointing game"]  # insertion has no rows
    table = {r["name"]: [c and c["mean"] for c in r["cells"]] for r in big["rows"]}
    assert table == {"Grad-CAM": ["0.200", "0.900"], "Saliency": ["0.300", None], "random order": ["0.400", None]}
    assert {r["name"]: r["cells"][0]["mean"] for r in small["rows"]} == {
        "Grad-CAM": "0.250", "Saliency": "0.350", "Occlusion": "0.100", "random order": "0.450"}
    assert all(c["n"] == 5 for r in small["rows"] for c in r["cells"] if c)
    assert small["title"] == ("Scored on the same 5 images (the first 5 of the 10, where Occlusion ran: every method "
                              "and baseline is scored on them)")
    assert big["text"][0] == "deletion auc (lower is better): best Grad-CAM 0.200; random order 0.400."
    assert small["text"][0] == "deletion auc (lower is better): best Occlusion 0.100; random order 0.450."
    assert f["text"][0] == ("Images: 10 of the val split's 40, drawn at random stratified by class (seed 3): a 5, b 5.")
    assert f["text"][1] == ("Substrate check (deletion and insertion, blur): on the fully deleted images the class "
                            "keeps p = 0.62 on average (95% CI 0.55-0.69), above chance (1/7 = 0.14); 80% of them are "
                            "still predicted as it.")
    assert f["warnings"] == ["deletion substrate blur: fully deleted images still get their class"]
    assert f["text"][-1] == "occlusion: evaluated on the first 5 of 10 images"
    assert [fig["caption"] for fig in f["figures"]][0].startswith("Deletion and insertion curves")
    (tmp_path / "run/faithfulness/faithfulness.json").write_text(json.dumps({"version": 99, "rows": [], "metrics": {}}))
    with pytest.raises(ValueError, match="faithfulness.json: expected a faithfulness manifest with version 1, got 99"):
        faithfulness_section(context(tmp_path / "again", tiny_inputs(run_dir=tmp_path / "run")))


# ------------------------------------------------------------------------------------------- the page


def test_render_escapes_every_user_string_and_hashes_its_script() -> None:
    page = {"title": f"report {EVIL}", "version": "0", "generated": "now", "elapsed": "1 s", "meta": [("Run", EVIL)],
            "classes": list(CLASSES), "methods": [{"id": "saliency", "label": "Saliency"}], "opacity": 0.7,
            "pixelated": True, "files": [f"data/{EVIL}.csv"], "client": {"classes": list(CLASSES), "methods": [], "run": EVIL},
            "sections": [{"id": "data", "title": "Data", "text": [f"{EVIL} has 3 images"], "files": [],
                          "bars": [{"cls": 1, "name": EVIL, "count": 3, "share": "100%", "width": 100.0}],
                          "examples": [{"cls": 1, "name": EVIL, "count": 3, "figures": [
                              {"src": "data:image/png;base64,AAAA", "layer": None, "caption": EVIL, "title": f'x" onclick="{EVIL}',
                               "method": None, "kind": "image"}]}]}]}
    out = render_page(page)
    assert EVIL not in out and "<script>alert" not in out
    assert out.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8
    assert 'onclick="' not in out and "x&#34; onclick=&#34;" in out
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', out, re.S).group(1)
    assert "<" not in data and json.loads(data)["classes"] == list(CLASSES)  # \u003c escapes, still valid JSON
    script = re.findall(r"<script>(.*?)</script>", out, re.S)
    assert len(script) == 1  # the page's own script, and nothing else that runs
    digest = base64.b64encode(hashlib.sha256(script[0].encode()).digest()).decode()
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', out).group(1))
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp


def test_report_end_to_end_is_self_contained_and_leaves_the_model_alone(tmp_path: Path, methods: ModuleType) -> None:
    write_run_files(tmp_path / "run")
    inputs = tiny_inputs(run_dir=tmp_path / "run")
    model = inputs.model
    model.train()  # the report must restore the user's mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    page = write_report(inputs, tmp_path / "report", options=TINY)
    assert page == tmp_path / "report/index.html"
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    out = page.read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([a-z_]+)"', out)
    assert ids == ["data", "model", "training", "evaluation", "explanations", "class_average", "filters", "faithfulness"]
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', out)
    assert len(srcs) > 100 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs[:: max(1, len(srcs) // 25)]:
        assert decode_png(s).size > 0
    assert not re.search(r'(src|href)="(https?:)?//', out) and "url(" not in out  # nothing fetched from anywhere
    manifest = json.loads((tmp_path / "report/data/report.json").read_text())
    listed = re.findall(r'<li><a href="([^"]+)">', out)
    assert listed and all((tmp_path / "report" / html.unescape(p)).is_file() for p in listed)
    assert manifest["sections"] == ids and manifest["options"]["lime_samples"] == 16
    figures = sorted(p.name for p in (tmp_path / "report/figures").iterdir())
    assert "curves.png" in figures and any(n.startswith("filters-") for n in figures)


def test_escaping_end_to_end(tmp_path: Path, methods: ModuleType) -> None:
    page = write_report(tiny_inputs(), tmp_path / "report", options=dataclasses.replace(TINY, progress=True))
    out = page.read_text(encoding="utf-8")
    assert EVIL not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "img &lt;3&gt;.png" in out and "run &lt;b&gt;&amp;" in out


def test_rgb_images_render_in_colour(tmp_path: Path, methods: ModuleType) -> None:
    g = torch.Generator().manual_seed(1)
    ds = ImageSet(torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(12) % 3,
                  ("a", "b", "c"), tuple(f"{i}.jpg" for i in range(12)))
    inputs = ReportInputs(make_random_model(in_channels=3, num_classes=3, seed=2), ds, "rgb")
    ctx = context(tmp_path, inputs, dataclasses.replace(TINY, methods=("saliency", "grad-cam")))
    s = explanations_section(ctx)
    row = s["classes"][0]["images"][0]
    np.testing.assert_array_equal(decode_png(row["cells"][0]["src"]), ds.images[row["index"]].permute(1, 2, 0).numpy())
    masked = decode_png(row["cells"][2]["src"])  # the masked original keeps colour where it keeps pixels
    kept = masked.any(axis=2)
    assert masked.shape == (16, 16, 3) and 0 < kept.mean() < 1
    np.testing.assert_array_equal(masked[kept], ds.images[row["index"]].permute(1, 2, 0).numpy()[kept])


def test_a_failing_section_leaves_the_previous_report_untouched(tmp_path: Path, methods: ModuleType,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    options = ReportOptions(methods=("saliency",), average_methods=(), filter_layers=(), feature_map_layers=())
    page = write_report(tiny_inputs(), tmp_path / "report", options=options)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "report").rglob("*") if p.is_file()}

    def broken(ctx: ReportContext) -> dict:
        ctx.assets.csv("half-written", ["x"], [[1]])  # something was already written to the new folder
        raise RuntimeError("section exploded")

    sections = list(report_build.SECTIONS)
    sections.insert(4, ("broken", broken))
    monkeypatch.setattr(report_build, "SECTIONS", sections)
    with pytest.raises(RuntimeError, match="section exploded"):
        write_report(tiny_inputs(), tmp_path / "report", options=options, overwrite=True)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "report").rglob("*") if p.is_file()}
    assert after == before and page.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left behind


def test_cli_help_lists_the_options() -> None:
    from click.testing import CliRunner

    from cnnlens.cli import main

    result = CliRunner().invoke(main, ["report", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--images-per-class", "--methods", "--occlusion-stride", "--lime-samples"):
        assert option in result.output


# ------------------------------------------------------------------------------- from a real run (slow)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) run: synthetic faces, small_cnn, two epochs; written by ``cnnlens.train``."""
    from cnnlens.data.synth import write_faces
    from cnnlens.train import TrainConfig, train

    root = tmp_path_factory.mktemp("report-run")
    write_faces(root / "data", 140, seed=0)
    config = TrainConfig(data=f"synth:{root / 'data'}", model="small_cnn", epochs=2, batch_size=32, lr=3e-3,
                         val_fraction=0.25, num_threads=1, device="cpu", seed=0)
    train(config, root / "run", progress=False)
    return root / "run"


@pytest.mark.slow
def test_report_of_a_real_run(trained_run: Path, methods: ModuleType, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cnnlens.cli import main
    from cnnlens.evaluate import evaluate
    from cnnlens.faithfulness import evaluate_faithfulness
    from cnnlens.train import load_run

    result = CliRunner().invoke(main, [
        "report", str(trained_run), "--images-per-class", "1", "--lime-samples", "24", "--smoothgrad-samples", "2",
        "--ig-steps", "4", "--average-images", "4", "--am-steps", "4", "--occlusion-stride", "8", "--no-progress",
        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    page = trained_run / "report/index.html"  # the default place
    assert result.output.strip() == f"report: {page}"
    out = page.read_text(encoding="utf-8")
    assert re.findall(r'<section id="([a-z_]+)"', out) == [
        "data", "model", "training", "evaluation", "explanations", "class_average", "filters"]  # no faithfulness yet
    run = load_run(trained_run)
    e = evaluate(run.model, run.dataset("val"))  # the oracle: the evaluate package on its own pass
    assert f"<dd>{100 * e.accuracy:.1f}%</dd>" in out
    assert f"Accuracy {e.accuracy:.1%} on {e.num_images:,} images" in out
    assert out.count('<tr class="best"') == 1 and len(re.findall(r"<tr(?: class=\"best\"[^>]*)?><td class=\"num\">\d+</td>",
                                                                out)) == len(run.history)
    assert (trained_run / "report/figures/curves.png").read_bytes() == (trained_run / "curves.png").read_bytes()
    assert str((trained_run / "tensorboard").resolve()) in out
    assert "small_cnn: " in out and "block3.conv" in out

    # faithfulness written by its own package appears in a report made afterwards
    ds = run.dataset("val")
    res = evaluate_faithfulness(run.model, ds.float_images(list(range(4))), None, ds.masks[:4], ["saliency", "grad-cam"],
                                n_randomization_images=2, n_boot=50, randomization_modes=("cascading",))
    res.save(trained_run / "faithfulness", overwrite=True)
    result = CliRunner().invoke(main, ["report", str(trained_run), "--out", str(tmp_path / "site"), "--methods", "saliency",
                                       "--average-methods", "none", "--filter-layers", "block1.conv", "--am-steps", "2",
                                       "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = (tmp_path / "site/index.html").read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([a-z_]+)"', out)
    assert "faithfulness" in sections and "class_average" not in sections
    row = res.row("grad-cam", "deletion_auc")
    assert f"{row.mean:.3f} <small>[{row.ci_low:.3f}, {row.ci_high:.3f}] n={row.n_images}</small>" in out
    assert (tmp_path / "site/data/faithfulness.json").is_file()


@pytest.mark.slow
def test_cli_errors_are_clear(trained_run: Path, methods: ModuleType, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cnnlens.cli import main

    result = CliRunner().invoke(main, ["report", str(trained_run), "--out", str(tmp_path / "r"), "--methods", "saliency,nope"])
    assert result.exit_code != 0 and "unknown method 'nope'; available methods:" in result.output
    result = CliRunner().invoke(main, ["report", str(trained_run), "--out", str(tmp_path / "r"), "--feature-map-layers", "fc9"])
    assert result.exit_code != 0 and "unknown layer 'fc9'; valid layer names:" in result.output
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ scales and small things (issue 11)


def test_balanced_data_plural_and_a_dataset_given_with_data() -> None:
    assert text.data_sentences([129] * 7, list("abcdefg"), "val") == [
        "The val split holds 903 images in 7 classes.", "Balanced: 129 images per class."]
    assert text.data_sentences([1, 0], ["a", "b"], "val", data="folder:photos") == [
        "folder:photos holds 1 image in 2 classes.", "Largest class: a (1, 100%); smallest: b (0, 0%).",
        "b has no images in folder:photos, so it cannot be evaluated here."]
    assert text.data_sentences([1], ["a"], "val")[0] == "The val split holds 1 image in 1 class."
    assert text.count(1, "image") == "1 image" and text.count(2400, "image") == "2,400 images"
    assert text.explanation_sentence("Sad", 0, 0, None, None, None, where="folder:photos") == (
        "Sad: no images of this class in folder:photos.")


def test_a_dataset_given_with_data_is_named_not_called_the_val_split(tmp_path: Path, methods: ModuleType) -> None:
    inputs = dataclasses.replace(tiny_inputs(), data="folder:photos")
    ctx = context(tmp_path, inputs, options=dataclasses.replace(TINY, split="all"))
    assert ctx.split_name == "folder:photos"
    assert data_section(ctx)["text"][0] == "folder:photos holds 18 images in 3 classes."
    assert context(tmp_path / "own").split_name == "the val split"


def test_an_empty_class_is_said_once_and_maps_show_their_range(tmp_path: Path, methods: ModuleType) -> None:
    data = tiny_set()
    keep = [i for i in range(len(data)) if int(data.labels[i]) != 2]  # no images of the third class
    inputs = ReportInputs(model=make_random_model(in_channels=1, num_classes=3, seed=3), dataset=data.subset(keep), name="r")
    page = write_report(inputs, tmp_path / "report", options=dataclasses.replace(TINY, methods=("saliency", "grad-cam")))
    out = html.unescape(page.read_text(encoding="utf-8"))
    explanations = out[out.index('<section id="explanations"'):out.index('<section id="class_average"')]
    assert explanations.lower().count("no images of this class") == 1
    assert "has no images in this split" in out
    ranges = re.findall(r'<small class="range">([^<]*)</small>', explanations)
    assert ranges and all(re.fullmatch(r"-?[0-9.e+-]+ … -?[0-9.e+-]+|constant -?[0-9.e+-]+", r) for r in ranges)
    assert "Each map is drawn on its own scale" in explanations


def test_a_constant_map_is_flagged_with_its_likely_reason(tmp_path: Path, methods: ModuleType,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def dead_cam(model: nn.Module, images: torch.Tensor, target: object = None, **_: object) -> torch.Tensor:
        return torch.zeros(images.shape[0], *images.shape[2:])  # a Grad-CAM whose layer has no gradient

    replace_method(methods, "grad-cam", dead_cam)
    ctx = context(tmp_path, options=dataclasses.replace(TINY, methods=("saliency", "grad-cam")))
    s = explanations_section(ctx)
    n = sum(len(b["images"]) for b in s["classes"])
    assert f"Grad-CAM is all zero on {n} of {n} maps (flagged; drawn blank): likely the class score has no gradient " \
           "at the chosen layer" in " ".join(s["text"])
    cells = [f for b in s["classes"] for r in b["images"] for f in r["cells"]]
    cam = [f for f in cells if f["method"] == "grad-cam"]
    assert all(f["flag"] == "all zero" and f["range"] == "constant 0" and "All zero: the class score" in f["title"]
               for f in cam)
    assert all(f["flag"] is None and " … " in f["range"] for f in cells if f["method"] == "saliency" and f["layer"])


def test_feature_map_text_does_not_assume_a_relu() -> None:
    from cnnlens.report.sections.filters import value_sentence

    tanh = torch.tanh(torch.linspace(-2, 2, 9)).view(1, 3, 3)
    assert value_sentence(tanh) == "values from -0.96 to 0.96; 44% negative, 11% exactly zero"
    relu = torch.relu(torch.linspace(-1, 3, 5)).view(1, 1, 5)
    assert value_sentence(relu) == "values from 0 to 3; 40% exactly zero"
    assert "zero or below" not in value_sentence(tanh)
