"""The one integer, number and choice check, so "a bool is not an int" is written once.

``is_int`` / ``is_number`` are the tests; ``check_int`` and ``check_count`` raise the two messages cnnlens
uses for them (``"<name> must be an int >= <minimum>, got ..."`` and ``"<name> must be a positive int,
got ..."``), with an optional hint such as ``" (pixels)"`` before ``", got"``.

>>> check_int(steps, "steps", 0)
>>> if not is_number(sigma) or sigma <= 0: raise ValueError(...)
"""

from __future__ import annotations

import numpy as np


def is_int(value: object, minimum: int | None = None, *, numpy: bool = False) -> bool:
    """True for an ``int`` (never a ``bool``; with ``numpy``, a numpy integer too) that is ``>= minimum``."""
    kinds = (int, np.integer) if numpy else int
    if isinstance(value, bool) or not isinstance(value, kinds):
        return False
    return minimum is None or value >= minimum  # type: ignore[operator]


def is_number(value: object) -> bool:
    """True for an ``int`` or ``float`` (numpy floats included), never a ``bool``."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_int(value: object, name: str, minimum: int = 1, *, hint: str = "", numpy: bool = False) -> int:
    """``value`` if :func:`is_int` ``(value, minimum)``, else ``ValueError("<name> must be an int >= <minimum><hint>, got ...")``."""
    if not is_int(value, minimum, numpy=numpy):
        raise ValueError(f"{name} must be an int >= {minimum}{hint}, got {value!r}")
    return value  # type: ignore[return-value]


def check_count(value: object, name: str, *, hint: str = "", numpy: bool = False) -> int:
    """``value`` if it is an int >= 1, else ``ValueError("<name> must be a positive int<hint>, got ...")``."""
    if not is_int(value, 1, numpy=numpy):
        raise ValueError(f"{name} must be a positive int{hint}, got {value!r}")
    return value  # type: ignore[return-value]


def check_choice(value: object, choices: tuple[str, ...], name: str) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError("<name> must be one of 'a', 'b', got ...")``.

    >>> check_choice(split, ("train", "val", "test"), "split")
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
