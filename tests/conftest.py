"""Shared fixtures: small random models of the shapes users have, deterministic and fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo_models import seeded

torch.set_num_threads(1)  # pytest-xdist runs one worker per core


class ResidualNet(nn.Module):
    """conv + BN + in-place ReLU + max-pool + a residual block + GAP + linear: the shapes users train."""

    def __init__(self, in_channels: int = 1, num_classes: int = 7, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.conv_a = nn.Conv2d(width, width, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(width)
        self.relu_a = nn.ReLU(inplace=True)
        self.conv_b = nn.Conv2d(width, width, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(width)
        self.relu_out = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        y = self.relu_a(self.bn_a(self.conv_a(x)))
        x = self.relu_out(x + self.bn_b(self.conv_b(y)))
        return self.fc(self.gap(self.head(x)).flatten(1))


class CentreSquare(nn.Module):
    """Class 0's logit is 10x the mean brightness of the 12x12 square in the middle of a 48x48 gray image
    (class 1's is 0), through a 1x1 convolution so there is a layer to hook: the mask of that area that keeps
    most of the score is that square (extremal perturbations' hand-worked case)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.conv(x)[:, :, 18:30, 18:30].mean(dim=(1, 2, 3))
        return torch.stack([10 * q, torch.zeros_like(q)], dim=1)


def centre_square_images(n: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random 48x48 gray images whose middle 12x12 square is one brighter."""
    x = torch.rand(n, 1, 48, 48, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x[:, :, 18:30, 18:30] += 1.0
    return x


def make_random_model(in_channels: int = 1, num_classes: int = 7, seed: int = 0) -> ResidualNet:
    """A ResidualNet with random weights and non-trivial BatchNorm statistics, in eval mode."""
    return seeded(ResidualNet(in_channels, num_classes), seed)


@pytest.fixture(params=[1, 3], ids=["gray", "rgb"])
def random_model_and_images(request: pytest.FixtureRequest) -> tuple[nn.Module, torch.Tensor]:
    """(random model, 4 random images in [0,1] of size 16x16), grayscale and RGB."""
    c = request.param
    model = make_random_model(in_channels=c, seed=c)
    images = torch.rand(4, c, 16, 16, generator=torch.Generator().manual_seed(10 + c))
    return model, images


def assert_model_untouched(model: nn.Module, modes_before: list[bool]) -> None:
    """Every module's mode as before, no parameter .grad, no hooks left."""
    assert [m.training for m in model.modules()] == modes_before
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


@pytest.fixture
def method_registry():
    """``cnnlens.explain.registry``, restored after the test: a test may register, replace or remove methods
    (``registry.method("toy", "Toy", kind="gradient")(fn)``) without the next test seeing them."""
    from cnnlens.explain import registry

    with registry.scope():
        yield registry


def replace_method(registry, name: str, fn) -> None:
    """Swap the function of registered method ``name`` for ``fn``, keeping its other facts (label, layer, ...)."""
    import dataclasses

    registry.register(dataclasses.replace(registry.get(name), fn=fn), replace=True)


def quick_xrai(model: nn.Module, images: torch.Tensor, target: object = None, **kw: object) -> torch.Tensor:
    """XRAI with 4 integrated-gradient steps over four quadrant segments per image (its Felzenszwalb
    segmentation at six scales takes ~1 s an image; ``test_explain_reference_paths.py`` checks that one)."""
    from cnnlens.explain.xrai import xrai

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        return xrai(model, images, target, **kw)  # its own error
    h, w = images.shape[2:]
    rows, cols = torch.arange(h)[:, None] < h // 2, torch.arange(w)[None, :] < w // 2
    quadrants = torch.stack([rows & cols, rows & ~cols, ~rows & cols, ~rows & ~cols]).to(images.device)
    return xrai(model, images, target, n_steps=4, segments=[quadrants] * images.shape[0], min_pixel_diff=1, **kw)
