"""The faithfulness runner on small random models: the table, baselines, subsets, files, errors."""

from __future__ import annotations

import csv
import functools
import json

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import assert_model_untouched, make_random_model
from matplotlib.figure import Figure

from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.occlusion import occlusion
from cnnlens.explain.saliency import saliency
from cnnlens.explain.smoothgrad import smoothgrad
from cnnlens.faithfulness import evaluate_faithfulness, evaluate_run_faithfulness, mean_ci
from cnnlens.faithfulness.runner import FaithfulnessResult, stratified_order

N, SIZE = 6, 16


def occlusion_4(model, images, target=None):
    return occlusion(model, images, target, patch=4, stride=2)


METHODS = {"saliency": saliency, "grad-cam": grad_cam, "occlusion": occlusion_4}


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = make_random_model(1, 5, seed=0)
    images = torch.rand(N, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(N, SIZE, SIZE, dtype=torch.bool)
    masks[:, 4:9, 5:10] = True
    return model, images, masks


@pytest.fixture(scope="module")
def result(setup) -> FaithfulnessResult:
    model, images, masks = setup
    return evaluate_faithfulness(model, images, None, masks, METHODS, n_perturbation_images=3,
                                 n_randomization_images=4, randomization_methods=list(METHODS),
                                 names=[f"img{i}" for i in range(N)])


def test_table_has_every_method_metric_and_baseline(result) -> None:
    metrics = {"deletion_auc", "insertion_auc", "pointing_game", "relevance_mass", "relevance_rank",
               "cascading_spearman", "cascading_ssim", "independent_spearman", "independent_ssim"}
    peers = {"average_drop", "increase_in_confidence", "infidelity", "road_morf", "road_lerf"}  # of the maps
    reexplained = {"max_sensitivity", "random_logit", "mprt"}  # like the randomisation check
    for m in METHODS:
        assert {r.metric for r in result.rows if r.method == m} == metrics | peers | reexplained
    assert {r.metric for r in result.rows if r.method == "random-order"} == {"deletion_auc", "insertion_auc"} | peers
    for b in ("centre-prior", "random-map"):
        assert {r.metric for r in result.rows if r.method == b} == {"pointing_game", "relevance_mass", "relevance_rank"}
    assert all(r.kind == ("baseline" if r.method in ("random-order", "centre-prior", "random-map") else "method")
               for r in result.rows)
    assert all(r.ci_low <= r.mean <= r.ci_high for r in result.rows)


def test_perturbation_methods_use_fewer_images_and_baselines_follow(result) -> None:
    assert len(result.per_image[("occlusion", "deletion_auc")]) == 3
    assert len(result.per_image[("saliency", "deletion_auc")]) == N
    assert result.row("occlusion", "deletion_auc").n_images == 3
    # the random-order baseline is reported over all images and over the occlusion subset
    full, sub = result.row("random-order", "deletion_auc"), result.row("random-order", "deletion_auc", n_images=3)
    assert full.n_images == N and sub.n_images == 3
    assert sub.mean == pytest.approx(result.per_image[("random-order", "deletion_auc")][:3].mean())
    assert any("occlusion" in note and "first 3 of 6 images" in note for note in result.notes)
    assert any("randomisation check: first 4 of 6 images" in note for note in result.notes)
    assert result.randomization["cascading"].spearman["saliency"].shape[1] == 4
    assert result.randomization["cascading"].spearman["occlusion"].shape[1] == 3


def test_perturbation_methods_are_left_out_of_randomisation_by_default(setup) -> None:
    model, images, masks = setup
    r = evaluate_faithfulness(model, images[:3], None, masks[:3], METHODS, n_perturbation_images=2,
                              n_randomization_images=2, randomization_modes=("independent",))
    assert set(r.randomization) == {"independent"}
    assert set(r.randomization["independent"].spearman) == {"saliency", "grad-cam"}
    assert any("left out occlusion" in note for note in r.notes)
    assert ("occlusion", "independent_ssim") not in r.per_image and ("occlusion", "deletion_auc") in r.per_image


def test_row_means_are_the_per_image_means(result) -> None:
    for r in result.rows:
        v = result.per_image[(r.method, r.metric)][:r.n_images]
        assert r.mean == pytest.approx(float(np.mean(v)))
    cascade = result.randomization["cascading"].spearman["grad-cam"]
    assert np.allclose(result.per_image[("grad-cam", "cascading_spearman")], cascade.mean(0).numpy())


def test_perfect_and_prior_localisation_numbers(setup) -> None:
    """A method whose map is the mask scores 1; the centre prior's four tied maxima (rows and columns 7, 8)
    all lie inside the mask (rows 4..8, columns 5..9), so it hits on every image."""
    model, images, masks = setup
    r = evaluate_faithfulness(model, images, None, masks, {"mask": lambda m, x, target=None: masks.float()},
                              n_randomization_images=0)
    for metric in ("pointing_game", "relevance_mass", "relevance_rank"):
        assert r.row("mask", metric).mean == 1.0
    assert r.row("centre-prior", "pointing_game").mean == 1.0
    assert any("randomisation check: skipped" in note for note in r.notes)


def test_same_seed_same_numbers(setup, result) -> None:
    model, images, masks = setup
    again = evaluate_faithfulness(model, images, None, masks, METHODS, n_perturbation_images=3,
                                  n_randomization_images=4, randomization_methods=list(METHODS),
                                  names=[f"img{i}" for i in range(N)])
    assert again.rows == result.rows


def test_noisy_methods_get_a_seeded_generator(setup) -> None:
    model, images, masks = setup
    sg = {"smoothgrad": functools.partial(smoothgrad, n_samples=3)}
    kw = {"n_randomization_images": 2, "randomization_modes": ("cascading",)}
    a = evaluate_faithfulness(model, images[:3], None, masks[:3], sg, seed=0, **kw)
    b = evaluate_faithfulness(model, images[:3], None, masks[:3], sg, seed=0, **kw)
    c = evaluate_faithfulness(model, images[:3], None, masks[:3], sg, seed=1, **kw)
    assert a.rows == b.rows
    assert a.row("smoothgrad", "relevance_mass").mean != c.row("smoothgrad", "relevance_mass").mean


def test_model_untouched(setup) -> None:
    model, images, masks = setup
    model.train()
    try:
        modes = [m.training for m in model.modules()]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        evaluate_faithfulness(model, images[:3], None, masks[:3], METHODS, n_perturbation_images=2, n_randomization_images=2)
        assert_model_untouched(model, modes)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    finally:
        model.eval()


def test_save_refuses_an_existing_folder_then_writes_table_figures_and_arrays(result, tmp_path) -> None:
    out = tmp_path / "faith"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # not written by cnnlens: never replaced
        with pytest.raises(FileExistsError, match="not written by cnnlens"):
            result.save(out, overwrite=overwrite)
        assert (out / "keep.txt").read_text() == "mine"  # untouched
    (out / "keep.txt").unlink()
    assert result.save(out) == out  # an empty folder may be used
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        result.save(out)
    assert result.save(out, overwrite=True) == out  # an earlier faithfulness folder is replaced
    manifest = json.loads((out / "faithfulness.json").read_text())
    assert manifest["version"] == 1 and manifest["images"] == [f"img{i}" for i in range(N)]
    assert manifest["metrics"]["deletion_auc"]["better"] == "lower"
    assert "bootstrap" in manifest["confidence_interval"]
    assert len(manifest["rows"]) == len(result.rows)
    assert manifest["randomization"]["cascading"]["layers"][0] == "fc"
    with open(out / "faithfulness.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.rows) and rows[0]["method"] == "saliency"
    assert float(rows[0]["mean"]) == pytest.approx(result.rows[0].mean, rel=1e-5)
    with open(out / "per_image.csv") as fh:
        per_image = list(csv.DictReader(fh))
    assert len(per_image) == sum(len(v) for v in result.per_image.values())
    with open(out / "randomization.csv") as fh:
        rand = list(csv.DictReader(fh))
    assert len(rand) == 2 * 2 * len(METHODS) * 5  # modes x similarities x methods x layers
    for name in ("deletion_insertion", "randomization", "randomization_cascade", "localization"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with np.load(out / f"{name}.npz", allow_pickle=False) as arrays:
            assert len(arrays.files) > 0
    with np.load(out / "deletion_insertion.npz") as arrays:
        curve = arrays["grad-cam__deletion"]
    assert np.allclose(curve[1], result.curves["grad-cam"]["deletion"].probs.mean(0).numpy())
    assert not [p for p in tmp_path.iterdir() if p.name != "faith"]  # no temporary folder left


def test_figures_are_plain_figures_without_pyplot_state(result) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figs = result.figures()
    assert set(figs) == {"deletion_insertion", "randomization", "randomization_cascade", "localization"}
    assert all(isinstance(f, Figure) for f, _ in figs.values())
    assert plt.get_fignums() == before


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"methods": ["nope"]}, ValueError, r"unknown method\(s\) 'nope'; available methods"),
    ({"methods": {}}, ValueError, "methods is empty"),
    ({"methods": {"s": 3}}, TypeError, r"methods\['s'\] must be callable"),
    ({"methods": {"random-order": saliency}}, ValueError, "'random-order' is reserved for a baseline"),
    ({"masks": torch.ones(N, SIZE, SIZE - 1, dtype=torch.bool)}, ValueError, "masks have shape"),
    ({"masks": torch.zeros(N, SIZE, SIZE, dtype=torch.bool)}, ValueError, r"masks of image\(s\) \[0, 1, 2, 3, 4, 5\] are empty"),
    ({"deletion_substrate": "noise"}, ValueError, "deletion_substrate must be one of 'zero', 'mean', 'blur'"),
    ({"insertion_substrate": "black"}, ValueError, "insertion_substrate must be one of"),
    ({"randomization_modes": ["top-down"]}, ValueError, "randomization_modes entry must be one of 'cascading', 'independent'"),
    ({"randomization_methods": ["lime"]}, ValueError, r"randomization_methods names \['lime'\]"),
    ({"method_kwargs": {"lime": {}}}, ValueError, r"method_kwargs names method\(s\) \['lime'\]"),
    ({"step": 0.0}, ValueError, r"must be in \(0, 1\]"),
    ({"n_perturbation_images": -1}, ValueError, "n_perturbation_images must be an int >= 0"),
    ({"targets": [0, 1]}, ValueError, "target has 2 entries but images has N=6"),
])
def test_bad_input_raises_clear_errors(setup, kwargs, error, match) -> None:
    model, images, masks = setup
    args = {"masks": masks[:N], "methods": {"saliency": saliency}, **kwargs}
    with pytest.raises(error, match=match):
        evaluate_faithfulness(model, images, **args)


