"""Explain a whole dataset in batches, writing the maps to disk as they come.

Memory stays that of one batch whatever the number of images: images are read one batch at a time
(from an :class:`~cnnlens.data.imageset.ImageSet`, a tensor/array, or a ``.npy`` file opened for each
batch), each batch's maps are appended to a ``.npy`` file with plain writes (no growing memory map),
and the finished file is moved into place atomically. Time grows linearly with N; a rich progress
bar shows the rate in images per second. For a job that resumes after a kill, stores several methods'
maps with per-image predictions and faithfulness scores, or runs on a Ray cluster, see :mod:`cnnlens.jobs`
(``explain_dataset``; ``cnnlens explain RUN --engine local|ray``).

>>> res = stream_explain(model, "test_images.npy", "grad-cam", out="maps.npy", progress=True)
>>> maps = res.load()            # float32 [N,H,W], memory-mapped
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlens._atomic import atomic_path
from cnnlens._checks import check_int
from cnnlens._progress import progress_bar
from cnnlens._types import PathArg
from cnnlens.data.imageset import ImageSet
from cnnlens.explain import accel, core, registry

Source = ImageSet | torch.Tensor | np.ndarray | PathArg


@dataclass(frozen=True)
class StreamResult:
    """Where a streamed explanation went.

    Attributes:
        maps: ``.npy`` file holding float32 ``[N,H,W]`` maps, row i = image i.
        targets: ``.npy`` file holding int64 ``[N]``: the class each map explains.
        count: N.
        seconds: wall time of the whole stream.
    """

    maps: Path
    targets: Path
    count: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Average rate of the stream."""
        return self.count / self.seconds if self.seconds > 0 else float("inf")

    def load(self, mmap: bool = True) -> np.ndarray:
        """The maps as an array, memory-mapped read-only by default (nothing is read until used)."""
        return np.load(self.maps, mmap_mode="r" if mmap else None)


def _count_and_shape(images: Source) -> tuple[int, tuple[int, ...]]:
    if isinstance(images, ImageSet):
        return len(images), tuple(images.images.shape[1:])
    if isinstance(images, (torch.Tensor, np.ndarray)):
        shape = tuple(images.shape)
    elif isinstance(images, (str, Path)):
        path = Path(images)
        if path.suffix != ".npy" or not path.is_file():
            raise ValueError(f"images path must be an existing .npy file of [N,C,H,W] images, got {str(path)!r}")
        shape = tuple(np.load(path, mmap_mode="r").shape)
    else:
        raise TypeError("images must be an ImageSet, a [N,C,H,W] tensor or array (uint8 0-255 or float 0-1), "
                        f"or the path of such a .npy file; got {type(images).__name__}")
    if len(shape) != 4 or shape[0] < 1:
        raise ValueError(f"images must have shape [N,C,H,W] with N >= 1, got {shape}")
    return shape[0], shape[1:]


def _batch(images: Source, start: int, end: int) -> torch.Tensor:
    """Images ``start:end`` as float32 in [0,1]; a ``.npy`` is mapped only while the batch is read, so the
    pages it touched do not pile up in the process's memory."""
    if isinstance(images, ImageSet):
        return images.float_images(slice(start, end))
    if isinstance(images, (str, Path)):
        x = torch.from_numpy(np.array(np.load(images, mmap_mode="r")[start:end]))
    elif isinstance(images, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images[start:end]))
    else:
        x = images[start:end]
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 (0-255) or floating point (0-1), got {x.dtype}")
    return x.float()


def _targets(target: object, images: Source, n: int) -> torch.Tensor | None:
    """None (the predicted class) or int64 ``[N]``."""
    if target is None:
        return None
    if isinstance(target, str):
        if target != "labels" or not isinstance(images, ImageSet):
            raise ValueError(f"target must be None, 'labels' (with an ImageSet), an int or one int per image; got {target!r}")
        if (images.labels < 0).any():
            raise ValueError("target='labels' but some images have no label (-1); use target=None")
        return images.labels
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    return core.resolve_target(target, n)  # type: ignore[arg-type]


class _NpyAppender:
    """Writes a ``.npy`` of known shape batch after batch with plain file writes."""

    def __init__(self, handle: object, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.handle, self.shape, self.dtype, self.rows = handle, shape, np.dtype(dtype), 0
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header)

    def append(self, rows: np.ndarray) -> None:
        if tuple(rows.shape[1:]) != self.shape[1:]:
            raise ValueError(f"method returned maps of shape {tuple(rows.shape[1:])}, expected {self.shape[1:]}")
        self.handle.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += rows.shape[0]


