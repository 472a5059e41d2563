"""Input checks every faithfulness metric shares, so each error is written (and tested) once."""

from __future__ import annotations

import torch


def check_maps(maps: torch.Tensor, name: str = "maps", *, n: int | None = None,
               size: tuple[int, int] | None = None) -> None:
    """Raise a clear error unless ``maps`` is a finite floating ``[N,H,W]`` tensor (of ``n`` maps of ``size``)."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N,H,W], got {type(maps).__name__}")
    if maps.dim() != 3:
        raise ValueError(f"{name} must have shape [N,H,W] (one map per image), got {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {maps.dtype}")
    if maps.shape[0] == 0:
        raise ValueError(f"{name} is empty (N=0)")
    if n is not None and maps.shape[0] != n:
        raise ValueError(f"{name} has {maps.shape[0]} maps but images has N={n}; give one map per image")
    if size is not None and tuple(maps.shape[1:]) != tuple(size):
        raise ValueError(f"{name} have size {tuple(maps.shape[1:])} but the images are {tuple(size)}; "
                         "upsample the maps to the image size first")
    if not torch.isfinite(maps).all():
        bad = (~torch.isfinite(maps.flatten(1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} hold NaN or infinite values (maps {bad[:10]})")


def check_masks(masks: torch.Tensor, maps: torch.Tensor, name: str = "masks") -> torch.Tensor:
    """``masks`` as bool ``[N,H,W]`` matching ``maps``; a clear error for a wrong shape, type or an empty mask.

    Accepts bool, or integers holding only 0 and 1.
    """
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor of shape [N,H,W], got {type(masks).__name__}")
    if tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(f"{name} have shape {tuple(masks.shape)} but the maps have {tuple(maps.shape)}; "
                         "give one [H,W] mask per image, of the image's size")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() or masks.is_complex() or not bool(((masks == 0) | (masks == 1)).all()):
            raise TypeError(f"{name} must be bool (or integers 0/1), got {masks.dtype}")
        masks = masks.bool()
    empty = (~masks.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{name} of image(s) {empty[:10]} are empty (no pixel inside); "
                         "localisation needs at least one pixel in every mask")
    return masks.to(maps.device)


def check_generator(generator: torch.Generator | None, seed: int = 0) -> torch.Generator:
    """``generator``, or a fresh CPU generator seeded with ``seed`` (results stay reproducible by default)."""
    if generator is None:
        return torch.Generator().manual_seed(seed)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (draws are moved to the data's device), "
                         f"got {generator.device}")
    return generator
