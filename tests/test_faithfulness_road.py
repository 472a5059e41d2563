"""ROAD's noisy linear imputation against the paper's sparse system, the substrates that use it, and the
substrate check (does the fully deleted image still show the class?)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csc_matrix, lil_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

from cnnlens.faithfulness.deletion import deletion, insertion, substrate_check, substrate_images
from cnnlens.faithfulness.road import WEIGHTS, noisy_linear_imputation

#: The paper's neighbours and weights (road/imputations.py: ``neighbors_weights``).
NEIGHBOURS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def paper_imputation(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The reference: ROAD's ``NoisyLinearImputer`` without noise, one sparse system per image (scipy)."""
    c, h, w = img.shape
    keep_flat, flat = keep.reshape(-1), img.reshape(c, -1)
    unknown = np.flatnonzero(~keep_flat)
    var = np.zeros(h * w, dtype=int)
    var[unknown] = np.arange(unknown.size)
    a, b, total = lil_matrix((unknown.size, unknown.size)), np.zeros((unknown.size, c)), np.ones(unknown.size)
    for (dy, dx), weight in NEIGHBOURS:
        y, x = unknown // w + dy, unknown % w + dx
        inside = (y >= 0) & (x >= 0) & (y < h) & (x < w)
        rows, nb = np.flatnonzero(inside), (y * w + x)[inside]
        known = keep_flat[nb]
        b[rows[known]] -= weight * flat[:, nb[known]].T
        a[rows[~known], var[nb[~known]]] = weight
        total[~inside] -= weight
    a[np.arange(unknown.size), np.arange(unknown.size)] = -total
    out = flat.copy()
    out[:, unknown] = spsolve(csc_matrix(a), b).reshape(unknown.size, c).T
    return out.reshape(c, h, w)


