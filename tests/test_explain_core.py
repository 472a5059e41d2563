"""The shared explainer machinery: target resolution, default layers, guarding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.explain import core, grad_cam
from cnnlens.models import build


def test_resolve_target_forms() -> None:
    assert core.resolve_target(2, 3).tolist() == [2, 2, 2]
    assert core.resolve_target([0, 1, 2], 3).tolist() == [0, 1, 2]
    assert core.resolve_target(torch.tensor(4), 2).tolist() == [4, 4]
    logits = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    assert core.resolve_target(None, 2, logits=lambda: logits).tolist() == [1, 0]


@pytest.mark.parametrize("target, match", [
    ([0, 1], "2 entries but images has N=3"),
    (torch.tensor([0.5, 1.0, 2.0]), "must hold integers"),
    ("happy", "must be None, an int"),
    (True, "got a bool"),
    ([0, 1, 9], r"must be in \[0, 6\]"),
])
def test_resolve_target_errors(target: object, match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        core.resolve_target(target, 3, 7)  # type: ignore[arg-type]


def test_default_cam_layer_prefers_the_models_pooled_map() -> None:
    model = build("small_cnn", in_channels=1, num_classes=7, input_size=48).eval()
    assert core.default_cam_layer(model) == "block3"
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    assert core.default_cam_layer(plain) == "2"
    # The default Grad-CAM equals an explicit Grad-CAM of that layer.
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grad_cam(model, x), grad_cam(model, x, layer="block3"))


def test_guarded_restores_modes_and_flags_after_error() -> None:
    model = build("small_cnn", in_channels=1, num_classes=3, input_size=16)
    model.train()
    model.block2.eval()
    before = [m.training for m in model.modules()]
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(RuntimeError, match="boom"), core.guarded(model, x):
        assert not model.training
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
    assert not x.requires_grad


def test_gaussian_blur_borders_keep_a_constant_image_and_refuse_unknown_ones():
    from cnnlens.explain.core import gaussian_blur

    flat = torch.full((1, 2, 5, 7), 0.3, dtype=torch.float64)
    for border in ("reflect", "replicate"):  # replicate also where 3 sigma exceeds the image (reflect cannot)
        torch.testing.assert_close(gaussian_blur(flat, 4.0, border=border), flat, rtol=0, atol=1e-15)
    assert gaussian_blur(flat, 4.0, border="zeros")[0, 0, 0, 0] < 0.3  # zeros darken the edge
    assert torch.equal(gaussian_blur(flat, 0.0), flat) and gaussian_blur(flat, 0.0) is not flat
    with pytest.raises(ValueError, match="border must be one of 'reflect', 'replicate', 'zeros'"):
        gaussian_blur(flat, 1.0, border="wrap")
