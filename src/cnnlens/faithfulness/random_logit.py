"""The random-logit test (Sixt, Granz & Landgraf 2020, "When Explanations Lie", ICML), as Quantus's
``RandomLogit`` computes it: how similar a map of the target is to a map of a random *other* class.

A map that explains the class should change when the class does; one that mostly shows the image (edges,
the input's own structure) stays the same. The score is the SSIM of the two maps, each divided by its
largest absolute value (Quantus's ``normalise_by_max``, the sign kept), lower is better. As Quantus does,
the SSIM is scikit-image's ``structural_similarity`` with its defaults (a 7-wide uniform window, sample
covariance) on the two maps *flattened* row by row, its data range the spread of both maps together: a
1-D SSIM along rows, not the 2-D one Sixt et al. describe (that is :func:`cnnlens.faithfulness.ssim`,
which the randomisation check uses); kept so the numbers are Quantus's.

>>> r = random_logit(model, images, lambda m, x, t: saliency(m, x, t), target, num_classes=7)
>>> r.score.mean()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.faithfulness._checks import check_generator, check_maps

#: scikit-image's SSIM defaults: window, K1, K2.
WINDOW, K1, K2 = 7, 0.01, 0.03
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RandomLogitResult:
    """Per image: ``score`` ``[N]`` the SSIM of the target's map to ``off_target``'s, and the classes."""

    score: torch.Tensor
    targets: torch.Tensor
    off_targets: torch.Tensor


def normalise_by_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its largest absolute value (an all-zero map left as it is), float64."""
    a = maps.detach().double()
    top = a.flatten(1).abs().amax(1)
    return a / torch.where(top > 0, top, torch.ones_like(top))[:, None, None]


def flat_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N]`` SSIM of ``a[i].flatten()`` and ``b[i].flatten()`` as scikit-image computes it on 1-D arrays
    (7-wide uniform window, sample covariance, ``data_range`` = the spread of both, the 3 values at each end
    cropped). Two constant, equal maps score 1."""
    x, y = a.double().flatten(1), b.double().flatten(1)
    if x.shape[1] < WINDOW:
        raise ValueError(f"random logit's SSIM needs maps of at least {WINDOW} pixels, got {x.shape[1]}")
    both = torch.cat([x, y], 1)
    data_range = both.amax(1) - both.amin(1)
    stack = torch.stack([x, y, x * x, y * y, x * y], 1)  # [N,5,L]
    ux, uy, uxx, uyy, uxy = F.avg_pool1d(stack, WINDOW, stride=1).unbind(1)  # 'valid' = skimage's crop
    cov = WINDOW / (WINDOW - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = ((K1 * data_range) ** 2)[:, None], ((K2 * data_range) ** 2)[:, None]
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return torch.where(data_range > 0, s.mean(1), torch.ones_like(data_range))


def random_other_class(target: torch.Tensor, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One class per image drawn uniformly from the ``num_classes - 1`` classes other than its target."""
    if num_classes < 2:
        raise ValueError(f"random logit needs at least 2 classes, got {num_classes}")
    pick = torch.randint(0, num_classes - 1, target.shape, generator=check_generator(generator)).to(target.device)
    return pick + (pick >= target).long()


def random_logit(model: nn.Module, images: torch.Tensor, explain: Explainer, target: Target = None, *,
                 maps: torch.Tensor | None = None, off_target: Target = None,
                 generator: torch.Generator | None = None) -> RandomLogitResult:
    """Random-logit similarity per image, ``[N]`` (Sixt et al. 2020, as Quantus's ``RandomLogit``); lower is better.

    ``score_i = SSIM(norm(e(x_i, t_i)), norm(e(x_i, r_i)))`` with ``r_i`` a random class other than ``t_i``
    (:func:`random_other_class` with ``generator``, default seed 0; or ``off_target`` given), ``norm``
    :func:`normalise_by_max`, SSIM :func:`flat_ssim`. ``explain(model, images, target) -> [N,H,W]``;
    ``maps``: ``e(x, t)``, if already computed.
    """
    core.check_images(images)
    n, _, h, w = images.shape
    images = images.detach()
    with core.guarded(model), torch.inference_mode():
        logits = core.predict_logits(model, images)
    k = logits.shape[1]
    t = core.resolve_target(target, n, k, logits=lambda: logits, device=images.device)
    if off_target is None:
        off = random_other_class(t, k, generator)
    else:
        off = core.resolve_target(off_target, n, k, device=images.device)
        if bool((off == t).any()):
            raise ValueError("off_target must differ from the target class of every image")
    base = (explain(model, images, t) if maps is None else maps).detach()
    check_maps(base, "maps", n=n, size=(h, w))
    other = explain(model, images, off).detach()
    score = flat_ssim(normalise_by_max(base), normalise_by_max(other.to(base.device)))
    return RandomLogitResult(score=score, targets=t, off_targets=off)