def test_unsupported_method_is_skipped_only_when_asked(setup) -> None:
    model, images, _ = setup

    def picky(m, x, target=None):
        raise ValueError("needs a GAP head")

    methods = {"saliency": saliency, "picky": picky}
    with pytest.raises(ValueError, match="needs a GAP head"):
        evaluate_faithfulness(model, images, None, None, methods, n_randomization_images=0)
    r = evaluate_faithfulness(model, images, None, None, methods, n_randomization_images=0, skip_unsupported=True)
    assert {row.method for row in r.rows} == {"saliency", "random-order"}
    assert any(note.startswith("picky: skipped") and "needs a GAP head" in note for note in r.notes)
    assert any("localisation: skipped, no ground-truth masks" in note for note in r.notes)


def test_mean_ci_bootstrap() -> None:
    assert mean_ci([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)
    assert mean_ci([2.0]) == (2.0, 2.0, 2.0)
    v = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    mean, low, high = mean_ci(v, seed=1)
    t_low, t_high = scipy.stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=scipy.stats.sem(v))
    assert mean == pytest.approx(v.mean())
    assert low == pytest.approx(t_low, abs=0.05) and high == pytest.approx(t_high, abs=0.05)  # agrees with the t-interval
    assert mean_ci(v, seed=1) == (mean, low, high)
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence must be in"):
        mean_ci([1.0, 2.0], confidence=95)


