"""RISE (Petsiuk, Das & Saenko 2018): the average of random smooth masks, each weighted by the target's
probability on the image seen through it.

``saliency(p) = 1 / (N * p_keep) * sum_i f_t(x * M_i) M_i(p)``: a Monte Carlo estimate of the expected
score given that pixel ``p`` is shown. Each mask is a ``cells x cells`` grid of cells kept with
probability ``p_keep``, bilinearly upsampled to ``(cells + 1) * ceil(H / cells)`` pixels and cropped at a
random offset of less than one cell, so its edges fall anywhere (the paper's "smooth masks").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlens._checks import check_count, check_int, is_number
from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import batch_ranges, check_batch_size, check_output, class_score
from cnnlens.explain.registry import Paper, method


def upsampling_matrix(cells: int, size: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """``[size, cells]``: linear interpolation of ``cells`` values to ``size`` pixels, as the paper's code
    does it (``skimage.transform.resize(order=1, mode="reflect", anti_aliasing=False)``: pixel centres
    aligned, ``c = (o + 0.5) * cells / size - 0.5``, mirrored past the edges)."""
    c = (torch.arange(size, dtype=torch.float64) + 0.5) * (cells / size) - 0.5
    low = torch.floor(c)
    frac = c - low

    def mirror(i: torch.Tensor) -> torch.Tensor:
        if cells == 1:
            return torch.zeros_like(i)
        period = 2 * (cells - 1)
        i = i.remainder(period)
        return torch.where(i > cells - 1, period - i, i)

    out = torch.zeros(size, cells, dtype=torch.float64)
    rows = torch.arange(size)
    out.index_put_((rows, mirror(low.long())), 1 - frac, accumulate=True)
    out.index_put_((rows, mirror(low.long() + 1)), frac, accumulate=True)
    return out.to(dtype=dtype, device=device)


def draw_masks(n_images: int, n_masks: int, cells: int, p: float, size: tuple[int, int],
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grids bool [N,M,cells,cells], shifts int64 [N,M,2])``: each image's random cell grids (a cell kept
    with probability ``p``) and crop offsets (row, column) below one cell. Drawn image after image from
    ``generator``, so explaining images one call at a time with one generator gives exactly one batched
    call's masks."""
    cell = (math.ceil(size[0] / cells), math.ceil(size[1] / cells))
    gen_device = generator.device if generator is not None else torch.device("cpu")
    grids, shifts = [], []
    for _ in range(n_images):  # a few kB each; the model passes are batched
        grids.append(torch.rand(n_masks, cells, cells, generator=generator, device=gen_device) < p)
        shifts.append(torch.stack([torch.randint(0, c, (n_masks,), generator=generator, device=gen_device)
                                   for c in cell], dim=1))
    return torch.stack(grids).cpu(), torch.stack(shifts).cpu()


