"""Occlusion (Zeiler & Fergus 2014): how much the target score drops when a patch hides each region.

``map[h,w] = mean over the patches P covering (h,w) of  f(x)_t - f(x with P filled)_t``, with ``f`` the
softmax probability (or the logit) of the target class ``t``. This is Captum's ``Occlusion`` with
``sliding_window_shapes=(C,ph,pw)``, ``strides=(sh,sw)``: patches start at multiples of the stride and
the last one in each direction is clipped at the image border.

The work is three steps, and the speed layer replaces only the middle one: lay out the patch grid
(:func:`check_grid`), score every occluded image (:func:`occlusion_scores` with the model's forward, or the
incremental scorer :func:`cnnlens.explain.accel.occlusion_scorer` gives where the model decomposes), then
spread each patch's drop over the pixels it covered (:func:`assemble_map`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from cnnlens._checks import is_int, is_number
from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import batch_ranges, check_batch_size, check_output, class_score
from cnnlens.explain.registry import Paper, method

FILLS = ("black", "white", "mean", "black+white")


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """``value`` as ``(h, w)``; an int means a square."""
    pair = (value, value) if isinstance(value, int) else value
    if not (isinstance(pair, tuple) and len(pair) == 2
            and all(is_int(v) for v in pair)):
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


def fill_values(images: torch.Tensor, fill: str | float) -> torch.Tensor:
    """Patch colours ``[N,F,C,1,1]``: one per fill (two for ``"black+white"``), per image and channel.

    ``"mean"`` is each image's per-channel mean; a float fills every channel with that value.
    """
    n, c = images.shape[:2]
    if isinstance(fill, str):
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(map(repr, FILLS))} or a float, got {fill!r}")
        if fill == "mean":
            return images.mean(dim=(2, 3)).reshape(n, 1, c, 1, 1)
        values = {"black": [0.0], "white": [1.0], "black+white": [0.0, 1.0]}[fill]
    elif is_number(fill):
        values = [float(fill)]
    else:
        raise TypeError(f"fill must be one of {', '.join(map(repr, FILLS))} or a float, got {type(fill).__name__}")
    v = torch.tensor(values, dtype=images.dtype, device=images.device)
    return v.reshape(1, -1, 1, 1, 1).expand(n, -1, c, 1, 1)


def patch_starts(size: int, patch: int, stride: int) -> torch.Tensor:
    """Start offsets of the patches along one axis (Captum's: ``ceil((size - patch) / stride) + 1`` of them)."""
    count = math.ceil((size - patch) / stride) + 1
    return torch.arange(count) * stride


def coverage(size: int, starts: torch.Tensor, patch: int) -> torch.Tensor:
    """``[n_patches, size]`` float: 1 where the patch starting at ``starts[k]`` covers that row/column."""
    ar = torch.arange(size)
    return ((ar >= starts[:, None]) & (ar < starts[:, None] + patch)).float()


@torch.inference_mode()
def occlusion_scores(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, target: torch.Tensor,
                     fills: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *, output: str, batch_size: int,
                     progress: bool = False) -> torch.Tensor:
    """Score of ``target`` on every occluded image: ``[N, F, len(rows), len(cols)]``.

    ``rows``/``cols`` are ``[n, H]``/``[n, W]`` 0/1 coverage of each patch position. All (image, fill,
    position) triples are evaluated in chunks of ``batch_size`` images by ``forward`` (the model's).
    """
    n, c, h, w = images.shape
    nf, nh, nw = fills.shape[1], rows.shape[0], cols.shape[0]
    per_image = nf * nh * nw
    rows_b, cols_b = rows.to(images.device, torch.bool), cols.to(images.device, torch.bool)
    scores = torch.empty(n * per_image, dtype=images.dtype, device=images.device)
    for start, end in batch_ranges(n * per_image, batch_size, progress=progress, description="occlusion"):
        idx = torch.arange(start, end, device=images.device)
        img, rest = idx // per_image, idx % per_image
        f, pos = rest // (nh * nw), rest % (nh * nw)
        mask = rows_b[pos // nw][:, :, None] & cols_b[pos % nw][:, None, :]
        x = torch.where(mask[:, None], fills[img, f], images[img])
        logits = forward(x)
        scores[start:end] = class_score(logits, target[img], output)
    return scores.reshape(n, nf, nh, nw)


def assemble_map(drops: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Spread each patch's drop ``[N,nh,nw]`` over the pixels it covers and average: ``[N,H,W]``."""
    rows, cols = rows.to(drops), cols.to(drops)
    total = torch.einsum("kh,nkl,lw->nhw", rows, drops, cols)
    count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    return total / count


class Grid(NamedTuple):
    """Where the patches go: size, start positions and which patches cover each row / column."""

    patch: tuple[int, int]
    starts_h: torch.Tensor
    starts_w: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor


def check_grid(images: torch.Tensor, output: str, patch: int | tuple[int, int],
               stride: int | tuple[int, int]) -> Grid:
    """Check occlusion's inputs (raising the clear errors) and lay out its patch grid."""
    core.check_images(images)
    check_output(output)
    h, w = images.shape[2:]
    ph, pw = _pair(patch, "patch")
    sh, sw = _pair(stride, "stride")
    if ph > h or pw > w:
        raise ValueError(f"patch {(ph, pw)} is larger than the images ({h}x{w}); choose patch <= image size")
    if sh > ph or sw > pw:
        raise ValueError(f"stride {(sh, sw)} is larger than patch {(ph, pw)}: some pixels would never be occluded")
    starts_h, starts_w = patch_starts(h, ph, sh), patch_starts(w, pw, sw)
    return Grid((ph, pw), starts_h, starts_w, coverage(h, starts_h, ph), coverage(w, starts_w, pw))


# the commands' choice: the seeds' 5x5 patches every 2 pixels (a quarter of stride 1's passes), filled with the
# image's mean colour, because on dark faces a black patch hides little (measured on the demo faces)
@method("occlusion", "Occlusion", kind="perturbation", options={"patch": 5, "stride": 2, "fill": "mean"}, in_report=6,
        paper=Paper("Zeiler & Fergus", 2014, "Visualizing and understanding convolutional networks"))
def occlusion(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              patch: int | tuple[int, int] = 5, stride: int | tuple[int, int] = 1,
              fill: str | float = "black", output: str = "probability",
              batch_size: int | None = None, progress: bool = False, fast: bool | None = None,
              precision: str = "float32") -> torch.Tensor:
    """Occlusion map ``[N,H,W]``: the drop in the target's score when a patch covering a pixel is hidden.

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014.
    ``map[h,w] = mean_{P covers (h,w)} s(x) - s(x_P)``, ``s`` the target's softmax probability
    (``output="logit"``: its logit). Patches span all channels; ``fill`` is ``"black"`` (0), ``"white"``
    (1), ``"mean"`` (each image's per-channel mean), ``"black+white"`` (the sum of the black and white
    maps, as in the seeds) or a float. Positive = the region supports the target.

    ``fast``: None (default) uses incremental occlusion (:mod:`cnnlens.explain.accel.incremental`: the same map
    to ~1e-6, 7x faster than Captum's best on small_cnn) where every map up to the head comes from local
    layers (chains like small_cnn, residual networks like resnet18) and the head is global average
    pooling or a flatten into a Linear layer (``x.view(-1, n)``, ``nn.Flatten``), and otherwise plain
    occlusion on the checked prepared copy (a log line names the layer that stopped the fast path);
    True does the same but warns when it falls back;
    False always runs plain occlusion on the model itself, as it is.
    ``precision="bfloat16"`` (opt-in) runs it in bfloat16.

    >>> occlusion(model, images, target=3, patch=5, stride=1, fill="black+white")  # [N,H,W]
    """
    grid = check_grid(images, output, patch, stride)
    accel.check_precision(precision)
    n = images.shape[0]
    plain = fast is False and precision == "float32"  # the model itself, as it is
    bs = check_batch_size(batch_size, images.device) if plain or batch_size is not None else None
    x = images.detach()
    fills = fill_values(x, fill)
    with core.guarded(model, images):
        # Incremental occlusion recomputes only the boxes a patch changes (None where the model does not decompose).
        incremental = None if plain else accel.occlusion_scorer(model, x, precision=precision, warn=fast is True)
        if incremental is not None:
            clean, scores = incremental(x, target, fills, grid.starts_h, grid.starts_w, grid.patch, output=output,
                                        batch_size=bs, progress=progress)
        else:  # every occluded image scored whole: by the prepared copy (batch size measured), or the model itself
            forward, bs = (model, bs) if plain else accel.fast_scorer(model, x, bs, precision=precision)
            with torch.inference_mode():
                logits = torch.cat([forward(x[s:e]) for s, e in batch_ranges(n, bs)])
            t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
            clean = class_score(logits, t, output)
            scores = occlusion_scores(forward, x, t, fills, grid.rows, grid.cols, output=output, batch_size=bs,
                                      progress=progress)
    drops = (clean[:, None, None, None] - scores.to(clean.dtype)).sum(dim=1)
    return assemble_map(drops, grid.rows, grid.cols)  # outside inference mode: a normal tensor the caller may edit
