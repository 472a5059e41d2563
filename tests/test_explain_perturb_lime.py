"""LIME: exact recovery on a model linear in superpixel presence, lime's own fitting code as the oracle,
segmentation defaults, seeding, batching, guarding and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.explain.lime import lime, lime_explain, relabel, segment_images, weighted_ridge
from conftest import assert_model_untouched, make_random_model


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grid_segments(size: int, block: int) -> torch.Tensor:
    """[size,size] ids of a grid of block x block squares."""
    r = torch.arange(size) // block
    return r[:, None] * (size // block) + r[None, :]


def pixel_linear_model(c: int, size: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """logit_0 = sum_p a_p x_p, logit_1 = 0: linear in the pixels, hence in any superpixels' presence."""
    a = torch.randn(c * size * size, generator=seeded(seed))
    fc = nn.Linear(c * size * size, 2, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.stack([a, torch.zeros_like(a)]))
    return nn.Sequential(nn.Flatten(), fc).eval(), a.view(c, size, size)


def true_weights(a: torch.Tensor, image: torch.Tensor, fill: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Superpixel s adds sum_{p in s} a_p (x_p - fill_p) to logit 0 when shown."""
    contrib = (a * (image - fill)).sum(0).flatten()
    return torch.zeros(int(seg.max()) + 1).index_add_(0, seg.flatten(), contrib)


@pytest.mark.parametrize("hide", ["black", "mean", 0.25])
def test_recovers_weights_of_a_model_linear_in_superpixels(hide):
    c, size = 2, 16
    model, a = pixel_linear_model(c, size)
    images = torch.rand(2, c, size, size, generator=seeded(1))
    segments = torch.stack([grid_segments(size, 4), grid_segments(size, 8)])  # ragged: 16 and 4 superpixels
    res = lime_explain(model, images, target=0, segmentation=segments, hide=hide, output="logit",
                       alpha=1e-9, n_samples=300, generator=seeded(2))
    assert res.num_segments.tolist() == [16, 4]
    for i in range(2):
        seg = segments[i]
        if hide == "mean":  # each superpixel's own mean colour, per channel
            means = torch.stack([torch.stack([images[i, ch][seg == s].mean() for s in range(int(seg.max()) + 1)])
                                 for ch in range(c)])
            fill = means[:, seg]
        else:
            fill = torch.full_like(images[i], 0.0 if hide == "black" else hide)
        w = true_weights(a, images[i], fill, seg)
        torch.testing.assert_close(res.weights[i, : len(w)], w, rtol=1e-4, atol=1e-4)
        assert (res.weights[i, len(w):] == 0).all()
        # with every superpixel hidden the model sees only the fill
        torch.testing.assert_close(res.intercept[i], (a * fill).sum(), rtol=1e-4, atol=1e-4)
        # the painted map gives every pixel its superpixel's weight
        torch.testing.assert_close(res.map()[i], w[seg], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.score, torch.ones(2), rtol=0, atol=1e-6)  # R^2 of an exact fit


def test_top_regions_and_region_mask_follow_the_weights():
    model, a = pixel_linear_model(1, 16, seed=3)
    images = torch.rand(1, 1, 16, 16, generator=seeded(4))
    seg = grid_segments(16, 4)
    res = lime_explain(model, images, 0, segmentation=seg, hide="black", output="logit", alpha=1e-9,
                       n_samples=200, generator=seeded(0))
    w = true_weights(a, images[0], torch.zeros_like(images[0]), seg)
    order = w.argsort(descending=True).tolist()
    assert list(res.top_positive[0]) == [s for s in order if w[s] > 0]
    assert list(res.top_negative[0]) == [s for s in reversed(order) if w[s] < 0]
    top2 = res.region_mask(k=2)[0]
    assert torch.equal(top2, (seg == order[0]) | (seg == order[1]))
    assert torch.equal(res.region_mask(k=1, sign="negative")[0], seg == order[-1])
    with pytest.raises(ValueError, match="sign must be 'positive' or 'negative'"):
        res.region_mask(sign="both")


def test_fit_matches_the_lime_package_and_sklearn_on_its_own_samples(random_model_and_images):
    lime_base = pytest.importorskip("lime.lime_base")
    from sklearn.linear_model import Ridge
    from sklearn.metrics import pairwise_distances

    model, images = random_model_and_images
    segments = torch.stack([grid_segments(16, 4), grid_segments(16, 8), grid_segments(16, 2), grid_segments(16, 4)])
    res = lime_explain(model, images, segmentation=segments, n_samples=120, generator=seeded(5))
    kernel = lambda d: np.sqrt(np.exp(-(d**2) / 0.25**2))  # noqa: E731 - lime_image's kernel, width 0.25
    explainer = lime_base.LimeBase(kernel, random_state=0)
    for i in range(4):
        s = int(res.num_segments[i])
        data = res.samples[i, :, :s].numpy().astype(float)
        assert data[0].all()  # the first sample is the full image, as in lime
        labels = res.sample_scores[i].double().numpy()[:, None]
        distances = pairwise_distances(data, data[:1], metric="cosine").ravel()
        np.testing.assert_allclose(res.sample_weights[i].numpy(), kernel(distances), rtol=1e-6)
        intercept, exp, score, _ = explainer.explain_instance_with_data(data, labels, distances, 0, num_features=s)
        coef = np.zeros(s)
        for feature, value in exp:
            coef[feature] = value
        np.testing.assert_allclose(res.weights[i, :s].numpy(), coef, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(float(res.intercept[i]), intercept, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(res.score[i]), score, rtol=1e-5, atol=1e-7)
        ridge = Ridge(alpha=1.0).fit(data, labels[:, 0], sample_weight=kernel(distances))
        np.testing.assert_allclose(res.weights[i, :s].numpy(), ridge.coef_, rtol=1e-4, atol=1e-6)


def test_sample_scores_are_the_model_on_the_masked_images(random_model_and_images):
    model, images = random_model_and_images
    seg = grid_segments(16, 4)
    res = lime_explain(model, images, target=[1, 2, 3, 4], segmentation=seg, hide="black", n_samples=5,
                       generator=seeded(0))
    for i in range(4):  # rebuild a few masked images by hand
        for k in range(5):
            shown = res.samples[i, k][seg]
            x = images[i] * shown
            p = model(x[None]).softmax(1)[0, i + 1]
            torch.testing.assert_close(res.sample_scores[i, k], p, rtol=1e-5, atol=1e-6)


def test_weighted_ridge_closed_form_against_numpy():
    g = seeded(7)
    x = torch.randint(0, 2, (3, 50, 6), generator=g).double()
    y = torch.randn(3, 50, generator=g).double()
    w = torch.rand(3, 50, generator=g).double()
    coef, intercept, r2 = weighted_ridge(x, y, w, alpha=0.5)
    for i in range(3):
        design = np.hstack([x[i].numpy(), np.ones((50, 1))])
        penalty = np.diag([0.5] * 6 + [0.0])  # intercept not penalised
        sol = np.linalg.solve(design.T @ (w[i].numpy()[:, None] * design) + penalty, design.T @ (w[i].numpy() * y[i].numpy()))
        np.testing.assert_allclose(coef[i].numpy(), sol[:6], rtol=1e-10)
        np.testing.assert_allclose(float(intercept[i]), sol[6], rtol=1e-10)
        pred = design @ sol
        ym = np.average(y[i].numpy(), weights=w[i].numpy())
        expected_r2 = 1 - np.sum(w[i].numpy() * (y[i].numpy() - pred) ** 2) / np.sum(w[i].numpy() * (y[i].numpy() - ym) ** 2)
        np.testing.assert_allclose(float(r2[i]), expected_r2, rtol=1e-10)


def test_seeded_reproducible_and_batching_free(random_model_and_images):
    model, images = random_model_and_images
    seg = torch.stack([grid_segments(16, 4), grid_segments(16, 8), grid_segments(16, 4), grid_segments(16, 2)])
    a = lime_explain(model, images, segmentation=seg, n_samples=64, generator=seeded(3), batch_size=7)
    b = lime_explain(model, images, segmentation=seg, n_samples=64, generator=seeded(3), batch_size=7)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.samples, b.samples)
    c = lime_explain(model, images, segmentation=seg, n_samples=64, generator=seeded(4), batch_size=7)
    assert not torch.equal(a.samples, c.samples)
    big = lime_explain(model, images, segmentation=seg, n_samples=64, generator=seeded(3), batch_size=1000)
    assert torch.equal(a.samples, big.samples)
    torch.testing.assert_close(a.weights, big.weights, rtol=1e-4, atol=1e-6)
    # one image per call with one generator draws the same masks as the batched call
    g = seeded(3)
    singles = [lime_explain(model, images[i : i + 1], segmentation=seg[i], n_samples=64, generator=g) for i in range(4)]
    for i, r in enumerate(singles):
        s = int(r.num_segments[0])
        assert torch.equal(r.samples[0, :, :s], a.samples[i, :, :s])
        torch.testing.assert_close(r.weights[0, :s], a.weights[i, :s], rtol=1e-4, atol=1e-6)


def face(channels: int = 1) -> torch.Tensor:
    """A 48x48 synthetic face: bright oval, dark eyes and mouth, a little noise."""
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    img = 0.2 + 0.5 * ((((yy - 24) / 20) ** 2 + ((xx - 24) / 15) ** 2) < 1).float()
    img -= 0.4 * (((yy - 18) ** 2 + (xx - 17) ** 2) < 9).float() + 0.4 * (((yy - 18) ** 2 + (xx - 31) ** 2) < 9).float()
    img -= 0.3 * (((yy - 33).abs() < 2) & ((xx - 24).abs() < 8)).float()
    img = (img + 0.05 * torch.randn(48, 48, generator=seeded(0))).clamp(0, 1)
    return img.expand(1, channels, 48, 48).clone()


@pytest.mark.parametrize("channels", [1, 3])
def test_default_slic_gives_a_useful_number_of_superpixels(channels):
    seg = segment_images(face(channels))
    count = int(seg.max()) + 1
    assert 25 <= count <= 60
    assert torch.equal(torch.unique(seg), torch.arange(count))  # ids 0..S-1, all used
    eye = seg[0, 18, 17]
    assert seg[0, 18, 24] != eye or seg[0, 8, 24] != eye  # follows edges: the eye is not one blob with the face


@pytest.mark.parametrize("method", ["quickshift", "felzenszwalb"])
@pytest.mark.parametrize("channels", [1, 3])
def test_other_segmentations_run_on_gray_and_rgb(method, channels):
    seg = segment_images(face(channels), method)
    count = int(seg.max()) + 1
    assert count >= 4 and torch.equal(torch.unique(seg), torch.arange(count))


def test_noise_images_do_not_collapse_into_one_superpixel():
    seg = segment_images(torch.rand(2, 1, 48, 48, generator=seeded(0)))
    assert (seg.flatten(1).amax(1) + 1 >= 20).all()


def test_relabel_numbers_each_image_from_zero():
    seg = torch.tensor([[[5, 5], [9, 7]], [[-3, 2], [2, 2]]])
    out, counts = relabel(seg)
    assert out.tolist() == [[[0, 0], [2, 1]], [[0, 1], [1, 1]]]
    assert counts.tolist() == [3, 2]


def test_registry_function_returns_the_map(random_model_and_images):
    model, images = random_model_and_images
    m = lime(model, images, segmentation=grid_segments(16, 4), n_samples=32, generator=seeded(1))
    res = lime_explain(model, images, segmentation=grid_segments(16, 4), n_samples=32, generator=seeded(1))
    assert m.shape == (4, 16, 16)
    torch.testing.assert_close(m, res.map())


def test_model_untouched_also_after_error(random_model_and_images):
    model, images = random_model_and_images
    model.train()
    modes = [m.training for m in model.modules()]
    stats = model.bn_b.running_var.clone()
    images.requires_grad_(True)
    before = images.detach().clone()
    res = lime_explain(model, images, segmentation=grid_segments(16, 8), n_samples=16, generator=seeded(0))
    assert_model_untouched(model, modes)
    assert torch.equal(model.bn_b.running_var, stats)
    assert images.requires_grad and torch.equal(images.detach(), before)
    assert not res.weights.requires_grad
    res.weights.add_(1)  # plain tensors, editable
    with pytest.raises(ValueError, match="target classes must be in"):
        lime_explain(model, images, target=50, segmentation=grid_segments(16, 8), n_samples=16)
    assert_model_untouched(model, modes)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"segmentation": "watershed"}, ValueError, "segmentation must be one of 'slic', 'quickshift', 'felzenszwalb' or an int tensor"),
    ({"segmentation": torch.zeros(3, 16, 16, dtype=torch.long)}, ValueError, r"shape \[N,H,W\] = \(2, 16, 16\)"),
    ({"segmentation": torch.zeros(5, 5, dtype=torch.int32)}, ValueError, r"\[N,H,W\] = \(2, 16, 16\) or \[H,W\]"),
    ({"segmentation": torch.zeros(2, 16, 16)}, TypeError, "integer tensor"),
    ({"segmentation": [1, 2]}, TypeError, "integer tensor"),
    ({"hide": "gray"}, ValueError, "hide must be 'mean', 'black' or a float"),
    ({"hide": None}, TypeError, "hide must be"),
    ({"n_samples": 1}, ValueError, "n_samples must be an int >= 2"),
    ({"kernel_width": 0}, ValueError, "kernel_width must be > 0"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"output": "prob"}, ValueError, "output must be"),
    ({"batch_size": -2}, ValueError, "batch_size must be a positive int or None"),
])
def test_bad_inputs_give_clear_errors(kwargs, error, match):
    model = make_random_model(1)
    images = torch.rand(2, 1, 16, 16)
    options = {"segmentation": grid_segments(16, 4), "n_samples": 8, **kwargs}
    with pytest.raises(error, match=match):
        lime_explain(model, images, **options)


def test_segmenting_four_channels_asks_for_precomputed_segments():
    with pytest.raises(ValueError, match="pass precomputed segments"):
        segment_images(torch.rand(1, 4, 16, 16))


def test_singular_surrogate_without_penalty_is_a_clear_error():
    model, _ = pixel_linear_model(1, 16)
    images = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="use alpha > 0"):  # 2 samples cannot fit 16 superpixels unpenalised
        lime_explain(model, images, segmentation=grid_segments(16, 4), n_samples=2, alpha=0.0, output="logit")
