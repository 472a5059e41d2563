"""LIME's forward passes with the early layers computed once per local mask pattern.

A LIME sample shows or hides whole superpixels. The value of a feature map at one position depends only
on the image inside that position's receptive field, so only on the on/off state of the few
superpixels the field touches: on the first layers of a CNN a thousand samples hold a few distinct
*local patterns* per position (on vgg_fer's 24x24 maps, ~4% of the sample x position pairs for the
first convolution of the second stage). Those layers are computed once per distinct (position,
pattern) pair: a *table* of rows, each (sample, position) pointing at its row. Once the receptive
fields are wide enough that the patterns stop repeating, the maps are materialised per sample and the
rest of the model runs as usual, a batch of samples at a time.

A head that flattens the last map into a Linear layer reads a table too, where that is cheaper: its
output is ``b + sum over positions p of W_p @ map[p]``, so each row is multiplied by its position's
columns of ``W`` once, and each sample sums its positions' products (``embedding_bag``).

The arithmetic is the model's own (each row of a table is the layer run on that row's input window),
so the logits equal those of the masked images to float rounding. The model must decompose into local
steps up to its head, global average pooling or a flatten into a Linear layer
(:class:`cnnlens.explain.accel.incremental.LocalPlan`).

>>> logits = masked_logits(plan, image, fill, segments, masks)   # == model(masked images), [S, classes]
>>> score = masked_scorer(model, images)                          # the same, for LIME; None where it does not apply
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.explain.core import batch_ranges, to_channels_last
from cnnlens.explain.accel.incremental import (FlattenLinear, LocalPlan, NotDecomposable, Pointwise, Spatial, Step,
                                              as_pair, full_step, local_plan)
from cnnlens.explain.accel.copies import autocast
from cnnlens.explain.accel.winograd import faster

#: A pooling or add is computed per pattern while its distinct (position, pattern) pairs are at most
#: this share of (sample, position) pairs; a convolution while its estimated cost is below a dense pass's.
MAX_SHARE = 0.5
#: What gathering one value costs, in multiply-adds: fitted on this CPU to LIME on small_cnn, vgg_fer and
#: resnet18 (embedding_bag over tables of 100k-400k rows: ~2 ns a value; a float32 matrix product ~0.02 ns
#: a multiply-add; 80 to 200 ran within noise of each other, 400 kept vgg_fer's second stage dense: 2x slower).
GATHER_MACS = 130
#: Superpixels a receptive field may touch for its pattern to be keyed exactly (bits of an int64 key).
MAX_FIELD_SEGMENTS = 40
#: Table rows computed per call of a layer (bounds the memory of the gathered input windows).
ROW_CHUNK = 4096


@dataclass
class _Table:
    """A map of all samples stored per pattern: ``rows`` ``[U,C,1,1]``, ``index`` ``[S,h*w]`` (each
    (sample, position)'s row), ``size`` (h, w), each position's receptive field in image pixels
    (``field_h``/``field_w``: first and last row / column, ``[h]`` / ``[w]`` each), and each row's
    position (``position`` ``[U]``, ``row * w + column``)."""

    rows: torch.Tensor
    index: torch.Tensor
    size: tuple[int, int]
    field_h: tuple[torch.Tensor, torch.Tensor]
    field_w: tuple[torch.Tensor, torch.Tensor]
    position: torch.Tensor

    def dense(self, samples: slice) -> torch.Tensor:
        """The map of ``samples`` as a channels-last ``[s,C,h,w]`` tensor."""
        index = self.index[samples]
        values = self.rows[:, :, 0, 0].index_select(0, index.reshape(-1))  # index_select: ~8x advanced indexing
        return values.reshape(index.shape[0], *self.size, -1).permute(0, 3, 1, 2)


def _field(field: tuple[torch.Tensor, torch.Tensor], size_in: int, size_out: int, kernel: int, stride: int,
           padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The receptive field (first, last image pixel) of each output of a spatial layer along one axis."""
    out = torch.arange(size_out, device=field[0].device)
    first = (out * stride - padding).clamp(0, size_in - 1)
    last = (out * stride - padding + kernel - 1).clamp(0, size_in - 1)
    return field[0][first], field[1][last]


class _Keys:
    """Exact local mask patterns: for each position of a map, the on/off bits of the superpixels its
    receptive field touches, as one int64 per (sample, position)."""

    def __init__(self, segments: torch.Tensor, masks: torch.Tensor) -> None:
        k = masks.shape[1]
        onehot = F.one_hot(segments, k).to(torch.float64)  # [H,W,K]
        self.integral = F.pad(onehot.cumsum(0).cumsum(1), (0, 0, 1, 0, 1, 0))  # [H+1,W+1,K]
        self.masks = masks.to(torch.float64)

    def __call__(self, field_h: tuple[torch.Tensor, torch.Tensor],
                 field_w: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(pattern [S,h*w], bits [h*w])``: each (sample, position)'s pattern, an integer below
        ``2 ** bits[position]``; None when a field touches more superpixels than a key holds."""
        (h0, h1), (w0, w1) = field_h, field_w
        i = self.integral
        count = i[h1 + 1][:, w1 + 1] - i[h0][:, w1 + 1] - i[h1 + 1][:, w0] + i[h0][:, w0]  # [h,w,K]
        present = (count > 0).reshape(-1, count.shape[-1])  # [P,K]
        bits = present.sum(1)
        if int(bits.max()) > MAX_FIELD_SEGMENTS:
            return None
        rank = present.cumsum(1) - 1  # each touched superpixel's bit within its position's pattern
        weights = torch.where(present, torch.exp2(rank.to(torch.float64)), 0.0)
        return (self.masks @ weights.T).to(torch.int64), bits  # exact: integers below 2^53


def _rows(pattern: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (position, pattern) pairs as rows: each row's position, each (sample, position)'s
    row, and one sample showing each row.

    Where the positions' possible patterns are few (``sum 2 ** bits``, the first layers) every pair has
    a slot and the used slots are numbered in one pass; otherwise the pairs are sorted.
    """
    s_count, p_count = pattern.shape
    positions = torch.arange(p_count, device=pattern.device)
    slots = torch.ones_like(bits) << bits
    if int(slots.sum()) <= 4 * pattern.numel():
        slot = (slots.cumsum(0) - slots) + pattern  # [S,P]
        used = torch.zeros(int(slots.sum()), dtype=torch.bool, device=pattern.device)
        used[slot.reshape(-1)] = True
        number = used.cumsum(0) - 1
        index = number[slot]
        position = torch.repeat_interleave(positions, slots)[used]
    else:
        shift = int(bits.max())
        distinct, index = torch.unique(pattern + (positions << shift), return_inverse=True)
        position = distinct >> shift
    samples = torch.arange(s_count, device=pattern.device)[:, None].expand_as(index)
    example = torch.empty(len(position), dtype=torch.long, device=pattern.device)
    example.scatter_(0, index.reshape(-1), samples.reshape(-1))
    return position, index, example


def _dense_cost(conv: nn.Conv2d, outputs: int) -> int:
    """Multiply-adds of the convolution at every (sample, position)."""
    return outputs * conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels * conv.out_channels


def _table_cost(conv: nn.Conv2d, rows_in: int, rows_out: int) -> int:
    """Estimated cost of the convolution as a table (in multiply-adds, see :func:`_spatial_table`)."""
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    if rows_in < rows_out:  # each input row times each tap, then each window's taps summed
        return rows_in * taps * conv.in_channels * conv.out_channels + rows_out * taps * conv.out_channels * GATHER_MACS
    return rows_out * taps * conv.in_channels * (conv.out_channels + GATHER_MACS)  # gather windows, multiply


def _gemm_conv(layer: Spatial) -> nn.Conv2d | None:
    """The layer's convolution where a row is a matrix product with its weights (no groups, no dilation)."""
    module = layer.full
    ok = type(module) is nn.Conv2d and module.groups == 1 and as_pair(module.dilation) == (1, 1)
    return module if ok else None


def _sources(layer: Spatial, table: _Table, position: torch.Tensor, example: torch.Tensor,
             size_out: tuple[int, int], outside: int) -> torch.Tensor:
    """For each row, the input table's row at each pixel of its window, ``[U,kh,kw]``; ``outside`` where
    the window leaves the map."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    h_in, w_in = table.size
    oh, ow = position // size_out[1], position % size_out[1]
    rows = oh[:, None] * sh - ph + torch.arange(kh, device=oh.device)  # [U,kh]
    cols = ow[:, None] * sw - pw + torch.arange(kw, device=oh.device)
    inside = ((rows >= 0) & (rows < h_in))[:, :, None] & ((cols >= 0) & (cols < w_in))[:, None, :]
    flat = rows.clamp(0, h_in - 1)[:, :, None] * w_in + cols.clamp(0, w_in - 1)[:, None, :]  # [U,kh,kw]
    p_in = h_in * w_in
    source = table.index.view(-1).index_select(0, (example[:, None, None] * p_in + flat).view(-1)).view(flat.shape)
    return torch.where(inside, source, outside)


def _spatial_table(layer: Spatial, table: _Table, position: torch.Tensor, example: torch.Tensor,
                   size_out: tuple[int, int]) -> torch.Tensor:
    """The layer on each row's input window, ``[U,C,1,1]``.

    A convolution whose input has fewer rows than its output multiplies each input row by each kernel
    tap once, then sums each window's nine (or k x k) products (``embedding_bag``); otherwise each
    window's inputs are gathered and multiplied. Max-pooling takes each window's maximum the same way;
    any other layer runs its own window function on the gathered windows.
    """
    flat = table.rows[:, :, 0, 0]
    conv, taps = _gemm_conv(layer), layer.kernel[0] * layer.kernel[1]
    if conv is not None and len(flat) < len(position):
        c_out = conv.out_channels
        weight = conv.weight.permute(2, 3, 0, 1).reshape(taps * c_out, conv.in_channels)
        products = flat.new_empty(len(flat) * taps + 1, c_out)  # row r * taps + tap, then a row of zeros
        # out= runs outside autocast: the weights follow the table's dtype (bfloat16 tables stay bfloat16)
        torch.mm(flat, weight.T.to(flat.dtype), out=products[:-1].view(len(flat), taps * c_out))
        products[-1] = 0
        tap = torch.arange(taps, device=flat.device).view(1, *layer.kernel)
        out = flat.new_empty(len(position), c_out)
        for a, b in batch_ranges(len(position), ROW_CHUNK):
            source = _sources(layer, table, position[a:b], example[a:b], size_out, -1)
            index = torch.where(source >= 0, source * taps + tap, len(products) - 1).reshape(b - a, taps)
            out[a:b] = F.embedding_bag(index, products, mode="sum")
        return (out if conv.bias is None else out.add_(conv.bias))[:, :, None, None]
    padded = flat.new_empty(len(flat) + 1, flat.shape[1])  # the rows, then one of padding
    padded[:-1], padded[-1] = flat, layer.pad_value
    chunks = []
    for a, b in batch_ranges(len(position), ROW_CHUNK):
        source = _sources(layer, table, position[a:b], example[a:b], size_out, len(padded) - 1)
        if isinstance(layer.full, nn.MaxPool2d):
            chunks.append(F.embedding_bag(source.reshape(b - a, taps), padded, mode="max")[:, :, None, None])
            continue
        values = padded.index_select(0, source.view(-1)).view(*source.shape, -1)  # [u,kh,kw,C]
        if conv is not None:
            weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
            chunks.append(F.linear(values.reshape(b - a, -1), weight, conv.bias)[:, :, None, None])
        else:
            chunks.append(layer.window(values.permute(0, 3, 1, 2)))
    return torch.cat(chunks)


def masked_logits(plan: LocalPlan, image: torch.Tensor, fill: torch.Tensor, segments: torch.Tensor,
                  masks: torch.Tensor, *, batch_size: int = 16, winograd: str = "auto") -> torch.Tensor:
    """Logits ``[S,K]`` of ``image`` (``[C,H,W]``) with superpixel ``k`` of ``segments`` (``[H,W]``, ids
    ``0..K-1``) shown where ``masks[s,k]`` and ``fill`` shown elsewhere, for every sample ``s``.

    Equal to running the plan's model on the ``S`` masked images, to float rounding; the dense part
    runs ``batch_size`` samples at a time, its 3x3 convolutions as Winograd F(4x4,3x3) where measured
    faster (``winograd``: ``"auto"``, ``"always"``, ``"never"``; :mod:`cnnlens.explain.accel.winograd`).
    Call under ``torch.inference_mode``.
    """
    s_count = masks.shape[0]
    h, w = segments.shape
    device = image.device
    keys = _Keys(segments, masks)
    clean = [to_channels_last(image[None])]  # one clean pass: every map's size
    for step in plan.steps:
        clean.append(full_step(step.layer, [clean[i] for i in step.inputs]))
    sizes = [tuple(m.shape[2:]) for m in clean]
    # The image as a table: row p is the fill at pixel p, row P + p the image itself.
    shown = masks.gather(1, segments.reshape(1, -1).expand(s_count, -1)).long()
    pixels = torch.arange(h * w, device=device)
    rows0 = torch.cat([fill.reshape(fill.shape[0], -1).T, image.reshape(image.shape[0], -1).T])
    pixel_field = (torch.arange(h, device=device),) * 2, (torch.arange(w, device=device),) * 2
    maps: list[_Table | None] = [_Table(rows0[:, :, None, None], shown * (h * w) + pixels, (h, w), *pixel_field,
                                        pixels.repeat(2))]
    for step in plan.steps:
        ready = all(maps[i] is not None for i in step.inputs)
        maps.append(_step_table(step, maps, keys, s_count, sizes[len(maps)]) if ready else None)
    layers = [step.layer if maps[i] is not None or not isinstance(step.layer, Spatial)
              else faster(step.layer, (batch_size, *clean[step.inputs[0]].shape[1:]), mode=winograd)
              for i, step in enumerate(plan.steps, start=1)]
    head = plan.head
    products = None  # a FlattenLinear head on a table: each row times its position's columns of W
    if isinstance(head, FlattenLinear) and maps[plan.last] is not None and \
            _linear_table_cost(head, maps[plan.last]) < _linear_dense_cost(head, maps[plan.last]):
        products = _linear_products(head, maps[plan.last])
    logits = []
    for start, end in batch_ranges(s_count, batch_size):
        dense: dict[int, torch.Tensor] = {}

        def value(i: int) -> torch.Tensor:
            if i not in dense:
                dense[i] = maps[i].dense(slice(start, end)) if maps[i] is not None else _dense_step(i)
            return dense[i]

        def _dense_step(i: int) -> torch.Tensor:
            return full_step(layers[i - 1], [value(j) for j in plan.steps[i - 1].inputs])

        if products is not None:
            out = F.embedding_bag(maps[plan.last].index[start:end], products, mode="sum")
            logits.append(plan.tail(out if head.bias is None else out + head.bias.to(out.dtype)))
        else:
            logits.append(plan.tail(head(value(plan.last))))
    return torch.cat(logits)


def _linear_dense_cost(head: FlattenLinear, table: _Table) -> int:
    """Multiply-adds (gathers counted as :data:`GATHER_MACS`) of the Linear layer on the materialised map."""
    s_count, p_count = table.index.shape
    c = table.rows.shape[1]
    return s_count * p_count * c * (GATHER_MACS + head.weight.shape[0])


def _linear_table_cost(head: FlattenLinear, table: _Table) -> int:
    """The same through the table: each row times its position's columns, then each sample's sums."""
    s_count, p_count = table.index.shape
    out = head.weight.shape[0]
    return len(table.rows) * table.rows.shape[1] * out + s_count * p_count * out * GATHER_MACS


def _linear_products(head: FlattenLinear, table: _Table) -> torch.Tensor:
    """``W_p @ row`` for every row of ``table`` (``p`` its position), ``[U, out]``: rows sorted by position,
    one matrix product per position."""
    out = head.weight.shape[0]
    weight = head.weight.reshape(out, -1, head.weight.shape[3])  # [out, P, C]
    flat = table.rows[:, :, 0, 0]
    order = torch.argsort(table.position, stable=True)
    counts = torch.bincount(table.position, minlength=weight.shape[1]).tolist()
    products = flat.new_empty(len(flat), out)
    a = 0
    for p, count in enumerate(counts):
        if count:
            rows = order[a:a + count]
            products[rows] = flat.index_select(0, rows) @ weight[:, p].T.to(flat.dtype)
            a += count
    return products


def _step_table(step: Step, maps: list[_Table | None], keys: _Keys, s_count: int,
                size: tuple[int, int]) -> _Table | None:
    """The step's output (a map of ``size``) as a table, or None when its patterns no longer repeat
    enough (dense from here)."""
    layer = step.layer
    first = maps[step.inputs[0]]
    if isinstance(layer, Pointwise):
        return _Table(layer.fn(first.rows), first.index, first.size, first.field_h, first.field_w, first.position)
    if isinstance(layer, Spatial):
        h_in, w_in = first.size
        field_h = _field(first.field_h, h_in, size[0], layer.kernel[0], layer.stride[0], layer.padding[0])
        field_w = _field(first.field_w, w_in, size[1], layer.kernel[1], layer.stride[1], layer.padding[1])
    else:
        second = maps[step.inputs[1]]
        field_h = (torch.minimum(first.field_h[0], second.field_h[0]), torch.maximum(first.field_h[1], second.field_h[1]))
        field_w = (torch.minimum(first.field_w[0], second.field_w[0]), torch.maximum(first.field_w[1], second.field_w[1]))
    keyed = keys(field_h, field_w)
    if keyed is None:
        return None
    position, index, example = _rows(*keyed)
    conv = _gemm_conv(layer) if isinstance(layer, Spatial) else None
    if conv is not None:
        if _table_cost(conv, len(first.rows), len(position)) >= _dense_cost(conv, s_count * size[0] * size[1]):
            return None
    elif len(position) > MAX_SHARE * s_count * size[0] * size[1]:
        return None
    if isinstance(layer, Spatial):
        rows = _spatial_table(layer, first, position, example, size)
    else:
        def rows_of(i: int, a: int, b: int) -> torch.Tensor:
            table = maps[i]
            flat = table.index.view(-1).index_select(0, example[a:b] * table.index.shape[1] + position[a:b])
            return table.rows.index_select(0, flat)

        rows = torch.cat([layer.fn(*(rows_of(i, a, b) for i in step.inputs))
                          for a, b in batch_ranges(len(position), ROW_CHUNK)])
    return _Table(rows, index, size, field_h, field_w, position)


log = logging.getLogger("cnnlens.explain")


def masked_scorer(model: nn.Module, example: torch.Tensor, *, precision: str = "float32"
                  ) -> Callable[..., torch.Tensor] | None:
    """``score(image, fill, segments, masks, *, batch_size) -> logits [S, classes]``: :func:`masked_logits` on
    ``model``'s :class:`~cnnlens.explain.accel.incremental.LocalPlan` for images shaped like ``example``, under
    ``precision``'s autocast; or None where the model does not decompose, after a ``cnnlens.explain`` log line
    naming the layer that stops it (never silently). Call inside ``core.guarded``, under inference mode.
    """
    try:
        plan = local_plan(model, example)
    except NotDecomposable as why:
        log.warning("cnnlens: LIME's pattern tables do not apply to this %s: %s; scoring every masked "
                    "image", type(model).__name__, why)
        return None

    def score(image: torch.Tensor, fill: torch.Tensor, segments: torch.Tensor, masks: torch.Tensor, *,
              batch_size: int) -> torch.Tensor:
        with autocast(image.device, precision):
            return masked_logits(plan, image, fill, segments, masks, batch_size=batch_size)

    return score
