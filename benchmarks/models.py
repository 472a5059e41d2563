"""The benchmark's models and images: cnnlens's architectures (and one written the way FER2013-era code
was) with calibrated BatchNorm, synthetic faces."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.data.synth import make_faces
from cnnlens.models import build

NUM_CLASSES = 7


def faces(n: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    """``n`` synthetic faces as float32 ``[n,channels,side,side]`` in [0,1] (FER-like; tinted for RGB)."""
    images = torch.from_numpy(make_faces(n, seed=seed)[0]).float().div_(255.0)[:, None]
    if side != images.shape[-1]:
        images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False).clamp_(0, 1)
    if channels == 3:
        tint = torch.tensor([1.0, 0.85, 0.7]).view(1, 3, 1, 1)  # skin-like colour: channels differ
        images = images * tint
    elif channels != 1:
        images = images.expand(-1, channels, -1, -1)
    return images.contiguous()


def faces_uint8(n: int, channels: int, side: int, seed: int = 0) -> np.ndarray:
    """The same faces as uint8 ``[n,channels,side,side]`` (what a dataset on disk holds)."""
    return (faces(n, channels, side, seed) * 255).round().to(torch.uint8).numpy()


class FerMLP(nn.Module):
    """A FER2013-era CNN written the way its code was: conv-conv-pool blocks with ``F.relu`` and
    ``F.max_pool2d``, ``x.view(x.size(0), -1)``, then a dense head (Linear 256, ReLU, dropout, Linear).
    Not a cnnlens architecture: what the speed layer must read in the models users bring."""

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES, side: int = 48) -> None:
        super().__init__()
        widths = [(in_channels, 32), (32, 32), (32, 64), (64, 64), (64, 128)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in widths)
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b in widths)
        self.fc1 = nn.Linear(128 * (side // 8) ** 2, 256)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if i in (1, 3, 4):
                x = F.max_pool2d(x, 2)
        x = x.view(x.size(0), -1)
        return self.fc(self.dropout(F.relu(self.fc1(x))))


class FerMLPModules(FerMLP):
    """:class:`FerMLP` with its ``F.relu`` and ``F.max_pool2d`` calls as modules, one per use, the same weights:
    what a Captum user must write for ``DeepLift``, whose rules hook modules (on FerMLP itself Captum sees no
    nonlinearity and computes gradient x difference)."""

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES, side: int = 48) -> None:
        super().__init__(in_channels, num_classes, side)
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(6))
        self.pools = nn.ModuleList(nn.MaxPool2d(2) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pools = iter(self.pools)
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = self.relus[i](bn(conv(x)))
            if i in (1, 3, 4):
                x = next(pools)(x)
        x = x.view(x.size(0), -1)
        return self.fc(self.dropout(self.relus[5](self.fc1(x))))


def module_twin(model: nn.Module) -> nn.Module | None:
    """The module-written twin of a benchmark model whose nonlinearities are functions (FerMLP), else None."""
    if type(model) is not FerMLP:
        return None
    side = 8 * round((model.fc1.in_features / 128) ** 0.5)
    twin = FerMLPModules(model.convs[0].in_channels, model.fc.out_features, side)
    twin.load_state_dict(model.state_dict())
    return twin.to(next(model.parameters()).device).eval()


#: Benchmark models that are not cnnlens architectures: name -> builder(in_channels, num_classes, side).
FOREIGN = {"fer_mlp": FerMLP}


def calibrate(model: nn.Module, images: torch.Tensor, passes: int = 4) -> nn.Module:
    """Set BatchNorm running statistics from a few train-mode passes over ``images``, then eval mode.

    With freshly initialised statistics (mean 0, var 1) the activations of a deep net blow up or vanish
    and the outputs are degenerate; after this every layer sees unit-scale inputs, as after training.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for chunk in images.chunk(passes):
            model(chunk)
    return model.eval()


def make_model(name: str, channels: int, side: int, *, small: bool = False, seed: int = 0,
               device: str | torch.device = "cpu") -> nn.Module:
    """A benchmark model: ``small`` is the smoke run's narrow small_cnn."""
    torch.manual_seed(seed)
    if name in FOREIGN:
        model = FOREIGN[name](channels, NUM_CLASSES, side)
    else:
        kwargs = {"channels": (8, 16, 32)} if small else {}
        model = build(name, in_channels=channels, num_classes=NUM_CLASSES, input_size=side, **kwargs)
    # Random heads give near-uniform outputs: scale the last layer so the classes are told apart.
    with torch.no_grad():
        model.fc.weight.mul_(4.0)
    images = faces(64, channels, side, seed=seed + 1)
    return calibrate(model, images).to(device)
