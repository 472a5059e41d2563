"""Winograd F(4x4, 3x3) convolutions for forward-only passes over small, deep feature maps.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016. Each 4x4 output tile is
``A^T [(G g G^T) * (B^T d B)] A`` of its 6x6 input tile ``d`` and the 3x3 kernel ``g``: 36 multiplies per
tile and channel pair instead of 144. Here the transforms are small matrix products (one axis at a
time) and the 36 products 36 matrix products (:func:`tile_products`: oneDNN's or MKL's batched one on the CPU in
float32, whichever :func:`faster` times faster; else one batched product), so the gain depends on the shape and the
CPU's matrix products. On a 2-core AMD EPYC (Zen 5, one thread), MKL's products run at ~45 GMAC/s and oneDNN's
direct convolution and products at ~100 (batches of 16, process CPU time): Winograd through oneDNN's products is
1.5x the direct convolution on 12x12x128 -> 512 and 12x12x256 maps, 1.2x on 12x12x128 -> 256, about even on
24x24x128 and 6x6x512, slower on 24x24x64 and larger maps (the transforms dominate). On an Intel Xeon (AVX-512)
it is the other way round: MKL's batched product took 0.57-0.64 ms per image of the 12x12x128 -> 512 layer's
products against oneDNN's 0.83-0.86, and 0.26 against 0.49-0.53 on 24x24x64 -> 128.
:func:`faster` therefore times the direct convolution and Winograd with each product on the layer's real input
shape and keeps the fastest. The dense plan
forward (:func:`plan_forward`) also takes 2x2 max-pooling as the maximum of four strided views where timed
faster (:func:`max_pool_2x2`: exact), and pools a Winograd convolution's output inside its tiles where only such a
pooling reads it (``winograd_conv2d(pool=True)``).

Rounding: a few 1e-6 of the layer's largest output in float32 (interpolation points chosen for it,
below), 1e-13 in float64. Under autocast (bfloat16) the direct convolution always runs.

>>> fast = faster(layer, (32, 256, 8, 8))   # the layer's Spatial, with a Winograd ``full`` if that is faster
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import weakref
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from cnnlens.explain.core import RELU_FUNCTIONS, batch_ranges, to_channels_last
from cnnlens.explain.accel.incremental import LocalPlan, Pointwise, Spatial, as_pair, full_step
from cnnlens.explain.accel.tuning import DETERMINISTIC_BATCH, is_deterministic, seconds_per_item

# Interpolation points 0, 1, -1, 1/2, -2 (and infinity): 3-4x less float32 rounding than Lavin's 0, +-1,
# +-2 on the same products (Barabasz et al., "Error analysis and improving the accuracy of Winograd
# convolution for deep neural networks", ACM TOMS 2020). B^T solved from G and A^T in exact arithmetic.
_BT = torch.tensor([[1, -3 / 2, -2, 3 / 2, 1, 0], [0, -1, 1 / 2, 5 / 2, 1, 0], [0, 1, -5 / 2, 1 / 2, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 1 / 2, -1, -1 / 2, 1, 0], [0, 1, -3 / 2, -2, 3 / 2, 1]],
                   dtype=torch.float64)
_G = torch.tensor([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, -1 / 3], [-16 / 15, -8 / 15, -4 / 15],
                   [1 / 15, -2 / 15, 4 / 15], [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 1 / 2, -2, 0], [0, 1, 1, 1 / 4, 4, 0], [0, 1, -1, 1 / 8, -8, 1]],
                   dtype=torch.float64)
#: Winograd replaces the direct convolution only when measured at least this much faster.
MIN_GAIN = 1.1
#: Tiles transformed and multiplied per chunk at most (the chunks of a batch of equal size: a small last chunk
#: runs its 36 products far below the matrix units' speed). 256 tiles of 128-512 channels: 4-19 MB of
#: products; one chunk for 16 images of 12x12 maps (9 tiles each), 6 images a chunk of 24x24 ones.
TILES = 256
#: (layer, input shape, device, dtype, threads) -> the timed choice: False (the direct convolution) or the
#: :func:`tile_products` way of the faster Winograd.
_CHOSEN: dict[tuple, str | bool] = {}
_POOL_CHOSEN: dict[tuple, bool] = {}  # the same for :func:`max_pool_2x2`
#: Each thread's buffers for the transforms and products, kept from call to call under inference mode: freshly
#: allocated, these tens of MB were returned to the system and faulted in again on every call (6,400 page faults
#: a call for 16 images of 12x12x128 -> 512, more system time than the arithmetic).
_WORKSPACE = threading.local()
#: One WinogradConv per convolution module (its transformed weights are reused across calls).
_MADE: weakref.WeakKeyDictionary[nn.Conv2d, WinogradConv] = weakref.WeakKeyDictionary()


def clear_cache() -> None:
    """Forget the timed choices and the transformed weights (``cnnlens.explain.accel.clear_caches`` calls this)."""
    _CHOSEN.clear()
    _POOL_CHOSEN.clear()
    _MADE.clear()
    _WORKSPACE.__dict__.clear()  # this thread's buffers (another thread's go with it)


def _buffer(name: str, numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat scratch tensor of ``numel`` values like ``like``: under inference mode this thread's buffer ``name``,
    kept for the next call (grown when too small); otherwise a new one."""
    if not torch.is_inference_mode_enabled():
        return like.new_empty(numel)
    store = _WORKSPACE.__dict__.setdefault("buffers", {})
    key = (name, like.device, like.dtype)
    buf = store.get(key)
    if buf is None or buf.numel() < numel:
        buf = store[key] = like.new_empty(numel)
    return buf[:numel]


