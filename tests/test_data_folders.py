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


# --- folders matched to a model's class names (issue 11) -----------------------------------------------------

FER7 = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")


def _faces_folder(root, folders):
    for k, name in enumerate(folders):
        _save(root / name / "a.png", _solid(10 * k + 5, (8, 8), channels=1))
        _save(root / name / "b.png", _solid(10 * k + 6, (8, 8), channels=1))
    return root


def test_folder_subset_of_the_classes_gets_their_positions_not_alphabetical_ones(tmp_path):
    root = _faces_folder(tmp_path / "photos", ["happy", "neutral", "surprise"])
    data = load_folder(root, classes=FER7)
    assert data.classes == FER7
    assert data.labels.tolist() == [3, 3, 6, 6, 5, 5]  # Happy=3, Neutral=6, Surprise=5 (not 0, 1, 2)
    assert data.names == ("happy/a.png", "happy/b.png", "neutral/a.png", "neutral/b.png", "surprise/a.png",
                          "surprise/b.png")
    assert data.images[:, 0, 0, 0].tolist() == [5, 6, 15, 16, 25, 26]  # the images follow their folders
    same = load_dataset(f"folder:{root}", classes=list(FER7))
    assert torch.equal(same.labels, data.labels) and same.classes == FER7


@pytest.mark.parametrize("folder, label", [("03_happy", 3), ("3-Happy", 3), ("HAPPY", 3), ("06_NEUTRAL", 6),
                                           ("00 angry", 0), ("Surprise", 5)])
def test_folder_names_match_ignoring_case_and_a_numeric_prefix(tmp_path, folder, label):
    root = _faces_folder(tmp_path / "d", [folder, "sad"])
    data = load_folder(root, classes=FER7)
    by_folder = dict(zip((n.split("/")[0] for n in data.names), data.labels.tolist()))
    assert by_folder == {folder: label, "sad": 4}


def test_class_names_with_spaces_match_folders_with_underscores(tmp_path):
    root = _faces_folder(tmp_path / "food", ["dairy_product", "10-Vegetable-Fruit"])
    classes = ("Bread", "Dairy product", "Vegetable Fruit")
    assert load_folder(root, classes=classes).labels.tolist() == [2, 2, 1, 1]  # folders in sorted order


def test_a_folder_matching_no_class_names_the_folder_and_the_valid_names(tmp_path):
    root = _faces_folder(tmp_path / "d", ["happy", "smiling"])
    with pytest.raises(DataError, match=r"d/smiling: folder 'smiling' matches none of the 7 class names \(Angry, "
                                        r"Disgust, Fear, Happy, Sad, Surprise, Neutral\); rename it") as info:
        load_folder(root, classes=FER7)
    assert info.value.file == str(root / "smiling")


def test_two_folders_matching_one_class_are_an_error(tmp_path):
    root = _faces_folder(tmp_path / "d", ["03_happy", "Happy"])
    with pytest.raises(DataError, match=r"folders '03_happy' and 'Happy' both match class 'Happy'"):
        load_folder(root, classes=FER7)


def test_bad_class_name_lists(tmp_path):
    root = _faces_folder(tmp_path / "d", ["happy"])
    with pytest.raises(TypeError, match=r"classes must be a sequence of non-empty class names"):
        load_folder(root, classes="Angry,Happy")
    with pytest.raises(TypeError, match=r"classes must be a sequence of non-empty class names"):
        load_folder(root, classes=["Happy", ""])
    with pytest.raises(ValueError, match=r"classes 'Happy' and '01_happy' are the same name"):
        load_folder(root, classes=["Happy", "01_happy"])


