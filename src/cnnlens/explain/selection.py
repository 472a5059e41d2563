"""Which images to explain: the most confidently right per class, the most confidently wrong, or by index.

Apart from running the methods (:mod:`cnnlens.explain.runner`): choosing needs only the model's
probabilities, and the CLI, the report and dataset jobs choose the same way.

>>> idx = per_class(probabilities(model, dataset.float_images()), dataset.labels, k=2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlens._checks import check_count, is_int
from cnnlens.explain import core


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Softmax probabilities ``[N,K]`` of ``model`` on ``images`` (eval mode inside; mode restored)."""
    core.check_images(images)
    with core.guarded(model):
        return core.predict_logits(model, images, batch_size).float().softmax(dim=1)


def _check_selection(probs: torch.Tensor, labels: torch.Tensor, k: int) -> None:
    check_count(k, "k", hint=" (images per class / in all)")
    if probs.dim() != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"probs must be [N,K] and labels [N]; got {tuple(probs.shape)} and {tuple(labels.shape)}")


def per_class(probs: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` most confidently right images of each class, class by class.

    "Right" means predicted == label; confidence is the predicted class's probability. A class with
    fewer right images gives what it has; images with unknown labels (-1) are never chosen.

    >>> per_class(torch.tensor([[.9, .1], [.6, .4], [.2, .8]]), torch.tensor([0, 0, 1]), 1)
    tensor([0, 2])
    """
    _check_selection(probs, labels, k)
    conf, pred = probs.max(dim=1)
    labels = labels.to(pred.device)
    order = torch.argsort(conf, descending=True, stable=True)
    right = order[pred[order] == labels[order]]
    picked = [right[labels[right] == c][:k] for c in range(probs.shape[1])]  # a loop over classes, not images
    return torch.cat(picked).cpu() if picked else torch.zeros(0, dtype=torch.long)


def misclassified(probs: torch.Tensor, labels: torch.Tensor, k: int, *, per_class: bool = False) -> torch.Tensor:
    """Indices of the ``k`` most confidently wrong images (highest probability on a wrong class).

    ``per_class=True``: ``k`` per true class, class by class. Unknown labels (-1) are never chosen.

    >>> misclassified(torch.tensor([[.9, .1], [.3, .7], [.45, .55]]), torch.tensor([1, 0, 0]), 2)
    tensor([0, 1])
    """
    _check_selection(probs, labels, k)
    conf, pred = probs.max(dim=1)
    labels = labels.to(pred.device)
    order = torch.argsort(conf, descending=True, stable=True)
    wrong = order[(pred[order] != labels[order]) & (labels[order] >= 0)]
    if not per_class:
        return wrong[:k].cpu()
    return torch.cat([wrong[labels[wrong] == c][:k] for c in range(probs.shape[1])]).cpu()


def by_index(indices: Sequence[int], n: int) -> torch.Tensor:
    """``indices`` checked against a dataset of ``n`` images (negative indices count from the end)."""
    idx = list(indices)
    if not idx:
        raise ValueError("no image indices given; pass e.g. 0,5,17")
    bad = [i for i in idx if not is_int(i) or not -n <= i < n]
    if bad:
        raise ValueError(f"image index {bad[0]!r} is out of range: the split has {n} images (0..{n - 1})")
    t = torch.tensor(idx, dtype=torch.long) % n
    if len(set(t.tolist())) != len(idx):
        raise ValueError(f"image indices repeat: {idx}")
    return t
