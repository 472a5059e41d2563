"""Architectures: shapes, parameter counts worked out by hand, the CAM structure, the registry's errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.models import MODELS, ResNet18, build, total_params
from cnnlens.models._common import Normalize

TORCHVISION_RESNET18_PARAMS = 11_689_512  # torchvision.models.resnet18(), 3 channels, 1000 classes


def _seeded(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return build(name, **kwargs)


def test_registry_has_the_three_architectures() -> None:
    assert list(MODELS) == ["small_cnn", "vgg_fer", "resnet18"]
    assert MODELS["resnet18"] is ResNet18


def test_unknown_model_lists_the_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg'; available models: small_cnn, vgg_fer, resnet18"):
        build("vgg", in_channels=1, num_classes=7, input_size=48)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("c", "h", "w", "k"), [(1, 48, 48, 7), (3, 32, 40, 11)])
def test_forward_shape_any_channels_size_classes(name: str, c: int, h: int, w: int, k: int) -> None:
    model = _seeded(name, in_channels=c, num_classes=k, input_size=(h, w)).eval()
    x = torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, k) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # the output depends on the image


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_are_linear_in_the_pooled_cam_layer(name: str) -> None:
    """CAM applies: logit_k = sum_c w_kc mean_xy A_c(x, y) + b_k with A the output of ``cam_layer``."""
    model = _seeded(name, in_channels=1, num_classes=5, input_size=32, dropout=0.5).eval()
    layer = dict(model.named_modules())[model.cam_layer]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            logits = model(torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2)))
    finally:
        handle.remove()
    pooled = seen[0].mean(dim=(2, 3))
    expected = pooled @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_resnet18_has_torchvision_parameter_count() -> None:
    model = build("resnet18", in_channels=3, num_classes=1000, input_size=224)
    assert total_params(model) == TORCHVISION_RESNET18_PARAMS
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_resnet18_small_input_gets_3x3_stem_without_pool() -> None:
    model = build("resnet18", in_channels=1, num_classes=7, input_size=48)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    # the stem conv changes from 3*64*7*7 to 1*64*3*3 weights, the head from 1000 to 7 classes of 512+1
    expected = TORCHVISION_RESNET18_PARAMS - 3 * 64 * 49 + 1 * 64 * 9 - 1000 * 513 + 7 * 513
    assert total_params(model) == expected == 11_171_271
    seen: list[tuple[int, ...]] = []
    handle = model.layer4.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        with torch.no_grad():
            model.eval()(torch.rand(1, 1, 48, 48))
    finally:
        handle.remove()
    assert seen == [(1, 512, 6, 6)]  # 48 / 8: three stride-2 stages


def test_resnet18_stem_boundary_is_96_pixels() -> None:
    assert build("resnet18", in_channels=3, num_classes=2, input_size=95).small_stem
    assert not build("resnet18", in_channels=3, num_classes=2, input_size=96).small_stem
    assert build("resnet18", in_channels=3, num_classes=2, input_size=(200, 64)).small_stem  # smaller side decides


def test_small_cnn_layers_have_readable_names() -> None:
    model = build("small_cnn", in_channels=1, num_classes=7, input_size=48)
    names = [n for n, _ in model.named_modules() if n]
    assert names[:6] == ["normalize", "block1", "block1.conv", "block1.bn", "block1.relu", "block1.pool"]
    assert names[-4:] == ["gap", "flatten", "dropout", "fc"]
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)] == ["block1.conv", "block2.conv", "block3.conv"]
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [64, 128, 512]
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert model.cam_layer == "block3"


def test_vgg_fer_has_two_convs_per_stage() -> None:
    model = build("vgg_fer", in_channels=1, num_classes=7, input_size=48)
    convs = [(n, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(f"stage{s}.conv{i}", w) for s, w in zip(range(1, 5), (64, 128, 256, 512)) for i in (1, 2)]
    # conv weights (no bias) + BN (2 per channel) + fc, counted by hand
    convs_params = 1 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 128 * 128 * 9 + 128 * 256 * 9 + 256 * 256 * 9 + 256 * 512 * 9 + 512 * 512 * 9
    bn_params = 2 * 2 * (64 + 128 + 256 + 512)
    assert total_params(model) == convs_params + bn_params + 512 * 7 + 7


def test_models_normalise_inputs_inside() -> None:
    model = build("small_cnn", in_channels=1, num_classes=7, input_size=48)
    assert isinstance(model.normalize, Normalize)
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(model.normalize(x), torch.tensor([-2.0, -1.0, 0.0, 2.0]))
    assert not list(model.normalize.parameters()) and not list(model.normalize.buffers())


def test_build_passes_options_and_rejects_unknown_ones() -> None:
    model = build("small_cnn", in_channels=1, num_classes=7, input_size=48, dropout=0.3, channels=(8, 16))
    assert model.dropout.p == 0.3
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [8, 16]
    assert model.cam_layer == "block2"
    with pytest.raises(TypeError, match=r"model 'vgg_fer' does not take option\(s\) \['width'\]"):
        build("vgg_fer", in_channels=1, num_classes=7, input_size=48, width=3)


@pytest.mark.parametrize(("name", "kwargs", "error", "match"), [
    ("small_cnn", {"in_channels": 0}, ValueError, r"in_channels must be a positive int, got 0"),
    ("resnet18", {"num_classes": 2.5}, TypeError, r"num_classes must be a positive int, got 2.5"),
    ("vgg_fer", {"input_size": 8}, ValueError, r"vgg_fer needs input_size of at least 16x16 pixels, got 8x8"),
    ("small_cnn", {"input_size": (48, 4)}, ValueError, r"small_cnn needs input_size of at least 8x8 pixels, got 48x4"),
    ("small_cnn", {"input_size": "48"}, TypeError, r"input_size must be an int or an \(H, W\) pair"),
    ("small_cnn", {"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\)"),
])
def test_bad_arguments_raise_clear_errors(name: str, kwargs: dict, error: type, match: str) -> None:
    args = {"in_channels": 1, "num_classes": 7, "input_size": 48, **kwargs}
    with pytest.raises(error, match=match):
        build(name, **args)


def test_small_cnn_trains_in_channels_last() -> None:
    """One optimisation step in channels_last memory format (what the trainer uses) lowers the loss."""
    torch.manual_seed(0)
    model = build("small_cnn", in_channels=1, num_classes=3, input_size=16, channels=(8, 16, 32)).to(memory_format=torch.channels_last)
    x = torch.rand(12, 1, 16, 16).to(memory_format=torch.channels_last)
    y = torch.arange(12) % 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]

