"""The one in-memory dataset type every loader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cnnlens._checks import is_int


@dataclass(frozen=True)
class ImageSet:
    """Images with labels, kept as uint8 so that a whole dataset fits in memory.

    Attributes:
        images: uint8 ``[N,C,H,W]``.
        labels: int64 ``[N]``; ``-1`` where the label is unknown (a test split without labels).
        classes: class names, index = label.
        names: one identifier per image that a person can find again ("train.csv:12", "training/3_41.jpg").
        masks: optional bool ``[N,H,W]``: the pixels that decide the class (the synthetic faces have them).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    names: tuple[str, ...]
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError(f"ImageSet.images must be uint8 [N,C,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"ImageSet.labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if len(self.names) != n:
            raise ValueError(f"ImageSet.names has {len(self.names)} entries for {n} images")
        if self.masks is not None and tuple(self.masks.shape) != (n, *self.images.shape[2:]):
            raise ValueError(f"ImageSet.masks must have shape {(n, *self.images.shape[2:])}, got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def float_images(self, index: Sequence[int] | torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images as float32 in ``[0, 1]`` (the input range every cnnlens model expects)."""
        x = self.images if index is None else self.images[index]
        return x.float().div_(255.0)

    def subset(self, index: Sequence[int] | torch.Tensor) -> ImageSet:
        """The images at ``index``, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            images=self.images[idx],
            labels=self.labels[idx],
            classes=self.classes,
            names=tuple(self.names[i] for i in idx.tolist()),
            masks=None if self.masks is None else self.masks[idx],
        )

    def resized(self, size: int | tuple[int, int]) -> ImageSet:
        """The same images resized to ``size`` (an int side or ``(height, width)``); masks follow by nearest pixel.

        Bilinear with antialiasing (what Pillow's resize does), rounded back to uint8.
        """
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or not all(is_int(v, 1) for v in hw):
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        if tuple(self.images.shape[2:]) == hw:
            return self
        x = torch.nn.functional.interpolate(self.images.float(), size=hw, mode="bilinear", antialias=True,
                                            align_corners=False)
        masks = None
        if self.masks is not None:
            masks = torch.nn.functional.interpolate(self.masks[:, None].float(), size=hw, mode="nearest")[:, 0] > 0.5
        return ImageSet(images=x.round_().clamp_(0, 255).to(torch.uint8), labels=self.labels, classes=self.classes,
                        names=self.names, masks=masks)

    def with_channels(self, channels: int) -> ImageSet:
        """The same images as 1 (gray) or 3 (RGB) channels: gray is repeated, RGB becomes ITU-R 601 luma
        ``L = (299 R + 587 G + 114 B) / 1000`` (Pillow's ``convert("L")``)."""
        c = self.images.shape[1]
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
        if c == channels:
            return self
        if c == 1:
            images = self.images.expand(-1, 3, -1, -1).contiguous()
        elif c == 3:
            weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
            images = ((self.images.to(torch.int32) * weights).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor")
            images = images.to(torch.uint8)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels; only 1 <-> 3")
        return ImageSet(images=images, labels=self.labels, classes=self.classes, names=self.names, masks=self.masks)
