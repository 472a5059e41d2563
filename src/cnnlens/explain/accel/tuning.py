"""How the speed layer chooses by timing itself, and the switch that turns every such choice off.

- :func:`tuned_batch_size`: a tiny measured search over batch sizes, cached per (architecture, input
  shape, device, dtype, threads); on a 2-core CPU ~16 images per pass beat 512.
- :func:`seconds_per_item`: the timing probe (also Winograd's, :mod:`cnnlens.explain.accel.winograd`).
- :func:`set_deterministic` / :func:`deterministic` / ``CNNLENS_DETERMINISTIC=1``: no choice is timed
  (fixed batch sizes, :data:`DETERMINISTIC_BATCH`; the direct convolution instead of Winograd), so two
  processes compute bit-identical maps.

>>> bs = tuned_batch_size(forward, images[:1], key=("occlusion", *architecture_key(model)))
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from cnnlens._checks import is_int

#: (architecture signature, input shape, device, dtype, precision, threads) -> measured best batch size.
_TUNED: dict[tuple, int] = {}
#: Other timed choices, keyed by their maker (e.g. ``("tables-or-plan", ...)`` of
#: ``cnnlens.explain.segmentation.masked_scores``); cleared with the batch sizes.
CHOICES: dict[tuple, object] = {}

#: The environment variable that turns deterministic mode on for a whole process (``1``, ``true``, ``yes``).
DETERMINISTIC_ENV = "CNNLENS_DETERMINISTIC"
#: The batch size used instead of a measured one in deterministic mode (images per scoring pass): the size the
#: measurement picks on a 2-core CPU, and one that keeps a GPU busy. With ``candidates``, the nearest of those.
DETERMINISTIC_BATCH = {"cpu": 16, "cuda": 256}
_deterministic: bool | None = None  # None: read DETERMINISTIC_ENV


def clear_cache() -> None:
    """Forget the measured batch sizes and :data:`CHOICES` (``cnnlens.explain.accel.clear_caches`` calls this)."""
    _TUNED.clear()
    CHOICES.clear()


def is_deterministic() -> bool:
    """Whether timing-dependent choices are off: :func:`set_deterministic`'s value, else ``CNNLENS_DETERMINISTIC``."""
    if _deterministic is not None:
        return _deterministic
    return os.environ.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_deterministic(on: bool | None) -> None:
    """Turn off (``True``) or back on (``False``) every choice cnnlens makes by timing itself, for the whole
    process; ``None`` goes back to the environment variable ``CNNLENS_DETERMINISTIC``.

    Deterministic mode uses fixed, documented choices instead of measured ones: scoring batches of
    :data:`DETERMINISTIC_BATCH` images (not :func:`tuned_batch_size`'s measurement) and the direct convolution
    (not Winograd where timed faster, ``accel.winograd.faster``). Two processes then compute bit-identical maps on
    the same machine, thread count and inputs; the default (off) is faster. On CUDA, also call
    ``torch.use_deterministic_algorithms(True)``: cnnlens leaves torch's own global settings as they are.

    >>> set_deterministic(True)      # or CNNLENS_DETERMINISTIC=1 in the environment
    """
    global _deterministic
    if on is not None and not isinstance(on, bool):
        raise TypeError(f"set_deterministic takes True, False or None (the environment's {DETERMINISTIC_ENV}), got {on!r}")
    _deterministic = on


@contextlib.contextmanager
def deterministic(on: bool = True) -> Iterator[None]:
    """Deterministic mode (:func:`set_deterministic`) inside the block only; the previous setting after it.

    >>> with deterministic():
    ...     maps = lime(model, images, generator=torch.Generator().manual_seed(0))
    """
    global _deterministic
    saved = _deterministic
    set_deterministic(on)
    try:
        yield
    finally:
        _deterministic = saved


def architecture_key(model: nn.Module) -> tuple:
    """What the speed of a forward pass depends on: the class and every parameter's name and shape."""
    return (type(model).__module__, type(model).__qualname__,
            tuple((name, tuple(p.shape)) for name, p in model.named_parameters()))


