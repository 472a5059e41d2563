"""KernelSHAP and feature ablation over superpixels: Captum as the oracle (FeatureAblation on the same
feature mask; KernelShap fed the same coalitions), exact Shapley values by enumeration, a model additive in
its pixels by hand, seeding, batching and bad inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from cnnlens.explain.feature_ablation import feature_ablation
from cnnlens.explain.kernel_shap import coalitions, kernel_shap, shapley_kernel
from cnnlens.explain.segmentation import superpixels
from conftest import make_random_model

captum_attr = pytest.importorskip("captum.attr")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grid_segments(size: int, block: int) -> torch.Tensor:
    """[size,size] ids of a grid of block x block squares."""
    r = torch.arange(size) // block
    return r[:, None] * (size // block) + r[None, :]


def probability(model: nn.Module):
    return lambda z: model(z).softmax(dim=1)


def model64(random_model_and_images):
    model, images = random_model_and_images
    return model.double(), images.double()


@pytest.mark.parametrize("hide", ["black", "mean"])
def test_feature_ablation_matches_captum_in_float64(random_model_and_images, hide):
    model, images = model64(random_model_and_images)
    target = torch.tensor([0, 3, 6, 2])
    ours = feature_ablation(model, images, target, n_segments=8, hide=hide, fast=False)
    segments, num = superpixels(images, "slic", n_segments=8)
    assert (num > 2).all()
    from cnnlens.explain.segmentation import hide_values

    baseline = 0.0 if hide == "black" else hide_values(images, segments, int(num.max()), "mean")
    ref = captum_attr.FeatureAblation(probability(model)).attribute(images, target=target, baselines=baseline,
                                                                    feature_mask=segments[:, None])
    torch.testing.assert_close(ours, ref[:, 0], rtol=1e-10, atol=1e-13)
    # the fast path (prepared copy, pattern tables) gives the same map to rounding
    torch.testing.assert_close(feature_ablation(model, images, target, n_segments=8, hide=hide), ours,
                               rtol=1e-7, atol=1e-9 * float(ours.abs().max()))


def test_feature_ablation_of_the_logit_matches_captum_on_the_model_itself(random_model_and_images):
    model, images = model64(random_model_and_images)
    segments = grid_segments(16, 4)
    ours = feature_ablation(model, images, 1, segmentation=segments, hide=0.5, output="logit", fast=False)
    ref = captum_attr.FeatureAblation(model).attribute(images, target=1, baselines=0.5,
                                                       feature_mask=segments.expand(4, 16, 16)[:, None])
    torch.testing.assert_close(ours, ref[:, 0], rtol=1e-10, atol=1e-12)


def pixel_linear_model(c: int, size: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """logit_0 = sum_p a_p x_p (float64): every segment adds sum_{p in s} a_p (x_p - fill_p), whoever else is shown."""
    a = torch.randn(c * size * size, generator=seeded(seed), dtype=torch.float64)
    fc = nn.Linear(c * size * size, 2, bias=False).double()
    with torch.no_grad():
        fc.weight.copy_(torch.stack([a, torch.zeros_like(a)]))
    return nn.Sequential(nn.Flatten(), fc).eval(), a.view(c, size, size)


@pytest.mark.parametrize("method", ["feature-ablation", "kernel-shap"])
def test_a_model_additive_in_its_pixels_by_hand(method):
    # Both equal each segment's own contribution on an additive model: ablating it removes exactly that,
    # and its Shapley value is that in every coalition; ragged segment counts (16 and 4) in one batch.
    c, size = 2, 16
    model, a = pixel_linear_model(c, size)
    images = torch.rand(2, c, size, size, generator=seeded(1), dtype=torch.float64)
    segments = torch.stack([grid_segments(size, 4), grid_segments(size, 8)])
    kw = {"n_samples": 200, "generator": seeded(2)} if method == "kernel-shap" else {}
    fn = kernel_shap if method == "kernel-shap" else feature_ablation
    maps = fn(model, images, 0, segmentation=segments, hide=0.25, output="logit", fast=False, **kw)
    for i in range(2):
        contrib = (a * (images[i] - 0.25)).sum(0)
        per_segment = torch.zeros(int(segments[i].max()) + 1, dtype=torch.float64).index_add_(
            0, segments[i].flatten(), contrib.flatten())
        torch.testing.assert_close(maps[i], per_segment[segments[i]], rtol=1e-9, atol=1e-10)


def exact_shapley(model: nn.Module, image: torch.Tensor, segments: torch.Tensor, target: int) -> torch.Tensor:
    """Shapley's formula over every coalition: phi_j = sum_S |S|! (M-|S|-1)! / M! (f(S + j) - f(S)), black hidden."""
    m = int(segments.max()) + 1
    every = torch.tensor(list(itertools.product([False, True], repeat=m)))
    with torch.no_grad():
        shown = every[:, segments]  # [2^M,H,W]
        f = model(torch.where(shown[:, None], image, 0.0)).softmax(1)[:, target]
    value = {tuple(z.tolist()): float(v) for z, v in zip(every, f)}
    phi = torch.zeros(m, dtype=torch.float64)
    for z in value:
        for j in range(m):
            if not z[j]:
                k = sum(z)
                with_j = tuple(True if i == j else b for i, b in enumerate(z))
                phi[j] += math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m) * (value[with_j] - value[z])
    return phi