def test_weights_are_the_papers() -> None:
    assert np.allclose(WEIGHTS, [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


@pytest.mark.parametrize("removed", [0.05, 0.5, 0.97])
def test_imputation_solves_the_papers_sparse_system(removed: float) -> None:
    g = torch.Generator().manual_seed(int(removed * 100))
    x = torch.rand(3, 2, 11, 9, generator=g, dtype=torch.float64)
    keep = torch.rand(3, 11, 9, generator=g) >= removed
    keep[:, 0, 0] = True  # something to impute from
    ours = noisy_linear_imputation(x, keep, noise=0.0, tolerance=1e-12, max_iterations=2000)
    for i in range(3):
        np.testing.assert_allclose(ours[i].numpy(), paper_imputation(x[i].numpy(), keep[i].numpy()), atol=1e-9)
    # at the default tolerance, in float32: within a fifth of ROAD's noise of the exact solution
    fast = noisy_linear_imputation(x.float(), keep, noise=0.0)
    assert (fast.double() - ours).abs().max() < 2e-3


def test_kept_pixels_stay_and_noise_only_touches_removed_ones() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    keep = torch.rand(2, 8, 8, generator=g) > 0.5
    k = keep[:, None].expand_as(x)
    quiet = noisy_linear_imputation(x, keep, noise=0.0)
    noisy = noisy_linear_imputation(x, keep, noise=0.01, generator=torch.Generator().manual_seed(1))
    assert torch.equal(quiet[k], x[k]) and torch.equal(noisy[k], x[k])
    diff = (noisy - quiet)[~k]
    assert 0.007 < float(diff.std()) < 0.013 and abs(float(diff.mean())) < 0.003
    again = noisy_linear_imputation(x, keep, noise=0.01, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)  # seeded


def test_flat_image_is_imputed_flat_and_nothing_kept_gets_the_fallback() -> None:
    x = torch.full((1, 1, 6, 6), 0.3)
    keep = torch.zeros(1, 6, 6, dtype=torch.bool)
    keep[0, 2, 2] = True
    assert torch.allclose(noisy_linear_imputation(x, keep, noise=0.0), x, atol=1e-6)
    none = noisy_linear_imputation(torch.rand(2, 3, 6, 6), torch.zeros(2, 6, 6, dtype=torch.bool), noise=0.0,
                                   fallback=torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(none, torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(2, 3, 6, 6))


def test_imputation_rejects_a_wrong_mask() -> None:
    with pytest.raises(ValueError, match=r"keep must be a bool mask \[N,H,W\]"):
        noisy_linear_imputation(torch.rand(2, 1, 4, 4), torch.ones(2, 5, 4, dtype=torch.bool))


class Brightness(nn.Module):
    """Logits ``[a * (mean - 0.5), 0]``: a bright image is class 0, a dark one class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 8.0 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([v, torch.zeros_like(v)], dim=1)


def test_road_and_dataset_mean_curves_end_at_the_dataset_mean() -> None:
    """Fully deleted, ROAD has nothing to impute from: the image becomes the dataset mean (plus noise)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g) * 0.5 + 0.4  # means ~0.65: bright, class 0
    maps = torch.rand(4, 8, 8, generator=g)
    mean = [0.5]
    for sub in ("road", "dataset-mean"):
        d = deletion(Brightness(), x, maps, target=0, step=0.25, substrate=sub, channel_mean=mean, road_noise=0.0)
        assert d.substrate == sub
        assert torch.allclose(d.probs[:, -1], torch.full((4,), 0.5), atol=1e-5)  # p(class 0) at mean 0.5
        i = insertion(Brightness(), x, maps, target=0, step=0.25, substrate=sub, channel_mean=mean, road_noise=0.0)
        assert torch.allclose(i.probs[:, 0], torch.full((4,), 0.5), atol=1e-5)
        assert torch.allclose(i.probs[:, -1], d.probs[:, 0], atol=1e-6)
    full = substrate_images(x, "dataset-mean")
    assert torch.allclose(full, x.mean().expand_as(x))  # default: the mean of the images given


def test_road_deletion_imputes_from_the_pixels_left() -> None:
    """Half the image deleted: ROAD fills it from the other half (a bright image stays bright), unlike
    black, which drags the mean down."""
    x = torch.full((1, 1, 8, 8), 0.9)
    maps = torch.zeros(1, 8, 8)
    maps[0, :4] = 1.0  # the top half goes first
    road = deletion(Brightness(), x, maps, target=0, step=32, substrate="road", road_noise=0.0)
    zero = deletion(Brightness(), x, maps, target=0, step=32, substrate="zero")
    assert road.probs[0, 1] == pytest.approx(road.probs[0, 0].item(), abs=1e-4)
    assert zero.probs[0, 1] < road.probs[0, 1] - 0.3


class Ignores(nn.Module):
    """A model that ignores its input: always class 0 with p = e^2 / (e^2 + 2) ~ 0.79."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([2.0, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]


def test_substrate_check_flags_a_model_that_ignores_its_input() -> None:
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    c = substrate_check(Ignores(), x, substrate="blur")
    p = float(np.exp(2) / (np.exp(2) + 2))
    assert c.mean_probability == pytest.approx(p, abs=1e-6) and c.chance == pytest.approx(1 / 3)
    assert c.still_predicted == 1.0 and c.above_chance and c.n_images == 5
    assert (c.ci_low, c.ci_high) == (pytest.approx(p), pytest.approx(p)) and not c.keeps_class
    assert c.sentence().startswith("blur: fully deleted images still get their class with p = 0.79 (95% CI 0.79-0.79; "
                                   "chance 0.33); 100% are still predicted as it")
    assert c.why() == "the model gives the class that probability whatever is left of the image"


def test_substrate_check_passes_a_substrate_that_leaves_the_class() -> None:
    x = torch.full((3, 1, 8, 8), 0.9)  # bright: class 0 with p ~ 0.96
    c = substrate_check(Brightness(), x, target=0, substrate="zero")  # black: p(class 0) = sigmoid(-4) ~ 0.02
    assert c.mean_probability < 0.05 and not c.above_chance and c.still_predicted == 0.0
    assert substrate_check(Brightness(), x, target=0, substrate="blur").above_chance  # a blurred bright image is bright


def _bright_and_dark(n: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    x[: n // 2] += 0.65  # half bright (class 0), half dark (class 1)
    return x


def test_a_substrate_that_keeps_the_class_apart_is_above_chance() -> None:
    c = substrate_check(Brightness(), _bright_and_dark(), substrate="blur")  # blurred, bright stays bright
    assert c.mean_probability > 0.9 and c.ci_low > 0.5 and c.above_chance
    assert c.keeps_class and c.class_blind == pytest.approx(0.5, abs=0.01)
    assert c.why() == "the substrate still shows which class an image is"


def test_one_class_for_every_blank_image_is_chance_not_a_warning() -> None:
    """Black images are all 'dark' (class 1): the dark half keeps its class, the bright half loses it, so
    the class gets p = 0.5 on average, chance for 2 classes: the substrate says nothing of the class."""
    c = substrate_check(Brightness(), _bright_and_dark(), substrate="zero")
    assert c.still_predicted == 0.5 and c.mean_probability == pytest.approx(0.5, abs=0.01)
    assert not c.above_chance and not c.keeps_class