def eligible(module: object) -> bool:
    """Whether ``module`` is a convolution this file computes: 3x3, stride 1, no dilation or groups, zero padding."""
    return (type(module) is nn.Conv2d and as_pair(module.kernel_size) == (3, 3) and as_pair(module.stride) == (1, 1)
            and as_pair(module.dilation) == (1, 1) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of every kernel ``[O,C,3,3]``, as ``[36,O,C]`` (one matrix per tile pixel, laid out as a
    linear layer's weight: what oneDNN's product reads without a copy)."""
    g = _G.to(weight.device, weight.dtype)
    u = g @ weight @ g.T  # [O,C,6,6]
    return u.permute(2, 3, 0, 1).reshape(36, weight.shape[0], weight.shape[1]).contiguous()


def _onednn_linear() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """oneDNN's matrix product ``a @ w.T`` as torch exposes it (``torch.ops.mkldnn._linear_pointwise``, the op
    inductor lowers linear layers to), or None where this build has no such op or oneDNN is turned off."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return lambda a, w: op(a, w, None, "none", [], "")


_ONEDNN: list = []  # [the op or None], found on first use


#: The ways :func:`tile_products` can multiply: oneDNN's product one tile pixel at a time, or one batched product.
PRODUCTS = ("onednn", "batched")


def onednn_products() -> bool:
    """Whether this build has oneDNN's product (:func:`tile_products`' ``"onednn"``) and oneDNN is turned on."""
    if not _ONEDNN:
        _ONEDNN.append(_onednn_linear())
    return _ONEDNN[0] is not None


def tile_products(v: torch.Tensor, u: torch.Tensor, out: torch.Tensor, *, via: str | None = None) -> torch.Tensor:
    """``out[i] = v[i] @ u[i].T`` for the 36 tile pixels (``v`` ``[36,T,C]``, ``u`` ``[36,O,C]``, ``out`` ``[36,T,O]``).

    ``via="onednn"``: oneDNN's product for each pixel, on the CPU in float32 where torch has it (MKL's runs at less
    than half its speed on AMD CPUs, ~45 against ~100 GMAC/s on a Zen 5 core); ``"batched"``: one batched product
    (``torch.bmm``: MKL's on the CPU, faster than oneDNN's on an Intel Xeon); None: oneDNN's where it applies.
    Elsewhere (float64, CUDA, no oneDNN) always the batched product."""
    if via not in (None, *PRODUCTS):
        raise ValueError(f"via must be one of {PRODUCTS} or None, got {via!r}")
    if via != "batched" and onednn_products() and v.device.type == "cpu" and v.dtype == torch.float32:
        linear = _ONEDNN[0]
        try:
            for i in range(v.shape[0]):
                out[i] = linear(v[i], u[i])
            return out
        except RuntimeError:  # an op that exists but refuses (a build without the kernel): never again
            _ONEDNN[0] = None
    return torch.bmm(v, u.transpose(1, 2), out=out)


