"""Localisation against ground truth: does the map point at the pixels that decide the class?

Three scores per image, each 1 for a map that lies wholly inside the mask and 0 for one wholly outside:
the pointing game (Zhang et al. 2016), relevance mass accuracy and relevance rank accuracy (Arras,
Osman & Samek 2022, "CLEVR-XAI"). Ties are scored by their expectation under random tie-breaking, so a
map that says nothing (a constant, an all-zero Grad-CAM) scores the mask's share of the image: chance.
Always read beside the two baselines, :func:`centre_prior` and a random map (``deletion.random_maps``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnlens._checks import check_int
from cnnlens.faithfulness._checks import check_maps, check_masks

METRICS = ("pointing_game", "relevance_mass", "relevance_rank")
#: Centre prior width: sigma = a quarter of each side, a blob over the middle of a face.
CENTRE_SIGMA_FRACTION = 0.25


def _prepare(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_maps(maps)
    masks = check_masks(masks, maps)
    return maps.detach().flatten(1).double(), masks.flatten(1)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, *, tolerance: int = 0) -> torch.Tensor:
    """``[N]`` hit (1) if the map's maximum lies inside the mask, miss (0) if outside.

    Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop". With ties for the maximum
    the score is the share of the tied maxima inside the mask (the hit rate of a random pick among them).
    ``tolerance`` grows the mask by that many pixels (the paper used 15 px on large images).

    >>> pointing_game(torch.tensor([[[0., 1.], [0., 0.]]]), torch.tensor([[[False, True], [False, False]]]))
    tensor([1.], dtype=torch.float64)
    """
    check_int(tolerance, "tolerance", 0, hint=" (pixels)")
    flat, inside = _prepare(maps, masks)
    if tolerance:
        grown = F.max_pool2d(inside.view(-1, 1, *maps.shape[1:]).float(), 2 * tolerance + 1, 1, tolerance)
        inside = grown.flatten(1) > 0
    at_max = flat == flat.amax(dim=1, keepdim=True)
    return (at_max & inside).sum(1).double() / at_max.sum(1)


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[N]`` share of the positive attribution that falls inside the mask.

    Arras et al. 2022: ``sum_{p in mask} max(m_p, 0) / sum_p max(m_p, 0)``. A map without positive
    values carries no evidence and scores as a uniform map would: the mask's share of the pixels.
    """
    flat, inside = _prepare(maps, masks)
    pos = flat.clamp(min=0)
    total = pos.sum(1)
    uniform = inside.sum(1).double() / inside.shape[1]
    return torch.where(total > 0, (pos * inside).sum(1) / total.clamp(min=1e-300), uniform)


def relevance_rank(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[N]`` share of the map's top-K pixels that lie inside the mask, K = the mask's pixel count.

    Arras et al. 2022. Pixels tied with the K-th largest value count in proportion (the expectation of a
    random pick among the ties), so a constant map scores K / (H*W).
    """
    flat, inside = _prepare(maps, masks)
    k = inside.sum(1)
    kth = flat.sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
    above, tied = flat > kth, flat == kth
    n_above = above.sum(1)
    share_tied = (tied & inside).sum(1).double() / tied.sum(1)
    return ((above & inside).sum(1) + (k - n_above) * share_tied) / k


def localization_scores(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """All three scores, ``{"pointing_game": [N], "relevance_mass": [N], "relevance_rank": [N]}``."""
    return {"pointing_game": pointing_game(maps, masks), "relevance_mass": relevance_mass(maps, masks),
            "relevance_rank": relevance_rank(maps, masks)}


def centre_prior(height: int, width: int, sigma: float | None = None) -> torch.Tensor:
    """``[H,W]`` Gaussian centred on the image, ``exp(-d^2 / (2 sigma^2))``; sigma defaults to a quarter side.

    The baseline a map must beat to show it localises more than "objects are in the middle". On an
    even-sized image the four centre pixels tie for the maximum (the pointing game scores their share).
    """
    sy = CENTRE_SIGMA_FRACTION * height if sigma is None else float(sigma)
    sx = CENTRE_SIGMA_FRACTION * width if sigma is None else float(sigma)
    if not (sy > 0 and sx > 0):
        raise ValueError(f"sigma must be > 0 pixels or None, got {sigma!r}")
    y = (torch.arange(height, dtype=torch.float64) - (height - 1) / 2) / sy
    x = (torch.arange(width, dtype=torch.float64) - (width - 1) / 2) / sx
    return torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).float()
