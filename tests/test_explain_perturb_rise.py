"""RISE: the masks against the paper's code (scikit-image's resize, crop), the saliency against a
mask-by-mask computation with those masks, closed forms by hand, seeding, batching, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlens.explain.rise import build_masks, draw_masks, rise, upsampling_matrix
from conftest import make_random_model

skimage_transform = pytest.importorskip("skimage.transform")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cells, size", [(7, 56), (7, 24), (3, 12), (5, 37), (1, 9)])
def test_upsampling_is_scikit_images_bilinear_resize(cells, size):
    grid = torch.rand(cells, cells, generator=seeded(cells), dtype=torch.float64)
    up = upsampling_matrix(cells, size, torch.float64)
    ref = skimage_transform.resize(grid.numpy(), (size, size), order=1, mode="reflect", anti_aliasing=False)
    torch.testing.assert_close(up @ grid @ up.T, torch.from_numpy(ref), rtol=0, atol=1e-12)


def reference_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The paper's code, mask by mask: resize the binary grid to (cells + 1) * cell, crop at the shift."""
    cells = grids.shape[-1]
    up = tuple((cells + 1) * math.ceil(s / cells) for s in size)
    out = []
    for grid, (dy, dx) in zip(grids, shifts.tolist()):
        big = skimage_transform.resize(grid.double().numpy(), up, order=1, mode="reflect", anti_aliasing=False)
        out.append(torch.from_numpy(big[dy:dy + size[0], dx:dx + size[1]].copy()))
    return torch.stack(out)


def test_masks_are_the_papers_smooth_masks():
    size = (20, 13)  # non-square, not a multiple of the cells
    grids, shifts = draw_masks(2, 300, 7, 0.5, size, seeded(0))
    assert grids.shape == (2, 300, 7, 7) and shifts.shape == (2, 300, 2)
    assert shifts[..., 0].max() == 2 and shifts[..., 1].max() == 1 and shifts.min() == 0  # below one cell (3, 2)
    assert abs(grids.float().mean() - 0.5) < 0.02
    up_h = upsampling_matrix(7, 8 * 3, torch.float64)
    up_w = upsampling_matrix(7, 8 * 2, torch.float64)
    ours = build_masks(grids[1], shifts[1], up_h, up_w, size)
    torch.testing.assert_close(ours, reference_masks(grids[1], shifts[1], size), rtol=0, atol=1e-12)
    assert ours.min() >= 0 and ours.max() <= 1


def test_saliency_is_the_probability_weighted_mask_average(random_model_and_images):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    n_masks, targets = 50, torch.tensor([3, 0, 6, 1])
    maps = rise(model, images, targets, n_masks=n_masks, cells=4, p=0.3, generator=seeded(4), fast=False, batch_size=7)
    grids, shifts = draw_masks(4, n_masks, 4, 0.3, (16, 16), seeded(4))
    for i in range(4):
        masks = reference_masks(grids[i], shifts[i], (16, 16))
        with torch.no_grad():
            probs = model(images[i] * masks[:, None]).softmax(1)[:, targets[i]]
        torch.testing.assert_close(maps[i], torch.einsum("k,khw->hw", probs, masks) / (n_masks * 0.3),
                                   rtol=1e-10, atol=1e-12)
    fast = rise(model, images, targets, n_masks=n_masks, cells=4, p=0.3, generator=seeded(4))
    torch.testing.assert_close(fast, maps, rtol=1e-7, atol=1e-9)