def test_kernel_shap_with_every_coalition_is_the_exact_shapley_value(random_model_and_images):
    model, images = model64(random_model_and_images)
    segments = grid_segments(16, 8)  # 4 players: 16 coalitions fit in n_samples
    maps = kernel_shap(model, images, [2, 0, 5, 1], segmentation=segments, n_samples=16, fast=False)
    for i, t in enumerate([2, 0, 5, 1]):
        phi = exact_shapley(model, images[i], segments, t)
        torch.testing.assert_close(maps[i], phi[segments], rtol=1e-9, atol=1e-12)
    # efficiency: the values add up to f(x) - f(black)
    with torch.no_grad():
        gap = model(images).softmax(1)[torch.arange(4), [2, 0, 5, 1]] - model(images * 0).softmax(1)[torch.arange(4), [2, 0, 5, 1]]
    per_segment = maps[:, ::8, ::8].sum((1, 2))
    torch.testing.assert_close(per_segment, gap, rtol=1e-9, atol=1e-12)


def test_kernel_shap_matches_captum_given_the_same_coalitions(random_model_and_images):
    model, images = model64(random_model_and_images)
    k = 60
    ours = kernel_shap(model, images, 3, n_segments=10, n_samples=k, fast=False, generator=seeded(5))
    segments, num = superpixels(images, "slic", n_segments=10)
    masks, weights = coalitions(num, k, seeded(5), images.device)
    assert (2 ** num > k).all()  # sampled, not enumerated: Captum's regime
    for i in range(4):
        shap = captum_attr.KernelShap(probability(model))
        rows = masks[i, :, : int(num[i])].long()

        def same_coalitions(_inputs, rows=rows, **_kw):  # Captum's order too: the full, the empty, then the rest
            yield from (r[None] for r in rows)

        shap.perturb_func = same_coalitions
        ref = shap.attribute(images[i:i + 1], target=3, baselines=0.0, feature_mask=segments[i:i + 1, None], n_samples=k)
        # Captum holds the two constraints by a weight of 1e6 (exact here) and returns float32: within 1e-4
        torch.testing.assert_close(ours[i], ref[0, 0].double(), rtol=0, atol=1e-4 * float(ours[i].abs().max()))


def test_coalitions_are_drawn_from_the_shapley_kernel():
    num = torch.tensor([12, 3])
    masks, weights = coalitions(num, 4000, seeded(0), torch.device("cpu"))
    assert masks[0, 0, :12].all() and not masks[0, 1].any() and (weights[:, :2] == 0).all()
    assert not masks[:, :, 12:].any() and not masks[1, :, 3:].any()
    # image 0 (2^12 > 4000): sizes 1..11 with probability ~ 11 / (k (12 - k)), weight 1
    sizes = masks[0, 2:].sum(1)
    assert sizes.min() >= 1 and sizes.max() <= 11 and (weights[0, 2:] == 1).all()
    k = torch.arange(1, 12, dtype=torch.float64)
    p = 11 / (k * (12 - k))
    share = torch.bincount(sizes, minlength=12)[1:].double() / len(sizes)
    torch.testing.assert_close(share, p / p.sum(), rtol=0, atol=0.02)
    # image 1 (2^3 <= 4000): its 6 inner coalitions once each, with the Shapley kernel's weights
    inner = masks[1, 2:8, :3]
    assert len({tuple(r.tolist()) for r in inner}) == 6 and (weights[1, 8:] == 0).all()
    torch.testing.assert_close(weights[1, 2:8], shapley_kernel(3, inner.sum(1)))
    torch.testing.assert_close(shapley_kernel(3, torch.tensor([0, 1, 2, 3])),
                               torch.tensor([0.0, 2 / (3 * 1 * 2), 2 / (3 * 2 * 1), 0.0], dtype=torch.float64))


