"""DeepLIFT's max-pool winners: the first input within rounding noise of each window's max, on every
pooling shape (overlapping windows, padding, dilation, ceil_mode, rectangular kernels)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from cnnlens.explain.deeplift import first_argmax

POOLS = [  # (kernel, stride, padding, dilation, ceil_mode)
    (3, 2, 1, 1, False),  # ResNet's stem
    (3, 1, 1, 1, False),
    (2, 2, 0, 1, False),  # non-overlapping: the other path
    ((3, 2), (2, 1), (1, 0), 1, False),
    (3, 2, 0, 1, True),
    (2, 1, 0, 2, False),
    (3, 3, 1, 1, True),
]


def by_hand(x: torch.Tensor, kernel, stride, padding, dilation, ceil_mode, tol: float) -> torch.Tensor:
    """The definition, one window at a time: scan the window's inputs in order, keep the first within tol
    of its max."""
    two = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = two(kernel), two(stride), two(padding), two(dilation)
    oh, ow = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).shape[2:]
    h, w = x.shape[2:]
    out = torch.empty(*x.shape[:2], oh, ow, dtype=torch.long)
    for n, c, a, b in itertools.product(range(x.shape[0]), range(x.shape[1]), range(oh), range(ow)):
        cells = [(r, q) for i in range(kh) for j in range(kw)
                 if 0 <= (r := a * sh - ph + i * dh) < h and 0 <= (q := b * sw - pw + j * dw) < w]
        top = max(float(x[n, c, r, q]) for r, q in cells)
        r, q = next((r, q) for r, q in cells if float(x[n, c, r, q]) >= top - tol)
        out[n, c, a, b] = r * w + q
    return out


@pytest.mark.parametrize("pool", POOLS, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_first_argmax_is_the_first_input_within_tol_of_the_max(pool, channels_last) -> None:
    kernel, stride, padding, dilation, ceil_mode = pool
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (2, 3, 7, 9), generator=g).double()  # many exact ties
    x += 1e-9 * torch.rand(x.shape, generator=g, dtype=x.dtype)  # and near ties, within tol
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}
    out_size = tuple(F.max_pool2d(x, **args).shape[2:])
    tol = torch.full((2, 1, 1, 1), 1e-8, dtype=x.dtype)
    got = first_argmax(x, args, out_size, tol)
    assert torch.equal(got, by_hand(x, kernel, stride, padding, dilation, ceil_mode, 1e-8))
    # without ties, torch's own max-pool indices
    distinct = torch.randperm(x.numel(), generator=g).double().view(x.shape)
    _, want = F.max_pool2d(distinct, **args, return_indices=True)
    assert torch.equal(first_argmax(distinct, args, out_size, torch.zeros(2, 1, 1, 1, dtype=x.dtype)), want)


def test_non_overlapping_windows_count_a_later_max_within_its_position_gap_as_tied() -> None:
    """MaxPool2d(2)'s cheaper rule: position 0 beats the max at position 3 within 3 tol, not beyond it."""
    pool = {"kernel_size": 2, "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
    tol = torch.full((1, 1, 1, 1), 1.0, dtype=torch.float64)
    for gap, winner in ((2.5, 0), (3.5, 3)):
        x = torch.tensor([[[[10.0 - gap, 0.0], [0.0, 10.0]]]], dtype=torch.float64)
        assert int(first_argmax(x, pool, (1, 1), tol)) == winner, gap
