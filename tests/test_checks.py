"""The one integer / number check: a bool is never an int, numpy integers only where asked, messages as the callers'."""

import numpy as np
import re

import pytest

from cnnlens._checks import check_count, check_int, is_int, is_number


def test_is_int_and_is_number():
    assert is_int(3) and is_int(0, 0) and is_int(-2) and not is_int(0, 1)
    assert not is_int(True) and not is_int(2.0) and not is_int("2") and not is_int(np.int64(2))
    assert is_int(np.int64(2), 1, numpy=True) and not is_int(np.bool_(True), numpy=True)
    assert is_number(1) and is_number(0.5) and is_number(np.float64(0.5))
    assert not is_number(True) and not is_number("1") and not is_number(None)


def test_check_int_and_check_count_messages():
    assert check_int(2, "n_samples", 2) == 2 and check_count(5, "ncols") == 5
    with pytest.raises(ValueError, match=r"^steps must be an int >= 0, got -1$"):
        check_int(-1, "steps", 0)
    with pytest.raises(ValueError, match=r"^tolerance must be an int >= 0 \(pixels\), got True$"):
        check_int(True, "tolerance", 0, hint=" (pixels)")
    with pytest.raises(ValueError, match=r"^n_boot must be a positive int, got 0$"):
        check_count(0, "n_boot")
    with pytest.raises(ValueError, match=r"^n must be a positive int \(number of faces\), got 2.0$"):
        check_count(2.0, "n", hint=" (number of faces)", numpy=True)


def test_check_choice_names_the_argument_the_choices_and_what_it_got() -> None:
    from cnnlens._checks import check_choice

    assert check_choice("val", ("train", "val"), "split") == "val"
    for bad in ("holdout", "VAL", None, 1, ("val",)):
        with pytest.raises(ValueError, match=rf"split must be one of 'train', 'val', got {re.escape(repr(bad))}$"):
            check_choice(bad, ("train", "val"), "split")
