"""A seeded, stratified train/validation split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cnnlens._checks import is_number


def stratified_split(labels: Sequence[int] | np.ndarray | torch.Tensor, val_fraction: float,
                     seed: int = 0, *, source: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices ``0..N-1`` into ``(train_idx, val_idx)`` with each class in the same proportion.

    Each class ``c`` with ``n_c`` images puts ``round(val_fraction * n_c)`` of them in validation, but at
    least one in each part when ``n_c >= 2`` (a class with a single image goes to train). Which images is
    decided by a ``numpy.random.default_rng(seed)`` permutation, so the same labels and seed give the
    same split. Both index tensors are int64 and sorted. ``source`` names the dataset the labels came from
    (a spec or file) in the errors.

    >>> train_idx, val_idx = stratified_split([0, 0, 0, 0, 1, 1], 0.5, seed=0)
    >>> len(train_idx), len(val_idx)
    (3, 3)
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise TypeError(f"labels must be a 1-d sequence of ints, got {y.dtype} of shape {y.shape}")
    if not is_number(val_fraction) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    where = f"{source}: " if source else ""
    if y.size < 2:
        raise ValueError(f"{where}labels has {y.size} entries; a split needs at least 2 (one image to train on, one "
                         "to validate with: val_fraction, CLI --val-fraction); give a dataset (CLI --data) with more "
                         "images")
    if (y < 0).any():
        raise ValueError(f"{where}labels contain -1 (unknown); a stratified split needs a label for every image")
    rng = np.random.default_rng(seed)
    order = rng.permutation(y.size)
    order = order[np.argsort(y[order], kind="stable")]  # grouped by class, random within each class
    classes, first, counts = np.unique(y[order], return_index=True, return_counts=True)
    n_val = np.rint(val_fraction * counts).astype(np.int64)
    n_val = np.where(counts >= 2, np.clip(n_val, 1, counts - 1), 0)
    rank = np.arange(y.size) - np.repeat(first, counts)  # position of each image within its class group
    is_val = rank < np.repeat(n_val, counts)
    train_idx = np.sort(order[~is_val])
    val_idx = np.sort(order[is_val])
    return torch.from_numpy(train_idx).long(), torch.from_numpy(val_idx).long()
