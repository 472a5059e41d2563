"""Superpixels and the model's scores on images with some of them hidden: what LIME, KernelSHAP and
feature ablation share.

A superpixel method works in three steps: split each image into segments (:func:`segment_images`, or a
precomputed int tensor checked by :func:`check_segments`), choose what a hidden segment shows
(:func:`hide_values`), and score the target on every on/off pattern of segments (:func:`masked_scores`,
batched; where the model decomposes into local layers it asks the speed layer's pattern tables,
``accel.masked_scorer``, else it scores every masked image whole).

>>> segments, num = relabel(check_segments(segment_images(images, "slic"), images))
>>> fill = hide_values(images, segments, int(num.max()), "mean")
>>> scores = masked_scores(model, images, fill, segments, num, masks, target)   # [N,K]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cnnlens._checks import is_number
from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import batch_ranges, check_batch_size, class_score

#: scikit-image segmenters :func:`segment_images` runs.
SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")
#: What a hidden superpixel shows (besides a float): its own mean colour, or black.
HIDES = ("mean", "black")


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


def segmenter_settings(method: str, channels: int, size: tuple[int, int], n_segments: int) -> dict:
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
    params = {**segmenter_settings(method, c, tuple(images.shape[2:]), n_segments), **kwargs}
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


def check_segments(segments: object, images: torch.Tensor) -> torch.Tensor:
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


def superpixels(images: torch.Tensor, segmentation: str | torch.Tensor = "slic", *, n_segments: int = 50,
                segmentation_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(segments [N,H,W], S per image [N])``: scikit-image's superpixels (``segmentation`` a name of
    :data:`SEGMENTATIONS`) or a precomputed int tensor, relabelled to ``0..S_i-1``."""
    if isinstance(segmentation, str):
        segmentation = segment_images(images, segmentation, n_segments=n_segments, **(segmentation_kwargs or {}))
    return relabel(check_segments(segmentation, images))


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


#: The dense plan forward replaces the pattern tables only when estimated at least this much faster.
DENSE_GAIN = 1.1


def masked_scores(model: nn.Module, images: torch.Tensor, fill: torch.Tensor, segments: torch.Tensor,
                  num: torch.Tensor, masks: torch.Tensor, target: Target = None, *, output: str = "probability",
                  batch_size: int | None = None, fast: bool = True, precision: str = "float32",
                  progress: bool = False, description: str = "superpixels") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [N,K], target [N])``: the target's score on every image with the segments where ``masks``
    (bool ``[N,K,S]``) is False replaced by ``fill`` ``[N,C,H,W]``, and the resolved target.

    Every (image, pattern) pair goes through the model in chunks of ``batch_size``. ``fast`` (default)
    scores with the checked folded, channels-last copy at a measured batch size and, where the model
    decomposes into local layers up to its head, through the pattern tables (``accel.masked_scorer``: its
    first layers once per local mask pattern, the same scores to float rounding); where it does not, a
    ``cnnlens.explain`` log line names the layer that stops it. The tables pay off when many samples share
    few patterns (LIME's 1000 samples: 0.6x the dense forward's time on the small CNN and fer_mlp); with a few
    dozen patterns (feature ablation, 40 samples: 1.2-1.3x) the dense plan forward of Score-CAM
    (``accel.plan_scorer``: Winograd, pooling in its tiles) is faster. So in float32, outside deterministic mode,
    the first call for an architecture, image shape and pattern count times the tables on its first image
    against the prepared copy on a batch of the same masked images (:func:`_dense_is_faster`), and keeps the
    choice for the process (``accel.tuning.CHOICES``). ``fast=False`` runs the model itself on every masked
    image. Call it with the images detached; it guards the model itself.
    """
    n, _, h, w = images.shape
    k = masks.shape[1]
    bs = check_batch_size(batch_size, images.device)
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
        flat_seg = segments.reshape(n, -1)

        def masked_images(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
            """The masked images of (image, pattern) pairs ``start..end-1`` (image-major) and their images."""
            idx = torch.arange(start, end, device=images.device)
            img = idx // k
            shown = masks[img, idx % k].gather(1, flat_seg[img]).reshape(-1, 1, h, w)
            return torch.where(shown, images[img], fill[img]), img

        def tables(i: int) -> None:
            # Early layers once per local mask pattern (the pattern tables): one image's patterns at a time; the
            # rest of the model in batches of 2 bs (its late, small maps ran fastest at about twice a whole
            # forward's best batch: measured on small_cnn, vgg_fer, resnet18).
            out = masked(images[i], fill[i], segments[i], masks[i, :, : int(num[i])], batch_size=2 * bs)
            scores[i * k:(i + 1) * k] = class_score(out.to(images.dtype), t[i].expand(k), output)

        with torch.inference_mode():
            scores = torch.empty(n * k, dtype=images.dtype, device=images.device)
            done = 0  # images scored
            if masked is not None and precision == "float32" and not accel.is_deterministic():
                # whether the dense plan forward scored faster than the tables (``accel.tuning.CHOICES``)
                key = ("tables-or-plan", *accel.architecture_key(model), tuple(images.shape[1:]), k, str(images.device),
                       torch.get_num_threads())
                if key not in accel.tuning.CHOICES:
                    accel.tuning.CHOICES[key] = _dense_is_faster(images, lambda: tables(0), forward, masked_images, k,
                                                                 bs)
                    done = 1
                if accel.tuning.CHOICES[key]:
                    masked = None
                    forward, bs = accel.plan_scorer(model, images, 2 * bs) or (forward, bs)
            if masked is not None:
                for i, _ in batch_ranges(n - done, 1, progress=progress, description=description):
                    tables(done + i)
            else:
                for start, end in batch_ranges((n - done) * k, bs, progress=progress, description=description):
                    x, img = masked_images(done * k + start, done * k + end)
                    scores[done * k + start:done * k + end] = class_score(forward(x), t[img], output)
    return scores.reshape(n, k).clone(), t  # a normal tensor, not an inference-mode one


def _dense_is_faster(images: torch.Tensor, first_image: Callable[[], None], forward: Callable[[torch.Tensor], torch.Tensor],
                     masked_images: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], k: int,
                     batch_size: int) -> bool:
    """Scores the first image through the pattern tables (``first_image``), then times that again (the first call
    of a process also times the tables' Winograd choices) and the prepared copy's ``forward`` on a batch of its
    masked images: whether ``k`` of them would take :data:`DENSE_GAIN` times less. The plan forward that then
    runs is at least as fast as the prepared copy (Winograd only where timed faster): the choice errs towards
    the tables, and costs one dense batch, not the plan's Winograd timing, when they stay."""
    clock = accel.tuning.clock(images.device)
    sync = torch.cuda.synchronize if images.device.type == "cuda" else (lambda: None)
    first_image()
    sync()
    start = clock()
    first_image()
    sync()
    tables = clock() - start
    batch, _ = masked_images(0, min(k, batch_size))
    return DENSE_GAIN * k * accel.tuning.seconds_per_item(forward, batch, 0.03) < tables


def paint(weights: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Each pixel painted with its segment's weight: ``weights`` ``[N,S]``, ``segments`` ``[N,H,W]`` -> ``[N,H,W]``."""
    n = segments.shape[0]
    return weights.gather(1, segments.reshape(n, -1)).reshape(segments.shape)


__all__ = ["HIDES", "SEGMENTATIONS", "check_segments", "hide_values", "masked_scores", "paint", "relabel",
           "segment_images", "segmenter_settings", "superpixels"]
