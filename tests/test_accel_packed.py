"""The prepared copy's packed convolutions (``accel/packed.py``): the same function as ``nn.Conv2d`` wherever
they run on the reordered weight, ``nn.Conv2d`` itself wherever they must not (gradients, autocast, a
TorchFunctionMode), and no trace of the oneDNN tensor in the module's state.

Values are compared with the convolution in float64 at 1e-4 of the largest output: float32 kernels on any CPU
round a 3x3x64 sum to ~1e-6 of it, so the bound holds on AVX2 and AVX-512 machines alike."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlens.explain import accel
from cnnlens.explain.accel import packed
from cnnlens.explain.accel.packed import PackedConv2d, pack_convolutions

pytestmark = pytest.mark.skipif(not packed.AVAILABLE, reason="this torch build has no oneDNN convolution")

CONVS = {
    "3x3": dict(in_channels=8, out_channels=16, kernel_size=3, padding=1),
    "strided-7x7": dict(in_channels=3, out_channels=8, kernel_size=7, stride=2, padding=3),
    "dilated-no-bias": dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2, bias=False),
    "grouped-rect": dict(in_channels=8, out_channels=16, kernel_size=(3, 1), padding=(1, 0), groups=4),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),
    "1x1": dict(in_channels=8, out_channels=4, kernel_size=1),
}


def _packed(**kwargs: object) -> tuple[nn.Conv2d, PackedConv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(**kwargs).eval().requires_grad_(False)
    return plain, pack_convolutions(copy.deepcopy(plain))


def _channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def _close_to_float64(got: torch.Tensor, plain: nn.Conv2d, x: torch.Tensor) -> None:
    exact = F.conv2d(x.double(), plain.weight.double(), None if plain.bias is None else plain.bias.double(),
                     plain.stride, plain.padding, plain.dilation, plain.groups)
    assert got.dtype == torch.float32 and got.shape == exact.shape
    assert float((got.double() - exact).abs().max()) <= 1e-4 * float(exact.abs().max())


@pytest.mark.parametrize("name", list(CONVS))
def test_packed_convolution_computes_the_convolution_for_every_batch_and_image_size(name: str) -> None:
    plain, conv = _packed(**CONVS[name])
    assert type(conv) is PackedConv2d and conv._packed is None
    for n, h, w in ((4, 13, 11), (1, 13, 11), (9, 13, 11), (2, 40, 36), (3, 6, 5)):  # packed for the first shape
        x = _channels_last(n, plain.in_channels, h, w)
        with torch.inference_mode():
            _close_to_float64(conv(x), plain, x)
        with torch.no_grad():
            _close_to_float64(conv(x), plain, x)
        assert conv._packed is not None and conv._packed[1].is_mkldnn  # it did run on the packed weight


@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("weight", ["contiguous", "channels_last"])
def test_the_output_is_laid_out_as_nn_conv2d_lays_it_out(name: str, weight: str) -> None:
    # oneDNN's op answers channels-last: only a channels-last input (which nn.Conv2d answers channels-last)
    # takes it, so a contiguous map stays contiguous for the model's x.view
    plain, conv = _packed(**CONVS[name])
    if weight == "channels_last":
        for m in (plain, conv):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    c = plain.in_channels
    inputs = {"contiguous": torch.randn(2, c, 9, 9), "channels-last": _channels_last(2, c, 9, 9),
              "one-pixel": _channels_last(2, c, 1, 1), "channels-last-slice": _channels_last(4, c, 9, 9)[:, :, 1:]}
    for layout, x in inputs.items():
        with torch.no_grad():
            got, expected = conv(x), plain(x)
        assert got.stride() == expected.stride(), layout
        assert conv.packs(x) == (layout == "channels-last"), layout
        _close_to_float64(got, plain, x)


def test_a_one_channel_image_is_both_layouts_and_takes_the_plain_convolution() -> None:
    plain, conv = _packed(in_channels=1, out_channels=8, kernel_size=3, padding=1)
    for x in (torch.randn(2, 1, 9, 9), _channels_last(2, 1, 9, 9)):
        with torch.no_grad():
            assert not conv.packs(x) and conv(x).stride() == plain(x).stride()


def test_a_pass_needing_the_gradient_runs_the_plain_convolution_and_its_gradient_is_the_same() -> None:
    plain, conv = _packed(**CONVS["3x3"])
    x = _channels_last(2, 8, 9, 9)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    assert conv.packs(x) and not conv.packs(b)
    (ga,) = torch.autograd.grad(plain(a).square().sum(), a)
    (gb,) = torch.autograd.grad(conv(b).square().sum(), b)
    assert conv._packed is None  # never packed: oneDNN's packed op has no derivative
    torch.testing.assert_close(gb, ga, rtol=0, atol=0)


def test_autocast_a_function_mode_and_other_devices_or_dtypes_run_the_plain_convolution() -> None:
    plain, conv = _packed(**CONVS["3x3"])
    x = _channels_last(2, 8, 9, 9)
    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        conv(x)
    assert F.conv2d in seen  # LRP's rules and its input probe read F.conv2d calls
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv.packs(x)
        assert conv(x).dtype == torch.bfloat16
    assert not conv.packs(x.double()) and conv.packs(x)
    with warnings.catch_warnings():  # flags() also sets TF32-on-oneDNN, which warns on a CPU-only torch
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not conv.packs(x)
    assert conv.packs(x)
    assert conv._packed is None


def test_the_packed_weight_is_remade_when_the_weight_is_replaced_or_changed_through_itself() -> None:
    plain, conv = _packed(**CONVS["3x3"])
    x = _channels_last(2, 8, 9, 9)
    with torch.no_grad():
        conv(x)
        first = conv._packed
        conv.weight.mul_(2)  # bumps the weight's version
        plain.weight.mul_(2)
        _close_to_float64(conv(x), plain, x)
        assert conv._packed is not first
        conv.weight = nn.Parameter(torch.randn_like(conv.weight), requires_grad=False)
        plain.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        _close_to_float64(conv(x), plain, x)


def test_state_copies_and_pickles_carry_no_onednn_tensor() -> None:
    plain, conv = _packed(**CONVS["3x3"])
    x = _channels_last(2, 8, 9, 9)
    with torch.no_grad():
        expected = conv(x)
    assert conv._packed is not None
    assert all(not t.is_mkldnn for t in conv.state_dict().values())
    for twin in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        assert type(twin) is PackedConv2d and twin._packed is None
        with torch.no_grad():
            torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)
    assert conv._packed is not None  # copying did not drop the original's


def test_only_plain_zero_padded_convolutions_are_packed() -> None:
    class Wide(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                          Wide(4, 4, 1), nn.Conv2d(4, 4, 3), nn.ConvTranspose2d(4, 4, 2))
    pack_convolutions(model)
    assert [type(m).__name__ for m in model] == ["Conv2d", "Conv2d", "Wide", "PackedConv2d", "ConvTranspose2d"]


def test_prepare_packs_its_copy_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    x = torch.rand(5, 1, 12, 12)
    fast = accel.prepare(model)  # the first convolution reads one channel: plain; the second packed
    assert [type(m) for m in model if isinstance(m, nn.Conv2d)] == [nn.Conv2d, nn.Conv2d]
    assert [type(m) for m in fast if isinstance(m, nn.Conv2d)] == [PackedConv2d, PackedConv2d]
    for plain in (accel.prepare(model, pack=False), accel.prepare(model, channels_last=False)):
        assert [type(m) for m in plain if isinstance(m, nn.Conv2d)] == [nn.Conv2d] * 2
    with torch.inference_mode():
        got, expected = fast(x.contiguous(memory_format=torch.channels_last)), model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    assert [m._packed is not None for m in fast if isinstance(m, PackedConv2d)] == [False, True]


def test_a_copy_prepared_under_inference_mode_packs_and_serves_gradient_passes_later() -> None:
    # a user's `with torch.inference_mode(): score_cam(...)` makes the cached copy: its weights must be ordinary
    # tensors (an inference tensor has no version counter, and cannot be saved for a later backward)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = _channels_last(2, 3, 9, 9)
    with torch.inference_mode():
        fast = accel.prepare(model)
        got = fast(x)
    assert not any(p.is_inference() for p in fast.parameters())
    assert all(m._packed is not None for m in fast.modules() if isinstance(m, PackedConv2d))
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=0, atol=1e-4 * float(got.abs().max()))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fast(xg).sum(), xg)
    assert g.shape == x.shape and bool(g.abs().sum() > 0)


def test_a_weight_made_under_inference_mode_runs_the_plain_convolution() -> None:
    with torch.inference_mode():
        plain = nn.Conv2d(8, 8, 3, padding=1).eval()
        conv = pack_convolutions(copy.deepcopy(plain))
        x = _channels_last(2, 8, 9, 9)
        assert conv.weight.is_inference() and not conv.packs(x)
        _close_to_float64(conv(x), plain, x)
