"""Pieces every cnnlens architecture shares: input normalisation, argument checks, initialisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from cnnlens._checks import is_int

#: Fixed input normalisation ``(x - MEAN) / STD`` applied inside every cnnlens model: inputs in [0,1]
#: become roughly zero-mean, unit-scale, without dataset statistics that would have to travel with a run.
MEAN = 0.5
STD = 0.25


class Normalize(nn.Module):
    """``(x - mean) / std`` with fixed scalars; no parameters, no buffers (nothing to save or load).

    >>> Normalize()(torch.tensor([0.0, 0.5, 1.0]))
    tensor([-2.,  0.,  2.])
    """

    def __init__(self, mean: float = MEAN, std: float = STD) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int, or a ValueError/TypeError naming ``name``."""
    if not is_int(value):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def input_hw(input_size: int | Sequence[int], *, min_size: int, model: str) -> tuple[int, int]:
    """``(H, W)`` from an int or an ``(H, W)`` pair; raise if smaller than ``model`` can take."""
    if is_int(input_size):
        hw = (input_size, input_size)
    elif isinstance(input_size, Sequence) and not isinstance(input_size, str) and len(input_size) == 2:
        hw = (input_size[0], input_size[1])
    else:
        raise TypeError(f"input_size must be an int or an (H, W) pair of ints, got {input_size!r}")
    for v in hw:
        check_positive_int(v, "input_size")
    if min(hw) < min_size:
        raise ValueError(f"{model} needs input_size of at least {min_size}x{min_size} pixels, got {hw[0]}x{hw[1]}")
    return hw


def init_weights(model: nn.Module) -> None:
    """He initialisation for convolutions (fan-out, as torchvision's ResNet), BN to identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GapClassifier(nn.Module):
    """Base of the plain CNNs: children run in registration order, ending in GAP + dropout + linear.

    Subclasses register ``normalize`` and their blocks, then call :meth:`add_head`; the head is what makes
    class activation mapping exact (``logit_k = sum_c w_kc mean(A_c) + b_k``).
    """

    def build(self, *, model: str, prefix: str, in_channels: int, num_classes: int, input_size: int | Sequence[int],
              channels: Sequence[int], dropout: float, make_block: Callable[[int, int], nn.Module]) -> None:
        """Check the arguments, then register ``normalize``, ``{prefix}1..K`` (``make_block(c_in, c_out)``,
        each halving the size) and the head; ``cam_layer`` names the last block."""
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes")
        widths = list(channels)
        if not widths:
            raise ValueError(f"channels must list at least one {prefix} width, e.g. [64, 128, 512]")
        for c in widths:
            check_positive_int(c, "channels")
        input_hw(input_size, min_size=2 ** len(widths), model=model)  # every block halves the size
        self.normalize = Normalize()
        for i, (c_in, c_out) in enumerate(zip([in_channels, *widths], widths), start=1):
            self.add_module(f"{prefix}{i}", make_block(c_in, c_out))
        self.cam_layer = f"{prefix}{len(widths)}"
        self.add_head(widths[-1], num_classes, dropout)

    def add_head(self, width: int, num_classes: int, dropout: float) -> None:
        """Register ``gap``, ``flatten``, ``dropout`` and ``fc`` and initialise every weight."""
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x