def build_masks(grids: torch.Tensor, shifts: torch.Tensor, up_h: torch.Tensor, up_w: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
    """The smooth masks ``[B,H,W]`` of ``grids`` ``[B,cells,cells]`` at ``shifts`` ``[B,2]``: the upsampled
    grid's rows ``dy..dy+H`` and columns ``dx..dx+W`` (``up_h``/``up_w``: :func:`upsampling_matrix`)."""
    h, w = size
    rows = up_h[shifts[:, 0:1] + torch.arange(h, device=up_h.device)]  # [B,H,cells]
    cols = up_w[shifts[:, 1:2] + torch.arange(w, device=up_w.device)]  # [B,W,cells]
    return (rows @ grids.to(rows.dtype)) @ cols.transpose(1, 2)  # two bmm: ~20x an einsum's speed on CPU


@method("rise", "RISE", kind="perturbation", options={"n_masks": 2000}, style="relative",
        paper=Paper("Petsiuk, Das & Saenko", 2018, "RISE: randomized input sampling for explanation of black-box "
                    "models"))
def rise(model: nn.Module, images: torch.Tensor, target: Target = None, *, n_masks: int = 8000, cells: int = 7,
         p: float = 0.5, output: str = "probability", batch_size: int | None = None,
         generator: torch.Generator | None = None, progress: bool = False, fast: bool = True,
         precision: str = "float32") -> torch.Tensor:
    """RISE saliency ``[N,H,W]``: random smooth masks averaged, each weighted by the target's score.

    Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018.
    ``S = 1 / (n_masks * p) * sum_i f_t(x * M_i) M_i``, ``f_t`` the target's softmax probability (the
    paper's; ``output="logit"``: its logit); masks as :func:`draw_masks` / :func:`build_masks` (the
    hidden part is black, as in the paper). Defaults as TorchRay's ``rise``: 8000 masks, 7x7 cells,
    ``p = 0.5``. Each image gets its own masks from ``generator`` (None: one seeded with 0, never torch's
    global generator); every (image, mask) pair goes through
    the model in chunks of ``batch_size``. ``fast`` (default) scores under ``inference_mode`` at a measured
    batch size through the model's local plan (folded BatchNorm, channels-last, its 3x3 convolutions as
    Winograd F(4x4,3x3) where timed faster: ``accel.plan_scorer``, as Score-CAM), else the checked prepared
    copy; ``fast=False`` runs the model itself. ``precision="bfloat16"`` (opt-in) runs the copy in bfloat16.
    The masked images share nothing a scorer could reuse: every pixel of every mask takes its own value, and
    the first layer, linear in the mask, costs ~3% of a pass of the small CNN.

    >>> maps = rise(model, images, target=3, n_masks=2000, generator=torch.Generator().manual_seed(0))
    """
    core.check_images(images)
    check_output(output)
    check_count(n_masks, "n_masks")
    check_int(cells, "cells", 1)
    if not is_number(p) or not 0 < p <= 1:
        raise ValueError(f"p (the share of cells kept) must be a number in (0, 1], got {p!r}")
    accel.check_precision(precision)
    bs = check_batch_size(batch_size, images.device)
    x = images.detach()
    n, _, h, w = x.shape
    if cells > min(h, w):
        raise ValueError(f"cells must be at most the image side ({min(h, w)}), got {cells}")
    if generator is None:  # never torch's global generator: a fixed seed, the same answer every call
        generator = torch.Generator().manual_seed(0)
    grids, shifts = draw_masks(n, n_masks, cells, float(p), (h, w), generator)
    grids, shifts = grids.to(x.device), shifts.to(x.device)
    up_h = upsampling_matrix(cells, (cells + 1) * math.ceil(h / cells), x.dtype, x.device)
    up_w = upsampling_matrix(cells, (cells + 1) * math.ceil(w / cells), x.dtype, x.device)
    saliency = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    with core.guarded(model, images):
        if fast and precision == "float32":  # the local plan with Winograd where timed faster, else the copy
            forward, bs = accel.plan_scorer(model, x, batch_size) or accel.fast_scorer(model, x, batch_size)
        elif fast or precision != "float32":
            forward, bs = accel.fast_scorer(model, x, batch_size, precision=precision)
        else:
            forward = model
        with torch.inference_mode():
            logits = torch.cat([forward(x[s:e]) for s, e in batch_ranges(n, bs)])
            t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
            for start, end in batch_ranges(n * n_masks, bs, progress=progress, description="RISE"):
                idx = torch.arange(start, end, device=x.device)
                img, k = idx // n_masks, idx % n_masks
                masks = build_masks(grids[img, k], shifts[img, k], up_h, up_w, (h, w))
                score = class_score(forward(x[img] * masks[:, None]).to(x.dtype), t[img], output)
                saliency.index_add_(0, img, score[:, None, None] * masks)
    return saliency.clone() / (n_masks * float(p))  # a normal tensor, not an inference-mode one