def winograd_conv2d(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None,
                    padding: tuple[int, int], *, products: str | None = None, pool: bool = False) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` for a 3x3 ``weight`` given as ``u = transform_weight(weight)``;
    ``pool``: ``F.max_pool2d`` of it (2x2, stride 2, floor).

    ``x`` ``[N,C,H,W]`` in any memory format; the result is channels-last. Runs ``TILES`` tiles at a time, its
    36 products :func:`tile_products`' ``via=products``. With ``pool`` each 4x4 output tile is pooled to 2x2 before it
    is written into the map (the tiles start at even rows and columns, so every pooling window lies in one tile):
    the same values as :func:`max_pool_2x2` of the convolution, with a quarter of the writes and no second pass
    (5-20% of the layer's time on the small CNN's maps, one CPU thread).
    """
    n, c, h, w = x.shape
    ph, pw = padding
    oh, ow = h + 2 * ph - 2, w + 2 * pw - 2
    if oh < 1 or ow < 1:
        raise ValueError(f"a 3x3 convolution with padding {padding} has no output on a {h}x{w} map")
    th, tw = -(-oh // 4), -(-ow // 4)
    xp = F.pad(x, (pw, 4 * tw + 2 - w - pw, ph, 4 * th + 2 - h - ph)).permute(0, 2, 3, 1)  # [N,Hp,Wp,C] view
    s = xp.stride()
    tiles = xp.as_strided((6, 6, n, th, tw, c), (s[1], s[2], s[0], 4 * s[1], 4 * s[2], s[3]), xp.storage_offset())
    bt, at = _BT.to(x.device, x.dtype), _AT.to(x.device, x.dtype)
    o = u.shape[1]
    side = 2 if pool else 4  # output rows and columns per tile
    y = x.new_empty(n, th, side, tw, side, o)
    chunk = -(-n // max(1, -(-n * th * tw // TILES)))  # images per chunk: as few chunks as TILES allows, equal
    most = min(n, chunk) * th * tw  # tiles in the largest chunk
    d_buf, bd_buf, v_buf = (_buffer(name, 36 * most * c, x) for name in ("d", "bd", "v"))
    m_buf, am_buf, z_buf, r_buf = (_buffer(name, k * most * o, x)
                                   for name, k in (("m", 36), ("am", 24), ("z", 16), ("r", 8 if pool else 0)))
    for a, b in batch_ranges(n, chunk):
        t = (b - a) * th * tw
        d = d_buf[:36 * t * c].view(6, 6, b - a, th, tw, c)
        d.copy_(tiles[:, :, a:b])  # [6 rows, 6 columns, tiles, C]
        bd = torch.matmul(bt, d.view(6, -1), out=bd_buf[:36 * t * c].view(6, -1))
        v = torch.matmul(bt, bd.view(6, 6, -1), out=v_buf[:36 * t * c].view(6, 6, -1)).view(36, t, c)  # B^T d B
        m = tile_products(v, u, m_buf[:36 * t * o].view(36, t, o), via=products)  # [36, tiles, O]
        am = torch.matmul(at, m.view(6, -1), out=am_buf[:24 * t * o].view(4, -1))
        z = torch.matmul(at, am.view(4, 6, -1), out=z_buf[:16 * t * o].view(4, 4, -1))  # A^T m A: [4,4, tiles x O]
        if pool:  # rows 2i, 2i+1 then columns 2j, 2j+1 of each tile: contiguous maxima of tiles x O values
            pairs = z.view(2, 2, 2, 2, -1)  # [row pair, row in it, column pair, column in it, tiles x O]
            rows = torch.maximum(pairs[:, 0], pairs[:, 1], out=r_buf[:8 * t * o].view(2, 2, 2, -1))
            z = torch.maximum(rows[:, :, 0], rows[:, :, 1], out=z_buf[:4 * t * o].view(2, 2, -1))
        tiled = z.view(side, side, b - a, th, tw, o).permute(2, 3, 0, 4, 1, 5)
        if bias is None:
            y[a:b] = tiled
        else:  # the bias added on the way into the map: one pass over it instead of two (it commutes with a max)
            torch.add(tiled, bias, out=y[a:b])
    y = y.view(n, side * th, side * tw, o)
    kept = (oh // 2, ow // 2) if pool else (oh, ow)  # floor pooling drops an odd last row or column
    if kept != (side * th, side * tw):  # the tiles overhang the map: one copy of the part inside
        y = y[:, :kept[0], :kept[1]].contiguous()
    return y.permute(0, 3, 1, 2)


class WinogradConv:
    """Calls a 3x3 ``nn.Conv2d`` through :func:`winograd_conv2d` with its ``products`` (through the module itself
    under autocast or for other dtypes); with ``pool``, its 2x2 max-pooling (:meth:`pooled`). The transformed
    weights are made once per dtype and shared by :meth:`using`'s and :meth:`pooled`'s copies."""

    def __init__(self, conv: nn.Conv2d, products: str | None = None) -> None:
        if not eligible(conv):
            raise ValueError(f"Winograd F(4x4,3x3) needs a 3x3, stride-1, undilated, ungrouped, zero-padded "
                             f"convolution, got {conv}")
        if products not in (None, *PRODUCTS):
            raise ValueError(f"products must be one of {PRODUCTS} or None, got {products!r}")
        self.conv = conv
        self.padding = as_pair(conv.padding)
        self.products = products
        self.pool = False
        self._u: dict[torch.dtype, torch.Tensor] = {}

    def using(self, products: str | None) -> WinogradConv:
        """This convolution with :func:`tile_products`' ``via=products``, sharing the transformed weights."""
        if products == self.products:
            return self
        other = copy.copy(self)
        other.products = products
        return other

    def pooled(self) -> WinogradConv:
        """This convolution followed by ``F.max_pool2d(., 2)``, pooled inside :func:`winograd_conv2d`'s tiles."""
        other = copy.copy(self)
        other.pool = True
        return other

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(x.device.type):
            return F.max_pool2d(self.conv(x), 2) if self.pool else self.conv(x)
        if x.dtype not in self._u:
            self._u[x.dtype] = transform_weight(self.conv.weight.detach().to(x.dtype))
        bias = None if self.conv.bias is None else self.conv.bias.detach().to(x.dtype)
        return winograd_conv2d(x, self._u[x.dtype], bias, self.padding, products=self.products, pool=self.pool)


def faster(layer: Spatial, shape: tuple[int, ...], *, mode: str = "auto", min_time: float = 0.03,
           pool: bool = False) -> Spatial:
    """``layer`` with its whole-map function replaced by a :class:`WinogradConv` where that computes it
    faster on inputs of ``shape`` (``[batch,C,H,W]``), else ``layer`` itself. ``pool``: the convolution is to be
    followed by a 2x2 max-pooling, so the times compared are those of ``F.max_pool2d(conv(x), 2)`` and of
    :meth:`WinogradConv.pooled` (which writes a quarter of the map: 1.2x the direct convolution and pooling on the
    small CNN's 24x24x64 -> 128 layer on an Intel Xeon, where the convolution alone was even).

    ``mode``: ``"auto"`` times both once per shape, device, dtype and thread count (cached for the
    process), and is ``"never"`` (the direct convolution, untimed) in deterministic mode
    (``tuning.is_deterministic``); ``"always"`` / ``"never"`` decide without timing (tests). Only
    float32/float64 weights outside autocast are considered.
    """
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"mode must be 'auto', 'always' or 'never', got {mode!r}")
    if mode == "auto" and is_deterministic():
        mode = "never"
    conv = layer.full
    if mode == "never" or not eligible(conv):
        return layer
    device, dtype = conv.weight.device, conv.weight.dtype
    if dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(device.type):
        return layer
    wino = _MADE.get(conv)
    if wino is None:
        wino = _MADE[conv] = WinogradConv(conv)
    if mode == "auto":
        key = (conv.in_channels, conv.out_channels, wino.padding, conv.bias is not None, tuple(shape),
               str(device), dtype, torch.get_num_threads(), pool)
        if key not in _CHOSEN:
            probe = torch.Generator(device=device).manual_seed(0)  # its own: torch's global random state stays as it was
            x = torch.randn(shape, device=device, dtype=dtype, generator=probe).contiguous(memory_format=torch.channels_last)
            plain = (lambda t: F.max_pool2d(conv(t), 2)) if pool else conv
            ways = {way: wino.using(way).pooled() if pool else wino.using(way) for way in _product_ways(device, dtype)}
            with torch.inference_mode():
                for _ in range(3):  # warm-up: the first calls of a process also pay for the allocator's growth
                    plain(x)
                    for run in ways.values():
                        run(x)
                direct, best = math.inf, dict.fromkeys(ways, math.inf)
                for _ in range(3):  # interleaved, best of each: machine noise hits all alike
                    direct = min(direct, seconds_per_item(plain, x, min_time))
                    for way, run in ways.items():
                        best[way] = min(best[way], seconds_per_item(run, x, min_time))
            fastest = min(best, key=best.__getitem__)
            _CHOSEN[key] = fastest if direct >= MIN_GAIN * best[fastest] else False
        if _CHOSEN[key] is False:
            return layer
        wino = wino.using(_CHOSEN[key])
    return dataclasses.replace(layer, full=wino)


def _product_ways(device: torch.device, dtype: torch.dtype) -> tuple[str | None, ...]:
    """The :func:`tile_products` ways worth timing for weights on ``device`` in ``dtype``: both products on the CPU
    in float32 where this build has oneDNN's, else the one batched product."""
    if device.type == "cpu" and dtype == torch.float32 and onednn_products():
        return PRODUCTS
    return ("batched",)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` (stride 2, no padding, floor) as the maximum of four strided views of the map read
    channels-last: the same values (a maximum rounds nothing), 1.4-2.4x aten's channels-last kernel on the small
    CNN's maps on one CPU thread. The result is channels-last."""
    n, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1)[:, :h // 2 * 2, :w // 2 * 2].unflatten(1, (h // 2, 2)).unflatten(3, (w // 2, 2))
    rows = torch.maximum(y[:, :, 0], y[:, :, 1])  # [n, h/2, w/2, 2, c]
    return torch.maximum(rows[:, :, :, 0], rows[:, :, :, 1]).permute(0, 3, 1, 2)


def _is_max_pool_2x2(module: object) -> bool:
    return (isinstance(module, nn.MaxPool2d) and as_pair(module.kernel_size) == (2, 2)
            and as_pair(module.stride or module.kernel_size) == (2, 2) and as_pair(module.padding) == (0, 0)
            and as_pair(module.dilation) == (1, 1) and not module.ceil_mode and not module.return_indices)


def faster_pool(layer: Spatial, shape: tuple[int, ...], *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, mode: str = "auto", min_time: float = 0.03) -> Spatial:
    """``layer`` with :func:`max_pool_2x2` as its whole-map function where it is a 2x2 max-pooling that this
    computes faster on channels-last inputs of ``shape`` (timed once per shape, like :func:`faster`; never in
    deterministic mode), else ``layer`` itself."""
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"mode must be 'auto', 'always' or 'never', got {mode!r}")
    if mode == "auto" and is_deterministic():
        mode = "never"
    if mode == "never" or not _is_max_pool_2x2(layer.full):
        return layer
    if mode == "auto":
        key = (tuple(shape), str(device), dtype, torch.get_num_threads())
        if key not in _POOL_CHOSEN:
            probe = torch.Generator(device=device).manual_seed(0)  # its own: torch's global random state stays
            x = torch.randn(shape, device=device, dtype=dtype, generator=probe).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                aten, views = math.inf, math.inf
                for _ in range(3):  # interleaved, best of each
                    aten = min(aten, seconds_per_item(layer.full, x, min_time))
                    views = min(views, seconds_per_item(max_pool_2x2, x, min_time))
            _POOL_CHOSEN[key] = aten >= MIN_GAIN * views
        if not _POOL_CHOSEN[key]:
            return layer
    return dataclasses.replace(layer, full=max_pool_2x2)


