"""LIME (Ribeiro et al. 2016): a weighted linear surrogate of the model over superpixels being shown or hidden.

For each image: split it into superpixels, draw ``n_samples`` random on/off masks ``z`` (the first keeps
everything), score each masked image, weight each sample by its closeness to the full image
(``pi(z) = sqrt(exp(-d(z,1)^2 / kernel_width^2))``, ``d`` = cosine distance, as the ``lime`` package
does), and fit ``score ~ intercept + w . z`` by weighted ridge regression. ``w[s]`` is superpixel s's
contribution. Same defaults as ``lime``: 1000 samples, kernel width 0.25, ridge penalty 1, the target's
softmax probability; the ridge is solved in closed form for all images at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlens._checks import check_int
from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.core import check_batch_size, check_output
from cnnlens.explain.registry import Paper, method
# the segmentation steps LIME shares with KernelSHAP and feature ablation (also importable from here)
from cnnlens.explain.segmentation import (HIDES, SEGMENTATIONS, check_segments, hide_values,  # noqa: F401
                                          masked_scores, paint, relabel, segment_images, superpixels)


@dataclass(frozen=True)
class LimeResult:
    """What LIME found for a batch of N images.

    Attributes:
        segments: int64 ``[N,H,W]``, superpixel ids ``0..num_segments[i]-1``.
        num_segments: int64 ``[N]``.
        weights: float ``[N,S]`` surrogate weight of each superpixel (S = max segments; 0 past
            ``num_segments[i]``). Positive = showing the region raises the target's score.
        intercept: ``[N]`` the surrogate's score with every superpixel hidden.
        score: ``[N]`` weighted R^2 of the surrogate on its samples (1 = the model is linear in them).
        target: int64 ``[N]`` the explained classes.
        top_positive / top_negative: per image, the ids of the superpixels with positive (negative)
            weight, strongest first.
        samples: bool ``[N,K,S]`` the on/off masks the surrogate was fitted on (sample 0: all on).
        sample_scores: ``[N,K]`` the model's score of the target on each masked image.
        sample_weights: ``[N,K]`` each sample's kernel weight.
    """

    segments: torch.Tensor
    num_segments: torch.Tensor
    weights: torch.Tensor
    intercept: torch.Tensor
    score: torch.Tensor
    target: torch.Tensor
    top_positive: tuple[tuple[int, ...], ...]
    top_negative: tuple[tuple[int, ...], ...]
    samples: torch.Tensor
    sample_scores: torch.Tensor
    sample_weights: torch.Tensor

    def map(self) -> torch.Tensor:
        """Each pixel painted with its superpixel's weight: ``[N,H,W]``."""
        return paint(self.weights, self.segments)

    def region_mask(self, k: int = 5, sign: str = "positive") -> torch.Tensor:
        """bool ``[N,H,W]``: the pixels of the ``k`` strongest ``"positive"`` or ``"negative"`` superpixels."""
        if sign not in ("positive", "negative"):
            raise ValueError(f"sign must be 'positive' or 'negative', got {sign!r}")
        tops = self.top_positive if sign == "positive" else self.top_negative
        chosen = torch.zeros(self.weights.shape, dtype=torch.bool, device=self.weights.device)
        for i, ids in enumerate(tops):  # ragged id lists: one tiny write per image
            chosen[i, list(ids[:k])] = True
        n = self.segments.shape[0]
        return chosen.gather(1, self.segments.reshape(n, -1)).reshape(self.segments.shape)


