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
from cnnlens.faithfulness import evaluate_faithfulness, mean_ci
from cnnlens.faithfulness.runner import FaithfulnessResult

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
    for m in METHODS:
        assert {r.metric for r in result.rows if r.method == m} == metrics
    assert {r.metric for r in result.rows if r.method == "random-order"} == {"deletion_auc", "insertion_auc"}
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
