"""Winograd F(4x4,3x3) convolutions: the direct convolution's values, and chosen only where faster."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.explain.accel import winograd
from cnnlens.explain.accel.incremental import conv_layer
from cnnlens.explain.accel.winograd import WinogradConv, faster, transform_weight, winograd_conv2d


@pytest.mark.parametrize("shape,padding", [((2, 3, 8, 8), (1, 1)), ((3, 5, 7, 9), (1, 1)), ((1, 4, 5, 6), (0, 0)),
                                           ((2, 2, 3, 3), (0, 0)), ((2, 3, 6, 5), (2, 1)), ((1, 2, 1, 1), (1, 1))])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_equals_the_direct_convolution_in_float64(shape, padding, bias, channels_last):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(7, shape[1], 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64) if bias else None
    got = winograd_conv2d(x, transform_weight(weight), b, padding)
    torch.testing.assert_close(got, F.conv2d(x, weight, b, padding=padding), rtol=0, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_more_images_than_one_chunk_of_tiles(monkeypatch):
    monkeypatch.setattr(winograd, "TILES", 3)  # 4 tiles an image: one image per chunk
    x = torch.randn(5, 4, 8, 7, dtype=torch.float64)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(winograd_conv2d(x, transform_weight(weight), None, (1, 1)),
                               F.conv2d(x, weight, padding=1), rtol=0, atol=1e-12)


def test_float32_rounding_is_small_on_deep_maps():
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 256, 3, padding=1).double().eval()
    x = torch.randn(4, 256, 8, 8, dtype=torch.float64).relu()
    with torch.inference_mode():
        ref = conv(x)
        got = WinogradConv(conv.float())(x.float()).double()
    # Against float64: Lavin's points 0, +-1, +-2 land 5.2e-6 away here; the points used, 0, +-1, 1/2, -2, 2.4e-6.
    assert (got - ref).abs().max() <= 4e-6 * ref.abs().max()


def test_direct_convolution_under_autocast_and_for_other_dtypes():
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(WinogradConv(conv)(x), conv(x))
        half = conv.to(torch.bfloat16)
        assert torch.equal(WinogradConv(half)(x.bfloat16()), half(x.bfloat16()))


def test_rejects_what_it_does_not_compute():
    with pytest.raises(ValueError, match="stride-1"):
        WinogradConv(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="products must be one of"):
        WinogradConv(nn.Conv2d(3, 4, 3, padding=1), products="mkl")
    with pytest.raises(ValueError, match="no output on a 2x2 map"):
        winograd_conv2d(torch.randn(1, 1, 2, 2), transform_weight(torch.randn(1, 1, 3, 3)), None, (0, 0))
    with pytest.raises(ValueError, match="mode must be"):
        faster(conv_layer(nn.Conv2d(3, 4, 3, padding=1)), (8, 3, 8, 8), mode="fast")


def test_faster_replaces_only_eligible_layers_and_times_each_shape_once(monkeypatch):
    eligible, strided = conv_layer(nn.Conv2d(3, 4, 3, padding=1)), conv_layer(nn.Conv2d(3, 4, 3, stride=2))
    assert faster(eligible, (8, 3, 8, 8), mode="never") is eligible
    assert faster(strided, (8, 3, 8, 8), mode="always") is strided
    chosen = faster(eligible, (8, 3, 8, 8), mode="always")
    assert isinstance(chosen.full, WinogradConv) and chosen.window is eligible.window
    x = torch.randn(8, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(chosen.full(x), eligible.full(x), rtol=0, atol=1e-5)

    timed = []
    monkeypatch.setattr(winograd, "_CHOSEN", {})
    ways = winograd._product_ways(torch.device("cpu"), torch.float32)
    # Winograd measured twice as fast, then twice as slow: the first measurement stands for the shape.
    for speeds in ([1.0, 0.5], [0.5, 1.0]):
        monkeypatch.setattr(winograd, "seconds_per_item",
                            lambda run, batch, t, s=speeds: timed.append(1) or s[isinstance(run, WinogradConv)])
        assert isinstance(faster(eligible, (8, 3, 8, 8)).full, WinogradConv)
    assert len(timed) == 3 * (1 + len(ways))  # three interleaved rounds of (direct, each Winograd), once
    monkeypatch.setattr(winograd, "_CHOSEN", {})
    assert faster(eligible, (8, 3, 8, 8)) is eligible  # the last speeds: Winograd slower


@pytest.mark.skipif(not winograd.onednn_products(), reason="this torch build has no oneDNN product")
@pytest.mark.parametrize("fastest", winograd.PRODUCTS)
def test_faster_keeps_the_faster_of_the_two_products(monkeypatch, fastest):
    # oneDNN's products are the faster on AMD CPUs, MKL's batched one on Intel Xeons: each shape takes what it timed
    layer = conv_layer(nn.Conv2d(3, 4, 3, padding=1))
    speeds = {None: 1.0, fastest: 0.3, ({*winograd.PRODUCTS} - {fastest}).pop(): 0.6}
    monkeypatch.setattr(winograd, "_CHOSEN", {})
    monkeypatch.setattr(winograd, "seconds_per_item", lambda run, batch, t: speeds[getattr(run, "products", None)])
    chosen = faster(layer, (8, 3, 8, 8))
    assert isinstance(chosen.full, WinogradConv) and chosen.full.products == fastest
    assert chosen.full._u is faster(layer, (8, 3, 8, 8), mode="always").full._u  # the weights transformed once
    x = torch.randn(8, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(chosen.full(x), layer.full(x), rtol=0, atol=1e-5)


def test_tile_products_through_onednn_and_the_batched_fallback_agree(monkeypatch):
    g = torch.Generator().manual_seed(3)
    v = torch.randn(36, 20, 24, generator=g, dtype=torch.float64)
    u = torch.randn(36, 16, 24, generator=g, dtype=torch.float64)
    exact = torch.bmm(v, u.transpose(1, 2))
    got = winograd.tile_products(v.float(), u.float(), torch.empty(36, 20, 16))  # oneDNN's where torch has it
    assert (got.double() - exact).abs().max() <= 1e-5 * exact.abs().max()
    batched = winograd.tile_products(v.float(), u.float(), torch.empty(36, 20, 16), via="batched")
    assert (batched.double() - exact).abs().max() <= 1e-5 * exact.abs().max()
    with pytest.raises(ValueError, match="via must be one of"):
        winograd.tile_products(v, u, torch.empty(36, 20, 16, dtype=torch.float64), via="mkl")
    monkeypatch.setattr(winograd, "_ONEDNN", [None])  # a build without the op: one batched product
    torch.testing.assert_close(winograd.tile_products(v, u, torch.empty(36, 20, 16, dtype=torch.float64)), exact,
                               rtol=0, atol=1e-12)
    assert winograd._product_ways(torch.device("cpu"), torch.float32) == ("batched",)


def test_kept_buffers_never_reach_a_result_under_inference_mode():
    # the transforms' buffers are kept from call to call (and shape to shape); the results are new tensors
    g = torch.Generator().manual_seed(4)
    convs = [nn.Conv2d(c, o, 3, padding=1).double().eval() for c, o in ((3, 5), (5, 2))]
    xs = [torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64),
          torch.randn(3, 5, 12, 12, generator=g, dtype=torch.float64)]
    with torch.inference_mode():
        first = WinogradConv(convs[0])(xs[0])
        second = WinogradConv(convs[1])(xs[1])
        again = WinogradConv(convs[0])(xs[0])
        torch.testing.assert_close(first, convs[0](xs[0]), rtol=0, atol=1e-12)  # not overwritten by the second call
        torch.testing.assert_close(second, convs[1](xs[1]), rtol=0, atol=1e-12)
        assert torch.equal(again, first)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 4, 7, 9), (3, 2, 2, 3)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_max_pool_2x2_is_torchs_exactly(shape, channels_last):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    x[0, 0, 0, :2] = float("nan")  # a NaN wins its window, as in torch's kernel
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(winograd.max_pool_2x2(x), F.max_pool2d(x, 2), rtol=0, atol=0, equal_nan=True)


def test_faster_pool_replaces_only_2x2_max_pooling():
    from cnnlens.explain.accel.incremental import _pool_layer

    two = _pool_layer(nn.MaxPool2d(2))
    assert winograd.faster_pool(two, (4, 3, 8, 8), mode="always").full is winograd.max_pool_2x2
    assert winograd.faster_pool(two, (4, 3, 8, 8), mode="never") is two
    for other in (nn.MaxPool2d(3, 2), nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(2, padding=1), nn.AvgPool2d(2)):
        layer = _pool_layer(other)
        assert winograd.faster_pool(layer, (4, 3, 8, 8), mode="always") is layer


def test_plan_forward_runs_the_full_resolution_steps_in_parts_and_equals_the_model_in_float64():
    # a batch larger than the usual size: the steps before the first max-pooling run 16 images at a time, the
    # residual block and the head on all of them; Winograd and the strided-view max-pooling forced on
    from conftest import make_random_model
    from cnnlens.explain.accel.incremental import local_plan

    model = make_random_model(3, seed=5).double()
    x = torch.rand(37, 3, 16, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    plan = local_plan(model, x[:2])
    assert winograd._full_resolution_steps(plan) is not None
    with torch.inference_mode():
        for mode in ("always", "never"):
            got = winograd.plan_forward(plan, x[:1], 40, mode=mode)(x)
            torch.testing.assert_close(got, model(x), rtol=0, atol=1e-12)


class _FunctionalNet(nn.Module):
    """F.relu before F.max_pool2d, and a ReLU whose map is also read by a residual add (not movable)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.a(x)), 2)
        r = torch.relu(self.b(x))
        x = F.max_pool2d(r + self.c(r), 2)
        return self.fc(x.mean(dim=(2, 3)))


