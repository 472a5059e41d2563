"""Incremental occlusion: the same map as plain occlusion (1e-5 in float32, 1e-12 in float64) on random
small_cnn / vgg_fer-like models, gray and RGB, borders and clipped patches included, and on flatten +
Linear heads written the ways people write them; box geometry and the first dense layer's update by
hand; a clear fallback (warning or log line) for models it cannot decompose; the model left untouched."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.explain.accel.incremental import (FlattenLinear, GlobalAverage, LocalPlan, Merge, NotDecomposable, Pointwise, _span,
                                          local_plan)
from cnnlens.explain.occlusion import occlusion
from cnnlens.models import build
from conftest import assert_model_untouched, make_random_model
from test_fast import random_bn
from zoo_models import build_sequential, build_view_tanh

fast_occlusion = functools.partial(occlusion, fast=True)  # incremental occlusion, warning where it falls back

CASES = [  # (patch, stride, fill, output): stride 1, clipped last patches, rectangles, both fills
    (5, 1, "black", "probability"),
    (4, 3, "white", "logit"),
    ((3, 5), (2, 3), "mean", "logit"),
    (3, 2, "black+white", "probability"),
    (7, 7, 0.3, "logit"),
]


def small(name: str, channels: int, size: int | tuple[int, int] = 16, seed: int = 0) -> nn.Module:
    """A narrow small_cnn (3 blocks) or vgg_fer (3 stages of two convs): the real layer sequence, tiny widths."""
    widths = (4, 8, 8) if name == "small_cnn" else (4, 4, 8)
    torch.manual_seed(seed)
    return random_bn(build(name, in_channels=channels, num_classes=5, input_size=size, channels=widths), seed)


class OddNet(nn.Module):
    """Padded, ceil-mode max-pooling, a strided dilated conv, padded average pooling, functional ops."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 3, padding=1), nn.BatchNorm2d(6), nn.LeakyReLU(0.1),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
            nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.AvgPool2d(2, padding=1), nn.Conv2d(8, 8, 1), nn.Tanh())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.gap(self.features(x * 2 - 1)), 1))


@pytest.mark.parametrize(("patch", "stride", "fill", "output"), CASES)
@pytest.mark.parametrize("name", ["small_cnn", "vgg_fer"])
@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_matches_plain_occlusion_in_float32(name, channels, patch, stride, fill, output):
    model = small(name, channels, seed=channels)
    x = torch.rand(2, channels, 16, 16, generator=torch.Generator().manual_seed(channels))
    ref = occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, batch_size=64)
    got = fast_occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, batch_size=37)
    assert ref.abs().max() > 1e-3  # not a comparison of two empty maps
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize(("patch", "stride", "fill", "output"), CASES[:4])
@pytest.mark.parametrize("odd", [False, True], ids=["small_cnn", "odd_layers"])
@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_exact_in_float64_on_odd_sizes_and_layers(channels, odd, patch, stride, fill, output):
    # float64 leaves only rounding: any geometry or border mistake would show far above 1e-12
    model, size = (random_bn(OddNet(channels)), (15, 9)) if odd else (small("small_cnn", channels, (13, 11)), (13, 11))
    model = copy.deepcopy(model).double()
    x = torch.rand(2, channels, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ref = occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output)
    got = fast_occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, batch_size=11)
    assert ref.abs().max() > 1e-4
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_box_geometry_by_hand():
    # rows 0..4 changed, conv 3x3 pad 1: outputs -1..5 change (7 rows) and need inputs -2..6 (9 rows)
    assert _span(0, 5, 3, 1, 1) == (-1, 7, -2, 9)
    # rows -1..5 into a 2x2 max-pool: outputs -1 (reads -2,-1) .. 2 (reads 4,5); output 3 reads 6,7: unchanged
    assert _span(-1, 7, 2, 2, 0) == (-1, 4, -2, 8)
    # a 1x1 stride-2 conv reading rows 3..6: outputs 2 (row 4) and 3 (row 6)
    assert _span(3, 4, 1, 2, 0) == (2, 2, 4, 3)


