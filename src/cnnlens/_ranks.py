"""Spearman's rank correlation, once: the faithfulness randomisation test and the accel precision check
both use :func:`rank_correlation`."""

from __future__ import annotations

import torch


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks of ``x`` ``[N,P]`` with ties given their average rank (as scipy.stats.rankdata)."""
    n, p = x.shape
    values, order = x.sort(dim=1)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    group = (new.cumsum(1) - 1) + torch.arange(n, device=x.device)[:, None] * p  # tie group, unique per row
    pos = torch.arange(p, dtype=torch.float64, device=x.device).expand(n, p).reshape(-1)
    total = torch.zeros(n * p, dtype=torch.float64, device=x.device).index_add_(0, group.reshape(-1), pos)
    count = torch.zeros(n * p, dtype=torch.float64, device=x.device).index_add_(0, group.reshape(-1), torch.ones_like(pos))
    avg = (total / count.clamp(min=1))[group]
    return torch.empty_like(avg).scatter_(1, order, avg)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation per row of two ``[N,...]`` tensors: ``[N]`` float64 in [-1, 1].

    Pearson correlation of the average ranks (ties as in ``scipy.stats.spearmanr``). Undefined when a
    row is constant: then identical rows score 1 and any other pair 0 (a constant ranks nothing).

    >>> rank_correlation(maps, maps)  # tensor([1., 1., ...])
    """
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).to(a.device).double()
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    same = (a == b).all(1).double()
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp(min=1e-300), same)
