"""Transformation robustness for feature visualisation (Olah et al. 2017): a random small warp of the
image before every ascent step, so that only patterns the unit answers to at any nearby shift, scale and
angle survive, not the high-frequency patterns that excite it at one exact alignment.

Lucid/Lucent's standard set (pad 12, jitter 8, scale 0.9-1.1, rotate +-10 degrees, jitter 4) is tuned for
224-pixel ImageNet inputs; :meth:`Transforms.for_size` scales the pixel amounts to the input's size
(for 48x48: pad 3, jitter 2 and 1). All of them are done by one affine warp per image
(``affine_grid`` + ``grid_sample``), so the model always sees its own input size (a flatten head works)
and every image of a batch gets its own draw from the caller's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Lucent's ``standard_transforms`` amounts, in pixels of a 224-pixel input.
LUCENT_SIZE = 224
LUCENT_PAD, LUCENT_JITTER, LUCENT_FINE_JITTER = 12, 8, 4


@dataclass(frozen=True)
class Transforms:
    """Random warps applied to every image before each ascent step.

    Attributes:
        pad: a gray (0.5) frame this wide around the image before the shifts, so that they can move it that
            much further (Lucid pads, shifts by cropping, and lets the model see the larger image; here the
            crop keeps the input's size, so a flatten head works: pad + jitter = a shift of up to that much).
        jitter: random shift of up to this many pixels (two draws, as Lucid's coarse and fine jitter).
        fine_jitter: the second, smaller shift.
        scale: the zoom factor is drawn uniformly from this range.
        degrees: the rotation is drawn uniformly from ``[-degrees, degrees]``.
    """

    pad: int = 0
    jitter: int = 0
    fine_jitter: int = 0
    scale: tuple[float, float] = (1.0, 1.0)
    degrees: float = 0.0

    def __post_init__(self) -> None:
        for name in ("pad", "jitter", "fine_jitter"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Transforms.{name} must be an int >= 0 (pixels), got {v!r}")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"Transforms.scale must be (low, high) with 0 < low <= high, got {self.scale!r}")
        if not 0 <= self.degrees < 180:
            raise ValueError(f"Transforms.degrees must be in [0, 180), got {self.degrees!r}")

    @classmethod
    def for_size(cls, height: int, width: int) -> Transforms:
        """Lucent's standard transforms with the pixel amounts scaled from 224 pixels to ``max(height, width)``,
        each rounded to whole pixels: below 14 pixels the scaled jitter is under half a pixel and rounds to
        none (rotation and zoom stay: they are fractions of the size). For one neuron, pass its receptive
        field's size: shifts of a third of the image would move an 8-pixel field off what it looks at.

        A one-pixel jitter on a 7-pixel field (the old minimum) is four times Lucent's amount and undoes any
        pattern of a two-pixel period: a shift by one pixel inverts a checkerboard, and on a planted
        checkerboard filter the readable image correlated -0.55 with it (jitter alone) against 0.79 without.

        >>> Transforms.for_size(48, 48)
        Transforms(pad=3, jitter=2, fine_jitter=1, scale=(0.9, 1.1), degrees=10.0)
        >>> Transforms.for_size(8, 8)
        Transforms(pad=0, jitter=0, fine_jitter=0, scale=(0.9, 1.1), degrees=10.0)
        """
        ratio = max(height, width) / LUCENT_SIZE
        return cls(pad=round(LUCENT_PAD * ratio), jitter=round(LUCENT_JITTER * ratio),
                   fine_jitter=round(LUCENT_FINE_JITTER * ratio), scale=(0.9, 1.1), degrees=10.0)

    @property
    def identity(self) -> bool:
        """True when the warp never changes an image."""
        return not (self.pad or self.jitter or self.fine_jitter or self.degrees) and self.scale == (1.0, 1.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Warp each image of ``x`` ``[N,C,H,W]`` by its own random draw; outside the image is gray (0.5)."""
        if self.identity:
            return x
        n, _, h, w = x.shape
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand((n, 4), generator=generator, device=gen_device).to(device=x.device, dtype=x.dtype)
        shift = [torch.randint(-j, j + 1, (n, 2), generator=generator, device=gen_device)
                 for j in (self.pad + self.jitter, self.fine_jitter)]
        shift = (shift[0] + shift[1]).to(device=x.device, dtype=x.dtype)  # whole pixels (dy, dx): no resampling
        lo, hi = self.scale
        zoom = lo + (hi - lo) * u[:, 0]
        angle = (2 * u[:, 1] - 1) * math.radians(self.degrees)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # theta maps output coordinates in [-1,1] to input ones: rotate and zoom about the centre, then shift
        theta = torch.stack([torch.stack([cos, -sin * h / w, -2 * shift[:, 1] / w], 1),
                             torch.stack([sin * w / h, cos, -2 * shift[:, 0] / h], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
