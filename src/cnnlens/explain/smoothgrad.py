"""SmoothGrad (Smilkov et al. 2017): any gradient method averaged over noisy copies of the image.

``SG(x) = 1/n sum_s M(x + eps_s)``, ``eps_s ~ N(0, (sigma * (max x - min x))^2)`` per image;
SmoothGrad-Squared (Hooker et al. 2019) averages ``M(x + eps_s)^2``, VarGrad (Adebayo et al. 2018) takes
their variance ``mean_s M^2 - (mean_s M)^2``. ``M`` is any *gradient method*:
a callable ``M(model, images[M,C,H,W], target=int64 tensor[M], reduce=None) -> [M,C,H,W]``, the cnnlens
call shape itself, so :func:`~cnnlens.explain.saliency.saliency`, ``guided_backprop`` and
``integrated_gradients`` all qualify (options through ``functools.partial``).

Noise draw ``s`` is ``torch.randn(images.shape, generator=generator)`` (float32) for all N images at once, for
``s = 0..n-1`` in order; the ``n x N`` noisy images are then evaluated in chunks of ``batch_size``, so the
result does not depend on ``batch_size``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from cnnlens._checks import check_int, is_number
from cnnlens._progress import track
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.saliency import saliency
from cnnlens.explain.registry import Paper, method


class GradientMethod(Protocol):
    """What SmoothGrad averages: raw ``[M,C,H,W]`` attributions of ``images`` for per-image ``target``."""

    def __call__(self, model: nn.Module, images: torch.Tensor, target: Target = None, *,
                 reduce: Reduce = ...) -> torch.Tensor: ...


def noisy_batches(images: torch.Tensor, n_samples: int, sigma: float, batch_size: int,
                  generator: torch.Generator | None, progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(noisy images, their image indices)`` in chunks of ``batch_size``, drawn one noise sample at a time
    (the stream's image ``k`` is noise sample ``k // N`` of image ``k % N``)."""
    n = images.shape[0]
    scale = sigma * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
    draw_device = generator.device if generator is not None else images.device
    samples = track(range(n_samples), "smoothgrad", enabled=progress)
    rest = images[:0]  # noisy images not yet handed out, starting at stream position `offset`
    offset = 0
    for _ in samples:
        # drawn in float32 whatever the images' dtype: one seed, one noise, also for a float64 model
        noise = torch.randn(images.shape, generator=generator, device=draw_device, dtype=torch.float32)
        rest = torch.cat([rest, images + noise.to(images.device, images.dtype) * scale.view(-1, 1, 1, 1)])
        while rest.shape[0] >= batch_size:
            yield rest[:batch_size], (offset + torch.arange(batch_size, device=images.device)) % n
            rest, offset = rest[batch_size:], offset + batch_size
    if rest.shape[0]:
        yield rest, (offset + torch.arange(rest.shape[0], device=images.device)) % n


# the commands' 12 noisy copies (the paper's 50): the demo's report well under a minute on 2 CPU cores
@method("smoothgrad", "SmoothGrad", kind="gradient", options={"n_samples": 12}, in_report=1,
        paper=Paper("Smilkov et al.", 2017, "SmoothGrad: removing noise by adding noise"))
def smoothgrad(model: nn.Module, images: torch.Tensor, target: Target = None, *,
               method: GradientMethod = saliency, n_samples: int = 50, sigma: float = 0.15,
               squared: bool = False, variance: bool = False, batch_size: int | None = None,
               generator: torch.Generator | None = None, progress: bool = False, reduce: Reduce = "max_abs",
               fast: bool = True) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): ``mean_s method(x + eps_s)``, ``eps_s ~ N(0, (sigma * range(x))^2)``.

    ``sigma`` is relative to each image's max - min (the paper's 10-20%). ``squared=True`` averages the
    squares (SmoothGrad-Squared), ``variance=True`` gives their variance over the samples (VarGrad;
    Captum's ``nt_type="vargrad"``: ``mean M^2 - (mean M)^2``, here clamped at 0 against rounding).
    ``batch_size`` noisy images go through ``method`` at a time (None: the device's default). Returns
    ``[N,H,W]`` after ``reduce``, raw ``[N,C,H,W]`` with ``reduce=None``; this is Captum's
    ``NoiseTunnel(method).attribute(nt_type="smoothgrad")`` given the same noise.
    ``fast`` (default): ``method`` differentiates the checked prepared copy
    (:func:`cnnlens.explain.accel.prepared`); ``fast=False``: the model itself (also handed to ``method``
    as ``fast=False`` where it takes that argument).

    >>> g = torch.Generator().manual_seed(0)
    >>> maps = smoothgrad(model, images, n_samples=50, sigma=0.2, generator=g)
    >>> maps = smoothgrad(model, images, method=functools.partial(integrated_gradients, n_steps=16))
    """
    core.check_images(images)
    if not callable(method):
        raise TypeError(f"method must be a gradient method like saliency or guided_backprop, got {type(method).__name__}")
    check_int(n_samples, "n_samples", 1)
    if squared and variance:
        raise ValueError("squared and variance are two statistics of the samples: pass at most one of them")
    if not is_number(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a number >= 0 (a fraction of each image's value range), got {sigma!r}")
    bs = core.check_batch_size(batch_size, images.device)
    x = images.detach()
    extra = {} if fast or not _takes_fast(method) else {"fast": False}
    with core.guarded(model, images):
        net = accel.prepared(model, example=x) if fast else model
        logits = core.predict_logits(net, x)
        t = core.resolve_target(target, x.shape[0], logits.shape[1], logits=lambda: logits, device=x.device)
        total, total_sq = torch.zeros_like(x), torch.zeros_like(x)
        for noisy, img in noisy_batches(x, n_samples, float(sigma), bs, generator, progress):
            attr = method(net, noisy, t[img], reduce=None, **extra)
            if not isinstance(attr, torch.Tensor) or attr.shape != noisy.shape:
                got = tuple(attr.shape) if isinstance(attr, torch.Tensor) else type(attr).__name__
                raise ValueError(f"method must return raw attributions shaped like its images {tuple(noisy.shape)} "
                                 f"when called with reduce=None, got {got}")
            attr = attr.detach()
            total.index_add_(0, img, attr ** 2 if squared else attr)
            if variance:
                total_sq.index_add_(0, img, attr ** 2)
    mean = total / n_samples
    return core.reduce_channels((total_sq / n_samples - mean ** 2).clamp(min=0) if variance else mean, reduce)


def _takes_fast(method: GradientMethod) -> bool:
    """Whether ``method`` accepts a ``fast`` keyword (every cnnlens gradient method does)."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):  # a builtin or an odd callable: hand it nothing extra
        return False
    return "fast" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
