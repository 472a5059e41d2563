"""FER2013 CSV loader: both layouts, splits, masks, every bad row, skip_bad_rows."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from cnnlens.data import DataError, load_dataset
from cnnlens.data.errors import raise_or_skip
from cnnlens.data.fer import FER_CLASSES, format_pixel_rows, load_fer, parse_pixel_rows, write_fer_csv

P = 48 * 48


def _pixels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)


def _text(img: np.ndarray) -> str:
    """Pixel field written the slow, obvious way (the oracle for the bulk parser)."""
    return " ".join(str(int(v)) for v in img.reshape(-1))


def _kaggle(path, imgs, labels, usage, header="emotion,pixels,Usage", newline="\n"):
    rows = [header] + [f"{lab},{_text(im)},{u}" for im, lab, u in zip(imgs, labels, usage)]
    path.write_text(newline.join(rows) + newline)
    return path


def test_kaggle_layout_splits_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = _pixels(rng, 6)
    labels = [0, 6, 3, 2, 5, 1]
    usage = ["Training", "PublicTest", "Training", "PrivateTest", "Training", "PublicTest"]
    path = _kaggle(tmp_path / "fer2013.csv", imgs, labels, usage)

    train = load_fer(path, "train")
    assert train.images.shape == (3, 1, 48, 48) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), imgs[[0, 2, 4]])
    assert train.labels.tolist() == [0, 3, 5]
    assert train.names == ("fer2013.csv:2", "fer2013.csv:4", "fer2013.csv:6")  # header is line 1
    assert train.classes == FER_CLASSES and train.masks is None
    assert load_fer(path, "val").labels.tolist() == [6, 1]
    assert load_fer(path, "test").names == ("fer2013.csv:5",)
    everything = load_fer(path, "all")
    assert np.array_equal(everything.images[:, 0].numpy(), imgs) and everything.labels.tolist() == labels


def test_kaggle_header_in_other_order_with_spaces_crlf_and_quotes(tmp_path):
    rng = np.random.default_rng(1)
    imgs = _pixels(rng, 2)
    rows = ["emotion, Usage, pixels"] + [f'{lab}, Training,"{_text(im)}"' for im, lab in zip(imgs, [4, 2])]
    path = tmp_path / "icml_face_data.csv"
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode())
    faces = load_fer(path, "train")
    assert np.array_equal(faces.images[:, 0].numpy(), imgs) and faces.labels.tolist() == [4, 2]


def test_course_layouts(tmp_path):
    rng = np.random.default_rng(2)
    imgs = _pixels(rng, 3)
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("label,feature\n" + "".join(f"{lab},{_text(im)}\n" for lab, im in zip([1, 0, 6], imgs)))
    train = load_fer(train_csv, "train")
    assert train.labels.tolist() == [1, 0, 6] and np.array_equal(train.images[:, 0].numpy(), imgs)
    assert len(load_fer(train_csv, "all")) == 3
    with pytest.raises(DataError, match=r"train\.csv: no rows for split 'val' .*stratified_split"):
        load_fer(train_csv, "val")

    test_csv = tmp_path / "test.csv"
    test_csv.write_text("id,feature\n" + "".join(f"{i},{_text(im)}\n" for i, im in enumerate(imgs)))
    test = load_fer(test_csv, "test")
    assert test.labels.tolist() == [-1, -1, -1] and np.array_equal(test.images[:, 0].numpy(), imgs)
    with pytest.raises(DataError, match=r"no rows for split 'train'"):
        load_fer(test_csv, "train")


def test_masks_beside_csv_follow_the_rows_of_the_split(tmp_path):
    rng = np.random.default_rng(3)
    imgs = _pixels(rng, 4)
    path = _kaggle(tmp_path / "faces.csv", imgs, [0, 1, 2, 3], ["Training", "PrivateTest", "Training", "Training"])
    masks = rng.random((4, 48, 48)) < 0.3
    np.save(tmp_path / "faces.masks.npy", masks)
    train = load_fer(path, "train")
    assert train.masks is not None and train.masks.dtype == torch.bool
    assert np.array_equal(train.masks.numpy(), masks[[0, 2, 3]])
    assert np.array_equal(load_fer(path, "test").masks.numpy(), masks[[1]])


def test_masks_with_the_wrong_shape_name_the_mask_file(tmp_path):
    rng = np.random.default_rng(4)
    path = _kaggle(tmp_path / "faces.csv", _pixels(rng, 2), [0, 1], ["Training"] * 2)
    np.save(tmp_path / "faces.masks.npy", np.zeros((3, 48, 48), bool))
    with pytest.raises(DataError, match=r"faces\.masks\.npy: expected a bool array \[2,48,48\].*got bool \[3, 48, 48\]"):
        load_fer(path)


def test_bulk_parser_agrees_with_python_int_on_random_rows():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 256, (300, 17))
    rows = [" ".join(str(v) for v in r).encode() for r in values]
    rows[7] = b"  " + rows[7] + b"  \r"  # stray whitespace is fine
    parsed, errors = parse_pixel_rows(rows, 17)
    assert errors == {} and np.array_equal(parsed, values)
    parsed, errors = parse_pixel_rows([b"007 0255 12", b"1 2 00000000000000000300"], 3)  # leading zeros
    assert parsed[0].tolist() == [7, 255, 12]
    assert errors == {1: "expected pixel values 0..255, got 300"}


def test_format_pixel_rows_is_the_inverse_of_parsing():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (50, 40), dtype=np.uint8)
    images[0, :4] = [0, 9, 10, 255]
    text = format_pixel_rows(images)
    assert text[0].startswith(b"0 9 10 255 ") and not text[0].endswith(b" ")
    assert [r.decode() for r in text] == [" ".join(map(str, r)) for r in images.tolist()]
    assert np.array_equal(parse_pixel_rows(text, 40)[0], images)


def test_write_fer_csv_roundtrips_through_the_loader(tmp_path):
    rng = np.random.default_rng(7)
    imgs = _pixels(rng, 5)
    write_fer_csv(tmp_path / "w.csv", imgs, [0, 1, 2, 3, 4], ["Training"] * 4 + ["PublicTest"])
    faces = load_fer(tmp_path / "w.csv", "all")
    assert np.array_equal(faces.images[:, 0].numpy(), imgs) and faces.labels.tolist() == [0, 1, 2, 3, 4]
    assert len(load_fer(tmp_path / "w.csv", "val")) == 1


# --- bad input: each error names the file, the line and what was expected ---------------------------------

def _bad_file(tmp_path, line_12: str):
    """A Kaggle file whose line 12 (the 11th data row) is ``line_12``; the other rows are good."""
    rng = np.random.default_rng(8)
    imgs = _pixels(rng, 12)
    rows = ["emotion,pixels,Usage"] + [f"{i % 7},{_text(im)},Training" for i, im in enumerate(imgs)]
    rows[11] = line_12
    path = tmp_path / "faces.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, imgs


@pytest.mark.parametrize("line_12, message", [
    ("3," + " ".join(["7"] * (P - 1)) + ",Training", r"faces\.csv line 12: expected 2304 pixel values, got 2303"),
    ("3," + " ".join(["7"] * (P + 1)) + ",Training", r"faces\.csv line 12: expected 2304 pixel values, got 2305"),
    ("3," + " ".join(["7"] * 100 + ["x1"] + ["7"] * (P - 101)) + ",Training",
     r"faces\.csv line 12: expected integer pixel values 0\.\.255 separated by spaces, got 'x1'"),
    ("3," + " ".join(["7"] * 100 + ["-4"] + ["7"] * (P - 101)) + ",Training",
     r"faces\.csv line 12: expected integer pixel values 0\.\.255 .*got '-4'"),
    ("3," + " ".join(["7"] * 100 + ["256"] + ["7"] * (P - 101)) + ",Training",
     r"faces\.csv line 12: expected pixel values 0\.\.255, got 256"),
    ("7," + " ".join(["7"] * P) + ",Training", r"faces\.csv line 12: label 7 out of range: expected 0\.\.6 \(0=Angry"),
    ("-1," + " ".join(["7"] * P) + ",Training", r"faces\.csv line 12: label -1 out of range: expected 0\.\.6"),
    ("happy," + " ".join(["7"] * P) + ",Training", r"faces\.csv line 12: expected an integer label 0\.\.6 in column 'emotion', got 'happy'"),
    ("3," + " ".join(["7"] * P), r"faces\.csv line 12: expected 3 comma-separated columns \(emotion,pixels,Usage\), got 2"),
    ("3," + " ".join(["7"] * P) + ",Trainig", r"faces\.csv line 12: expected Usage Training, PublicTest or PrivateTest, got 'Trainig'"),
])
def test_bad_row_names_file_line_and_expectation(tmp_path, line_12, message):
    path, imgs = _bad_file(tmp_path, line_12)
    with pytest.raises(DataError, match=message) as info:
        load_fer(path, "train")
    assert info.value.line == 12 and info.value.file == str(path)
    assert "(1 bad row in all;" in str(info.value) and "--skip-bad-rows" in str(info.value)

    skipped: list[DataError] = []
    faces = load_fer(path, "train", skip_bad_rows=True, skipped=skipped)
    assert len(skipped) == 1 and skipped[0].line == 12 and skipped[0].file == str(path)
    assert len(faces) == 11 and "faces.csv:12" not in faces.names
    assert np.array_equal(faces.images[:, 0].numpy(), np.delete(imgs, 10, axis=0))


def test_skipping_counts_every_bad_row_and_logs_the_count(tmp_path, caplog):
    path, _ = _bad_file(tmp_path, "9," + " ".join(["7"] * P) + ",Training")
    text = path.read_text().split("\n")
    text[3] = "1,1 2 3,Training"
    path.write_text("\n".join(text))
    with pytest.raises(DataError, match=r"faces\.csv line 4: expected 2304 pixel values, got 3 \(2 bad rows in all"):
        load_fer(path)
    skipped: list[DataError] = []
    with caplog.at_level(logging.WARNING, logger="cnnlens.data"):
        faces = load_dataset(f"fer:{path}", "train", skip_bad_rows=True, skipped=skipped)
    assert [e.line for e in skipped] == [4, 12] and len(faces) == 10
    assert "skipped 2 bad rows" in caplog.text


def test_rows_of_other_splits_are_not_checked(tmp_path):
    path, _ = _bad_file(tmp_path, "3,1 2 3,PrivateTest")
    assert len(load_fer(path, "train")) == 11
    with pytest.raises(DataError, match=r"line 12: expected 2304 pixel values, got 3"):
        load_fer(path, "test")


@pytest.mark.parametrize("header, message", [
    ("emotion,Usage", r"bad\.csv line 1: missing pixel column 'pixels' or 'feature': expected header 'emotion,pixels,Usage'"),
    ("pixels,Usage", r"bad\.csv line 1: missing column 'emotion'"),
    ("feature", r"bad\.csv line 1: missing column 'label' or 'id'"),
])
def test_missing_column(tmp_path, header, message):
    path = tmp_path / "bad.csv"
    path.write_text(header + "\n1,2\n")
    with pytest.raises(DataError, match=message) as info:
        load_fer(path)
    assert info.value.line == 1


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv: empty file; expected a header line 'emotion,pixels,Usage'"):
        load_fer(path)


def test_header_only_and_missing_file(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("label,feature\n")
    with pytest.raises(DataError, match=r"h\.csv: no data rows after the header line"):
        load_fer(path)
    with pytest.raises(DataError, match=r"nope\.csv: no such file; expected a FER2013 CSV"):
        load_fer(tmp_path / "nope.csv")


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("label,feature\n0,1 2\n1,3\n")
    with pytest.raises(DataError, match=r"all 2 rows of split 'train' are bad"):
        load_fer(path, skip_bad_rows=True)


def test_bad_split_name(tmp_path):
    path, _ = _bad_file(tmp_path, "1," + " ".join(["7"] * P) + ",Training")
    with pytest.raises(ValueError, match=r"split must be one of 'train', 'val', 'test', 'all', got 'training'"):
        load_fer(path, "training")


def test_raise_or_skip_without_a_list_still_logs(caplog):
    errors = [DataError("f.csv", "expected x", line=3)]
    with caplog.at_level(logging.WARNING, logger="cnnlens.data"):
        raise_or_skip("f.csv", "train", errors, True, None)
    assert "skipped 1 bad row of split 'train'" in caplog.text and "f.csv line 3: expected x" in caplog.text


def test_data_error_message_and_pickling():
    import pickle

    err = DataError("faces.csv", "expected 2304 pixel values, got 2303", line=12)
    assert str(err) == "faces.csv line 12: expected 2304 pixel values, got 2303"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.file, again.line, again.message, str(again)) == (err.file, 12, err.message, str(err))
    assert str(DataError("dir/x.jpg", "cannot read")) == "dir/x.jpg: cannot read"


# --- labels are ASCII digits; odd bytes and line ends get a located message (issue 16) -----------------------

@pytest.mark.parametrize("label", ["0_3", "+3", "\u0663", "3.0", "0x3", "\u00b3", "3\x0c", "\uff13"])
def test_a_label_that_python_might_read_as_3_is_an_error(tmp_path, label):
    # int() takes "0_3", "+3", Arabic-Indic "٣" and full-width "３" as 3; a FER label is plain ASCII digits
    path, _ = _bad_file(tmp_path, f"{label}," + " ".join(["7"] * P) + ",Training")
    with pytest.raises(DataError, match=r"line 12: expected an integer label 0\.\.6 in column 'emotion', got .*"
                                        r"\(plain ASCII digits 0-9 only\)") as info:
        load_fer(path)
    assert info.value.file == str(path) and info.value.line == 12


def test_leading_zeros_spaces_and_quotes_around_a_label_are_still_the_label(tmp_path):
    path, _ = _bad_file(tmp_path, ' "03" ,' + " ".join(["7"] * P) + ",Training")
    faces = load_fer(path)
    assert faces.labels[faces.names.index("faces.csv:12")] == 3


def test_huge_numbers_are_out_of_range_not_a_crash(tmp_path):
    # int() refuses strings of more than 4300 digits with a ValueError that names nothing
    path, _ = _bad_file(tmp_path, "9" * 5000 + "," + " ".join(["7"] * P) + ",Training")
    with pytest.raises(DataError, match=r"line 12: label 9{20}\.\.\. out of range: expected 0\.\.6"):
        load_fer(path)
    path, _ = _bad_file(tmp_path, "3," + " ".join(["7"] * 5 + ["1" * 5000] + ["7"] * (P - 6)) + ",Training")
    with pytest.raises(DataError, match=r"line 12: expected pixel values 0\.\.255, got 1073741824"):
        load_fer(path)


@pytest.mark.parametrize("byte", [b"\x0b", b"\x0c", b"\x00", b"\x1c", b"\x85"])
def test_a_control_byte_in_the_pixels_names_file_line_and_byte(tmp_path, byte):
    # bytes.split() takes VT and FF for spaces, so the old message search found no token (StopIteration)
    path, imgs = _bad_file(tmp_path, "3,1 2 3")  # placeholder, replaced below with raw bytes
    raw = path.read_bytes().split(b"\n")
    raw[11] = b"3," + b" ".join([b"7"] * 100) + b" 12" + byte + b"4 " + b" ".join([b"7"] * (P - 101)) + b",Training"
    path.write_bytes(b"\n".join(raw))
    with pytest.raises(DataError, match=r"line 12: expected integer pixel values 0\.\.255 separated by spaces, got "
                                        r"'12.*4'") as info:
        load_fer(path)
    assert info.value.line == 12 and info.value.file == str(path)
    if byte < b"\x20":
        assert f"control byte 0x{byte[0]:02x} at character" in str(info.value)
    skipped: list[DataError] = []
    faces = load_fer(path, skip_bad_rows=True, skipped=skipped)
    assert [e.line for e in skipped] == [12] and len(faces) == 11
    assert np.array_equal(faces.images[:, 0].numpy(), np.delete(imgs, 10, axis=0))


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
def test_every_line_ending_parses_to_the_same_images(tmp_path, newline):
    rng = np.random.default_rng(9)
    imgs = _pixels(rng, 4)
    imgs[0, 0, 1] = 0  # the first row holds " 0 ", made bad below
    path = _kaggle(tmp_path / "mac.csv", imgs, [0, 1, 2, 3], ["Training", "Training", "PublicTest", "Training"],
                   newline=newline)
    faces = load_fer(path, "all")
    assert np.array_equal(faces.images[:, 0].numpy(), imgs) and faces.labels.tolist() == [0, 1, 2, 3]
    assert faces.names == ("mac.csv:2", "mac.csv:3", "mac.csv:4", "mac.csv:5")
    raw = path.read_bytes().replace(b" 0 ", b" 0x ", 1)  # a bad value is still located on its line
    path.write_bytes(raw)
    with pytest.raises(DataError, match=r"mac\.csv line 2: expected integer pixel values"):
        load_fer(path, "all")


def test_unlabelled_id_feature_file_loads_by_default_for_explain(tmp_path):
    """FER's course test.csv (``id,feature``) holds only a test split: the default split is that one, labels -1."""
    rng = np.random.default_rng(10)
    imgs = _pixels(rng, 3)
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("id,feature\n" + "".join(f"{i},{_text(im)}\n" for i, im in enumerate(imgs)))
    faces = load_dataset(f"fer:{test_csv}")
    assert faces.labels.tolist() == [-1, -1, -1] and np.array_equal(faces.images[:, 0].numpy(), imgs)
    assert faces.names == ("test.csv:2", "test.csv:3", "test.csv:4")
    with pytest.raises(DataError, match=r"no rows for split 'train'"):  # training still asks for labelled rows
        load_dataset(f"fer:{test_csv}", "train")
    kaggle = _kaggle(tmp_path / "k.csv", imgs, [1, 2, 3], ["Training", "PublicTest", "Training"])
    assert load_dataset(f"fer:{kaggle}").labels.tolist() == [1, 3]  # elsewhere the default is still train