@contextlib.contextmanager
def _first_logits(model: nn.Module, size: int) -> Iterator[list[torch.Tensor]]:
    """Catch the first output of ``model`` with ``size`` rows in a block (the method's own forward pass),
    so that the predicted classes are recorded without another pass."""
    caught: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if not caught and isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == size:
            caught.append(output.detach().argmax(dim=1))

    with core.hooks() as handles:
        handles.append(model.register_forward_hook(hook))
        yield caught


def _progress(total: int, enabled: bool, description: str) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext(None)
    return progress_bar(description, rate="img/s", remaining=True)


def stream_explain(model: nn.Module, images: Source, method: str | Callable[..., torch.Tensor] = "saliency", *,
                   out: PathArg, target: object = None, batch_size: int = 128, progress: bool = False,
                   fast: bool = True, device: torch.device | str | None = None, **options: object) -> StreamResult:
    """Explain every image of ``images`` with ``method``, ``batch_size`` images at a time, into ``out``.

    ``method``: the name of a streamable method (``registry.names(streamable=True)``: ``"saliency"``,
    ``"grad-cam"``) or any ``method(model, images, target=...) -> [B,H,W]``;
    ``options`` go to it (e.g. ``layer="block3"``). ``target``: None (each image's predicted class),
    ``"labels"`` (an ImageSet's labels), an int or one int per image. ``out`` receives float32
    ``[N,H,W]`` maps and ``<stem>.targets.npy`` the explained classes, both atomically. ``fast`` goes
    to the built-in methods (default: a cached folded, channels-last copy of the model,
    :func:`cnnlens.explain.accel.prepared`; ``False``: the model itself). Peak memory is one batch's, whatever N.

    >>> res = stream_explain(model, imageset, "grad-cam", out="maps/grad_cam.npy", batch_size=256)
    >>> res.images_per_second
    """
    streamable = registry.names(streamable=True)
    if isinstance(method, str) and method not in streamable or not isinstance(method, str) and not callable(method):
        raise ValueError(f"method must be one of {', '.join(map(repr, streamable))} or a callable, got {method!r}")
    known = registry.get(method) if isinstance(method, str) else registry.find(method)  # a built-in passed as itself
    fn = known.fn if isinstance(method, str) else method
    check_int(batch_size, "batch_size", 1)
    n, shape = _count_and_shape(images)
    targets = _targets(target, images, n)
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"out must name a .npy file, got {str(out)!r}")
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    names_layer = known is not None and known.layer
    probe = _batch(images, 0, min(2, n)).to(device)  # the first images: what the layer and the copy are found on
    if names_layer:  # by name: a module of the user's model is not a module of the prepared copy
        layer = options.get("layer")
        if layer is None:
            with core.guarded(model):  # the probe pass runs in eval mode: BatchNorm statistics stay as they were
                layer = core.default_cam_layer(model, probe)
        options = {**options, "layer": core.layer_name(model, layer)}
    # The copy is prepared here, not inside each call, so that _first_logits hooks the module that runs.
    explained = model
    if fast:  # checked against the model on the first images (see accel.prepared)
        explained = accel.prepared(model, keep=[options["layer"]] if names_layer else [], example=probe)
    if known is not None and known.streamable:
        options = {**options, "fast": fast}
    start_time = time.perf_counter()
    name = method if isinstance(method, str) else getattr(method, "__name__", "explaining")
    with atomic_path(out) as tmp_maps, atomic_path(out.with_suffix(".targets.npy")) as tmp_targets, \
            open(tmp_maps, "wb") as fm, open(tmp_targets, "wb") as ft, \
            _progress(n, progress, f"{name}") as bar:
        task = bar.add_task(name, total=n) if bar is not None else None
        maps_out = _NpyAppender(fm, (n, *shape[1:]), np.float32)
        targets_out = _NpyAppender(ft, (n,), np.int64)
        for start in range(0, n, batch_size):
            end = min(start + batch_size, n)
            x = _batch(images, start, end).to(device)
            t = None if targets is None else targets[start:end].to(device)
            with _first_logits(explained, end - start) as caught:
                maps = fn(explained, x, target=t, **options)
            if t is None:
                if not caught:
                    raise ValueError("target=None needs the method to run the model on the whole batch; pass target")
                t = caught[0]
            maps_out.append(maps.detach().float().cpu().numpy())
            targets_out.append(t.cpu().numpy())
            if bar is not None:
                bar.update(task, advance=end - start)
    return StreamResult(out, out.with_suffix(".targets.npy"), n, time.perf_counter() - start_time)