def _full_resolution_steps(plan: LocalPlan) -> int | None:
    """How many of ``plan``'s first steps compute maps at the image's resolution, where no later step reads one
    of those maps but the last (so the steps can run on part of a batch, the rest on the whole); None if none."""
    first = next((i for i, stride in enumerate(plan.strides) if stride != (1, 1)), None)
    if first is None or first == 0 or plan.last < first:
        return None
    if any(i < first for step in plan.steps[first:] for i in step.inputs):
        return None
    return first


def _is_relu(fn: object) -> bool:
    """Whether a :class:`Pointwise` step's function is a ReLU: the module, or one ``relu`` call read out of a graph."""
    if type(fn) is nn.ReLU:
        return True
    if not isinstance(fn, fx.GraphModule):
        return False
    ops = [n for n in fn.graph.nodes if n.op not in ("placeholder", "output")]
    return len(ops) == 1 and ((ops[0].op == "call_function" and ops[0].target in RELU_FUNCTIONS)
                              or (ops[0].op == "call_method" and ops[0].target in ("relu", "relu_")))


def relu_before_max_pool(plan: LocalPlan) -> set[int]:
    """The steps of ``plan`` that are a ReLU read only by the max-pooling right after it. The dense forward
    (:func:`plan_forward`) runs each such pair as ``relu(maxpool(x))``: the same values (a maximum commutes with any
    non-decreasing function, and rounds nothing), with the ReLU on a quarter of them after a 2x2 pooling."""
    readers = Counter(i for step in plan.steps for i in step.inputs)
    readers[plan.last] += 1
    found = set()
    for j, (step, after) in enumerate(zip(plan.steps, plan.steps[1:])):
        if (isinstance(step.layer, Pointwise) and _is_relu(step.layer.fn) and isinstance(after.layer, Spatial)
                and isinstance(after.layer.full, nn.MaxPool2d) and after.inputs == (j + 1,) and readers[j + 1] == 1):
            found.add(j)
    return found