@pytest.mark.parametrize("method", ["feature-ablation", "kernel-shap"])
def test_batched_equals_one_at_a_time_and_batch_size_free(random_model_and_images, method):
    model, images = random_model_and_images
    fn = kernel_shap if method == "kernel-shap" else feature_ablation
    kw = {"n_segments": 6}
    targets = [1, 4, 0, 6]
    if method == "kernel-shap":
        g = seeded(9)
        one = torch.cat([fn(model, images[i:i + 1], targets[i], n_samples=40, generator=g, **kw) for i in range(4)])
        all_ = fn(model, images, targets, n_samples=40, generator=seeded(9), batch_size=5, **kw)
        again = fn(model, images, targets, n_samples=40, generator=seeded(9), batch_size=64, **kw)
    else:
        one = torch.cat([fn(model, images[i:i + 1], targets[i], **kw) for i in range(4)])
        all_, again = fn(model, images, targets, batch_size=5, **kw), fn(model, images, targets, batch_size=64, **kw)
    torch.testing.assert_close(all_, one, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(again, all_, rtol=1e-5, atol=1e-7)
    assert all_.abs().amax((1, 2)).min() > 0


def test_kernel_shap_is_seeded_and_none_never_touches_the_global_generator():
    model, images = make_random_model(1), torch.rand(2, 1, 16, 16, generator=seeded(3))
    a = kernel_shap(model, images, n_segments=12, n_samples=30, generator=seeded(1))
    b = kernel_shap(model, images, n_segments=12, n_samples=30, generator=seeded(2))
    assert not torch.equal(a, b)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    c, d = kernel_shap(model, images, n_segments=12, n_samples=30), kernel_shap(model, images, n_segments=12, n_samples=30)
    assert torch.equal(c, d) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("fn, kwargs, error, match", [
    (kernel_shap, {"n_samples": 2}, ValueError, "n_samples must be an int >= 3 .the full and empty coalitions"),
    (kernel_shap, {"n_samples": 10.0}, ValueError, "n_samples must be an int >= 3"),
    (kernel_shap, {"output": "loss"}, ValueError, "output must be"),
    (feature_ablation, {"hide": "white"}, ValueError, "hide must be 'mean', 'black' or a float, got 'white'"),
    (feature_ablation, {"segmentation": "watershed"}, ValueError, "segmentation must be one of 'slic'"),
    (feature_ablation, {"segmentation": torch.zeros(5, 5, dtype=torch.long)}, ValueError,
     r"segmentation tensor must have shape \[N,H,W\] = \(2, 8, 8\) or \[H,W\]"),
    (feature_ablation, {"batch_size": 0}, ValueError, "batch_size must be a positive int or None"),
])
def test_bad_inputs_give_clear_errors(fn, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(make_random_model(1), torch.rand(2, 1, 8, 8), **kwargs)


@pytest.mark.parametrize("gain", [0.0, 1e9], ids=["plan-forward", "tables"])
def test_the_timed_choice_between_pattern_tables_and_the_plan_forward_keeps_the_scores(
        random_model_and_images, monkeypatch, gain):
    from cnnlens.explain import accel, segmentation

    model, images = random_model_and_images
    target = torch.tensor([0, 3, 6, 2])
    plain = feature_ablation(model, images, target, n_segments=8, fast=False)
    accel.clear_caches()
    monkeypatch.setattr(segmentation, "DENSE_GAIN", gain)  # 0: the dense forward always wins; 1e9: never
    timed = []
    real = segmentation._dense_is_faster
    monkeypatch.setattr(segmentation, "_dense_is_faster", lambda *a: timed.append(1) or real(*a))
    try:
        for _ in range(2):  # the first call scores image 0 through the tables while it times, the rest either way
            got = feature_ablation(model, images, target, n_segments=8)
            torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))
        choices = [v for key, v in accel.tuning.CHOICES.items() if key[0] == "tables-or-plan"]
        assert choices == [gain == 0.0] and len(timed) == 1  # timed once per architecture, shape and pattern count
        accel.clear_caches()
        with accel.deterministic():  # no timed choice: the tables
            torch.testing.assert_close(feature_ablation(model, images, target, n_segments=8), plain,
                                       rtol=1e-4, atol=1e-5 * float(plain.abs().max()))
        assert len(timed) == 1 and not accel.tuning.CHOICES
    finally:
        accel.clear_caches()