def test_split_folders_are_matched_in_every_split(tmp_path):
    _faces_folder(tmp_path / "d" / "train", ["happy", "02_Fear"])
    _faces_folder(tmp_path / "d" / "val", ["fear"])
    assert load_folder(tmp_path / "d", "train", classes=FER7).labels.tolist() == [2, 2, 3, 3]
    val = load_folder(tmp_path / "d", "val", classes=FER7)
    assert val.labels.tolist() == [2, 2] and val.classes == FER7
    _faces_folder(tmp_path / "d" / "val", ["grumpy"])
    with pytest.raises(DataError, match=r"val/grumpy: folder 'grumpy' matches none"):
        load_folder(tmp_path / "d", "val", classes=FER7)


def test_without_class_names_labels_are_positions_and_the_log_says_so_once(tmp_path, caplog):
    root = _faces_folder(tmp_path / "d", ["zebra", "cat"])
    with caplog.at_level(logging.WARNING, logger="cnnlens.data"):
        data = load_folder(root)
        load_folder(root)
    assert data.classes == ("cat", "zebra") and data.labels.tolist() == [0, 0, 1, 1]
    told = [r for r in caplog.records if "no class names given" in r.getMessage()]
    assert len(told) == 1
    assert "labels are the class folders' positions in sorted order (0=cat, 1=zebra)" in told[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlens.data"):
        load_folder(_faces_folder(tmp_path / "named", ["cat"]), classes=["cat", "zebra"])
    assert "no class names given" not in caplog.text


# --- nothing left out silently (issue 16) ---------------------------------------------------------------------

def test_files_not_loaded_are_counted_by_reason_in_one_warning(tmp_path, caplog):
    root = tmp_path / "d"
    _save(root / "cat" / "a.png", _solid(1, (8, 8)))
    (root / "cat" / "IMG_1.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (root / "cat" / "IMG_2.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    _save(root / "cat" / "old" / "b.png", _solid(2, (8, 8)))
    _save(root / "cat" / "old" / "deeper" / "c.png", _solid(3, (8, 8)))
    _save(root / "dog" / "a.png", _solid(4, (8, 8)))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"hidden: neither loaded nor counted")
    _save(root / "stray.png", _solid(5, (8, 8)))
    with caplog.at_level(logging.WARNING, logger="cnnlens.data"):
        data = load_folder(root, classes=["cat", "dog"])
    assert data.names == ("cat/a.png", "dog/a.png")
    [message] = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    assert "6 files of split 'train' not loaded" in message
    assert "2 files .heic photos are not read (Pillow needs a plugin for them); convert them to .jpg or .png " \
           "(e.g. cat/IMG_1.heic)" in message
    assert "2 files in a sub-folder of a class folder" in message and "(e.g. cat/old/b.png)" in message
    assert "1 file not an image type cnnlens reads (.txt;" in message
    assert "1 file directly in the dataset folder, not in a class folder (e.g. stray.png)" in message


def test_food11_counts_skipped_files_and_takes_only_ascii_digit_names(food, caplog):
    root, _ = food
    (root / "training" / "5_9.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with caplog.at_level(logging.WARNING, logger="cnnlens.data"):
        load_food11(root, "train", image_size=8)
    assert "1 file of split 'train' not loaded: 1 file .heic photos are not read" in caplog.text
    for name in ("+3_1", "\u0663_1", "3_\u0661", "3_1_2", "\uff13_1"):
        bad = root / "training" / f"{name}.jpg"
        _save(bad, _solid(9))
        with pytest.raises(DataError, match=r"expected a file name <label>_<index>\.jpg with label 0\.\.10 in ASCII "
                                            r"digits, got ") as info:
            load_food11(root, "train", image_size=8)
        assert info.value.file == str(bad)
        bad.unlink()


# --- deep and float TIFFs are scaled, not saturated or black (issue 16) ----------------------------------------

def _tiff(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="TIFF")
    with Image.open(path) as im:
        return im.mode


@pytest.mark.parametrize("array, mode, expected", [
    (np.array([[0.0, 0.25], [0.5, 1.0]], np.float32), "F", [0, 64, 128, 255]),           # [0,1] intensities
    (np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32), "F", [0, 64, 128, 255]),           # own range
    (np.array([[0, 100], [200, 255]], np.int32), "I", [0, 100, 200, 255]),               # 8-bit data in 32 bits
    (np.array([[0, 65535], [32768, 257]], np.int32), "I", [0, 255, 128, 1]),             # 16-bit data in 32 bits
    (np.array([[0, 70000], [140000, 280000]], np.int32), "I", [0, 64, 128, 255]),        # beyond 16 bits: own range
    (np.array([[-500, 0], [500, 1500]], np.int32), "I", [0, 64, 128, 255]),              # negative: own range
    (np.array([[0, 65535], [4095, 1000]], np.uint16), "I;16", [0, 255, 16, 4]),          # declared 16-bit range
])
def test_deep_tiffs_are_scaled_by_the_stated_rule(tmp_path, array, mode, expected):
    assert _tiff(tmp_path / "d" / "a" / "x.tif", array) == mode
    data = load_folder(tmp_path / "d")
    assert data.images.shape == (1, 1, 2, 2)
    assert data.images[0, 0].flatten().tolist() == expected
    rgb = load_folder(tmp_path / "d", channels=3)
    assert rgb.images[0, 1].flatten().tolist() == expected


def test_big_endian_16_bit_and_nan_tiffs(tmp_path):
    from cnnlens.data._images import to_uint8

    assert to_uint8(np.array([[0, 65535]], ">u2")).tolist() == [[0, 255]]
    _tiff(tmp_path / "d" / "a" / "ok.tif", np.array([[0.0, 1.0]], np.float32))
    _tiff(tmp_path / "d" / "a" / "nan.tif", np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(DataError, match=r"a/nan\.tif: cannot read image \(ValueError: 1 pixels are NaN or infinite\)"):
        load_folder(tmp_path / "d")


def test_float_images_are_float32_whatever_the_index():
    from cnnlens.data.imageset import ImageSet

    data = ImageSet(images=torch.full((3, 1, 2, 2), 255, dtype=torch.uint8), labels=torch.zeros(3, dtype=torch.long),
                    classes=("a",), names=("0", "1", "2"))
    for index in (None, [0, 2], torch.tensor([1]), slice(0, 2), np.array([0, 1])):
        x = data.float_images(index)
        assert x.dtype == torch.float32 and float(x.max()) == 1.0
    with pytest.raises(TypeError, match=r"ImageSet\.images must be uint8 \[N,C,H,W\], got torch\.float64"):
        ImageSet(images=torch.zeros(1, 1, 2, 2, dtype=torch.float64), labels=torch.zeros(1, dtype=torch.long),
                 classes=("a",), names=("0",))


def test_crop_policy_works_on_each_photo_of_a_mixed_size_folder(tmp_path):
    # Each photo: a white centre square of its own short side, black elsewhere. Cropped to 16x16, every
    # photo is all white; squashed, the wide and tall ones keep black bands (and mixed sizes are never
    # squashed to a common square first).
    from cnnlens.data import load_dataset
    from cnnlens.data.preprocess import Preprocess

    for name, (h, w) in {"a/wide.png": (30, 90), "a/tall.png": (90, 30), "b/square.png": (50, 50)}.items():
        px = np.zeros((h, w), dtype=np.uint8)
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        px[top:top + s, left:left + s] = 255
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(px, "L").save(tmp_path / name)
    spec = f"folder:{tmp_path}"
    cropped = load_dataset(spec, image_size=16, resize="crop")
    assert cropped.images.shape == (3, 1, 16, 16) and int(cropped.images.min()) >= 200  # edges blend a little
    squashed = load_dataset(spec, image_size=16)
    assert int(squashed.images.amin(dim=(1, 2, 3)).min()) == 0  # the bands are still there
    via_preprocess = Preprocess(resize="crop", size=(16, 16)).load(spec)
    assert torch.equal(via_preprocess.images, cropped.images)
    with pytest.raises(ValueError, match="resize must be one of 'squash', 'crop', got"):
        load_dataset(spec, image_size=16, resize="stretch")
