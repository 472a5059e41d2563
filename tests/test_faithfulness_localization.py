"""Localisation scores on hand-made maps and masks, baselines, user PNG masks, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.faithfulness.localization import (centre_prior, localization_scores, pointing_game, relevance_mass,
                                               relevance_rank)
from cnnlens.faithfulness.masks import load_mask_folder


def square_masks(n: int = 3, size: int = 12) -> torch.Tensor:
    """Masks with a 3x3 square at a different place in each image (9 of 144 pixels)."""
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        masks[i, 2 + 2 * i:5 + 2 * i, 1 + 3 * i:4 + 3 * i] = True
    return masks


@pytest.mark.parametrize("metric", ["pointing_game", "relevance_mass", "relevance_rank"])
def test_a_map_inside_the_mask_scores_one_and_outside_zero(metric) -> None:
    masks = square_masks()
    noise = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    inside = masks.float() * (1 + noise)  # varied values, all inside
    outside = (~masks).float() * (1 + noise)
    scores_in, scores_out = localization_scores(inside, masks)[metric], localization_scores(outside, masks)[metric]
    assert torch.equal(scores_in, torch.ones(3, dtype=torch.float64))
    assert torch.equal(scores_out, torch.zeros(3, dtype=torch.float64))


def test_pointing_game_ties_score_the_share_of_tied_maxima_inside() -> None:
    masks = square_masks(1)
    m = torch.zeros(1, 12, 12)
    m[0, 3, 2] = m[0, 10, 10] = m[0, 0, 0] = 1.0  # one of three maxima inside
    assert pointing_game(m, masks).item() == pytest.approx(1 / 3)
    assert pointing_game(torch.zeros(1, 12, 12), masks).item() == pytest.approx(9 / 144)  # chance


def test_pointing_game_tolerance_grows_the_mask() -> None:
    masks = square_masks(1)  # rows 2..4, cols 1..3
    m = torch.zeros(1, 12, 12)
    m[0, 5, 4] = 1.0  # diagonal neighbour of the square's corner
    assert pointing_game(m, masks).item() == 0.0
    assert pointing_game(m, masks, tolerance=1).item() == 1.0
    with pytest.raises(ValueError, match="tolerance must be an int >= 0"):
        pointing_game(m, masks, tolerance=-1)


def test_relevance_mass_by_hand() -> None:
    masks = square_masks(1)
    m = torch.zeros(1, 12, 12)
    m[0, 3, 2] = 2.0   # inside
    m[0, 8, 8] = 1.0   # outside
    m[0, 9, 9] = -5.0  # negative: ignored
    assert relevance_mass(m, masks).item() == pytest.approx(2 / 3)
    assert relevance_mass(-torch.rand(1, 12, 12), masks).item() == pytest.approx(9 / 144)  # no positive evidence


def test_relevance_rank_by_hand_and_with_ties() -> None:
    masks = square_masks(1)  # K = 9
    m = torch.zeros(1, 12, 12)
    inside = masks[0].nonzero()[:6]
    m[0, inside[:, 0], inside[:, 1]] = 2.0  # 6 of the top 9 inside
    m[0, 10, 5:8] = 3.0                     # 3 above them, outside
    assert relevance_rank(m, masks).item() == pytest.approx(6 / 9)
    # 3 outside on top, then 141 tied zeros of which 9 inside fill the remaining 6 places
    m2 = torch.zeros(1, 12, 12)
    m2[0, 10, 5:8] = 3.0
    assert relevance_rank(m2, masks).item() == pytest.approx(6 * (9 / 141) / 9)
    assert relevance_rank(torch.ones(1, 12, 12), masks).item() == pytest.approx(9 / 144)


def test_batched_scores_equal_one_image_at_a_time() -> None:
    masks = square_masks(4)
    maps = torch.rand(4, 12, 12, generator=torch.Generator().manual_seed(1)).round(decimals=1)  # with ties
    full = localization_scores(maps, masks)
    for i in range(4):
        one = localization_scores(maps[i:i + 1], masks[i:i + 1])
        for k, v in one.items():
            assert torch.allclose(v[0], full[k][i])


def test_centre_prior_peaks_in_the_middle() -> None:
    p = centre_prior(48, 48)
    assert p.shape == (48, 48)
    top = (p == p.max()).nonzero().tolist()
    assert sorted(top) == [[23, 23], [23, 24], [24, 23], [24, 24]]
    assert torch.allclose(p, p.flip(0)) and torch.allclose(p, p.T)
    centre_mask = torch.zeros(1, 48, 48, dtype=torch.bool)
    centre_mask[0, 20:28, 20:28] = True
    assert pointing_game(p[None], centre_mask).item() == 1.0
    odd = centre_prior(5, 7, sigma=1.0)
    assert odd.argmax().item() == 2 * 7 + 3 and odd.max().item() == 1.0


@pytest.mark.parametrize(("masks", "error", "match"), [
    (torch.ones(2, 12, 11, dtype=torch.bool), ValueError, r"masks have shape \(2, 12, 11\) but the maps have \(2, 12, 12\)"),
    (torch.ones(3, 12, 12, dtype=torch.bool), ValueError, "masks have shape"),
    (torch.full((2, 12, 12), 0.5), TypeError, "masks must be bool"),
    ("mask.png", TypeError, "masks must be a bool torch.Tensor"),
])
def test_bad_masks_raise_clear_errors(masks, error, match) -> None:
    with pytest.raises(error, match=match):
        pointing_game(torch.rand(2, 12, 12), masks)


def test_empty_mask_is_named() -> None:
    masks = square_masks(3)
    masks[1] = False
    for fn in (pointing_game, relevance_mass, relevance_rank):
        with pytest.raises(ValueError, match=r"masks of image\(s\) \[1\] are empty"):
            fn(torch.rand(3, 12, 12), masks)


def test_integer_masks_are_accepted() -> None:
    masks = square_masks(2)
    maps = torch.rand(2, 12, 12)
    assert torch.equal(relevance_rank(maps, masks.to(torch.uint8)), relevance_rank(maps, masks))


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_mask_folder_matches_by_image_name(tmp_path) -> None:
    a = np.zeros((6, 8), np.uint8)
    a[1:3, 2:5] = 255
    b = np.zeros((6, 8), np.uint8)
    b[4, 7] = 200
    b[0, 0] = 100  # below the threshold: outside
    _png(tmp_path / "training" / "3_41.png", a)
    _png(tmp_path / "train.csv_12.png", b)
    _png(tmp_path / "cat.png", np.stack([a, a, a], -1))  # RGB is read as gray
    masks = load_mask_folder(tmp_path, ["training/3_41.jpg", "train.csv:12", "photos/cat.jpeg"], (6, 8))
    assert masks.dtype == torch.bool and masks.shape == (3, 6, 8)
    assert torch.equal(masks[0], torch.from_numpy(a > 0))
    assert masks[1].nonzero().tolist() == [[4, 7]]
    assert torch.equal(masks[2], masks[0])


def test_mask_folder_errors_name_the_image_and_file(tmp_path) -> None:
    _png(tmp_path / "a.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(ValueError, match=r"no mask for image 1 \('b.jpg'\).*tried b.png"):
        load_mask_folder(tmp_path, ["a.jpg", "b.jpg"], (6, 8))
    with pytest.raises(ValueError, match=r"a.png \(image 'a.jpg'\) is 8x6 \(WxH\) but the image is 10x6"):
        load_mask_folder(tmp_path, ["a.jpg"], (6, 10))
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="c.png.*not a readable image"):
        load_mask_folder(tmp_path, ["c.jpg"], (6, 8))
    with pytest.raises(ValueError, match="does not exist or is not a folder"):
        load_mask_folder(tmp_path / "nope", ["a.jpg"], (6, 8))
