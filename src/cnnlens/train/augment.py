"""Batched data augmentation on image tensors: flips, shifts and small rotations.

Each op transforms a whole batch ``[N,C,H,W]`` at once (no Python loop over images) and draws its random
numbers from an explicit CPU :class:`torch.Generator`, so a run with the same seed sees the same
augmented images, and a resumed run continues the same random stream.

Horizontal flips depend on the data: a mirrored face or plate of food is still a face or plate of food of the
same class, but a mirrored digit or letter may be no digit at all (or another one), so flips are on by
default for faces and food and off for a plain folder (:data:`FLIP_DEFAULTS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


#: Dataset kind (a spec's prefix) -> (flips on by default, why): :func:`default_flip` and the line printed at
#: the start of training.
FLIP_DEFAULTS: dict[str, tuple[bool, str]] = {
    "fer": (True, "faces look alike mirrored"),
    "synth": (True, "faces look alike mirrored"),
    "food11": (True, "food looks alike mirrored"),
    "folder": (False, "a folder may hold digits, text or signs, which a mirror changes"),
}


def default_flip(spec: str) -> bool:
    """Whether horizontal flips are on by default for the dataset ``spec`` (:data:`FLIP_DEFAULTS`; off for an
    unknown kind).

    >>> default_flip("fer:train.csv"), default_flip("folder:digits")
    (True, False)
    """
    return FLIP_DEFAULTS.get(spec.partition(":")[0], (False, ""))[0]


def describe_augmentation(spec: str, flip: bool, shift: int, rotation: float) -> str:
    """One line saying which augmentations a run uses and, for flips, why (the default for the data, or set).

    >>> describe_augmentation("fer:train.csv", True, 4, 10.0)
    'augmentation: shifts up to 4 px, rotations up to 10 degrees; horizontal flips (default for fer: data: faces look alike mirrored; --no-flip turns them off)'
    """
    kind = spec.partition(":")[0]
    on_by_default, why = FLIP_DEFAULTS.get(kind, (False, "unknown kind of data"))
    parts = []
    if shift:
        parts.append(f"shifts up to {shift} px")
    if rotation:
        parts.append(f"rotations up to {rotation:g} degrees")
    what = "horizontal flips" if flip else "no flips"
    if flip == on_by_default:
        switch = "--no-flip turns them off" if flip else "--flip turns them on"
        reason = f"default for {kind}: data: {why}; {switch}"
    else:
        given, default = ("--flip", "off") if flip else ("--no-flip", "on")
        reason = f"{given}; the default for {kind}: data is {default}"
    done = ", ".join(parts) if parts else "no shifts or rotations"
    return f"augmentation: {done}; {what} ({reason})"


def random_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``.

    >>> x = torch.arange(4.0).view(1, 1, 1, 4)
    >>> random_flip(x, torch.Generator().manual_seed(0), p=1.0)
    tensor([[[[3., 2., 1., 0.]]]])
    """
    flip = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def shift(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pixels: int) -> torch.Tensor:
    """Translate image ``n`` by ``(dx[n], dy[n])`` whole pixels (|d| <= ``pixels``), repeating edge pixels.

    ``out[n, c, i, j] = images[n, c, clamp(i - dy[n]), clamp(j - dx[n])]``: replicate padding followed by a
    per-image crop, done with one gather. Edge pixels are repeated rather than zeroed so that a black
    border never becomes a feature the model could learn.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (pixels, pixels, pixels, pixels), mode="replicate")
    dev = images.device
    rows = (pixels - dy.to(dev)).view(n, 1) + torch.arange(h, device=dev)  # [N,H]
    cols = (pixels - dx.to(dev)).view(n, 1) + torch.arange(w, device=dev)  # [N,W]
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]  # [N,H,W,C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in ``[-pixels, pixels]`` along x and y."""
    if pixels <= 0:
        return images
    n = images.shape[0]
    d = torch.randint(-pixels, pixels + 1, (2, n), generator=generator)
    return shift(images, d[0], d[1], pixels)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image ``n`` by ``degrees[n]`` (counter-clockwise on screen) about its centre, bilinear,
    repeating edge pixels.

    The affine matrix works in normalised coordinates ``[-1, 1]``; the ``H/W`` factors keep the rotation
    rigid on non-square images.
    """
    n, _, h, w = images.shape
    a = torch.deg2rad(degrees.to(images.device, images.dtype))
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # grid_sample maps output -> input; a counter-clockwise turn on screen (y down) samples the input at
    # the clockwise-rotated position.
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_rotation(images: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image by an angle drawn uniformly from ``[-degrees, degrees]``."""
    if degrees <= 0:
        return images
    angles = (torch.rand(images.shape[0], generator=generator) * 2 - 1) * degrees
    return rotate(images, angles)


@dataclass(frozen=True)
class Augment:
    """The augmentation of one training batch: rotation, then shift, then flip (each off when 0/False).

    >>> aug = Augment(flip=True, shift=4, rotation=10.0)
    >>> out = aug(torch.rand(8, 1, 48, 48), torch.Generator().manual_seed(0))
    """

    flip: bool = True
    shift: int = 4
    rotation: float = 10.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float batch ``[N,C,H,W]``; values stay within the input's range."""
        if not math.isfinite(self.rotation) or self.rotation < 0 or self.shift < 0:
            raise ValueError(f"Augment needs shift >= 0 and a finite rotation >= 0, got shift={self.shift}, rotation={self.rotation}")
        x = random_rotation(images, self.rotation, generator)
        x = random_shift(x, self.shift, generator)
        return random_flip(x, generator) if self.flip else x