def conv_before_max_pool(plan: LocalPlan, moved: set[int]) -> dict[int, int]:
    """``{convolution step: pooling step}`` for each 3x3 convolution :func:`eligible` for Winograd whose map only a
    2x2 max-pooling reads, directly or through identities (a folded BatchNorm) and a ReLU in ``moved``
    (:func:`relu_before_max_pool`). :func:`plan_forward` pools such a convolution inside its Winograd tiles
    (:meth:`WinogradConv.pooled`); the steps between pass their input on."""
    readers = Counter(i for step in plan.steps for i in step.inputs)
    readers[plan.last] += 1
    found = {}
    for c, step in enumerate(plan.steps):
        if not (isinstance(step.layer, Spatial) and eligible(step.layer.full)):
            continue
        j = c + 1  # the next step, reading map j (step j-1's output) and only it reads that map
        while (j < len(plan.steps) and plan.steps[j].inputs == (j,) and readers[j] == 1
               and (j in moved or (isinstance(plan.steps[j].layer, Pointwise) and type(plan.steps[j].layer.fn) is nn.Identity))):
            j += 1
        if (j < len(plan.steps) and plan.steps[j].inputs == (j,) and readers[j] == 1
                and isinstance(plan.steps[j].layer, Spatial) and _is_max_pool_2x2(plan.steps[j].layer.full)):
            found[c] = j
    return found