# ------------------------------------------------------------------- honest samples (issue 11, item 6)


def _class_counts(labels: list[int], k: int) -> list[int]:
    return [labels[:k].count(c) for c in sorted(set(labels))]


@pytest.mark.parametrize("sizes", [(30, 30, 30), (50, 7, 20, 3)], ids=["balanced", "unbalanced"])
def test_stratified_order_every_prefix_is_balanced_and_the_seed_decides(sizes) -> None:
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]  # in class order, as a folder lists them
    order = stratified_order(labels, seed=0)
    assert sorted(order) == list(range(len(labels)))  # every image once
    drawn = [labels[i] for i in order]
    for k in range(1, len(labels) + 1):
        counts = _class_counts(drawn, k)
        left = [c for c, n in enumerate(sizes) if counts[c] < n]  # classes with images still to draw
        # classes not yet exhausted differ by at most one, and none is behind an exhausted one's share
        assert not left or max(counts[c] for c in left) - min(counts[c] for c in left) <= 1
    assert stratified_order(labels, seed=0) == order
    assert stratified_order(labels, seed=1) != order
    assert order[:len(sizes)] != list(range(len(sizes)))  # not the first images of the split
    assert sorted(drawn[:len(sizes)]) == list(range(len(sizes)))  # the first K: one of each class