def weighted_ridge(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted ridge with an unpenalised intercept, batched over images, in closed form (float64).

    Minimises ``sum_k w_k (y_k - b - x_k . c)^2 + alpha |c|^2`` per image (what scikit-learn's
    ``Ridge(alpha).fit(x, y, sample_weight=w)`` does): centre on the weighted means, then
    ``c = (Xc^T W Xc + alpha I)^-1 Xc^T W yc``. ``x`` ``[N,K,S]``, ``y``/``w`` ``[N,K]``; ``valid``
    ``[N,S]`` marks real features (padding gets weight 0). Returns (coef ``[N,S]``, intercept ``[N]``,
    weighted R^2 ``[N]``).
    """
    x, y, w = x.double(), y.double(), w.double()
    wsum = w.sum(1, keepdim=True)
    xm = (w[..., None] * x).sum(1) / wsum
    ym = (w * y).sum(1, keepdim=True) / wsum
    xc, yc = x - xm[:, None], y - ym
    a = torch.einsum("nks,nk,nkt->nst", xc, w, xc)
    diag = torch.full(a.shape[:2], float(alpha), dtype=a.dtype, device=a.device)
    if valid is not None:
        diag = torch.where(valid.to(a.device), diag, 1.0)  # padded features: a 1 on the diagonal, coef 0
    a = a + torch.diag_embed(diag)
    b = torch.einsum("nks,nk,nk->ns", xc, w, yc)
    try:
        coef = torch.linalg.solve(a, b)
    except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(f"LIME surrogate is singular (a superpixel never varied); use alpha > 0 or more samples: {err}") from err
    intercept = ym[:, 0] - (xm * coef).sum(1)
    resid = y - (x @ coef[..., None])[..., 0] - intercept[:, None]
    ss_res, ss_tot = (w * resid**2).sum(1), (w * yc**2).sum(1)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), (ss_res <= 1e-24).double())
    return coef, intercept, r2


def _sample_masks(num_segments: torch.Tensor, n_samples: int, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """Random on/off masks ``[N,n_samples,S]``; sample 0 shows everything, padding is always off.

    Drawn image after image from ``generator``, so explaining images one call at a time with one
    generator gives exactly the masks of one batched call.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    s_max = int(num_segments.max())
    masks = torch.zeros(len(num_segments), n_samples, s_max, dtype=torch.bool, device=device)
    for i, s in enumerate(num_segments.tolist()):  # ragged S_i; the model passes below are batched
        masks[i, :, :s] = torch.randint(0, 2, (n_samples, s), generator=generator, device=gen_device).bool().to(device)
    masks[:, 0, :] = True
    return masks & (torch.arange(s_max, device=device) < num_segments[:, None])[:, None, :]


def lime_explain(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                 segmentation: str | torch.Tensor = "slic", n_segments: int = 50,
                 segmentation_kwargs: dict | None = None, n_samples: int = 1000, kernel_width: float = 0.25,
                 hide: str | float = "mean", alpha: float = 1.0, output: str = "probability",
                 batch_size: int | None = None, generator: torch.Generator | None = None,
                 progress: bool = False, fast: bool = True, precision: str = "float32") -> LimeResult:
    """LIME for a batch of images: superpixels, random masks, weighted ridge surrogate.

    Ribeiro, Singh & Guestrin, "Why Should I Trust You?", KDD 2016.
    ``w = argmin sum_z pi(z) (f(x_z) - b - w.z)^2 + alpha |w|^2``, ``pi(z) = sqrt(exp(-cos_dist(z,1)^2 / kw^2))``.
    ``segmentation``: ``"slic"`` (default; ~30-45 superpixels on a 48x48 gray face), ``"quickshift"``,
    ``"felzenszwalb"`` or a precomputed int tensor ``[N,H,W]`` / ``[H,W]``. ``hide``: ``"mean"`` (each
    superpixel's mean colour, lime's default), ``"black"`` or a float. ``output``: explain the target's
    ``"probability"`` (lime's) or ``"logit"``. Every sample of every image goes through the model in
    chunks of ``batch_size``; the same ``generator`` seed gives the same result. ``fast`` (default) scores them
    with a folded-BatchNorm, channels-last copy at a measured batch size and, where the model decomposes
    into local layers up to its head (global average pooling, or a flatten into a Linear layer), computes
    its first layers once per local mask pattern instead of once per sample (:mod:`cnnlens.explain.accel.tables`)
    and its late 3x3 convolutions as Winograd F(4x4,3x3) where timed faster (:mod:`cnnlens.explain.accel.winograd`):
    the same scores to float rounding (~1e-6 relative); where it does not, a ``cnnlens.explain`` log line
    names the layer that stops it;
    ``precision="bfloat16"``: in bfloat16, opt-in; ``fast=False`` runs the model itself on every masked image.

    >>> res = lime_explain(model, images, generator=torch.Generator().manual_seed(0))
    >>> res.map().shape, res.top_positive[0][:3]
    """
    core.check_images(images)
    check_output(output)
    check_int(n_samples, "n_samples", 2)
    if not kernel_width > 0:
        raise ValueError(f"kernel_width must be > 0, got {kernel_width!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha (ridge penalty) must be >= 0, got {alpha!r}")
    check_batch_size(batch_size, images.device)
    images = images.detach()
    segments, num = superpixels(images, segmentation, n_segments=n_segments, segmentation_kwargs=segmentation_kwargs)
    fill = hide_values(images, segments, int(num.max()), hide)
    masks = _sample_masks(num, n_samples, generator, images.device)
    scores, t = masked_scores(model, images, fill, segments, num, masks, target, output=output, batch_size=batch_size,
                              fast=fast, precision=precision, progress=progress, description="LIME")

    # lime's kernel on the cosine distance to the all-on mask: cos(z, 1) = sqrt(|z| / S).
    distance = 1 - (masks.sum(-1).double() / num[:, None].double()).sqrt()
    kernel = torch.exp(-(distance**2) / kernel_width**2).sqrt()
    valid = torch.arange(masks.shape[-1], device=images.device) < num[:, None]
    coef, intercept, r2 = weighted_ridge(masks.double(), scores, kernel, alpha, valid)
    coef = coef.to(images.dtype).masked_fill(~valid, 0.0)
    order = coef.argsort(dim=1, descending=True).tolist()
    wl = coef.tolist()
    return LimeResult(
        segments=segments, num_segments=num, weights=coef, intercept=intercept.to(images.dtype),
        score=r2.to(images.dtype), target=t,
        top_positive=tuple(tuple(s for s in o if wl[i][s] > 0) for i, o in enumerate(order)),
        top_negative=tuple(tuple(s for s in reversed(o) if wl[i][s] < 0) for i, o in enumerate(order)),
        samples=masks, sample_scores=scores, sample_weights=kernel.to(images.dtype),
    )


# the commands' 300 samples (lime's own 1000): the demo's report well under a minute on 2 CPU cores
@method("lime", "LIME +/-", kind="perturbation", result=lime_explain, options={"n_samples": 300}, style="lime",
        in_report=7,
        paper=Paper("Ribeiro, Singh & Guestrin", 2016, '"Why should I trust you?": explaining the predictions of '
                    "any classifier"))
def lime(model: nn.Module, images: torch.Tensor, target: Target = None, **options: object) -> torch.Tensor:
    """LIME's superpixel weights painted on the pixels, ``[N,H,W]`` (options as :func:`lime_explain`)."""
    return lime_explain(model, images, target, **options).map()