class Constant(nn.Module):
    """Logits that never depend on the image: the target's probability is always softmax(bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(1, 2, 3))[:, None])


def test_closed_forms_by_hand():
    x = torch.rand(2, 1, 14, 14, generator=seeded(1))
    p2 = math.exp(2) / (1 + math.e + math.exp(2))
    # p = 1 keeps every cell: every mask is all ones, so the map is the target's probability everywhere
    full = rise(Constant(), x, 2, n_masks=5, p=1.0, fast=False)
    torch.testing.assert_close(full, torch.full((2, 14, 14), p2), rtol=1e-6, atol=0)
    # a constant score c: the map is c times the masks' mean over p, and tends to c as masks are added
    maps = rise(Constant(), x, 2, n_masks=4000, generator=seeded(2), fast=False, batch_size=500)
    grids, shifts = draw_masks(2, 4000, 7, 0.5, (14, 14), seeded(2))
    up = upsampling_matrix(7, 16)
    for i in range(2):
        expect = p2 * build_masks(grids[i], shifts[i], up, up, (14, 14)).mean(0) / 0.5
        torch.testing.assert_close(maps[i], expect, rtol=1e-5, atol=1e-6)
    assert (maps - p2).abs().max() < 0.05


def test_one_at_a_time_equals_batched_and_batch_size_free(random_model_and_images):
    model, images = random_model_and_images
    g = seeded(8)
    one = torch.cat([rise(model, images[i:i + 1], i, n_masks=40, generator=g) for i in range(4)])
    batched = rise(model, images, [0, 1, 2, 3], n_masks=40, generator=seeded(8), batch_size=6)
    again = rise(model, images, [0, 1, 2, 3], n_masks=40, generator=seeded(8), batch_size=160)
    torch.testing.assert_close(batched, one, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(again, batched, rtol=1e-5, atol=1e-7)
    other = rise(model, images, [0, 1, 2, 3], n_masks=40, generator=seeded(9))
    assert not torch.equal(other, batched)


def test_logit_output_and_default_target():
    model, x = make_random_model(1), torch.rand(3, 1, 16, 16, generator=seeded(5))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    torch.testing.assert_close(rise(model, x, None, n_masks=20), rise(model, x, predicted, n_masks=20))
    logit = rise(model, x, 1, n_masks=20, output="logit", fast=False)
    grids, shifts = draw_masks(3, 20, 7, 0.5, (16, 16), seeded(0))
    up = upsampling_matrix(7, 24)
    masks = build_masks(grids[0], shifts[0], up, up, (16, 16))
    with torch.no_grad():
        scores = model(x[0] * masks[:, None])[:, 1]
    torch.testing.assert_close(logit[0], torch.einsum("k,khw->hw", scores, masks) / 10, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n_masks": 0}, ValueError, "n_masks must be a positive int, got 0"),
    ({"cells": 0}, ValueError, "cells must be an int >= 1, got 0"),
    ({"cells": 9}, ValueError, r"cells must be at most the image side \(8\), got 9"),
    ({"p": 0}, ValueError, r"p \(the share of cells kept\) must be a number in \(0, 1\], got 0"),
    ({"p": "half"}, ValueError, r"p \(the share of cells kept\) must be a number"),
    ({"output": "loss"}, ValueError, "output must be"),
    ({"batch_size": -1}, ValueError, "batch_size must be a positive int or None"),
])
def test_bad_inputs_give_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        rise(make_random_model(1), torch.rand(2, 1, 8, 8), **kwargs)


def test_fast_path_scores_through_the_local_plan_with_winograd_exactly_in_float64(random_model_and_images,
                                                                                  monkeypatch):
    """The default path: masked images through the model's local plan (folded BatchNorm, residual adds) with
    every eligible 3x3 convolution as Winograd F(4x4,3x3) (timed faster here by decree); in float64 its maps
    are the model's own, mask by mask, to 1e-10."""
    from cnnlens.explain import accel
    from cnnlens.explain.accel import winograd

    model, images = random_model_and_images
    model, images = model.double(), images.double()
    accel.clear_caches()
    monkeypatch.setattr(winograd, "seconds_per_item",
                        lambda run, batch, t: 0.5 if isinstance(run, winograd.WinogradConv) else 1.0)
    used, plan_scorer = [], accel.plan_scorer

    def spy(*args, **kwargs):
        found = plan_scorer(*args, **kwargs)
        used.append(found)
        return found

    monkeypatch.setattr(accel, "plan_scorer", spy)
    targets = torch.tensor([3, 0, 6, 1])
    try:
        fast = rise(model, images, targets, n_masks=60, cells=4, p=0.4, generator=seeded(3), batch_size=7)
        chosen = list(winograd._CHOSEN.values())
    finally:
        accel.clear_caches()  # the decreed choices must not outlive the test
    assert used and used[0] is not None and used[0][1] == 7  # the plan scorer, at the batch size asked for
    assert chosen and all(chosen)  # every eligible convolution ran as Winograd
    plain = rise(model, images, targets, n_masks=60, cells=4, p=0.4, generator=seeded(3), batch_size=7, fast=False)
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-12)