class _Run:
    """What evaluate_run_faithfulness reads from a cnnlens Run: its model, device and split."""

    def __init__(self, model: torch.nn.Module, data) -> None:
        self.model, self.device, self._data = model, torch.device("cpu"), data

    def dataset(self, split: str = "val"):
        return self._data


@pytest.fixture(scope="module")
def class_ordered_run():
    from cnnlens.data.imageset import ImageSet

    k, per = 5, 8
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (k * per, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    labels = torch.arange(k).repeat_interleave(per)  # class 0 first, then class 1, ...
    masks = torch.zeros(k * per, SIZE, SIZE, dtype=torch.bool)
    masks[:, 3:9, 3:9] = True
    data = ImageSet(images, labels, tuple("abcde"), tuple(f"img{i}" for i in range(k * per)), masks)
    return _Run(make_random_model(1, k, seed=2), data)


def test_a_run_is_sampled_stratified_at_random_recorded_and_scored_on_the_same_images(class_ordered_run) -> None:
    run = class_ordered_run
    kw = {"n_images": 10, "n_perturbation_images": 5, "n_randomization_images": 0, "seed": 4}
    r = evaluate_run_faithfulness(run, methods=METHODS, **kw)
    s = r.settings["sampling"]
    order = stratified_order(run.dataset().labels, seed=4)[:10]
    assert s["indices"] == order and s["seed"] == 4 and s["n_available"] == 40 and s["n_images"] == 10
    assert s["class_counts"] == {c: 2 for c in "abcde"}  # 10 of 5 classes: 2 each, not 8 of a and 2 of b
    assert list(r.names) == [f"img{i}" for i in order]
    assert sorted(run.dataset().labels[order[:5]].tolist()) == [0, 1, 2, 3, 4]  # occlusion's 5: one per class
    # every method and baseline scored on the occlusion subset too: the same first 5 images
    for metric in ("deletion_auc", "insertion_auc", "pointing_game"):
        for m in (*METHODS, "random-order" if "auc" in metric else "centre-prior"):
            row = r.row(m, metric, n_images=5)
            assert row.mean == pytest.approx(float(np.mean(r.per_image[(m, metric)][:5])))
    assert r.row("saliency", "deletion_auc").n_images == 10  # and on all of them
    again = evaluate_run_faithfulness(run, methods=METHODS, **kw)
    assert again.names == r.names and again.rows == r.rows  # same seed, same images, same numbers
    other = evaluate_run_faithfulness(run, methods={"saliency": saliency}, **{**kw, "seed": 5})
    assert other.names != r.names
    assert r.manifest()["settings"]["sampling"]["class_counts"] == {c: 2 for c in "abcde"}


def test_a_runs_masks_follow_the_images_drawn(class_ordered_run, tmp_path) -> None:
    from PIL import Image

    run = class_ordered_run
    masks = torch.zeros(40, SIZE, SIZE, dtype=torch.bool)
    for i in range(40):  # a different mask per image: a square whose row is the image's index
        masks[i, i % 12:(i % 12) + 4, 2:6] = True
        Image.fromarray(masks[i].numpy().astype(np.uint8) * 255).save(tmp_path / f"img{i}.png")
    kw = {"methods": {"mask": lambda m, x, target=None: torch.zeros(len(x), SIZE, SIZE)}, "n_images": 6,
          "n_randomization_images": 0, "seed": 1}
    given = evaluate_run_faithfulness(run, masks=masks, **kw)
    folder = evaluate_run_faithfulness(run, mask_dir=tmp_path, **kw)
    assert given.rows == folder.rows
    order = given.settings["sampling"]["indices"]
    prior = [float(v) for v in given.per_image[("centre-prior", "relevance_mass")]]
    from cnnlens.faithfulness.localization import centre_prior, localization_scores

    expected = localization_scores(centre_prior(SIZE, SIZE).expand(6, SIZE, SIZE), masks[order])["relevance_mass"]
    assert prior == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match=r"masks must hold one mask per image of the split \(40\)"):
        evaluate_run_faithfulness(run, masks=masks[:6], **kw)