def test_result_does_not_depend_on_batch_size_and_model_is_untouched():
    model = small("small_cnn", 1).train()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    a = fast_occlusion(model, x, target=[0, 2, 4], batch_size=1, patch=4, stride=2)
    b = fast_occlusion(model, x, target=[0, 2, 4], batch_size=1000, patch=4, stride=2)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert_model_untouched(model, modes)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats not updated
    assert not a.is_inference()


class InPlaceResidual(nn.Module):
    """A residual block written with in-place ops (``out += x``, ``F.relu(..., inplace=True)``), a strided
    1x1 shortcut and a second add reading the block's input again."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.short = nn.Conv2d(4, 6, 1, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = torch.nn.functional.relu(self.conv1(x), inplace=True)
        out = self.conv2(out)
        out += self.short(x)
        out = out * 0.5 + self.short(x)
        return self.fc(torch.flatten(self.gap(torch.nn.functional.relu(out, inplace=True)), 1))


@pytest.mark.parametrize(("patch", "stride", "fill", "output"), CASES[:4])
@pytest.mark.parametrize("net", ["residual", "inplace"])
def test_residual_networks_are_incremental_and_exact_in_float64(net, patch, stride, fill, output):
    model = make_random_model(3, seed=2) if net == "residual" else random_bn(InPlaceResidual(3), seed=4)
    x = torch.rand(2, 3, 13, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plan = local_plan(model, x.float())
    assert sum(isinstance(step.layer, Merge) for step in plan.steps) >= 1
    model = copy.deepcopy(model).double()
    ref = occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, fast=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # incremental: no fallback warning
        got = fast_occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, batch_size=13)
    assert ref.abs().max() > 1e-4
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("side", [40, 96], ids=["small_stem", "maxpool_stem"])
def test_resnet18_is_incremental_and_matches_plain_occlusion(side):
    torch.manual_seed(0)
    model = random_bn(build("resnet18", in_channels=3, num_classes=4, input_size=side))
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(2))
    assert isinstance(local_plan(model, x).head, GlobalAverage)
    patch, stride = (5, 3) if side == 40 else (12, 10)
    ref = occlusion(model, x, patch=patch, stride=stride, output="logit", fast=False)
    got = fast_occlusion(model, x, patch=patch, stride=stride, output="logit")
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_boxes_never_outgrow_their_maps():
    # vgg_fer's 5x5 patch reaches every pixel of its 6x6 and 3x3 maps: those are recomputed whole, not as
    # 10x10 boxes that would mostly be padding.
    torch.manual_seed(0)
    model = random_bn(build("vgg_fer", in_channels=1, num_classes=3, input_size=48, channels=(4, 4, 4, 4)))
    plan = local_plan(model.eval(), torch.rand(1, 1, 48, 48))
    from cnnlens.explain.accel.incremental import IncrementalOcclusion, _axis, _axis_groups

    engine = IncrementalOcclusion(plan, torch.rand(1, 1, 48, 48))
    sizes = [s[0] for s in engine.sizes]
    period = engine.period[0]
    starts, shifts, lengths, whole = _axis(plan, sizes, 0, 5, 0, period)
    assert all(1 <= n <= size for n, size in zip(lengths[1:], sizes[1:]))
    first_conv = 1 + next(k for k, step in enumerate(plan.steps) if not isinstance(step.layer, Pointwise))
    assert lengths[-1] == sizes[-1] == 3 and lengths[first_conv] == 7  # 5 rows + a 3x3 conv's reach
    assert whole[-1] and not whole[first_conv]
    # every alignment class of a 5-row patch gets the same box lengths here: one group, one set of passes
    ((geo, classes),) = _axis_groups(plan, sizes, list(range(period)), 5, 0, period)
    assert classes == list(range(period))
    t, cls = torch.tensor([0, 3, 1]), torch.tensor([0, 5, 15])
    assert geo.at(len(sizes) - 1, t, cls).tolist() == [0, 0, 0]  # a whole map does not move with the patch
    expected = [_axis(plan, sizes, c, 5, 0, period)[0][first_conv] + int(tt) * shifts[first_conv]
                for tt, c in zip(t, cls.tolist())]
    assert geo.at(first_conv, t, cls).tolist() == expected


def _flat_layer_norm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LayerNorm(2 * 14 * 14),
                         nn.Linear(2 * 14 * 14, 3)).eval()


def test_undecomposable_model_falls_back_with_a_warning_that_says_why():
    model = _flat_layer_norm()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with pytest.raises(NotDecomposable, match=r"layer 3 \(LayerNorm\) reads the flattened map"):
        local_plan(model, x)
    with pytest.warns(UserWarning, match=r"incremental occlusion does not apply to this Sequential: layer 3 "
                                         r"\(LayerNorm\) reads the flattened map"):
        got = fast_occlusion(model, x, patch=4, stride=2, batch_size=8)
    ref = occlusion(model, x, patch=4, stride=2, fast=False)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_the_default_fallback_is_one_log_line_naming_the_layer(caplog):
    model, x = _flat_layer_norm(), torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger="cnnlens.explain"), warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (fast=None) logs instead of warning
        got = occlusion(model, x, patch=4, stride=4)
    [line] = [r.getMessage() for r in caplog.records if "incremental occlusion does not apply" in r.getMessage()]
    assert "layer 3 (LayerNorm) reads the flattened map" in line and "using plain occlusion" in line
    torch.testing.assert_close(got, occlusion(model, x, patch=4, stride=4, fast=False), rtol=1e-5, atol=1e-7)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlens.explain"):
        occlusion(build_view_tanh(), torch.rand(1, 1, 48, 48), patch=8, stride=8)  # decomposable: no line
    assert not [r for r in caplog.records if "does not apply" in r.getMessage()]


class ShapeDependent(nn.Module):
    """A head that keeps the traced batch size: ``x.view(int(x.size(0)), -1)`` after pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1)
        return self.fc(x.view(int(x.size(0)), -1))


