"""The order in which the perturbation metrics (deletion, insertion, ROAD) change an image's pixels."""

from __future__ import annotations

import torch

from cnnlens.faithfulness._checks import check_generator


def pixel_ranks(maps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[N,H*W]`` rank of each pixel in the removal order (0 = highest attribution, removed first).

    Equal values are ordered at random (seeded), so a constant map gives the random-order baseline and
    large tied regions (a ReLU'd Grad-CAM's zeros) are not removed in raster order.
    """
    flat = maps.detach().flatten(1)
    n, p = flat.shape
    g = check_generator(generator)
    shuffle = torch.rand(n, p, generator=g).argsort(dim=1).to(flat.device)  # one random permutation per row
    order = shuffle.gather(1, flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    return ranks.scatter_(1, order, torch.arange(p, device=flat.device).expand(n, p).contiguous())