class _Ignores(torch.nn.Module):
    """Always class 0, whatever the image: every substrate leaves it there."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([2.0, 0.0, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 4) + 0 * x.flatten(1)[:, :1]


def test_a_substrate_that_leaves_the_class_is_warned_about(setup, caplog) -> None:
    _, images, _ = setup
    with caplog.at_level("WARNING", logger="cnnlens.faithfulness"):
        r = evaluate_faithfulness(_Ignores(), images, None, None, {"saliency": saliency}, n_randomization_images=0)
    check = r.substrate_checks["deletion"]
    assert check.substrate == "blur" and check.above_chance and check.chance == 0.25
    assert len(r.warnings) == 1 and r.warnings[0].startswith("deletion substrate blur: fully deleted images still get")
    # the model ignores its input: no substrate would help, and the warning says why the class survives
    assert "the model gives the class that probability whatever is left of the image" in r.warnings[0]
    assert "no other substrate brings it to chance either (road p = 0.71, dataset-mean p = 0.71" in r.warnings[0]
    assert set(r.substrate_checks["alternatives"]) == {"road", "dataset-mean", "zero", "mean"}
    assert [rec.getMessage() for rec in caplog.records] == list(r.warnings)
    m = r.manifest()
    assert m["warnings"] == list(r.warnings)
    assert m["substrate_check"]["deletion"]["above_chance"] is True
    assert m["substrate_check"]["alternatives"]["road"]["substrate"] == "road"


def test_a_substrate_that_removes_the_class_passes_and_a_stronger_one_is_offered(caplog) -> None:
    class Bright(torch.nn.Module):  # class 0 for bright images: a blurred bright image stays bright
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = 8.0 * (x.mean(dim=(1, 2, 3)) - 0.5)
            return torch.stack([v, torch.zeros_like(v)], dim=1)

    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.65
    with caplog.at_level("WARNING", logger="cnnlens.faithfulness"):
        blur = evaluate_faithfulness(Bright(), images, 0, None, {"saliency": saliency}, n_randomization_images=0)
        zero = evaluate_faithfulness(Bright(), images, 0, None, {"saliency": saliency}, n_randomization_images=0,
                                     deletion_substrate="zero", insertion_substrate="zero")
    assert blur.warnings and "try --deletion-substrate zero (road p = " in blur.warnings[0]
    assert not zero.warnings and not zero.substrate_checks["deletion"].above_chance
    assert "alternatives" not in zero.substrate_checks