def _candidates(device: torch.device) -> tuple[int, ...]:
    return (32, 64, 128, 256, 512, 1024) if device.type == "cuda" else (8, 16, 32, 64, 128)


#: Timed runs per measured size (best of them), unless one size has already taken :data:`MAX_SPENT` seconds:
#: one run was too few on a shared machine (a size that lost one run to another process lost its place;
#: the small CNN's LIME ran at 8, 32 or 128 depending on the moment).
MIN_RUNS = 3
MAX_SPENT = 0.25


def clock(device: torch.device) -> Callable[[], float]:
    """The clock sizes are timed with: this thread's CPU time where torch runs single-threaded on the CPU
    (all the work is on this thread, and another process taking the core for a while does not count
    against the size being timed), else wall time."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def seconds_per_item(run: Callable[[torch.Tensor], object], batch: torch.Tensor, min_time: float) -> float:
    """Best-of-runs seconds per item of ``run(batch)`` after one warm-up call: at least :data:`MIN_RUNS` timed
    runs (fewer only once :data:`MAX_SPENT` seconds are spent), more until ``min_time`` is spent."""
    run(batch)
    sync = torch.cuda.synchronize if batch.device.type == "cuda" else (lambda: None)
    timer = clock(batch.device)
    best, spent, runs = math.inf, 0.0, 0
    while spent < min_time or (runs < MIN_RUNS and spent < MAX_SPENT):
        sync()
        start = timer()
        run(batch)
        sync()
        took = timer() - start
        best, spent, runs = min(best, took), spent + took, runs + 1
    return best / batch.shape[0]


def _checked_sizes(candidates: Iterable[int]) -> list[int]:
    sizes = list(candidates)
    if not sizes or not all(is_int(s, 1) for s in sizes):
        raise ValueError(f"candidates must be positive ints, got {candidates!r}")
    return sorted(set(sizes))


def tuned_batch_size(run: Callable[[torch.Tensor], object], example: torch.Tensor, *, key: tuple,
                     candidates: Iterable[int] | None = None, min_time: float = 0.02) -> int:
    """The batch size with the lowest measured time per item for ``run``, cached under ``key``.

    ``example`` is one item ``[1,...]`` (repeated to each candidate size); ``key`` names what the
    timing depends on (e.g. ``architecture_key(model)`` and the method); the input shape, device,
    dtype and thread count are added. Each size runs twice (warm-up, timed); the search stops once two
    sizes in a row are 15% slower per item than the best (on CPU large batches lose: cache misses).
    In deterministic mode (:func:`is_deterministic`) nothing is timed: :data:`DETERMINISTIC_BATCH` for the
    device (the nearest of ``candidates`` when given).

    >>> bs = tuned_batch_size(forward, images[:1], key=("occlusion", *architecture_key(model)))
    """
    if example.dim() < 1 or example.shape[0] < 1:
        raise ValueError(f"example must hold at least one item, got shape {tuple(example.shape)}")
    if is_deterministic():  # a fixed size, never timed (and never cached: nothing was measured)
        fixed = DETERMINISTIC_BATCH.get(example.device.type, DETERMINISTIC_BATCH["cpu"])
        if candidates is None:
            return fixed
        return min(_checked_sizes(candidates), key=lambda s: (abs(s - fixed), s))
    full_key = (key, tuple(example.shape[1:]), str(example.device), example.dtype, torch.get_num_threads())
    if full_key in _TUNED:
        return _TUNED[full_key]
    sizes = _checked_sizes(candidates) if candidates is not None else sorted(_candidates(example.device))
    best_size, best_time, worse = sizes[0], math.inf, 0
    for size in sizes:
        batch = example[:1].expand(size, *example.shape[1:]).contiguous()
        per_item = seconds_per_item(run, batch, min_time)
        if per_item < best_time:
            best_size, best_time, worse = size, per_item, 0
        elif per_item > 1.15 * best_time:
            worse += 1
            if worse == 2:
                break
    _TUNED[full_key] = best_size
    return best_size

