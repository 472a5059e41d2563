"""Augmentation ops: hand-worked values, rigid rotations, per-image randomness, reproducibility."""

from __future__ import annotations

import pytest
import torch

from cnnlens.train.augment import (FLIP_DEFAULTS, Augment, default_flip, describe_augmentation, random_flip,
                                   random_rotation, random_shift, rotate, shift)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_all_or_none() -> None:
    x = torch.rand(5, 2, 4, 6, generator=_gen(1))
    assert torch.equal(random_flip(x, _gen(), p=1.0), x.flip(-1))
    assert torch.equal(random_flip(x, _gen(), p=0.0), x)


def test_flip_is_per_image_and_about_half() -> None:
    x = torch.rand(2000, 1, 3, 5, generator=_gen(2))
    out = random_flip(x, _gen(3))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # every image is either mirrored or untouched, as a whole
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_shift_hand_worked() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    right = shift(x, torch.tensor([1]), torch.tensor([0]), pixels=1)
    assert right[0, 0].tolist() == [[0, 0, 1], [3, 3, 4], [6, 6, 7]]  # content moves right, left edge repeated
    up = shift(x, torch.tensor([0]), torch.tensor([-1]), pixels=1)
    assert up[0, 0].tolist() == [[3, 4, 5], [6, 7, 8], [6, 7, 8]]  # content moves up, bottom edge repeated
    left_down = shift(x, torch.tensor([-1]), torch.tensor([1]), pixels=2)  # pad wider than the shift
    assert left_down[0, 0].tolist() == [[1, 2, 2], [1, 2, 2], [4, 5, 5]]


def test_shift_batch_equals_one_by_one() -> None:
    x = torch.rand(6, 3, 7, 9, generator=_gen(4))
    dx, dy = torch.tensor([0, 1, -3, 3, 2, -1]), torch.tensor([0, -2, 3, 1, -3, 2])
    batched = shift(x, dx, dy, pixels=3)
    for i in range(6):
        assert torch.equal(batched[i : i + 1], shift(x[i : i + 1], dx[i : i + 1], dy[i : i + 1], pixels=3))
        # away from the edges a shift is a roll
        rolled = torch.roll(x[i], shifts=(int(dy[i]), int(dx[i])), dims=(-2, -1))
        assert torch.equal(batched[i, :, 3:-3, 3:-3], rolled[:, 3:-3, 3:-3])


def test_random_shift_stays_within_pixels() -> None:
    # a single bright pixel in the centre moves by at most `pixels` in x and y
    x = torch.zeros(500, 1, 15, 15)
    x[:, 0, 7, 7] = 1.0
    out = random_shift(x, 2, _gen(5))
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 15 - 7, pos % 15 - 7
    assert out.flatten(1).sum(1).eq(1).all()
    assert set(rows.tolist()) == set(range(-2, 3)) and set(cols.tolist()) == set(range(-2, 3))


def test_rotate_90_equals_rot90() -> None:
    x = torch.rand(3, 2, 8, 8, generator=_gen(6))
    # +90 degrees turns counter-clockwise on screen, as torch.rot90(k=1) over (H, W) does
    torch.testing.assert_close(rotate(x, torch.full((3,), 90.0)), torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate(x, torch.full((3,), -90.0)), torch.rot90(x, -1, (-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate(x, torch.zeros(3)), x, atol=1e-6, rtol=0)


def test_rotation_is_rigid_on_non_square_images() -> None:
    # a blob 8 px right of the centre of a 20x40 image ends 8 px above it after +90 degrees; without the
    # aspect correction it would land 4 or 16 px away
    h, w = 20, 40
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    blob = torch.exp(-((xx - (w / 2 + 8)) ** 2 + (yy - h / 2) ** 2) / 2.0).view(1, 1, h, w)
    out = rotate(blob, torch.tensor([90.0]))[0, 0]
    cy = (out * yy).sum() / out.sum() - h / 2
    cx = (out * xx).sum() / out.sum() - w / 2
    assert abs(cy.item() + 8) < 0.1 and abs(cx.item()) < 0.1


def test_random_rotation_angles_vary_per_image() -> None:
    x = torch.zeros(64, 1, 21, 21)
    x[:, 0, 10, 10:] = 1.0  # a ray from the centre to the right edge
    out = random_rotation(x, 20.0, _gen(7))
    distinct = {tuple(o.flatten().round(decimals=3).tolist()) for o in out}
    assert len(distinct) > 50
    assert out.shape == x.shape


def test_augment_reproducible_and_in_range() -> None:
    x = torch.rand(16, 1, 24, 24, generator=_gen(8))
    aug = Augment(flip=True, shift=3, rotation=12.0)
    a, b = aug(x, _gen(9)), aug(x, _gen(9))
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(x, _gen(10)))
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert torch.equal(Augment(flip=False, shift=0, rotation=0.0)(x, _gen(0)), x)


def test_augment_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="shift >= 0"):
        Augment(shift=-1)(torch.zeros(1, 1, 4, 4), _gen())


def test_default_flip_by_kind() -> None:
    assert {k: v[0] for k, v in FLIP_DEFAULTS.items()} == {"fer": True, "synth": True, "food11": True, "folder": False}
    assert default_flip("food11:food-11") and not default_flip("folder:d") and not default_flip("nonsense")


def test_the_augmentation_line_says_what_and_why() -> None:
    assert describe_augmentation("fer:f.csv", True, 4, 10.0) == (
        "augmentation: shifts up to 4 px, rotations up to 10 degrees; horizontal flips (default for fer: data: faces "
        "look alike mirrored; --no-flip turns them off)")
    assert describe_augmentation("folder:digits", False, 0, 0.0) == (
        "augmentation: no shifts or rotations; no flips (default for folder: data: a folder may hold digits, text or "
        "signs, which a mirror changes; --flip turns them on)")
    assert describe_augmentation("folder:d", True, 2, 7.5) == (
        "augmentation: shifts up to 2 px, rotations up to 7.5 degrees; horizontal flips (--flip; the default for "
        "folder: data is off)")
    assert describe_augmentation("food11:d", False, 4, 0.0).endswith("no flips (--no-flip; the default for food11: "
                                                                      "data is on)")
