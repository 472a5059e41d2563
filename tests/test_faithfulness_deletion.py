"""Deletion and insertion curves: hand-worked toy models, batching, baselines and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_model_untouched
from torch import nn

from cnnlens.faithfulness.deletion import (deletion, gaussian_blur, insertion, perturbation_curve, pixel_ranks,
                                           pixels_per_step, random_maps, step_counts, substrate_images)

A = 4.0  # logit scale of the toy model
P_ON = 1 / (1 + math.exp(-A))  # probability of class 0 while the pixel is 1


class OnePixel(nn.Module):
    """Logits ``[A * x[r, c], 0]``: the probability of class 0 depends on one pixel only."""

    def __init__(self, r: int, c: int) -> None:
        super().__init__()
        self.r, self.c = r, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, self.r, self.c]
        return torch.stack([A * v, torch.zeros_like(v)], dim=1)


def ranked_map(first: int, position: int, size: int = 16) -> torch.Tensor:
    """A 4x4 map whose pixel ``first`` (flat index) has rank ``position`` (0 = top) and no ties."""
    values = torch.arange(size, 0, -1, dtype=torch.float32)  # distinct, decreasing over flat positions
    order = [i for i in range(size) if i != first]
    order.insert(position, first)
    m = torch.empty(size)
    m[torch.tensor(order)] = values
    return m.view(1, 4, 4)


def test_deletion_drops_at_the_step_the_pixel_goes_and_auc_by_hand() -> None:
    model, x = OnePixel(1, 2), torch.ones(1, 1, 4, 4)
    d = deletion(model, x, ranked_map(6, 0), target=0, step=1, substrate="zero")
    expected = torch.tensor([P_ON] + [0.5] * 16)
    assert torch.allclose(d.probs[0], expected, atol=1e-6)
    assert torch.allclose(d.fractions, torch.arange(17) / 16)
    auc = (P_ON + 0.5) / 2 / 16 + 0.5 * 15 / 16
    assert d.auc.item() == pytest.approx(auc, abs=1e-6)


def test_deletion_with_the_pixel_ranked_sixth_and_two_pixels_per_step() -> None:
    model, x = OnePixel(1, 2), torch.ones(1, 1, 4, 4)
    d = deletion(model, x, ranked_map(6, 5), target=0, step=2, substrate="zero")
    # counts 0,2,4,6,...: rank 5 is removed once 6 pixels are gone, i.e. at step 3
    assert torch.allclose(d.probs[0], torch.tensor([P_ON] * 3 + [0.5] * 6), atol=1e-6)
    auc = 2 * P_ON / 8 + (P_ON + 0.5) / 2 / 8 + 5 * 0.5 / 8
    assert d.auc.item() == pytest.approx(auc, abs=1e-6)


def test_insertion_rises_when_the_pixel_is_put_back() -> None:
    model, x = OnePixel(3, 0), torch.ones(1, 1, 4, 4)
    i = insertion(model, x, ranked_map(12, 0), target=0, step=1, substrate="zero")
    assert torch.allclose(i.probs[0], torch.tensor([0.5] + [P_ON] * 16), atol=1e-6)
    assert i.auc.item() == pytest.approx((0.5 + P_ON) / 2 / 16 + P_ON * 15 / 16, abs=1e-6)


def test_mean_substrate_replaces_with_the_image_mean() -> None:
    model = OnePixel(0, 0)
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0  # mean 1/16
    d = deletion(model, x, ranked_map(0, 0), target=0, step=8, substrate="mean")
    p_mean = 1 / (1 + math.exp(-A / 16))
    assert torch.allclose(d.probs[0], torch.tensor([P_ON, p_mean, p_mean]), atol=1e-6)


def test_blur_substrate_of_a_flat_image_changes_nothing() -> None:
    model, x = OnePixel(2, 2), torch.full((1, 1, 6, 6), 0.7)
    p = 1 / (1 + math.exp(-A * 0.7))
    for curve in (deletion(model, x, torch.rand(1, 6, 6), target=0, step=4),
                  insertion(model, x, torch.rand(1, 6, 6), target=0, step=4)):
        assert curve.substrate == "blur"
        assert torch.allclose(curve.probs, torch.full_like(curve.probs, p), atol=1e-6)
        assert curve.auc.item() == pytest.approx(p, abs=1e-6)


def test_float_step_is_a_share_of_the_pixels() -> None:
    assert pixels_per_step(0.25, 16) == 4
    assert pixels_per_step(0.05, 48 * 48) == 116
    assert pixels_per_step(100, 16) == 16
    assert step_counts(0.25, 16).tolist() == [0, 4, 8, 12, 16]
    assert step_counts(5, 16).tolist() == [0, 5, 10, 15, 16]  # the last step is shorter


def test_ranks_follow_the_map_and_ties_are_broken_at_random() -> None:
    m = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert pixel_ranks(m).tolist() == [[3, 0, 1, 2]]
    flat = torch.zeros(1, 8, 8)
    r1 = pixel_ranks(flat, torch.Generator().manual_seed(1))
    r2 = pixel_ranks(flat, torch.Generator().manual_seed(2))
    assert sorted(r1[0].tolist()) == list(range(64))  # a permutation
    assert not torch.equal(r1, r2)
    assert torch.equal(r1, pixel_ranks(flat, torch.Generator().manual_seed(1)))
    # ties only reorder among themselves: the two 1.0 pixels keep ranks 0 and 1
    m2 = torch.zeros(1, 8, 8)
    m2[0, 2, 3] = m2[0, 5, 5] = 1.0
    ranks = pixel_ranks(m2, torch.Generator().manual_seed(3))[0]
    assert sorted([ranks[2 * 8 + 3].item(), ranks[5 * 8 + 5].item()]) == [0, 1]


def test_random_order_baseline_is_reproducible_and_averages_to_the_middle() -> None:
    model, x = OnePixel(1, 1), torch.ones(64, 1, 4, 4)
    maps = random_maps(64, 4, 4, torch.Generator().manual_seed(0))
    a = deletion(model, x, maps, target=0, step=1, substrate="zero")
    b = deletion(model, x, random_maps(64, 4, 4, torch.Generator().manual_seed(0)), target=0, step=1, substrate="zero")
    assert torch.equal(a.auc, b.auc)
    # The pixel's rank is uniform on 0..15, so the mean AUC is near the average of the 16 hand values.
    hand = torch.tensor([P_ON * r / 16 + (P_ON + 0.5) / 32 + 0.5 * (15 - r) / 16 for r in range(16)])
    assert abs(a.auc.mean().item() - hand.mean().item()) < 0.05


def test_batched_equals_one_image_at_a_time(random_model_and_images) -> None:
    model, images = random_model_and_images
    maps = torch.rand(images.shape[0], *images.shape[2:], generator=torch.Generator().manual_seed(0))
    full = deletion(model, images, maps, step=0.1, substrate="blur", batch_size=7)
    big = deletion(model, images, maps, step=0.1, substrate="blur", batch_size=1000)
    assert torch.allclose(full.probs, big.probs, atol=1e-6)
    for i in range(images.shape[0]):
        one = deletion(model, images[i:i + 1], maps[i:i + 1], target=full.targets[i:i + 1], step=0.1, substrate="blur")
        assert torch.allclose(one.probs[0], full.probs[i], atol=1e-6)


def test_curves_start_at_the_model_probability_and_end_at_the_substrate(random_model_and_images) -> None:
    model, images = random_model_and_images
    maps = torch.rand(images.shape[0], *images.shape[2:])
    with torch.no_grad():
        p = model(images).softmax(1)
        p_zero = model(torch.zeros_like(images)).softmax(1)
    d = deletion(model, images, maps, step=0.25, substrate="zero")
    t = p.argmax(1)
    assert torch.allclose(d.probs[:, 0], p.gather(1, t[:, None])[:, 0], atol=1e-6)
    assert torch.allclose(d.probs[:, -1], p_zero.gather(1, t[:, None])[:, 0], atol=1e-6)
    i = insertion(model, images, maps, step=0.25, substrate="zero")
    assert torch.allclose(i.probs[:, 0], d.probs[:, -1], atol=1e-6) and torch.allclose(i.probs[:, -1], d.probs[:, 0], atol=1e-6)


def test_model_is_left_as_it_was(random_model_and_images) -> None:
    model, images = random_model_and_images
    model.train()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    deletion(model, images, torch.rand(images.shape[0], *images.shape[2:]), step=0.5)
    assert_model_untouched(model, modes)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats not updated


def test_blur_keeps_a_constant_image_and_smooths_an_edge() -> None:
    x = torch.full((2, 3, 10, 10), 0.3)
    assert torch.allclose(gaussian_blur(x, 2.0), x, atol=1e-6)
    edge = torch.zeros(1, 1, 10, 10)
    edge[..., 5:] = 1.0
    b = substrate_images(edge, "blur", blur_sigma=1.0)
    assert 0 < b[0, 0, 0, 4].item() < 0.5 < b[0, 0, 0, 5].item() < 1
    assert torch.allclose(b[0, 0, 0], b[0, 0, 9])  # rows unchanged by a vertical edge


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"substrate": "noise"}, ValueError, "substrate must be one of 'zero', 'mean', 'blur'"),
    ({"mode": "both"}, ValueError, "mode must be one of 'deletion', 'insertion'"),
    ({"step": 0}, ValueError, "step must be >= 1 pixel"),
    ({"step": 1.5}, ValueError, r"must be in \(0, 1\]"),
    ({"step": "5"}, TypeError, "step must be an int"),
    ({"target": 9}, ValueError, r"target classes must be in \[0, 1\]"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive int or None"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match) -> None:
    model, x = OnePixel(0, 0), torch.ones(2, 1, 4, 4)
    with pytest.raises(error, match=match):
        perturbation_curve(model, x, torch.rand(2, 4, 4), **kwargs)


@pytest.mark.parametrize(("maps", "match"), [
    (torch.rand(3, 4, 4), "maps has 3 maps but images has N=2"),
    (torch.rand(2, 5, 4), r"maps have size \(5, 4\) but the images are \(4, 4\)"),
    (torch.rand(2, 1, 4, 4), r"maps must have shape \[N,H,W\]"),
    (torch.full((2, 4, 4), float("nan")), "NaN"),
])
def test_bad_maps_raise_clear_errors(maps, match) -> None:
    with pytest.raises(ValueError, match=match):
        deletion(OnePixel(0, 0), torch.ones(2, 1, 4, 4), maps)
