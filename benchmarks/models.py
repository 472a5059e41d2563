"""The benchmark's models and images: cnnlens's architectures with calibrated BatchNorm, synthetic faces."""

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
    kwargs = {"channels": (8, 16, 32)} if small else {}
    model = build(name, in_channels=channels, num_classes=NUM_CLASSES, input_size=side, **kwargs)
    # Random heads give near-uniform outputs: scale the last layer so the classes are told apart.
    with torch.no_grad():
        model.fc.weight.mul_(4.0)
    images = faces(64, channels, side, seed=seed + 1)
    return calibrate(model, images).to(device)
