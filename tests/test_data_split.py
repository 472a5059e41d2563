"""stratified_split and the ImageSet helpers added with the data package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlens.data import ImageSet, stratified_split


def test_partition_proportions_and_determinism():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    train, val = stratified_split(labels, 0.2, seed=3)
    assert train.dtype == val.dtype == torch.long
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))  # a partition
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    assert torch.bincount(labels[val], minlength=3).tolist() == [10, 6, 4]  # round(0.2 * n_c) per class
    again = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    other = stratified_split(labels, 0.2, seed=4)
    assert not torch.equal(other[1], val)


def test_every_class_in_both_parts_even_when_tiny():
    labels = [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3]
    train, val = stratified_split(np.array(labels), 0.05, seed=0)
    y = np.array(labels)
    assert set(y[val.numpy()]) == {0, 1, 2}  # at least one per class with >= 2 images
    assert set(y[train.numpy()]) == {0, 1, 2, 3}  # the single image of class 3 trains
    train, val = stratified_split(labels, 0.95, seed=0)
    assert set(y[train.numpy()]) == {0, 1, 2, 3}  # at least one per class stays in train


@pytest.mark.parametrize("labels, fraction, error, message", [
    ([0, 1, 1], 0.0, ValueError, r"val_fraction must be a number strictly between 0 and 1, got 0\.0"),
    ([0, 1, 1], 1.0, ValueError, r"strictly between 0 and 1"),
    ([0, 1, 1], True, ValueError, r"strictly between 0 and 1"),
    ([0, -1, 1], 0.5, ValueError, r"labels contain -1"),
    ([0.5, 1.0], 0.5, TypeError, r"labels must be a 1-d sequence of ints"),
    ([[0, 1]], 0.5, TypeError, r"labels must be a 1-d sequence of ints"),
    ([1], 0.5, ValueError, r"a split needs at least 2"),
])
def test_bad_arguments(labels, fraction, error, message):
    with pytest.raises(error, match=message):
        stratified_split(labels, fraction, seed=0)


def _set(images: torch.Tensor, masks: torch.Tensor | None = None) -> ImageSet:
    n = images.shape[0]
    return ImageSet(images=images, labels=torch.arange(n), classes=tuple("abcdefgh"[:n]),
                    names=tuple(str(i) for i in range(n)), masks=masks)


def test_resized_keeps_constants_and_masks_follow():
    images = torch.full((2, 1, 8, 8), 90, dtype=torch.uint8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :4] = True  # the top half
    small = _set(images, masks).resized(4)
    assert small.images.shape == (2, 1, 4, 4) and (small.images == 90).all()
    assert small.masks is not None and small.masks[:, :2].all() and not small.masks[:, 2:].any()
    assert _set(images).resized((8, 8)).images is images  # nothing to do
    with pytest.raises(ValueError, match=r"size must be a positive int or \(height, width\)"):
        _set(images).resized(0)


def test_with_channels_gray_rgb_luma():
    rgb = torch.tensor([10, 20, 250], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    gray = _set(rgb).with_channels(1)
    # ITU-R 601: (299*10 + 587*20 + 114*250) / 1000 = 43.21 -> 43
    assert gray.images.shape == (1, 1, 2, 2) and (gray.images == 43).all()
    back = gray.with_channels(3)
    assert back.images.shape == (1, 3, 2, 2) and (back.images == 43).all()
    with pytest.raises(ValueError, match=r"channels must be 1 \(gray\) or 3 \(RGB\)"):
        gray.with_channels(2)


def test_too_few_labels_names_the_dataset_and_the_flags():
    with pytest.raises(ValueError, match=r"^fer:faces\.csv: labels has 1 entries; a split needs at least 2 \(one image "
                                         r"to train on, one to validate with: val_fraction, CLI --val-fraction\); give a "
                                         r"dataset \(CLI --data\) with more images$"):
        stratified_split([3], 0.2, source="fer:faces.csv")
    with pytest.raises(ValueError, match=r"^folder:d: labels contain -1"):
        stratified_split([0, -1, 1], 0.5, source="folder:d")
