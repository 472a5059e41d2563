"""Explanations over many images: per-class average maps, and contrastive maps of mistakes.

``class_average_maps`` answers "where does the model look for Happy?": each image's map for its own
class, normalised, averaged over the images of that class. ``contrastive`` explains a mistake: the map
for the true class, the map for the predicted class, and their difference (positive = evidence for the
true class over the predicted one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlens._checks import check_int
from cnnlens.explain import core, registry
from cnnlens.explain.core import batch_ranges

Method = Callable[..., torch.Tensor]
NORMALIZE = ("max_abs", "minmax")


def _method(method: Method | str) -> Method:
    """A method function, or one looked up by its CLI name in the registry."""
    if isinstance(method, str):
        return registry.get(method).fn
    if not callable(method):
        raise TypeError(f"method must be a callable (model, images, target=...) -> [N,H,W] or a method name, got {type(method).__name__}")
    return method


def normalize_maps(maps: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """Per-map scaling: ``"max_abs"`` divides by max |m| (sign kept, in [-1,1]); ``"minmax"`` maps to [0,1]."""
    if normalize is None:
        return maps
    flat = maps.flatten(1)
    if normalize == "max_abs":
        scale = flat.abs().amax(1)
        return (flat / torch.where(scale > 0, scale, 1.0)[:, None]).view_as(maps)
    if normalize == "minmax":
        lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        return ((flat - lo) / torch.where(hi > lo, hi - lo, 1.0)).view_as(maps)
    raise ValueError(f"normalize must be 'max_abs', 'minmax' or None, got {normalize!r}")


def _check_maps(maps: object, n: int, name: str) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.shape[0] != n:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"method {name} must return [N,H,W] maps for N={n} images, got {shape}")
    return maps


def class_average_maps(method: Method | str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                       num_classes: int, *, batch_size: int = 64, normalize: str | None = "max_abs",
                       progress: bool = False, **options: object) -> torch.Tensor:
    """Each class's mean normalised map over its images, explained for that class: ``[K,H,W]``.

    ``avg[k] = mean_{i: labels[i]=k} normalize(method(model, x_i, target=k))``. Images with label -1
    (unknown) are skipped; a class without images gets a map of NaN. ``method`` gets ``batch_size``
    images per call plus ``options`` (e.g. ``layer=`` for Grad-CAM).

    >>> class_average_maps(grad_cam, model, images, labels, num_classes=7)   # [7,48,48]
    """
    fn = _method(method)
    core.check_images(images)
    n, _, h, w = images.shape
    labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(list(labels))
    if labels.dim() != 1 or labels.shape[0] != n or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be {n} integer class ids (one per image), got {labels.dtype} {tuple(labels.shape)}")
    labels = labels.to(images.device, torch.long)
    check_int(num_classes, "num_classes", 1)
    if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}] (or -1 for unknown), got {sorted(set(labels.tolist()))}")
    check_int(batch_size, "batch_size", 1)
    known = (labels >= 0).nonzero().squeeze(1)
    sums = torch.zeros(num_classes, h, w, dtype=images.dtype, device=images.device)
    for start, end in batch_ranges(len(known), batch_size, progress=progress, description="class averages"):
        idx = known[start:end]
        maps = _check_maps(fn(model, images[idx], target=labels[idx], **options), len(idx), getattr(fn, "__name__", "?"))
        sums.index_add_(0, labels[idx], normalize_maps(maps.detach().to(sums), normalize))
    counts = torch.bincount(labels[known], minlength=num_classes).to(sums)
    return sums / counts[:, None, None].masked_fill(counts[:, None, None] == 0, float("nan"))


@dataclass(frozen=True)
class ContrastiveMaps:
    """Maps of one method for the true and the predicted class of each image, ``[N,H,W]`` each.

    ``difference = true_maps - predicted_maps``: positive where the image shows evidence for the true
    class over the class the model chose.
    """

    true_class: torch.Tensor
    predicted_class: torch.Tensor
    true_maps: torch.Tensor
    predicted_maps: torch.Tensor
    difference: torch.Tensor


def contrastive(method: Method | str, model: nn.Module, images: torch.Tensor, true: torch.Tensor | Sequence[int] | int,
                predicted: torch.Tensor | Sequence[int] | int | None = None, **options: object) -> ContrastiveMaps:
    """Explain mistakes: ``method``'s map for the true class, for the predicted class, and their difference.

    ``predicted=None`` uses the model's prediction. Both targets go through one batched call of ``method``
    (``options`` are passed on). Raw maps (not normalised) so the two are in the same units.

    >>> c = contrastive(grad_cam, model, wrong_images, true=labels)   # c.difference: [N,H,W]
    """
    fn = _method(method)
    core.check_images(images)
    n = images.shape[0]

    def logits() -> torch.Tensor:
        with core.guarded(model, images):
            return core.predict_logits(model, images.detach())

    true_t = core.resolve_target(true, n, device=images.device)
    pred_t = core.resolve_target(predicted, n, logits=logits, device=images.device)
    both = _check_maps(fn(model, torch.cat([images, images]), target=torch.cat([true_t, pred_t]), **options),
                       2 * n, getattr(fn, "__name__", "?"))
    true_maps, pred_maps = both[:n], both[n:]
    return ContrastiveMaps(true_t, pred_t, true_maps, pred_maps, true_maps - pred_maps)
