"""ResNet-18 (He et al. 2016), written here so that it adapts to any input channels, size and classes.

Same layer names and parameters as torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1`` ..
``layer4``, ``avgpool``, ``fc``): for a 3-channel 224x224 input and 1000 classes it has exactly
11,689,512 parameters. Two departures, both parameter-free: each block has its own ``relu1``/``relu2``
module (torchvision reuses one ``relu`` twice, which makes a hook on it fire twice), and small inputs
(< 96 px) get a 3x3 stride-1 stem without max-pool, as CIFAR ResNets do, so a 48x48 face still ends
as a 6x6 map instead of 2x2.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from cnnlens.models._common import Normalize, check_positive_int, init_weights, input_hw

#: Inputs smaller than this (in H or W) get the small stem.
SMALL_INPUT = 96


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut: ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                bn=nn.BatchNorm2d(out_channels),
            ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class ResNet18(nn.Module):
    """``resnet18``: input float32 ``[N,C,H,W]`` in [0,1] -> logits ``[N,num_classes]``.

    Layers: ``normalize``, ``conv1``, ``bn1``, ``relu``, ``maxpool`` (Identity for small inputs),
    ``layer1`` .. ``layer4`` (each two blocks ``0``, ``1`` with ``conv1``, ``bn1``, ``relu1``, ``conv2``,
    ``bn2``, ``relu2``, ``downsample``), ``avgpool``, ``flatten``, ``dropout``, ``fc``.

    >>> ResNet18(in_channels=1, num_classes=7, input_size=48)(torch.rand(2, 1, 48, 48)).shape
    torch.Size([2, 7])
    """

    cam_layer = "layer4"

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, input_size: int | Sequence[int] = 224, *,
                 small_stem: bool | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        h, w = input_hw(input_size, min_size=1, model="resnet18")
        self.small_stem = min(h, w) < SMALL_INPUT if small_stem is None else bool(small_stem)
        self.normalize = Normalize()
        if self.small_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if self.small_stem else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512, num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x
