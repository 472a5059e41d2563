"""Incremental occlusion: recompute only what a patch can change, up to the head's first linear layer.

A patch changes the input on a small box. A convolution or pooling layer maps a changed box to a
slightly larger changed box of its output; pointwise layers (BatchNorm in eval mode, ReLU, the fixed
input normalisation...) keep it; the add of a residual block changes the union of its two inputs'
boxes. So, for a model whose every feature map up to its head is computed by such *local* steps (a
chain like the small CNN, or a residual network like ResNet-18), each occluded image only needs its
changed boxes recomputed, with the clean activations (computed once per image) around them as
context. The head starts with a map-to-vector layer that is linear in the last map, so it moves by the
changed box alone:

    global average pooling:   GAP(new map) = GAP(clean map) + sum over the box of (new - clean) / (h w)
    flatten, then Linear:     y(new map)   = y(clean map) + W[:, box] @ (new - clean)[box]

(``W[:, box]``: the columns of the box's flattened positions, so the first dense layer costs what the
box holds, not what the map holds); the rest of the head then runs densely on those small vectors.

Everything computed is exact (borders included: zero padding is rebuilt around each box, -inf for
max-pooling), so the map equals :func:`cnnlens.explain.occlusion.occlusion`'s up to float rounding
(~1e-6). A box is never larger than its map: once the changes have spread over a whole map (deep,
small maps), that map is simply recomputed whole, so no arithmetic is wasted past the borders.

Patches are grouped by their start modulo the product of the strides; inside a group every box has
the same size, so a group is a few batched convolutions on small boxes. The graph is read from the
model's ``torch.fx`` trace, with the shapes of an example batch (:mod:`cnnlens.explain.accel.graph`: the
code people write, ``x.view(-1, n)``, ``x.view(x.size(0), -1)``, ``torch.flatten``, functional
activations and pooling), and the plan read from it is checked against the model on a few images. A
model it cannot decompose (an untraceable forward, a layer not known to be local, a head that is
neither global average pooling nor a flatten into a Linear layer) gets no scorer from
:func:`occlusion_scorer`, with a warning (or, by default, a ``cnnlens.explain`` log line) naming the layer
and the reason; :func:`cnnlens.explain.occlusion.occlusion` then scores every occluded image whole.

>>> score = occlusion_scorer(model, images)                       # None where the model does not decompose
>>> clean, scores = score(images, None, fills, starts_h, starts_w, (5, 5), output="logit", batch_size=None)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import operator
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from cnnlens._progress import progress_bar
from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.accel.graph import Captured, capture
from cnnlens.explain.accel.copies import (VERIFY_TOLERANCE, autocast, check_precision, fold_conv_bn, has_hooks,
                                          model_state)
from cnnlens.explain.core import batch_ranges, class_score, to_channels_last

#: Modules that act on each pixel on its own (in eval mode).
POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                     nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.PReLU,
                     nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.BatchNorm2d)
#: Functions and tensor methods that act on each pixel on its own, given scalar or per-channel operands.
POINTWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
                       torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh,
                       torch.clamp, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardtanh,
                       F.hardswish, F.mish, F.tanh, F.sigmoid, F.selu, F.celu, F.softplus, F.hardsigmoid,
                       torch.relu_, F.relu_}
POINTWISE_METHODS = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max",
                     "contiguous", "relu_", "sigmoid_", "tanh_", "clamp_", "clamp_min_", "clamp_max_", "add_",
                     "sub_", "mul_", "div_"}
#: Dropout as a function: the identity where its ``training`` argument is False (``training=self.training``).
DROPOUT_FUNCTIONS = {F.dropout: 2, F.dropout2d: 2, F.alpha_dropout: 2}
#: Functional pooling: the equivalent module and its parameters in order after the input.
POOL_FUNCTIONS = {
    F.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    torch.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    F.avg_pool2d: (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override")),
}
#: Reshapes that flatten a map ``[N,C,h,w]`` into ``[N,C*h*w]`` where their output has that shape.
FLATTEN_FUNCTIONS = {torch.flatten, torch.reshape}
FLATTEN_METHODS = {"view", "reshape", "flatten"}


#: Occluded images per incremental pass by default. A pass computes only small boxes (~1/6 of an image's
#: arithmetic for the small CNN), and a group rarely holds more boxes than this for a few images.
WINDOW_BATCH_SIZE = 256
#: Images whose clean activations are kept at once.
IMAGE_CHUNK = 16
log = logging.getLogger("cnnlens.explain")
#: Images the plan is checked on against the model (another batch size than the traced example's two).
CHECK_IMAGES = 3


class NotDecomposable(ValueError):
    """Some map before the head is not computed by local layers, or the head does not start with global
    average pooling or a flatten into a Linear layer."""


@dataclass(frozen=True)
class Spatial:
    """A convolution or pooling layer: ``full`` runs it on whole maps, ``window`` on padded boxes.

    Output ``o`` reads input rows ``o*stride - padding .. + kernel - 1`` (``kernel`` dilated).
    """

    full: Callable[[torch.Tensor], torch.Tensor]
    window: Callable[[torch.Tensor], torch.Tensor]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float


@dataclass(frozen=True)
class Pointwise:
    """A layer acting on each pixel on its own."""

    fn: Callable[[torch.Tensor], torch.Tensor]


def as_pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_layer(conv: nn.Conv2d) -> Spatial:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) and conv.padding != "valid":
        raise NotDecomposable(f"convolution with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    conv = conv.eval()
    conv.weight.data = to_channels_last(conv.weight.data)
    (kh, kw), (dh, dw) = as_pair(conv.kernel_size), as_pair(conv.dilation)
    padding = (0, 0) if isinstance(conv.padding, str) else as_pair(conv.padding)
    stride, dilation, groups = as_pair(conv.stride), (dh, dw), conv.groups

    def window(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, conv.weight, conv.bias, stride, 0, dilation, groups)

    return Spatial(conv, window, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), stride, padding, 0.0)


def _pool_layer(pool: nn.MaxPool2d | nn.AvgPool2d) -> Spatial:
    kernel, stride, padding = as_pair(pool.kernel_size), as_pair(pool.stride or pool.kernel_size), as_pair(pool.padding)
    if isinstance(pool, nn.MaxPool2d):
        if pool.return_indices or as_pair(pool.dilation) != (1, 1):
            raise NotDecomposable("max-pooling with return_indices or dilation")
        # ceil_mode only adds outputs whose window runs past the border: -inf padding gives them exactly.
        return Spatial(pool, lambda x: F.max_pool2d(x, kernel, stride), kernel, stride, padding, -math.inf)
    if pool.ceil_mode or pool.divisor_override is not None or (padding != (0, 0) and not pool.count_include_pad):
        raise NotDecomposable("average pooling with ceil_mode, divisor_override or count_include_pad=False")
    return Spatial(pool, lambda x: F.avg_pool2d(x, kernel, stride), kernel, stride, padding, 0.0)


def _functional_pool(node: fx.Node, graph: Captured) -> Spatial:
    """``F.max_pool2d(x, ...)`` / ``F.avg_pool2d(x, ...)`` as the equivalent module's :class:`Spatial`; sizes
    computed from shapes (``x.size(2) // 2``) take the example's values (the plan is checked afterwards)."""
    cls, names = POOL_FUNCTIONS[node.target]
    values = {**dict(zip(names, node.args[1:])), **node.kwargs}
    for name, value in values.items():
        if isinstance(value, fx.Node):
            if value not in graph.constants:
                raise NotDecomposable(f"{_describe(node)} takes its {name} from a tensor's values")
            values[name] = graph.constants[value]
    if values.get("stride") in ((), []):  # torch.max_pool2d's default: the kernel size
        values["stride"] = None
    return _pool_layer(cls(**values))


def _is_gap(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` averages its input over all pixels (global average pooling)."""
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.AdaptiveAvgPool2d) and as_pair(m.output_size) == (1, 1)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if (node.op == "call_method" and node.target == "mean") or (node.op == "call_function" and node.target is torch.mean):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dim, (tuple, list)) and sorted(d % 4 for d in dim) == [2, 3]
    return False


def _is_flatten(node: fx.Node, src: fx.Node, modules: dict[str, nn.Module], graph: Captured) -> bool:
    """Whether ``node`` turns the map ``src`` ``[N,C,h,w]`` into ``[N,C*h*w]`` (``x.view(-1, n)``,
    ``x.view(x.size(0), -1)``, ``torch.flatten(x, 1)``, ``nn.Flatten()``...), as the example's shapes show."""
    kind = ((node.op == "call_method" and node.target in FLATTEN_METHODS)
            or (node.op == "call_function" and node.target in FLATTEN_FUNCTIONS)
            or (node.op == "call_module" and isinstance(modules[node.target], nn.Flatten)))
    before, after = graph.shapes.get(src), graph.shapes.get(node)
    return bool(kind and before is not None and after is not None and len(before) == 4
                and tuple(after) == (before[0], before[1] * before[2] * before[3]))


def _describe(node: fx.Node, modules: dict[str, nn.Module] | None = None) -> str:
    """A node as a user would recognise it: ``layer fc1 (Linear)``, ``operation view (view)``."""
    if node.op == "call_module":
        kind = type(modules[node.target]).__name__ if modules and node.target in modules else "module"
        return f"layer {node.target} ({kind})"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"operation {node.name} ({target})"


def _operand_ok(arg: object, root: nn.Module) -> bool:
    """A pointwise op's other operand: a number, or a tensor constant with no spatial extent."""
    if isinstance(arg, (int, float, bool)) or arg is None:
        return True
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        t = operator.attrgetter(arg.target)(root)
        return isinstance(t, torch.Tensor) and (t.numel() == 1 or (t.dim() >= 3 and t.shape[-2:] == (1, 1)))
    return False


#: In-place operators a traced forward may use (``out += identity``), replaced by their out-of-place form.
OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                torch.relu_: torch.relu, F.relu_: F.relu}
METHODS_OUT_OF_PLACE = {"relu_": "relu", "sigmoid_": "sigmoid", "tanh_": "tanh", "clamp_": "clamp",
                        "clamp_min_": "clamp_min", "clamp_max_": "clamp_max", "add_": "add", "sub_": "sub",
                        "mul_": "mul", "div_": "div"}
#: Functions and tensor methods that combine two feature maps of one size pixel by pixel.
MERGE_FUNCTIONS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
                   operator.iadd, operator.isub, operator.imul}
MERGE_METHODS = {"add", "sub", "mul", "add_", "sub_", "mul_"}


def _node_module(root: nn.Module, node: fx.Node, *maps: fx.Node) -> Callable[..., torch.Tensor]:
    """``node`` alone as a callable of the tensors ``maps`` compute (its constants copied along), made
    out-of-place so that it can never overwrite a kept clean activation."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {m: graph.placeholder(f"x{i}") for i, m in enumerate(maps)}

    def remap(n: fx.Node) -> fx.Node:
        if n not in env:
            env[n] = graph.get_attr(n.target)  # only get_attr constants reach here (checked before)
        return env[n]

    copied = graph.node_copy(node, remap)
    table = METHODS_OUT_OF_PLACE if copied.op == "call_method" else OUT_OF_PLACE
    copied.target = table.get(copied.target, copied.target)
    if copied.kwargs.get("inplace"):
        copied.kwargs = {**copied.kwargs, "inplace": False}
    graph.output(copied)
    return fx.GraphModule(root, graph)


@dataclass(frozen=True)
class Merge:
    """A pixel-by-pixel combination of two maps of one size (the add of a residual block)."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One local layer: what it computes and the maps it reads (0: the image; i: step i-1's output)."""

    layer: Spatial | Pointwise | Merge
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class GlobalAverage:
    """The head's first layer as global average pooling: ``fn`` is the model's own pooling node."""

    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, last: torch.Tensor) -> torch.Tensor:
        return self.fn(last)


@dataclass(frozen=True)
class FlattenLinear:
    """The head's first layers as a flatten into ``nn.Linear``: ``y = W flatten(map) + b``.

    ``weight`` ``[out, h, w, C]``: the Linear layer's ``[out, C*h*w]`` weight with its columns in the
    order of a channels-last map (a view of the model's own weight where that is the same).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    @staticmethod
    def of(linear: nn.Linear, shape: tuple[int, int, int]) -> FlattenLinear:
        c, h, w = shape
        weight = linear.weight.detach().reshape(-1, c, h, w).permute(0, 2, 3, 1).contiguous()
        return FlattenLinear(weight, None if linear.bias is None else linear.bias.detach())

    def __call__(self, last: torch.Tensor) -> torch.Tensor:
        flat = last.permute(0, 2, 3, 1).reshape(last.shape[0], -1)  # a view for a channels-last map
        return F.linear(flat, self.weight.reshape(self.weight.shape[0], -1), self.bias)

    def change(self, change: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, padded: torch.Tensor,
               top: int, left: int) -> torch.Tensor:
        """``W[:, box] @ change`` for boxes ``change`` ``[B,C,bh,bw]`` starting at ``rows[b]``, ``cols[b]`` of the
        map (zero where they hang over its border); ``padded``: ``weight`` zero-padded by ``top``/``left``
        rows / columns (and as many as needed after) so that every box's columns exist."""
        b, _, bh, bw = change.shape
        flat = change.permute(0, 2, 3, 1).reshape(b, -1)
        out_features = padded.shape[0]
        if bh == self.weight.shape[1] and bw == self.weight.shape[2] and not bool(rows.any() or cols.any()):
            return flat @ self.weight.reshape(out_features, -1).T.to(flat.dtype)  # the whole map
        places, which = torch.unique(torch.stack([rows, cols], 1), dim=0, return_inverse=True)
        out = flat.new_empty(b, out_features)
        for g, (r, c) in enumerate(places.tolist()):  # boxes at one place share their columns of W
            sel = torch.nonzero(which == g)[:, 0]
            w = padded[:, top + r:top + r + bh, left + c:left + c + bw].reshape(out_features, -1)
            out[sel] = flat.index_select(0, sel) @ w.T.to(flat.dtype)
        return out


@dataclass(frozen=True)
class LocalPlan:
    """A model split as ``tail(head(maps[last]))``, every map computed from the image by local steps and
    ``head`` linear in the last map (:class:`GlobalAverage` or :class:`FlattenLinear`).

    ``strides[i]``: how many image pixels one pixel of map ``i`` steps over (rows, columns).
    """

    steps: tuple[Step, ...]
    last: int
    head: GlobalAverage | FlattenLinear
    tail: Callable[[torch.Tensor], torch.Tensor]
    strides: tuple[tuple[int, int], ...]

    def maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every map of ``images`` (channels-last), the image first."""
        maps = [to_channels_last(images)]
        for step in self.steps:
            maps.append(full_step(step.layer, [maps[i] for i in step.inputs]))
        return maps

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The model's output, computed through the plan."""
        return self.tail(self.head(self.maps(images)[self.last]))

    @staticmethod
    def build(model: nn.Module, example: torch.Tensor, fold_bn: bool = True) -> LocalPlan:
        """Read the local steps from ``model``'s fx graph and the shapes of ``example`` (images of the shape
        the plan will be used on; call in eval mode); raise :class:`NotDecomposable`, naming the layer
        and the reason, if it has other layers before its head, or another head.

        Convolutions are copied (BatchNorm right after one folded into it, weights channels-last);
        pointwise modules are the model's own (copied out-of-place where they work in place). The plan is
        run beside the model on :data:`CHECK_IMAGES` images and must give its outputs.
        """
        one = example[:1].detach()
        with torch.no_grad():
            try:
                graph = capture(model, torch.cat([one, one.flip(-1)]))
            except Exception as err:  # the tracers raise many kinds: any of them means "cannot read the graph"
                raise NotDecomposable(f"its forward cannot be traced by torch.fx ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0] if str(err) else ''})") from err
            plan = _read_plan(graph, fold_bn)
            _check(plan, model, torch.cat([one, one.flip(-2), one.flip(-1).flip(-2)]), graph.specialised)
        return plan


def _read_plan(graph: Captured, fold_bn: bool) -> LocalPlan:
    """The :class:`LocalPlan` of a captured graph (see :meth:`LocalPlan.build`)."""
    gm = graph.module
    modules = dict(gm.named_modules())
    everything = list(gm.graph.nodes)
    nodes = [n for n in everything if n.op != "get_attr" and n not in graph.constants]
    if not nodes or nodes[0].op != "placeholder" or sum(n.op == "placeholder" for n in nodes) != 1:
        raise NotDecomposable("its forward does not take exactly one input")
    index: dict[fx.Node, int] = {nodes[0]: 0}
    flat: dict[fx.Node, tuple[int, int, int]] = {}  # flattened maps: the (C, h, w) they hold
    steps: list[Step] = []
    strides: list[tuple[int, int]] = [(1, 1)]
    for node in nodes[1:]:
        if node.op == "output":
            break
        maps = [a for a in node.all_input_nodes if a.op != "get_attr" and a not in graph.constants]
        if maps and maps[0] in flat:  # after the flatten: pointwise layers, then the first Linear layer
            src = maps[0]
            if node.op == "call_module" and type(modules[node.target]) is nn.Linear and len(maps) == 1:
                if len(node.args) != 1 or node.kwargs:
                    raise NotDecomposable(f"{_describe(node, modules)} takes extra arguments")
                head = FlattenLinear.of(modules[node.target], flat[src])
                return LocalPlan(tuple(steps), index[src], head, _tail(gm, everything, node, graph),
                                 tuple(strides))
            if len(maps) == 1 and _flat_pointwise(node, modules, gm):
                steps.append(Step(Pointwise(_node_module(gm, node, src) if node.op != "call_module"
                                            else modules[node.target]), (index[src],)))
                strides.append(strides[index[src]])
                index[node], flat[node] = len(steps), flat[src]
                continue
            raise NotDecomposable(f"{_describe(node, modules)} reads the flattened map, where only pointwise "
                                  "layers and then a Linear layer are known")
        if _is_gap(node, modules):
            return LocalPlan(tuple(steps), index[maps[0]], GlobalAverage(_node_module(gm, node, maps[0])),
                             _tail(gm, everything, node, graph), tuple(strides))
        if len(maps) == 1 and _is_flatten(node, maps[0], modules, graph):
            index[node], flat[node] = index[maps[0]], tuple(graph.shapes[maps[0]][1:])
            continue
        if len(maps) == 1:
            src = maps[0]
            fold = fold_bn and _is_conv_node(src, modules) and len(src.users) == 1
            layer = _layer(gm, modules, node, src, fold, graph)
            if layer is None:  # a BatchNorm folded into the convolution before it (copies, eval mode)
                j = index[src] - 1
                steps[j] = Step(conv_layer(fold_conv_bn(modules[src.target], modules[node.target])), steps[j].inputs)
                index[node] = index[src]
                continue
            steps.append(Step(layer, (index[src],)))
            stride = layer.stride if isinstance(layer, Spatial) else (1, 1)
            strides.append((strides[index[src]][0] * stride[0], strides[index[src]][1] * stride[1]))
        elif len(maps) == 2 and _is_merge(node, maps, gm):
            a, b = index[maps[0]], index[maps[1]]
            if strides[a] != strides[b]:
                raise NotDecomposable(f"{node.name} combines maps of different resolutions")
            steps.append(Step(Merge(_node_module(gm, node, *maps)), (a, b)))
            strides.append(strides[a])
        else:
            raise NotDecomposable(f"{_describe(node, modules)} combines {len(maps)} tensors in a way not known "
                                  "to be local")
        index[node] = len(steps)
    raise NotDecomposable("its head is neither global average pooling nor a flatten into a Linear layer")


def _flat_pointwise(node: fx.Node, modules: dict[str, nn.Module], gm: fx.GraphModule) -> bool:
    """Whether ``node`` acts on each value of a flattened map on its own, with numbers as its other operands
    (so that it may as well run on the map before the flatten): ReLU, dropout in eval mode..."""
    if node.op == "call_module":
        m = modules[node.target]
        return (isinstance(m, POINTWISE_MODULES) and not isinstance(m, (nn.BatchNorm2d, nn.PReLU))
                and len(node.args) == 1 and not node.kwargs)
    pointwise = _is_identity_dropout(node) or (node.op == "call_function" and node.target in POINTWISE_FUNCTIONS) \
        or (node.op == "call_method" and node.target in POINTWISE_METHODS)
    return pointwise and all(isinstance(a, (int, float, bool)) or a is None
                             for a in (*node.args[1:], *node.kwargs.values()))


def _is_identity_dropout(node: fx.Node) -> bool:
    """``F.dropout(x, p, training=False)`` and its kin: the identity."""
    if node.op != "call_function" or node.target not in DROPOUT_FUNCTIONS:
        return False
    at = DROPOUT_FUNCTIONS[node.target]
    training = node.kwargs.get("training", node.args[at] if len(node.args) > at else True)
    return training is False


def _check(plan: LocalPlan, model: nn.Module, images: torch.Tensor, specialised: bool) -> None:
    """Raise :class:`NotDecomposable` unless ``plan`` gives ``model``'s outputs on ``images`` (to
    :data:`cnnlens.explain.accel.copies.VERIFY_TOLERANCE` of the largest): a safety net under the graph reading,
    and what catches a graph specialised to the traced batch size."""
    how = "read with the example's shapes (its forward uses a shape as a number), " if specialised else ""
    expected = model(images)
    try:
        got = plan(images)
    except Exception as err:  # a shape baked into the graph, say: the plan does not stand in for the model
        first = str(err).splitlines()[0] if str(err) else ""
        raise NotDecomposable(f"{how}its plan raised {type(err).__name__} ({first}) on a batch of {len(images)} "
                              "images") from err
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        raise NotDecomposable(f"{how}its plan's output is not the model's (one tensor of its shape)")
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    diff = float((got.to(expected.dtype) - expected).abs().max()) if expected.numel() else 0.0
    if torch.isfinite(expected).all() and not diff <= VERIFY_TOLERANCE * scale + 1e-12:
        raise NotDecomposable(f"{how}its plan's outputs differ from the model's by {diff:.3g} "
                              f"(largest |output| {scale:.3g}); an in-place layer read again, say")


def _is_conv_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and type(modules[node.target]) is nn.Conv2d


def _is_merge(node: fx.Node, maps: list[fx.Node], root: nn.Module) -> bool:
    """Whether ``node`` combines the two maps pixel by pixel (a residual add), other operands constants."""
    if not ((node.op == "call_function" and node.target in MERGE_FUNCTIONS)
            or (node.op == "call_method" and node.target in MERGE_METHODS)):
        return False
    return all(_operand_ok(a, root) for a in (*node.args, *node.kwargs.values()) if a not in maps)


def _layer(gm: fx.GraphModule, modules: dict[str, nn.Module], node: fx.Node, prev: fx.Node,
           after_conv: bool, graph: Captured) -> Spatial | Pointwise | None:
    """``node`` as a local layer reading the one map ``prev``; None for a BatchNorm to fold into the
    convolution before it."""
    if node.op == "call_module":
        m = modules[node.target]
        if len(node.args) != 1 or node.kwargs:
            raise NotDecomposable(f"layer {node.target} takes extra arguments")
        if type(m) is nn.Conv2d:
            return conv_layer(copy.deepcopy(m))
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return _pool_layer(m)
        if isinstance(m, nn.BatchNorm2d) and (not m.track_running_stats or m.running_mean is None):
            raise NotDecomposable(f"BatchNorm {node.target} normalises by batch statistics")
        if isinstance(m, POINTWISE_MODULES):
            if isinstance(m, nn.BatchNorm2d) and after_conv:
                return None
            if getattr(m, "inplace", False) and len(prev.users) > 1:  # it would overwrite a map read again
                m = copy.copy(m)
                m.inplace = False
            return Pointwise(m)
        raise NotDecomposable(f"layer {node.target} ({type(m).__name__}) is not known to be local")
    if node.op == "call_function" and node.target in POOL_FUNCTIONS:
        return _functional_pool(node, graph)
    if _is_identity_dropout(node):
        return Pointwise(_node_module(gm, node, prev))
    pointwise = (node.op == "call_function" and node.target in POINTWISE_FUNCTIONS) or \
                (node.op == "call_method" and node.target in POINTWISE_METHODS)
    operands = [a for a in (*node.args, *node.kwargs.values()) if a is not prev]
    if not pointwise or not all(_operand_ok(a, gm) for a in operands):
        raise NotDecomposable(f"{_describe(node, modules)} is not known to be local")
    return Pointwise(_node_module(gm, node, prev))


def _batch_size_query(node: fx.Node) -> bool:
    """``x.size(0)`` or ``x.shape[0]``: the same number for every tensor of the forward."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim == 0
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        src = node.args[0]
        return (isinstance(src, fx.Node) and src.op == "call_function" and src.target is getattr
                and src.args[1] == "shape")
    return False


def _tail(gm: fx.GraphModule, everything: list[fx.Node], start: fx.Node,
          graph: Captured) -> Callable[[torch.Tensor], torch.Tensor]:
    """The graph from the head's first node ``start`` (its output is the new input) to the output.

    A batch-size query of an earlier map (``x.size(0)`` in ``gap(x).view(x.size(0), -1)``) reads the new
    input instead; any other reading of what came before ``start`` is not possible."""
    out = fx.Graph()
    first = out.placeholder("head")
    env: dict[fx.Node, fx.Node] = {start: first}

    after = set(everything[everything.index(start) + 1:])

    def remap(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op == "get_attr":
                env[n] = out.get_attr(n.target)
            elif n in graph.constants and _batch_size_query(n):
                env[n] = out.call_method("size", (first, 0))
            elif n in graph.constants and n in after:  # shape arithmetic on the head's own tensors
                env[n] = out.node_copy(n, remap)
            else:
                raise NotDecomposable(f"the head reads {n.name}, computed before {_describe(start)}")
        return env[n]

    for node in everything[everything.index(start) + 1:]:
        if node.op != "get_attr" and node not in graph.constants:  # those are copied where they are read
            env[node] = out.node_copy(node, remap)
    return fx.GraphModule(gm, out)


def _span(start: int, length: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """Changed input rows ``[start, start+length)`` -> ``(out_start, out_len, in_start, in_len)``.

    The changed outputs are those whose window meets the changed rows; computing them reads input
    rows ``[in_start, in_start + in_len)``.
    """
    out_start = -((kernel - 1 - padding - start) // stride)  # ceil((start + padding - kernel + 1) / stride)
    out_end = (start + length - 1 + padding) // stride
    out_len = max(out_end - out_start + 1, 0)
    return out_start, out_len, out_start * stride - padding, (out_len - 1) * stride + kernel


@dataclass(frozen=True)
class _Axis:
    """A group of alignment classes along one axis whose boxes have the same lengths: for each class and
    map, where the changed box starts for t = 0 (``table[class, map]``), how far it moves per unit of t
    (a patch start moves by t * period), and its length.

    A box that would be at least as long as its map is the whole map (start 0, not moving): deep, small
    maps are recomputed whole rather than as larger boxes that would be mostly padding.
    """

    table: torch.Tensor
    shifts: tuple[int, ...]
    lengths: tuple[int, ...]
    whole: tuple[bool, ...]

    def at(self, i: int, t: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Where map ``i``'s box starts for each (t, class) (it may hang over the map's border)."""
        if self.whole[i]:
            return torch.zeros_like(t)
        return self.table.to(t.device)[cls, i] + t * self.shifts[i]

    def extent(self, i: int, t_range: tuple[int, int]) -> tuple[int, int]:
        """The first and one-past-last row map ``i``'s box covers over ``t`` in ``t_range``."""
        if self.whole[i]:
            return 0, self.lengths[i]
        return (int(self.table[:, i].min()) + min(t_range) * self.shifts[i],
                int(self.table[:, i].max()) + max(t_range) * self.shifts[i] + self.lengths[i])


def _axis(plan: LocalPlan, sizes: list[int], start: int, length: int, axis: int, period: int
          ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
    """The boxes every map gets from a patch of ``length`` at ``start`` (t = 0) along ``axis``:
    ``(starts, shifts, lengths, whole)`` per map.

    Computing more of a map than a patch changed gives that map's clean values there, so a box only
    has to cover the changed part: one at least as long as its map becomes the whole map.
    """
    starts, shifts, lengths = [start], [period], [length]
    for step in plan.steps:
        i = step.inputs[0]
        if isinstance(step.layer, Spatial):
            layer = step.layer
            out_start, out_len, _, _ = _span(starts[i], lengths[i], layer.kernel[axis], layer.stride[axis],
                                              layer.padding[axis])
            starts.append(out_start), shifts.append(shifts[i] // layer.stride[axis]), lengths.append(max(out_len, 1))
        elif isinstance(step.layer, Merge):
            j = step.inputs[1]
            lo, hi = min(starts[i], starts[j]), max(starts[i] + lengths[i], starts[j] + lengths[j])
            starts.append(lo), shifts.append(shifts[i]), lengths.append(hi - lo)
        else:
            starts.append(starts[i]), shifts.append(shifts[i]), lengths.append(lengths[i])
    whole = tuple(i > 0 and n >= size for i, (n, size) in enumerate(zip(lengths, sizes)))
    lengths = [size if w else n for n, size, w in zip(lengths, sizes, whole)]
    return tuple(starts), tuple(shifts), tuple(lengths), whole


def _axis_groups(plan: LocalPlan, sizes: list[int], classes: list[int], length: int, axis: int, period: int
                 ) -> list[tuple[_Axis, list[int]]]:
    """The alignment classes along ``axis`` grouped by the lengths of their boxes (classes in a group run
    in the same passes: bigger batches), each group with its :class:`_Axis`."""
    by_key: dict[tuple, list[tuple[int, tuple[int, ...]]]] = {}
    for a in classes:
        starts, shifts, lengths, whole = _axis(plan, sizes, a, length, axis, period)
        by_key.setdefault((shifts, lengths, whole), []).append((a, starts))
    return [(_Axis(torch.tensor([st for _, st in members]), shifts, lengths, whole), [a for a, _ in members])
            for (shifts, lengths, whole), members in by_key.items()]


def _gather(padded: torch.Tensor, img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Boxes ``[B,C,h,w]`` (channels-last) of an NHWC tensor: image ``img[b]``, rows ``rows[b]``, cols ``cols[b]``."""
    return padded[img[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _paste(window: torch.Tensor, win_h: torch.Tensor, win_w: torch.Tensor, box: torch.Tensor,
           box_h: torch.Tensor, box_w: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``window`` ``[B,C,h,w]`` (rows ``win_h[b] + i``, cols ``win_w[b] + j`` of a map) with the pixels
    ``box`` holds (it starts at ``box_h[b]``, ``box_w[b]``) taken from ``box``, except where they lie
    outside the map: the window keeps its padding there. ``window`` is a fresh gather: it is written in
    place. Windows where the box sits at the same place take it in one strided copy (one place for a
    whole batch is the usual case; a box moving in a whole map's window adds a few)."""
    oh, ow = box_h - win_h, box_w - win_w  # where the box starts inside each window
    if bool((oh == oh[0]).all() and (ow == ow[0]).all()):
        places = [((int(oh[0]), int(ow[0])), slice(None))]
    else:
        kinds, which = torch.unique(torch.stack([oh, ow], 1), dim=0, return_inverse=True)
        places = [(tuple(kind.tolist()), torch.nonzero(which == g)[:, 0]) for g, kind in enumerate(kinds)]
    (h, w), (bh, bw) = window.shape[2:], box.shape[2:]
    for (oh_, ow_), sel in places:
        a0, a1, b0, b1 = max(0, oh_), min(h, oh_ + bh), max(0, ow_), min(w, ow_ + bw)
        if a1 <= a0 or b1 <= b0:
            continue
        piece = box[sel, :, a0 - oh_:a1 - oh_, b0 - ow_:b1 - ow_]
        rows = win_h[sel, None] + torch.arange(a0, a1, device=window.device)
        cols = win_w[sel, None] + torch.arange(b0, b1, device=window.device)
        in_h, in_w = (rows >= 0) & (rows < size[0]), (cols >= 0) & (cols < size[1])
        if not bool(in_h.all() and in_w.all()):  # a box hanging over the border: keep the padding there
            piece = torch.where((in_h[:, :, None] & in_w[:, None, :])[:, None], piece, window[sel, :, a0:a1, b0:b1])
        window[sel, :, a0:a1, b0:b1] = piece
    return window


class IncrementalOcclusion:
    """Scores of occluded images through a :class:`LocalPlan`, one batch of clean images at a time."""

    def __init__(self, plan: LocalPlan, images: torch.Tensor, precision: str = "float32") -> None:
        self.plan, self.precision = plan, precision
        with torch.inference_mode(), autocast(images.device, precision):
            maps = plan.maps(images.clone())
            head = plan.head(maps[plan.last])
            self.logits = plan.tail(head).to(images.dtype)
        self.maps = maps
        self.sizes = [tuple(m.shape[2:]) for m in maps]
        self.head_shape = head.shape[1:]
        self.head = head.reshape(images.shape[0], -1)  # the clean output of the head's first layer
        self.period = (math.lcm(*(s[0] for s in plan.strides)), math.lcm(*(s[1] for s in plan.strides)))

    def _windows(self, geo: tuple[list[_Axis], list[_Axis]], t_range: tuple[tuple[int, int], ...]
                 ) -> list[tuple[int, float, int, int, int, int]]:
        """Every window a pass reads from a clean map: ``(map, padding value, top, bottom, left, right)``,
        the rows / columns it reaches outside the map (for the padding)."""
        reads = []
        for gh in geo[0]:
            for gw in geo[1]:
                for k, step in enumerate(self.plan.steps, start=1):
                    layer = step.layer
                    if isinstance(layer, Pointwise):
                        continue
                    spans = []
                    for axis, g in ((0, gh), (1, gw)):
                        lo, hi = g.extent(k, t_range[axis])
                        if isinstance(layer, Spatial):
                            s_, p_, k_ = layer.stride[axis], layer.padding[axis], layer.kernel[axis]
                            lo, hi = lo * s_ - p_, (hi - 1) * s_ - p_ + k_
                        spans.append((lo, hi))
                    value = layer.pad_value if isinstance(layer, Spatial) else 0.0
                    for i in step.inputs:
                        (h0, h1), (w0, w1) = spans
                        reads.append((i, value, -h0, h1 - self.sizes[i][0], -w0, w1 - self.sizes[i][1]))
                p = self.plan.last
                (h0, h1), (w0, w1) = gh.extent(p, t_range[0]), gw.extent(p, t_range[1])
                reads.append((p, 0.0, -h0, h1 - self.sizes[p][0], -w0, w1 - self.sizes[p][1]))
        return reads

    def _padded(self, geo: tuple[list[_Axis], list[_Axis]], t_range: tuple[tuple[int, int], ...]
                ) -> dict[tuple[int, float], tuple[torch.Tensor, int, int]]:
        """The clean maps the pass gathers from, NHWC, padded with each reader's padding value (0, or -inf
        for max-pooling) so that every window fits: ``{(map, value): (tensor, top, left)}``."""
        margins: dict[tuple[int, float], list[int]] = {}
        for i, value, *reach in self._windows(geo, t_range):
            m = margins.setdefault((i, value), [0, 0, 0, 0])
            margins[(i, value)] = [max(a, b) for a, b in zip(m, reach)]
        out = {}
        for (i, value), (top, bottom, left, right) in margins.items():
            nhwc = F.pad(self.maps[i], (left, right, top, bottom), value=value).permute(0, 2, 3, 1).contiguous()
            out[(i, value)] = (nhwc, top, left)
        return out

    def scores(self, target: torch.Tensor, fills: torch.Tensor, starts_h: torch.Tensor, starts_w: torch.Tensor,
               patch: tuple[int, int], *, output: str, batch_size: int,
               advance: Callable[[int], None] | None = None) -> torch.Tensor:
        """Score of ``target`` on every occluded image: ``[N, F, len(starts_h), len(starts_w)]``.

        ``advance(k)`` is called after each pass of ``k`` occluded images (a progress bar).
        """
        n, nf = fills.shape[:2]
        device = fills.device
        period, jobs = self.period, []
        groups = []
        for axis, starts in ((0, starts_h), (1, starts_w)):
            sizes = [s[axis] for s in self.sizes]
            classes = sorted({int(v) % period[axis] for v in starts})
            groups.append(_axis_groups(self.plan, sizes, classes, patch[axis], axis, period[axis]))
        t_range = ((int(starts_h.min()) // period[0], int(starts_h.max()) // period[0]),
                   (int(starts_w.min()) // period[1], int(starts_w.max()) // period[1]))
        padded = self._padded(([g for g, _ in groups[0]], [g for g, _ in groups[1]]), t_range)
        weight = None
        if isinstance(self.plan.head, FlattenLinear):  # W zero-padded like the last map: every box's columns
            nhwc, top, left = padded[(self.plan.last, 0.0)]
            (h, w), wt = self.sizes[self.plan.last], self.plan.head.weight
            weight = (F.pad(wt, (0, 0, left, nhwc.shape[2] - left - w, top, nhwc.shape[1] - top - h)), top, left)
        scores = torch.empty(n, nf, len(starts_h), len(starts_w), dtype=self.logits.dtype, device=device)

        def members(starts: torch.Tensor, axis: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            """Indices of the starts in ``classes``, and each one's class index in the group."""
            where = {a: c for c, a in enumerate(classes)}
            rank = [where.get(int(v) % period[axis], -1) for v in starts]
            keep = [k for k, r in enumerate(rank) if r >= 0]
            return torch.tensor(keep, device=device), torch.tensor([rank[k] for k in keep], device=device)

        for gh, classes_h in groups[0]:
            kh, ch = members(starts_h, 0, classes_h)
            for gw, classes_w in groups[1]:
                kw, cw = members(starts_w, 1, classes_w)
                total = n * nf * len(kh) * len(kw)
                jobs += [(gh, gw, kh, kw, ch, cw, s, e) for s, e in batch_ranges(total, batch_size)]
        starts_h, starts_w = starts_h.to(device), starts_w.to(device)
        for gh, gw, kh, kw, ch, cw, s, e in jobs:
            idx = torch.arange(s, e, device=device)
            img, rest = idx // (nf * len(kh) * len(kw)), idx % (nf * len(kh) * len(kw))
            f, pos = rest // (len(kh) * len(kw)), rest % (len(kh) * len(kw))
            ih, iw = kh[pos // len(kw)], kw[pos % len(kw)]
            th, tw = starts_h[ih] // period[0], starts_w[iw] // period[1]
            with torch.inference_mode(), autocast(device, self.precision):
                logits = self._logits(padded, weight, gh, gw, img, fills[img, f], (th, ch[pos // len(kw)]),
                                      (tw, cw[pos % len(kw)]), patch)
            scores[img, f, ih, iw] = class_score(logits.to(scores.dtype), target[img], output)
            if advance is not None:
                advance(e - s)
        return scores

    def _logits(self, padded: dict[tuple[int, float], tuple[torch.Tensor, int, int]],
                weight: tuple[torch.Tensor, int, int] | None, gh: _Axis, gw: _Axis, img: torch.Tensor,
                fill: torch.Tensor, th: tuple[torch.Tensor, torch.Tensor], tw: tuple[torch.Tensor, torch.Tensor],
                patch: tuple[int, int]) -> torch.Tensor:
        """Logits of a batch of occluded images of one group; ``th``/``tw``: each patch's (t, class);
        ``weight``: a :class:`FlattenLinear` head's padded weight and its margins (None for GAP)."""

        def window(i: int, value: float, rows: torch.Tensor, cols: torch.Tensor, length: tuple[int, int]) -> torch.Tensor:
            nhwc, top, left = padded[(i, value)]
            return _gather(nhwc, img, top + rows[:, None] + torch.arange(length[0], device=img.device),
                           left + cols[:, None] + torch.arange(length[1], device=img.device))

        starts = [(gh.at(i, *th), gw.at(i, *tw)) for i in range(len(self.sizes))]
        # The changed box of the image: the patch itself (its fill colour).
        boxes = [to_channels_last(fill.expand(-1, -1, *patch).contiguous())]
        for k, step in enumerate(self.plan.steps, start=1):
            layer = step.layer
            if isinstance(layer, Pointwise):
                boxes.append(layer.fn(boxes[step.inputs[0]]))
                continue
            length = (gh.lengths[k], gw.lengths[k])
            if isinstance(layer, Spatial):
                (i,) = step.inputs
                rows = starts[k][0] * layer.stride[0] - layer.padding[0]
                cols = starts[k][1] * layer.stride[1] - layer.padding[1]
                size = ((length[0] - 1) * layer.stride[0] + layer.kernel[0],
                        (length[1] - 1) * layer.stride[1] + layer.kernel[1])
                x = window(i, layer.pad_value, rows, cols, size)
                boxes.append(layer.window(_paste(x, rows, cols, boxes[i], *starts[i], self.sizes[i])))
            else:
                a, b = (_paste(window(i, 0.0, *starts[k], length), *starts[k], boxes[i], *starts[i], self.sizes[i])
                        for i in step.inputs)
                boxes.append(layer.fn(a, b))
        p = self.plan.last
        box, (rh, rw), size = boxes[p], starts[p], self.sizes[p]
        change = box - window(p, 0.0, rh, rw, tuple(box.shape[2:]))
        rows = rh[:, None] + torch.arange(box.shape[2], device=img.device)
        cols = rw[:, None] + torch.arange(box.shape[3], device=img.device)
        inside = ((rows >= 0) & (rows < size[0]))[:, :, None] & ((cols >= 0) & (cols < size[1]))[:, None, :]
        if not bool(inside.all()):  # a box hanging over the border: only its part inside the map counts
            change = torch.where(inside[:, None], change, 0.0)
        if weight is None:  # global average pooling
            change = change.sum(dim=(2, 3)) / (size[0] * size[1])
        else:  # flatten + Linear: W[:, box] @ change
            change = self.plan.head.change(change, rh, rw, *weight)
        head = (self.head[img] + change.to(self.head.dtype)).reshape(-1, *self.head_shape)
        return self.plan.tail(head)


def full_step(layer: Spatial | Pointwise | Merge, inputs: list[torch.Tensor]) -> torch.Tensor:
    """One step on whole maps."""
    if isinstance(layer, Spatial):
        return layer.full(inputs[0])
    return layer.fn(*inputs)


#: model -> (its state when planned, its tensors' bit sums, {example shape: LocalPlan, or why it does not decompose}).
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_cache() -> None:
    """Forget every cached plan (``cnnlens.explain.accel.clear_caches`` calls this)."""
    _PLANS.clear()


def local_plan(model: nn.Module, example: torch.Tensor) -> LocalPlan:
    """``model`` as a :class:`LocalPlan` for images shaped like ``example``; raises :class:`NotDecomposable`
    saying which layer stops it and why (call in eval mode, as the methods do inside ``core.guarded``).

    Plans (and refusals) are kept per model and input shape while the model stays the same (the prepared
    copies' rule, :func:`~cnnlens.explain.accel.copies.model_state`): reading the graph costs a trace
    (~0.2 s for the small CNN), once per call of LIME or occlusion otherwise.
    """
    if has_hooks(model):  # the user's hooks must see (and may change) every pass
        raise NotDecomposable("the model carries hooks, which its decomposition would not run")
    key, bits = model_state(model)
    entry = _PLANS.get(model)
    if entry is None or entry[0] != key or not torch.equal(entry[1], bits):
        entry = (key, bits, {})
        _PLANS[model] = entry
    shape = (tuple(example.shape), example.dtype, str(example.device))
    if shape not in entry[2]:
        try:
            entry[2][shape] = LocalPlan.build(model, example)
        except NotDecomposable as why:
            entry[2][shape] = str(why)
    found = entry[2][shape]
    if isinstance(found, str):
        raise NotDecomposable(found)
    return found


@dataclass(frozen=True)
class OcclusionScorer:
    """Occlusion's scores through a :class:`LocalPlan`: what ``occlusion()`` runs where the model decomposes."""

    plan: LocalPlan
    precision: str = "float32"

    def __call__(self, x: torch.Tensor, target: Target, fills: torch.Tensor, starts_h: torch.Tensor,
                 starts_w: torch.Tensor, patch: tuple[int, int], *, output: str, batch_size: int | None,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clean score [N], occluded scores [N,F,nh,nw])`` of ``target`` (resolved here, from the clean
        logits) with the patches of size ``patch`` at ``starts_h`` x ``starts_w`` filled with ``fills``
        ``[N,F,C,1,1]``; ``batch_size``: occluded images per pass (None: :data:`WINDOW_BATCH_SIZE`)."""
        return _incremental_scores(self.plan, x, target, fills, starts_h, starts_w, patch, output=output,
                                   batch_size=batch_size or WINDOW_BATCH_SIZE, progress=progress,
                                   precision=self.precision)


def occlusion_scorer(model: nn.Module, example: torch.Tensor, *, precision: str = "float32",
                     warn: bool = False) -> OcclusionScorer | None:
    """Incremental occlusion's scorer for ``model`` on images shaped like ``example`` (the same scores as
    plain occlusion to ~1e-6), or None where the model is not decomposable (see :class:`LocalPlan`), after a
    warning naming the layer and the reason (``warn=False``: a ``cnnlens.explain`` log line instead).
    ``precision="bfloat16"`` runs the convolutions under bfloat16 autocast (opt-in; see
    :func:`cnnlens.explain.accel.precision_agreement`). Call inside ``core.guarded`` (eval mode).
    """
    check_precision(precision)
    try:
        plan = local_plan(model, example)
    except NotDecomposable as why:
        note = (f"incremental occlusion does not apply to this {type(model).__name__}: {why}; "
                "using plain occlusion on a folded, channels-last copy")
        if warn:
            warnings.warn(note, stacklevel=4)  # occlusion()'s caller: accel.occlusion_scorer -> occlusion -> user
        else:
            log.warning("cnnlens: %s", note)
        return None
    return OcclusionScorer(plan, precision)


def _incremental_scores(plan: LocalPlan, x: torch.Tensor, target: Target, fills: torch.Tensor,
                        starts_h: torch.Tensor, starts_w: torch.Tensor, patch: tuple[int, int], *, output: str,
                        batch_size: int, progress: bool, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean score [N], occluded scores [N,F,nh,nw])``, the clean activations kept for a few images at a
    time (a few MB per 48x48 image for the small CNN)."""
    n = x.shape[0]
    total = n * fills.shape[1] * len(starts_h) * len(starts_w)
    logits, targets, scores = [], [], []
    with contextlib.ExitStack() as stack:
        advance = None
        if progress:
            bar = stack.enter_context(progress_bar())
            task = bar.add_task("occlusion (incremental)", total=total)
            advance = functools.partial(bar.advance, task)
        for s, e in batch_ranges(n, IMAGE_CHUNK):  # each chunk's clean pass once: its logits and its context
            engine = IncrementalOcclusion(plan, x[s:e], precision)
            if target is not None and not targets:  # checked against the class count, for all images, once
                every = core.resolve_target(target, n, engine.logits.shape[1], device=x.device)
            t = engine.logits.argmax(dim=1) if target is None else every[s:e]
            logits.append(engine.logits), targets.append(t)
            scores.append(engine.scores(t, fills[s:e], starts_h, starts_w, patch, output=output,
                                        batch_size=batch_size, advance=advance))
    logits, t, scores = torch.cat(logits), torch.cat(targets), torch.cat(scores)
    return class_score(logits, t, output), scores
