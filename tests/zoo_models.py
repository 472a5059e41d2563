"""Foreign models written in the styles people use, none of them cnnlens's: each ``build_*`` returns a
small random model in eval mode (seeded), and :data:`ZOO` names them with their input shapes.

Importable from tests (``import zoo_models``) and as a builder spec (``zoo_models:build_view_tanh``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class ViewTanhNet(nn.Module):
    """A PyPI FER model's shape: tanh convolutions, max-pool, ``x.view(-1, n)``, three linear layers with F.relu."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 12, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2, self.fc3 = nn.Linear(12 * 9 * 9, 32), nn.Linear(32, 16), nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.tanh(self.conv1(x)))
        x = self.pool(torch.tanh(self.conv2(x)))
        x = x.view(-1, 12 * 9 * 9)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class FunctionalNet(nn.Module):
    """conv + BatchNorm + ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` (no ReLU modules at all), GAP, linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 7) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x)), inplace=True), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.conv3(x).relu()
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet block: one ``self.relu`` module reused twice, a 1x1 downsample."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """torchvision-style ResNet: stem with a reused ReLU, max-pool, two BasicBlocks, avgpool, ``fc``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileStyle(nn.Module):
    """A MobileNetV3-style block: Hardswish, depthwise conv, squeeze-excitation, 1x1 projection, residual."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32),
                                       nn.Hardswish())
        self.se = SqueezeExcite(32, 8)
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 24), nn.Hardswish(),
                                  nn.Dropout(0.2), nn.Linear(24, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.project(self.se(self.depthwise(self.expand(x)))))


def sequential_net(in_channels: int = 1, num_classes: int = 7, size: int = 48) -> nn.Sequential:
    """Everything in one ``nn.Sequential``: conv, BN, ReLU, max-pool, conv, ReLU, Flatten, Linear."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * (size // 4) ** 2, num_classes))


class ActivationNet(nn.Module):
    """Two convolutions with one activation module kind (LeakyReLU, ELU, SiLU, GELU, Tanh...), GAP, linear."""

    def __init__(self, activation: type[nn.Module], in_channels: int = 1, num_classes: int = 7) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), activation(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), activation())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class TupleNet(nn.Module):
    """Returns ``(logits, auxiliary logits)``: a deep-supervision head beside the main one."""

    def __init__(self, in_channels: int = 1, num_classes: int = 7) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.main, self.aux = nn.Linear(8, num_classes), nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).mean(dim=(2, 3))
        return self.main(h), self.aux(h)


class DictNet(TupleNet):
    """Returns ``{"logits": ..., "aux": ...}``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        main, aux = super().forward(x)
        return {"logits": main, "aux": aux}


def softmax_net(in_channels: int = 1, num_classes: int = 7) -> nn.Sequential:
    """A Keras-minded model: ends in ``nn.Softmax``, so it outputs probabilities, not logits."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes), nn.Softmax(dim=1))


class NormalizedNet(nn.Module):
    """A model trained on ``Normalize(mean, std)`` inputs: it expects normalised images, not [0,1]."""

    def __init__(self, in_channels: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def seeded(model: nn.Module, seed: int) -> nn.Module:
    """Random weights from ``seed`` and non-trivial BatchNorm statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def build_view_tanh(num_classes: int = 7) -> nn.Module:
    return seeded(ViewTanhNet(num_classes), 1)


def build_functional(in_channels: int = 1, num_classes: int = 7) -> nn.Module:
    return seeded(FunctionalNet(in_channels, num_classes), 2)


def build_tiny_resnet(in_channels: int = 3, num_classes: int = 5) -> nn.Module:
    return seeded(TinyResNet(in_channels, num_classes), 3)


def build_mobile(in_channels: int = 3, num_classes: int = 4) -> nn.Module:
    return seeded(MobileStyle(in_channels, num_classes), 4)


def build_sequential(in_channels: int = 1, num_classes: int = 7, size: int = 48) -> nn.Module:
    return seeded(sequential_net(in_channels, num_classes, size), 5)


def build_activation(name: str = "ELU", in_channels: int = 1, num_classes: int = 7) -> nn.Module:
    return seeded(ActivationNet(getattr(nn, name), in_channels, num_classes), 6)


def build_tuple(in_channels: int = 1, num_classes: int = 7) -> nn.Module:
    return seeded(TupleNet(in_channels, num_classes), 7)


def build_dict(in_channels: int = 1, num_classes: int = 7) -> nn.Module:
    return seeded(DictNet(in_channels, num_classes), 7)


def build_softmax(in_channels: int = 1, num_classes: int = 7) -> nn.Module:
    return seeded(softmax_net(in_channels, num_classes), 8)


def build_normalized(in_channels: int = 3, num_classes: int = 5) -> nn.Module:
    return seeded(NormalizedNet(in_channels, num_classes), 9)


#: name -> (builder, input shape [C,H,W]) of every zoo model that returns one logits tensor.
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "view_tanh": (build_view_tanh, (1, 48, 48)),
    "functional_relu": (build_functional, (1, 20, 20)),
    "tiny_resnet": (build_tiny_resnet, (3, 24, 24)),
    "mobile_hardswish_se": (build_mobile, (3, 24, 24)),
    "sequential": (lambda: build_sequential(size=16), (1, 16, 16)),
    "leaky_relu": (lambda: build_activation("LeakyReLU"), (1, 16, 16)),
    "elu": (lambda: build_activation("ELU"), (1, 16, 16)),
    "silu": (lambda: build_activation("SiLU"), (1, 16, 16)),
    "gelu": (lambda: build_activation("GELU"), (1, 16, 16)),
    "tanh": (lambda: build_activation("Tanh"), (1, 16, 16)),
    "non_square_rgb": (lambda: build_tiny_resnet(3, 5), (3, 20, 32)),
}

#: Zoo models that compute no ReLU at all (guided backprop does not apply to them).
NO_RELU = {"elu", "silu", "gelu", "tanh", "leaky_relu"}
