"""Extremal perturbations: the smooth mask against its closed form, the mask a hand-made model must get,
the area constraint, batching and per-sample targets, bad inputs. No oracle: TorchRay (the reference
code) needs torchvision and takes one image; the toys below are worked by hand instead."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.explain import extremal_perturbation
from cnnlens.explain.extremal import blend, mask_weights, perturbation_pyramid, smooth_mask
from conftest import assert_model_untouched, make_random_model


class Quarter(nn.Module):
    """Class 0's logit is 10x the mean brightness of the top-left 12x12 quarter (class 1: 0), through a 1x1
    convolution so there is a layer to hook: the mask that keeps most of that score keeps that quarter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.conv(x)[:, :, :12, :12].mean(dim=(1, 2, 3))
        return torch.stack([10 * q, torch.zeros_like(q)], dim=1)


def faces(n: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.rand(n, 1, 48, 48, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x[:, :, :12, :12] += 1.0
    return x


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


def test_the_mask_keeps_the_region_the_score_reads():
    model = Quarter()
    masks = extremal_perturbation(model, faces(), target=0, areas=0.0625, steps=300, perturbation="fade",
                                  jitter=False)
    assert masks.shape == (2, 48, 48) and masks.min() >= 0 and masks.max() <= 1
    inside, outside = masks[:, :12, :12], masks.clone()
    outside[:, :12, :12] = 0
    assert inside.mean() > 0.85, inside.mean()
    # outside, the area term alone pulls the mask down (by ~lr * 2 lambda m / HW a step: slowly near 0)
    assert outside.sum() / (2 * (48 * 48 - 144)) < 0.04
    assert outside[:, 24:, 24:].max() < 0.05  # far from the quarter nothing is kept
    # its area is the one asked for (a 12x12 quarter is 1/16 of the image), to the smooth edge's rounding
    assert (masks > 0.5).sum(dim=(1, 2)).div(144).sub(1).abs().max() < 0.2


def test_several_areas_average_their_masks_and_each_has_its_area():
    x = faces(1)
    one = [extremal_perturbation(Quarter(), x, 0, areas=a, steps=400, perturbation="fade", jitter=False)
           for a in (0.05, 0.2)]
    both = extremal_perturbation(Quarter(), x, 0, areas=(0.05, 0.2), steps=400, perturbation="fade", jitter=False)
    torch.testing.assert_close(both, (one[0] + one[1]) / 2, rtol=0, atol=1e-6)
    for mask, area in zip(one, (0.05, 0.2)):  # the kept pixels (the rest decays slowly towards 0)
        kept = float((mask > 0.5).float().mean())
        assert abs(kept / area - 1) < 0.15, (kept, area)


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
        extremal_perturbation(Quarter(), faces(1), 0, **kwargs)