def _relu_after(pool: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``relu(pool(x))``, in place on the pooling's new output."""
    return lambda x: torch.relu_(pool(x))


def plan_forward(plan: LocalPlan, example: torch.Tensor, batch_size: int, *,
                 mode: str = "auto") -> Callable[[torch.Tensor], torch.Tensor]:
    """The logits of whole images through ``plan``, each 3x3 convolution as Winograd F(4x4,3x3) where :func:`faster`
    times it faster on batches of ``batch_size`` images shaped like ``example``, each 2x2 max-pooling as
    :func:`max_pool_2x2` where :func:`faster_pool` does (``mode`` as theirs; forward only: call it under inference
    mode). Score-CAM's and RISE's masked images take this path (``cnnlens.explain.accel.plan_scorer``).

    The steps up to the first downsampling run :data:`~cnnlens.explain.accel.tuning.DETERMINISTIC_BATCH` images at
    a time, the rest on the whole batch: the full-resolution maps of a large batch are tens of MB that the C
    allocator hands back to the system after every pass (64 images of the small CNN: 70,000 page faults a pass, a
    quarter of its time), while the deep layers' products run faster on more rows. A ReLU read only by a max-pooling
    runs after it (:func:`relu_before_max_pool`: the same values), and a Winograd convolution read only by a 2x2
    max-pooling, through such a ReLU or directly, is pooled inside its tiles (:func:`conv_before_max_pool`)."""
    part = min(batch_size, DETERMINISTIC_BATCH.get(example.device.type, DETERMINISTIC_BATCH["cpu"]))
    split = _full_resolution_steps(plan) if batch_size > part else None
    clean = plan.maps(example[:1])
    shapes = [(part if split is not None and j < split else batch_size, *clean[step.inputs[0]].shape[1:])
              for j, step in enumerate(plan.steps)]
    moved = relu_before_max_pool(plan)
    pairs = conv_before_max_pool(plan, moved)
    layers = [faster_pool(faster(step.layer, shape, mode=mode, pool=j in pairs), shape, device=example.device,
                          dtype=example.dtype, mode=mode) if isinstance(step.layer, Spatial) else step.layer
              for j, (step, shape) in enumerate(zip(plan.steps, shapes))]
    passed = set(moved)  # steps whose input passes through: a moved ReLU runs in its pooling, so does a fused conv
    for c, p in pairs.items():
        if isinstance(layers[c].full, WinogradConv):
            layers[p] = dataclasses.replace(layers[p], full=layers[c].full.pooled())
            passed.update(range(c, p))
    for j in moved:
        layers[j + 1] = dataclasses.replace(layers[j + 1], full=_relu_after(layers[j + 1].full))

    def run(maps: list[torch.Tensor | None], steps: range) -> list[torch.Tensor | None]:
        for j in steps:
            inputs = [maps[i] for i in plan.steps[j].inputs]
            maps.append(inputs[0] if j in passed else full_step(layers[j], inputs))
        return maps

    def forward(x: torch.Tensor) -> torch.Tensor:
        if split is None or x.shape[0] <= part:
            maps = run([to_channels_last(x)], range(len(plan.steps)))
        else:
            middle = None
            for a, b in batch_ranges(x.shape[0], part):
                done = run([to_channels_last(x[a:b])], range(split))[split]
                if middle is None:
                    middle = torch.empty((x.shape[0], *done.shape[1:]), dtype=done.dtype, device=done.device,
                                         memory_format=torch.channels_last)
                middle[a:b] = done
            maps = run([None] * split + [middle], range(split, len(plan.steps)))
        return plan.tail(plan.head(maps[plan.last]))

    return forward