class HWCFlatten(nn.Module):
    """A Keras port's flatten: channels last, then flattened (not a flatten of the [N,C,h,w] map)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.mean() > 0:  # control flow on values: no graph holds it
            x = x * 2
        return self.fc(x.mean(dim=(2, 3)))


def test_reasons_for_models_it_cannot_decompose():
    max_head = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    batch_stats = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    hwc_flatten = HWCFlatten()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(NotDecomposable, match="AdaptiveMaxPool2d.*not known to be local"):
        LocalPlan.build(max_head.eval(), x)
    with pytest.raises(NotDecomposable, match="normalises by batch statistics"):
        LocalPlan.build(batch_stats.eval(), x)
    with pytest.raises(NotDecomposable, match=r"operation permute \(permute\) is not known to be local"):
        LocalPlan.build(hwc_flatten.eval(), x)
    with pytest.raises(NotDecomposable, match="cannot be traced by torch.fx .*control flow"):
        LocalPlan.build(DataDependent().eval(), x)
    with pytest.raises(NotDecomposable, match=r"read with the example's shapes .*raised RuntimeError .* batch of 3"):
        LocalPlan.build(ShapeDependent().eval(), x)
    with pytest.raises(NotDecomposable, match="carries hooks"):
        model = _flat_layer_norm()
        model[0].register_forward_hook(lambda *a: None)
        local_plan(model, torch.rand(1, 1, 16, 16))


class FlatHead(nn.Module):
    """The FER-era CNN: conv-pool blocks in functional style, a flatten written as ``style``, dropout,
    two Linear layers with ``F.relu``."""

    STYLES = ("view", "view_size", "reshape_shape", "torch_flatten", "flatten_module", "int_size", "prod")

    def __init__(self, style: str, channels: int = 1, size: tuple[int, int] = (15, 13)) -> None:
        super().__init__()
        self.style = style
        self.conv1, self.bn = nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.flatten = nn.Flatten()
        h, w = (size[0] // 2 - 2) // 2, (size[1] // 2 - 2) // 2
        self.fc1, self.fc2 = nn.Linear(8 * h * w, 10), nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        flatten = {
            "view": lambda: x.view(-1, self.fc1.in_features),
            "view_size": lambda: x.view(x.size(0), -1),
            "reshape_shape": lambda: x.reshape(x.shape[0], -1),
            "torch_flatten": lambda: torch.flatten(x, 1),
            "flatten_module": lambda: self.flatten(x),
            "int_size": lambda: x.view(int(x.size(0)), -1),  # fx cannot trace these two: shapes as numbers
            "prod": lambda: x.view(-1, math.prod(x.shape[1:])),
        }[self.style]
        x = F.dropout(flatten(), 0.5, training=self.training)
        return self.fc2(F.relu(self.fc1(x)))


@pytest.mark.parametrize(("patch", "stride", "fill", "output"), [CASES[0], CASES[2], CASES[3]])
@pytest.mark.parametrize("style", FlatHead.STYLES)
def test_flatten_heads_are_incremental_and_exact_in_float64(style, patch, stride, fill, output):
    model = random_bn(FlatHead(style, 3), seed=6)
    x = torch.rand(2, 3, 15, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert isinstance(local_plan(model.eval(), x.float()).head, FlattenLinear)
    model = copy.deepcopy(model).double()
    ref = occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, fast=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # incremental: no fallback warning
        got = fast_occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, batch_size=13)
    assert ref.abs().max() > 1e-4
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("patch", "stride", "fill", "output"), CASES[:4])
@pytest.mark.parametrize("name", ["view_tanh", "sequential"])
def test_zoo_flatten_models_are_incremental_and_exact_in_float64(name, patch, stride, fill, output):
    # ViewTanhNet: tanh convs, a max-pool module used twice, x.view(-1, 12*9*9), three Linear with F.relu;
    # sequential_net: nn.Sequential with nn.Flatten straight into the last Linear
    model, side = (build_view_tanh(), 48) if name == "view_tanh" else (build_sequential(size=20), 20)
    x = torch.rand(2, 1, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert isinstance(local_plan(model, x.float()).head, FlattenLinear)
    model = copy.deepcopy(model).double()
    if side == 48:  # twice the patch and stride on the larger image: ~400 windows
        patch, stride = (tuple(2 * v for v in ((p, p) if isinstance(p, int) else p)) for p in (patch, stride))
    ref = occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, fast=False)
    got = fast_occlusion(model, x, patch=patch, stride=stride, fill=fill, output=output, batch_size=29)
    assert ref.abs().max() > 1e-4
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_flatten_head_matches_plain_occlusion_in_float32(channels):
    torch.manual_seed(channels)
    model = random_bn(FlatHead("view_size", channels, (24, 24)), seed=channels)
    x = torch.rand(2, channels, 24, 24, generator=torch.Generator().manual_seed(channels))
    ref = occlusion(model, x, patch=5, stride=1, output="logit", fast=False)
    got = fast_occlusion(model, x, patch=5, stride=1, output="logit", batch_size=64)
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_first_dense_layer_moves_by_the_columns_of_the_changed_box():
    # W[:, box] @ change, by hand: each change pasted into an empty map, times the whole weight
    g = torch.Generator().manual_seed(0)
    c, h, w, out = 3, 5, 4, 6
    linear = nn.Linear(c * h * w, out).double()
    head = FlattenLinear.of(linear, (c, h, w))
    change = torch.randn(4, c, 2, 3, dtype=torch.float64, generator=g)
    rows, cols = torch.tensor([0, 3, -1, 3]), torch.tensor([1, 1, 0, 2])  # the last two hang over the border
    expected = []
    for b in range(4):
        canvas = torch.zeros(c, h + 4, w + 6, dtype=torch.float64)  # 2 rows / 3 columns of margin on each side
        canvas[:, 2 + rows[b]:4 + rows[b], 3 + cols[b]:6 + cols[b]] = change[b]
        canvas[:, :2], canvas[:, 2 + h:], canvas[:, :, :3], canvas[:, :, 3 + w:] = 0, 0, 0, 0
        change[b] = canvas[:, 2 + rows[b]:4 + rows[b], 3 + cols[b]:6 + cols[b]]  # zero outside: as the engine masks
        expected.append(linear.weight @ canvas[:, 2:2 + h, 3:3 + w].reshape(-1))
    padded = F.pad(head.weight, (0, 0, 3, 3, 2, 2))
    got = head.change(change, rows, cols, padded, 2, 3)
    torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=1e-12)
    whole = torch.randn(2, c, h, w, dtype=torch.float64, generator=g)  # a whole map: one product with all of W
    at_zero = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(head.change(whole, at_zero, at_zero, padded, 2, 3), whole.reshape(2, -1) @ linear.weight.T,
                               rtol=0, atol=1e-12)


def test_the_first_dense_layer_costs_what_the_box_holds(monkeypatch):
    # ViewTanhNet's last map is 12x9x9; a 5x5 patch changes a 5x5 box of it: W's products are over 12*5*5 columns
    model = build_view_tanh()
    seen = []
    original = FlattenLinear.change

    def spy(self, change, *rest):
        seen.append(tuple(change.shape[1:]))
        return original(self, change, *rest)

    monkeypatch.setattr(FlattenLinear, "change", spy)
    fast_occlusion(model, torch.rand(1, 1, 48, 48), patch=5, stride=4)
    assert seen and all(c == 12 and h * w < 9 * 9 for c, h, w in seen)


def test_bfloat16_is_opt_in_and_close():
    model = small("small_cnn", 1, seed=3)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    ref = fast_occlusion(model, x, patch=5, stride=2, output="logit")
    low = fast_occlusion(model, x, patch=5, stride=2, output="logit", precision="bfloat16")
    assert not torch.equal(ref, low)  # it really ran in bfloat16
    centred = lambda m: (m - m.mean()).flatten()  # noqa: E731
    assert torch.corrcoef(torch.stack([centred(ref), centred(low)]))[0, 1] > 0.9


def test_bad_arguments_are_clear_errors():
    model = small("small_cnn", 1)
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"patch \(17, 17\) is larger than the images \(16x16\)"):
        fast_occlusion(model, x, patch=17)
    with pytest.raises(ValueError, match=r"stride \(4, 4\) is larger than patch \(3, 3\)"):
        fast_occlusion(model, x, patch=3, stride=4)
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16'"):
        fast_occlusion(model, x, precision="float16")
    with pytest.raises(ValueError, match="batch_size must be a positive int or None, got 0"):
        fast_occlusion(model, x, batch_size=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a decomposable model never warns
        fast_occlusion(model, x, patch=8, stride=8)


@pytest.mark.skipif("fast" not in inspect.signature(occlusion).parameters,
                    reason="occlusion() has no fast= option yet (the patch in the speed report wires it)")
def test_occlusion_fast_option_is_incremental_occlusion():
    model = small("small_cnn", 3, seed=8)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    ref = occlusion(model, x, patch=4, stride=2, fill="mean")
    got = occlusion(model, x, patch=4, stride=2, fill="mean", fast=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16'"):
        occlusion(model, x, fast=True, precision="half")


def test_plans_are_kept_per_model_and_shape_while_the_model_stays_the_same() -> None:
    from cnnlens.explain import accel

    model = make_random_model(1, seed=4).eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plan = local_plan(model, x)
        assert local_plan(model, x) is plan  # no second trace
        assert local_plan(model, x[:1]) is not plan  # another shape: its own plan
        model.stem[0].weight.data.view(-1)[7] += 0.5  # changed through .data: the plan's folded copy is stale
        fresh = local_plan(model, x)
        assert fresh is not plan
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-4, atol=1e-5)
        accel.clear_caches()
        assert local_plan(model, x) is not fresh
        handle = model.stem[0].register_forward_hook(lambda *a: None)
        try:
            with pytest.raises(NotDecomposable, match="hooks"):
                local_plan(model, x)
        finally:
            handle.remove()
