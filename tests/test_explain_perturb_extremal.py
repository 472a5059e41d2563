"""Extremal perturbations: the smooth mask against its closed form, the mask a hand-made model must get,
the area constraint, batching and per-sample targets, bad inputs. TorchRay (the reference code) needs
torchvision: it is the oracle in the peers' venv (tests/test_explain_extremal_torchray.py)."""

from __future__ import annotations

import pytest
import torch

from cnnlens.explain import extremal_perturbation
from cnnlens.explain.extremal import blend, mask_weights, perturbation_pyramid, smooth_mask
from conftest import CentreSquare, assert_model_untouched, centre_square_images, make_random_model


def test_a_single_parameter_gives_the_kernel_around_its_point():
    """One parameter at 1, the rest 0: the smooth max is ~the largest weight, ``exp(-2 max(d/sigma - 1/2, 0)^2)``
    at distance ``d`` from the point (the other K - 1 terms are 0 and weigh e^-20 each)."""
    step, sigma, size = 3, 4.0, (21, 18)
    weights, radius = mask_weights(size, step, sigma, torch.float64)
    params = torch.zeros(1, 7, 6, dtype=torch.float64)
    params[0, 3, 2] = 1.0  # the point at pixel (3*3 + 1, 2*3 + 1) = (10, 7)
    mask = smooth_mask(params, weights, radius, step)[0]
    v, u = torch.meshgrid(torch.arange(21.0, dtype=torch.float64), torch.arange(18.0, dtype=torch.float64), indexing="ij")
    d = torch.sqrt((v - 10) ** 2 + (u - 7) ** 2)
    kernel = torch.exp(-2 * (d / sigma - 0.5).clamp(min=0) ** 2)
    reach = d <= (radius - 1) * step  # beyond the neighbourhood the point is not among a pixel's K points
    k = weights.shape[0]
    smax = kernel * torch.exp(20 * kernel) / (torch.exp(20 * kernel) + k - 1)  # the other K-1 terms are 0
    torch.testing.assert_close(mask[reach], smax[reach], rtol=0, atol=1e-12)
    assert mask[10, 7] == pytest.approx(1.0, abs=1e-6) and mask[d <= sigma / 2].min() > 0.999
    assert mask[d > 3 * sigma].max() < 1e-3


def test_the_pyramid_blends_between_its_levels():
    x = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pyr = perturbation_pyramid(x, "fade", 5, 1.0)  # level l = x * l/4
    m = torch.rand(2, 9, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(blend(pyr, m), x * m[:, None], rtol=0, atol=1e-12)  # fade is linear in the mask
    blur = perturbation_pyramid(x, "blur", 4, 2.0)
    torch.testing.assert_close(blend(blur, torch.ones(2, 9, 9, dtype=torch.float64)), x, rtol=0, atol=0)
    assert not torch.allclose(blend(blur, torch.zeros(2, 9, 9, dtype=torch.float64)), x)


#: The area counts the image and its margin: 48 px faces get a margin of round(21 * 48 / 224) = 4 px.
COVERED = (48 + 2 * 4) ** 2


def test_the_mask_keeps_the_region_the_score_reads():
    model = CentreSquare()
    masks = extremal_perturbation(model, centre_square_images(), target=0, areas=144 / COVERED, steps=800, perturbation="fade",
                                  jitter=False)  # the paper's 800 steps: by then lambda is 16x, the area nearly exact
    assert masks.shape == (2, 48, 48) and masks.min() >= 0 and masks.max() <= 1
    inside, outside = masks[:, 18:30, 18:30], masks.clone()
    outside[:, 18:30, 18:30] = 0
    assert inside.mean() > 0.8, inside.mean()  # the smooth mask's edge rounds the square's corners
    # outside, the area term alone pulls the mask down (by ~lr * 2 lambda m / HW a step: slowly near 0)
    assert outside.sum() / (2 * (48 * 48 - 144)) < 0.06
    assert outside[:, :10].max() < 0.05 and outside[:, 38:].max() < 0.05  # far from it nothing is kept
    # its area is the one asked for (the 12x12 square), to the smooth edge's rounding
    assert (masks > 0.5).sum(dim=(1, 2)).div(144).sub(1).abs().max() < 0.1


def test_several_areas_average_their_masks_and_each_has_its_area():
    x = centre_square_images(1)
    one = [extremal_perturbation(CentreSquare(), x, 0, areas=a, steps=400, perturbation="fade", jitter=False)
           for a in (0.05, 0.2)]
    both = extremal_perturbation(CentreSquare(), x, 0, areas=(0.05, 0.2), steps=400, perturbation="fade", jitter=False)
    torch.testing.assert_close(both, (one[0] + one[1]) / 2, rtol=0, atol=1e-6)
    for mask, area in zip(one, (0.05, 0.2)):  # the kept pixels (the rest decays slowly towards 0)
        kept = float((mask > 0.5).sum()) / COVERED
        assert abs(kept / area - 1) < 0.25, (kept, area)  # the constraint is soft: lambda grows with the steps


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_with_per_sample_targets_equals_one_image_at_a_time(channels):
    model = make_random_model(channels, seed=2).double()
    x = torch.rand(3, channels, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    targets = [1, 0, 5]
    modes = [m.training for m in model.modules()]
    kw = dict(areas=(0.1, 0.3), steps=6, fast=False)
    batched = extremal_perturbation(model, x, targets, batch_size=4, **kw)  # rows split across images
    for i, t in enumerate(targets):
        alone = extremal_perturbation(model, x[i:i + 1], t, batch_size=1, **kw)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=0, atol=1e-10)
    assert_model_untouched(model, modes)
    assert all(p.grad is None for p in model.parameters())
    fast = extremal_perturbation(model, x, targets, **{**kw, "fast": True})
    torch.testing.assert_close(fast, batched, rtol=0, atol=1e-8)  # the folded copy computes the same function


def test_contrastive_reward_and_blur_run_and_stay_in_range():
    model = make_random_model(1, seed=5)
    x = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(4))
    m = extremal_perturbation(model, x, None, steps=5, reward="contrastive")
    assert m.shape == (2, 20, 20) and torch.isfinite(m).all() and 0 <= m.min() <= m.max() <= 1


@pytest.mark.parametrize("kwargs, match", [
    ({"areas": 0.0}, "areas must be a number or a non-empty list"),
    ({"areas": [0.1, 1.5]}, "areas must be"),
    ({"areas": []}, "areas must be"),
    ({"steps": 0}, "steps must be a positive int"),
    ({"perturbation": "noise"}, "perturbation must be one of"),
    ({"reward": "prob"}, "reward must be one of"),
    ({"levels": 1}, "levels must be an int >= 2"),
    ({"sigma": -1.0}, "sigma and max_blur must be positive"),
])
def test_bad_arguments_say_what_to_pass(kwargs, match):
    with pytest.raises(ValueError, match=match):
        extremal_perturbation(CentreSquare(), centre_square_images(1), 0, **kwargs)