def test_a_relu_read_only_by_max_pooling_runs_after_it_with_the_same_values():
    from cnnlens.explain.accel.incremental import local_plan
    from cnnlens.models import build

    torch.manual_seed(7)
    small = build("small_cnn", in_channels=1, num_classes=7, input_size=16, channels=(4, 8, 16)).eval()
    functional = _FunctionalNet().eval()
    for model, channels, movable in ((small, 1, 3), (functional, 2, 1)):
        x = torch.randn(5, channels, 16, 16, generator=torch.Generator().manual_seed(8))
        plan = local_plan(model, x[:2])
        moved = winograd.relu_before_max_pool(plan)
        assert len(moved) == movable  # every conv-ReLU-pool block; not the ReLU the residual add also reads
        assert all(winograd._is_relu(plan.steps[j].layer.fn) for j in moved)
        with torch.inference_mode():
            got = winograd.plan_forward(plan, x[:1], 5, mode="never")(x)
            assert torch.equal(got, plan(x))  # a maximum rounds nothing: bit for bit the plan's own order
            torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("height", "width", "padding"), [(12, 12, 1), (11, 11, 1), (10, 9, 1), (9, 14, 0), (4, 5, 0)])
def test_pooling_inside_the_tiles_gives_the_pooled_convolution(height: int, width: int, padding: int):
    # 12x12: whole tiles; the others overhang the tiles, and floor pooling drops an odd last row or column
    gen = torch.Generator().manual_seed(height * width)
    x = torch.randn(3, 5, height, width, generator=gen)
    conv = nn.Conv2d(5, 7, 3, padding=padding)
    u = winograd.transform_weight(conv.weight.detach())
    b = conv.bias.detach()
    oh, ow = height + 2 * padding - 2, width + 2 * padding - 2
    with torch.inference_mode():
        for via in winograd._product_ways(x.device, x.dtype):
            pooled = winograd.winograd_conv2d(x, u, b, (padding, padding), products=via, pool=True)
            # the same products, then the pooling: a maximum (and the bias, which commutes with it) rounds nothing
            plain = winograd.winograd_conv2d(x, u, b, (padding, padding), products=via)
            assert torch.equal(pooled, winograd.max_pool_2x2(plain))
            assert pooled.shape == (3, 7, oh // 2, ow // 2)
        x64, conv64 = x.double(), copy.deepcopy(conv).double()
        got = winograd.WinogradConv(conv64).pooled()(x64)
        torch.testing.assert_close(got, F.max_pool2d(conv64(x64), 2), rtol=0, atol=1e-12)


def test_plan_forward_pools_each_winograd_convolution_read_only_by_a_pooling():
    from cnnlens.explain.accel.incremental import Spatial, full_step, local_plan
    from cnnlens.models import build

    torch.manual_seed(3)
    small = build("small_cnn", in_channels=1, num_classes=7, input_size=16, channels=(4, 8, 16)).eval()
    for model, channels, fused in ((small, 1, 3), (_FunctionalNet().eval(), 2, 1)):
        x = torch.randn(5, channels, 16, 16, generator=torch.Generator().manual_seed(4))
        plan = local_plan(model, x[:2])
        pairs = winograd.conv_before_max_pool(plan, winograd.relu_before_max_pool(plan))
        assert len(pairs) == fused  # not the conv the residual add reads
        clean = plan.maps(x[:1])
        layers = [winograd.faster(s.layer, (5, *clean[s.inputs[0]].shape[1:]), mode="always")
                  if isinstance(s.layer, Spatial) else s.layer for s in plan.steps]
        with torch.inference_mode():
            maps = [x.contiguous(memory_format=torch.channels_last)]
            for step, layer in zip(plan.steps, layers):  # the same Winograd convolutions, pooled afterwards
                maps.append(full_step(layer, [maps[i] for i in step.inputs]))
            unfused = plan.tail(plan.head(maps[plan.last]))
            got = winograd.plan_forward(plan, x[:1], 5, mode="always")(x)
        assert torch.equal(got, unfused)
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
