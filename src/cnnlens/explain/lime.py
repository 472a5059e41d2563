"""LIME (Ribeiro et al. 2016): a weighted linear surrogate of the model over superpixels being shown or hidden.

For each image: split it into superpixels, draw ``n_samples`` random on/off masks ``z`` (the first keeps
everything), score each masked image, weight each sample by its closeness to the full image
(``pi(z) = sqrt(exp(-d(z,1)^2 / kernel_width^2))``, ``d`` = cosine distance, as the ``lime`` package
does), and fit ``score ~ intercept + w . z`` by weighted ridge regression. ``w[s]`` is superpixel s's
contribution. Same defaults as ``lime``: 1000 samples, kernel width 0.25, ridge penalty 1, the target's
softmax probability; the ridge is solved in closed form for all images at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnlens._checks import check_int, is_number
from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import batch_ranges, check_batch_size, check_output, class_score
from cnnlens.explain.registry import method

log = logging.getLogger("cnnlens.explain")
SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")
HIDES = ("mean", "black")


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
        n = self.segments.shape[0]
        return self.weights.gather(1, self.segments.reshape(n, -1)).reshape(self.segments.shape)

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


def relabel(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber each image's segment ids to ``0..S_i-1`` (order kept); returns (segments, S per image)."""
    n = segments.shape[0]
    flat = segments.reshape(n, -1).long()
    flat = flat - flat.min()
    span = int(flat.max()) + 1
    keys = flat + span * torch.arange(n, device=flat.device)[:, None]
    uniq, inverse = torch.unique(keys, return_inverse=True)
    counts = torch.bincount(uniq // span, minlength=n)
    first = torch.cumsum(counts, 0) - counts
    return (inverse - first[:, None]).reshape(segments.shape), counts


def _default_segmenter_kwargs(method: str, channels: int, size: tuple[int, int], n_segments: int) -> dict:
    """scikit-image settings that give ~30-60 superpixels on a 48x48 gray face and sane ones on RGB."""
    if method == "slic":
        # Gray values in [0,1] need a far smaller compactness than Lab colours (0-100): measured on faces.
        # sigma=1 pre-smoothing: without it a noisy image collapses into one superpixel.
        return {"n_segments": n_segments, "compactness": 0.1 if channels == 1 else 10.0, "sigma": 1.0, "start_label": 0}
    if method == "quickshift":
        # lime's settings, with the kernel scaled from its 224-px images: kernel 4 leaves 3 regions at 48 px.
        return {"kernel_size": max(1.0, 4 * min(size) / 224), "max_dist": 200, "ratio": 0.2}
    return {"scale": 50.0, "sigma": 0.5, "min_size": max(10, size[0] * size[1] // 100)}


def segment_images(images: torch.Tensor, method: str = "slic", *, n_segments: int = 50, **kwargs: object) -> torch.Tensor:
    """Superpixels of each image with scikit-image: int64 ``[N,H,W]``, ids ``0..S_i-1`` per image.

    ``method`` is ``"slic"`` (Achanta et al. 2012; gray images natively, ``n_segments`` = the requested
    number), ``"quickshift"`` (Vedaldi & Soatto 2008, lime's default) or ``"felzenszwalb"`` (2004).
    ``kwargs`` override the scikit-image settings.
    """
    from skimage import segmentation as sk

    core.check_images(images)
    if method not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {', '.join(map(repr, SEGMENTATIONS))} or an int tensor [N,H,W], got {method!r}")
    c = images.shape[1]
    if c not in (1, 3):
        raise ValueError(f"scikit-image segmentation needs 1 or 3 channels, got {c}; pass precomputed segments")
    params = {**_default_segmenter_kwargs(method, c, tuple(images.shape[2:]), n_segments), **kwargs}
    pixels = images.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    out = []
    for img in pixels:  # scikit-image segments one image at a time
        if method == "slic":
            seg = sk.slic(img[..., 0] if c == 1 else img, channel_axis=None if c == 1 else -1, **params)
        elif method == "quickshift":
            # quickshift wants three (Lab) channels: a gray image is repeated, as lime users do.
            seg = sk.quickshift(np.repeat(img, 3, axis=-1) if c == 1 else img, **params)
        else:
            seg = sk.felzenszwalb(img[..., 0] if c == 1 else img, channel_axis=None if c == 1 else -1, **params)
        out.append(seg)
    return relabel(torch.from_numpy(np.stack(out)).to(images.device))[0]


def _check_segments(segments: object, images: torch.Tensor) -> torch.Tensor:
    """A precomputed segmentation as int64 ``[N,H,W]`` on the images' device (``[H,W]`` is shared)."""
    if isinstance(segments, np.ndarray):
        segments = torch.from_numpy(segments)
    if not isinstance(segments, torch.Tensor) or segments.is_floating_point() or segments.dtype == torch.bool:
        raise TypeError("segmentation must be 'slic', 'quickshift', 'felzenszwalb' or an integer tensor [N,H,W] / [H,W]")
    n, _, h, w = images.shape
    if tuple(segments.shape) == (h, w):
        segments = segments.expand(n, h, w)
    if tuple(segments.shape) != (n, h, w):
        raise ValueError(f"segmentation tensor must have shape [N,H,W] = {(n, h, w)} or [H,W], got {tuple(segments.shape)}")
    return segments.to(images.device)


def hide_values(images: torch.Tensor, segments: torch.Tensor, num: int, hide: str | float) -> torch.Tensor:
    """What a hidden superpixel shows, ``[N,C,H,W]``: its own mean colour (lime's default), black, or a value."""
    if isinstance(hide, str):
        if hide not in HIDES:
            raise ValueError(f"hide must be 'mean', 'black' or a float, got {hide!r}")
        if hide == "black":
            return torch.zeros_like(images)
        n, c = images.shape[:2]
        idx = segments.reshape(n, 1, -1).expand(n, c, -1)
        sums = torch.zeros(n, c, num, dtype=images.dtype, device=images.device).scatter_add_(2, idx, images.reshape(n, c, -1))
        counts = torch.zeros(n, 1, num, dtype=images.dtype, device=images.device).scatter_add_(
            2, idx[:, :1], torch.ones_like(images[:, :1]).reshape(n, 1, -1))
        return (sums / counts.clamp_min(1)).gather(2, idx).reshape(images.shape)
    if is_number(hide):
        return torch.full_like(images, float(hide))
    raise TypeError(f"hide must be 'mean', 'black' or a float, got {type(hide).__name__}")


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
    bs = check_batch_size(batch_size, images.device)
    images = images.detach()
    n, c, h, w = images.shape
    if isinstance(segmentation, str):
        segmentation = segment_images(images, segmentation, n_segments=n_segments, **(segmentation_kwargs or {}))
    segments, num = relabel(_check_segments(segmentation, images))
    fill = hide_values(images, segments, int(num.max()), hide)
    masks = _sample_masks(num, n_samples, generator, images.device)

    with core.guarded(model, images):
        if fast or precision != "float32":
            forward, bs = accel.fast_scorer(model, images, batch_size, precision=precision)
        else:
            forward = model
        with torch.inference_mode():
            logits = torch.cat([forward(images[s:e]) for s, e in batch_ranges(n, bs)])
        t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=images.device)
        # None where the model does not decompose (a log line says which layer stops the pattern tables)
        masked = accel.masked_scorer(model, images, precision=precision) if fast else None
        with torch.inference_mode():
            scores = torch.empty(n * n_samples, dtype=images.dtype, device=images.device)
            if masked is not None:
                # Early layers once per local mask pattern (cnnlens.explain.accel.tables): one image's samples
                # at a time; the rest of the model in batches of 2 bs samples (its late, small maps ran
                # fastest at about twice a whole forward's best batch: measured on small_cnn, vgg_fer, resnet18).
                for i, _ in batch_ranges(n, 1, progress=progress, description="LIME"):
                    out = masked(images[i], fill[i], segments[i], masks[i, :, : int(num[i])], batch_size=2 * bs)
                    scores[i * n_samples:(i + 1) * n_samples] = class_score(out.to(images.dtype), t[i].expand(n_samples), output)
            else:
                flat_seg = segments.reshape(n, -1)
                for start, end in batch_ranges(n * n_samples, bs, progress=progress, description="LIME"):
                    idx = torch.arange(start, end, device=images.device)
                    img = idx // n_samples
                    shown = masks[img, idx % n_samples].gather(1, flat_seg[img]).reshape(-1, 1, h, w)
                    scores[start:end] = class_score(forward(torch.where(shown, images[img], fill[img])), t[img], output)
    scores = scores.reshape(n, n_samples).clone()  # a normal tensor, not an inference-mode one

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
        in_report=7)
def lime(model: nn.Module, images: torch.Tensor, target: Target = None, **options: object) -> torch.Tensor:
    """LIME's superpixel weights painted on the pixels, ``[N,H,W]`` (options as :func:`lime_explain`)."""
    return lime_explain(model, images, target, **options).map()
