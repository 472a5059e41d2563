"""Food-11 and ImageFolder loaders on tiny generated JPG/PNG folders, including every bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.data import FOOD11_CLASSES, DataError, load_dataset
from cnnlens.data.folder import load_folder
from cnnlens.data.food11 import load_food11


def _save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def _solid(value, size=(20, 30), channels=3):
    """A constant image: after any resize its pixels keep ``value`` (a value oracle for the loaders)."""
    shape = (size[1], size[0], channels) if channels == 3 else (size[1], size[0])
    return np.full(shape, value, dtype=np.uint8)


@pytest.fixture()
def food(tmp_path):
    root = tmp_path / "food-11"
    colours = {}
    for folder, names in {"training": ["0_0", "0_1", "10_0", "3_2", "3_10"], "validation": ["2_0", "7_5"],
                          "evaluation": ["1_0", "0003", "0001"]}.items():
        for k, name in enumerate(names):
            colour = (10 * k + 5, 100, 200 - 10 * k)
            colours[f"{folder}/{name}.jpg"] = colour
            _save(root / folder / f"{name}.jpg", np.broadcast_to(np.array(colour, np.uint8), (40, 60, 3)).copy())
    return root, colours


def test_food11_splits_labels_order_and_size(food):
    root, colours = food
    train = load_food11(root, "train", image_size=16)
    assert train.images.shape == (5, 3, 16, 16) and train.classes == FOOD11_CLASSES
    # sorted by (label, index) numerically: 3_2 before 3_10, 10_0 last
    assert train.names == ("training/0_0.jpg", "training/0_1.jpg", "training/3_2.jpg", "training/3_10.jpg",
                           "training/10_0.jpg")
    assert train.labels.tolist() == [0, 0, 3, 3, 10]
    for img, name in zip(train.images, train.names):  # solid colours survive JPEG + resize within a few levels
        assert np.abs(img.float().mean((1, 2)).numpy() - np.array(colours[name])).max() < 4
    assert load_food11(root, "val").images.shape == (2, 3, 128, 128)  # default size
    test = load_food11(root, "test", image_size=8)
    assert test.names == ("evaluation/1_0.jpg", "evaluation/0001.jpg", "evaluation/0003.jpg")
    assert test.labels.tolist() == [1, -1, -1]
    assert len(load_dataset(f"food11:{root}", "all", image_size=8)) == 10


def test_food11_gray_and_png_files_become_rgb(tmp_path):
    _save(tmp_path / "f" / "training" / "4_0.png", _solid(77, channels=1))
    for folder in ("validation", "evaluation"):
        _save(tmp_path / "f" / folder / "4_0.png", _solid(1, channels=1))
    train = load_food11(tmp_path / "f", "train", image_size=10)
    assert train.images.shape == (1, 3, 10, 10) and (train.images == 77).all()


def test_food11_missing_split_folder(food):
    root, _ = food
    import shutil

    shutil.rmtree(root / "validation")
    assert len(load_food11(root, "train", image_size=8)) == 5  # other splits still load
    with pytest.raises(DataError, match=r"validation: missing split folder validation/; expected .* to hold training/, validation/, evaluation/"):
        load_food11(root, "val")


def test_food11_misnamed_and_out_of_range_files(food):
    root, _ = food
    _save(root / "training" / "pizza.jpg", _solid(9))
    with pytest.raises(DataError, match=r"training/pizza\.jpg: expected a file name <label>_<index>\.jpg with label 0\.\.10"):
        load_food11(root, "train", image_size=8)
    (root / "training" / "pizza.jpg").unlink()
    _save(root / "training" / "11_3.jpg", _solid(9))
    with pytest.raises(DataError, match=r"training/11_3\.jpg: label 11 out of range: expected 0\.\.10 \(0=Bread"):
        load_food11(root, "train", image_size=8)
    skipped: list[DataError] = []
    train = load_food11(root, "train", image_size=8, skip_bad_rows=True, skipped=skipped)
    assert len(train) == 5 and [e.file.endswith("11_3.jpg") for e in skipped] == [True]


def test_food11_unreadable_image_is_named_and_skippable(food, caplog):
    root, _ = food
    (root / "training" / "5_0.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"training/5_0\.jpg: cannot read image \(UnidentifiedImageError.*expected an image file"):
        load_food11(root, "train", image_size=8)
    skipped: list[DataError] = []
    with caplog.at_level(logging.WARNING, logger="cnnlens.data"):
        train = load_food11(root, "train", image_size=8, skip_bad_rows=True, skipped=skipped)
    assert len(train) == 5 and "training/5_0.jpg" not in train.names and len(skipped) == 1
    assert "skipped 1 bad file of split 'train'" in caplog.text


def test_food11_truncated_jpeg_is_unreadable(food):
    root, _ = food
    good = (root / "training" / "0_0.jpg").read_bytes()
    (root / "training" / "6_0.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"training/6_0\.jpg: cannot read image"):
        load_food11(root, "train", image_size=8)


def test_food11_empty_split_and_missing_root(tmp_path):
    for folder in ("training", "validation", "evaluation"):
        (tmp_path / "f" / folder).mkdir(parents=True)
    with pytest.raises(DataError, match=r"training: no images; expected files named <label>_<index>\.jpg"):
        load_food11(tmp_path / "f")
    with pytest.raises(DataError, match=r"nowhere: no such folder; expected a Food-11 folder"):
        load_food11(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"image_size must be a positive int"):
        load_food11(tmp_path / "f", image_size=0)


# --- ImageFolder -------------------------------------------------------------------------------------------

def test_folder_classes_sorted_native_size_and_auto_gray(tmp_path):
    _save(tmp_path / "d" / "zebra" / "a.png", _solid(200, (12, 10), channels=1))
    _save(tmp_path / "d" / "cat" / "b.png", _solid(50, (12, 10), channels=1))
    _save(tmp_path / "d" / "cat" / "a.png", _solid(60, (12, 10), channels=1))
    (tmp_path / "d" / "cat" / "notes.txt").write_text("ignored: not an image")
    data = load_folder(tmp_path / "d")
    assert data.classes == ("cat", "zebra") and data.labels.tolist() == [0, 0, 1]
    assert data.names == ("cat/a.png", "cat/b.png", "zebra/a.png")
    assert data.images.shape == (3, 1, 10, 12)  # all gray, one common size: kept as they are
    assert data.images[:, 0, 0, 0].tolist() == [60, 50, 200]


def test_folder_mixed_gray_and_colour_is_rgb_and_channels_option(tmp_path):
    _save(tmp_path / "d" / "a" / "x.png", _solid(30, channels=1))
    _save(tmp_path / "d" / "b" / "y.png", np.stack([_solid(10, channels=1), _solid(20, channels=1),
                                                    _solid(250, channels=1)], -1))
    rgb = load_folder(tmp_path / "d", image_size=8)
    assert rgb.images.shape == (2, 3, 8, 8)
    assert rgb.images[0, :, 0, 0].tolist() == [30, 30, 30] and rgb.images[1, :, 0, 0].tolist() == [10, 20, 250]
    gray = load_folder(tmp_path / "d", image_size=8, channels=1)
    # Pillow's luma: (299*10 + 587*20 + 114*250) / 1000 = 43.21
    assert gray.images.shape == (2, 1, 8, 8) and gray.images[:, 0, 0, 0].tolist() == [30, 43]
    with pytest.raises(ValueError, match=r"channels must be 1 \(gray\), 3 \(RGB\) or None"):
        load_folder(tmp_path / "d", channels=2)


def test_folder_different_sizes_are_resized_to_128_by_default(tmp_path):
    _save(tmp_path / "d" / "a" / "x.jpg", _solid(90, (20, 30)))
    _save(tmp_path / "d" / "a" / "y.jpg", _solid(90, (31, 17)))
    data = load_folder(tmp_path / "d")
    assert data.images.shape == (2, 3, 128, 128)
    assert (data.images.float() - 90).abs().max() <= 3


def test_folder_empty_class_folder(tmp_path):
    _save(tmp_path / "d" / "a" / "x.png", _solid(1))
    (tmp_path / "d" / "b").mkdir()
    (tmp_path / "d" / "b" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"d/b: class folder 'b' has no images; expected at least one \.jpg/.*\(found readme\.md\)"):
        load_folder(tmp_path / "d")


def test_folder_unreadable_image_named_and_skippable(tmp_path):
    _save(tmp_path / "d" / "a" / "x.png", _solid(1))
    _save(tmp_path / "d" / "b" / "y.png", _solid(2))
    (tmp_path / "d" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"b/broken\.png: cannot read image .*expected an image file"):
        load_folder(tmp_path / "d")
    skipped: list[DataError] = []
    data = load_dataset(f"folder:{tmp_path / 'd'}", skip_bad_rows=True, skipped=skipped)
    assert data.names == ("a/x.png", "b/y.png") and len(skipped) == 1


def test_folder_with_split_folders(tmp_path):
    _save(tmp_path / "d" / "train" / "cat" / "1.png", _solid(1))
    _save(tmp_path / "d" / "train" / "dog" / "1.png", _solid(2))
    _save(tmp_path / "d" / "valid" / "dog" / "2.png", _solid(3))
    train = load_folder(tmp_path / "d", "train")
    val = load_folder(tmp_path / "d", "val")
    assert train.classes == val.classes == ("cat", "dog")
    assert val.labels.tolist() == [1] and val.names == ("valid/dog/2.png",)
    assert len(load_folder(tmp_path / "d", "all")) == 3
    with pytest.raises(DataError, match=r"test: missing split folder for 'test': expected one of test/ in .* \(found train/, valid/\)"):
        load_folder(tmp_path / "d", "test")


def test_folder_without_split_folders_has_no_val(tmp_path):
    _save(tmp_path / "d" / "train" / "1.png", _solid(1))  # a class that happens to be called "train"
    _save(tmp_path / "d" / "test" / "1.png", _solid(2))
    data = load_folder(tmp_path / "d")
    assert data.classes == ("test", "train")
    with pytest.raises(DataError, match=r"missing split folder for 'val': .* is a single ImageFolder .*stratified_split"):
        load_folder(tmp_path / "d", "val")


def test_folder_no_class_folders(tmp_path):
    _save(tmp_path / "d" / "x.png", _solid(1))
    with pytest.raises(DataError, match=r"d: no class folders; expected one sub-folder of images per class \(found 1 images directly"):
        load_folder(tmp_path / "d")


def test_load_dataset_spec_errors_and_conversions(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset spec 'imagenet:x': expected one of synth:DIR, fer:FILE\.csv, food11:DIR, folder:DIR"):
        load_dataset("imagenet:x")
    with pytest.raises(ValueError, match=r"unknown dataset spec 'data/faces'"):
        load_dataset("data/faces")
    with pytest.raises(ValueError, match=r"names no path: expected fer:FILE\.csv"):
        load_dataset("fer:")
    with pytest.raises(DataError, match=r"no faces\.csv; expected a folder written by `cnnlens data synth"):
        load_dataset(f"synth:{tmp_path}")
    _save(tmp_path / "d" / "a" / "x.png", _solid(100, (6, 6)))
    data = load_dataset(f"folder:{tmp_path / 'd'}", channels=3)
    assert data.images.shape == (1, 3, 6, 6) and data.images.dtype == torch.uint8
