"""A model's ``torch.fx`` graph, with the shape of every tensor it computes on an example batch.

Incremental occlusion and LIME's pattern tables read the model as layers (``nn.Conv2d``, pooling,
pointwise functions, a flatten, ``nn.Linear``), so they need a graph at the level of the modules and
functions the user wrote, plus the shapes that tell a flatten (``[N,C,h,w] -> [N,C*h*w]``) from any
other reshape. How the graph is captured, in order:

1. ``torch.fx.symbolic_trace``: the graph holds no shapes, so it is valid for every batch size; shape
   queries (``x.size(0)``, ``x.shape[0]``) and the arithmetic on them are nodes of the graph. The graph
   is then run once on the example (:class:`torch.fx.Interpreter`) to record each node's shape.
2. Where symbolic tracing fails because the forward uses a shape as a Python number (``int(x.size(0))``,
   ``math.prod(x.shape[1:])``, ``x.view(*x.shape[:2], -1)``, ``if x.dim() == 4``), :class:`ExampleTracer`
   traces again while running the example alongside: ``size()``, ``shape``, ``dim()``, ``ndim``,
   ``numel()`` and ``len()`` answer with the example's values. Such a graph is specialised to the
   example's shapes (batch size included), so whoever builds on it must check the result on a batch of
   another size (:meth:`cnnlens.explain.accel.incremental.LocalPlan.build` does).

Why not the alternatives, on torch 2.13 (CPU): ``torch.export`` traces through dynamo to ATen operators
(``aten.conv2d``, parameters turned into inputs), losing the module types that BatchNorm folding and
the layer vocabulary read; its first call in a process took 1.4 s here, and without dynamic-shape
annotations it specialises the batch size as well. ``make_fx`` is ATen-level too. ``concrete_args``
only fixes the values of the forward's own arguments, so it cannot answer ``x.size(0)`` of an inner map.
Data-dependent control flow (``if x.sum() > 0``) still fails in both tracers, as it must.

>>> graph = capture(model, images[:2])   # graph.module: a GraphModule; graph.shapes[node]: torch.Size
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

#: Values a node may compute and still count as shape arithmetic (not a feature map).
_PLAIN = (int, float, bool, str, type(None), torch.Size, torch.dtype, torch.device)
#: Methods and attributes that query a tensor's shape, type or device (never its values).
SHAPE_METHODS = {"size", "dim", "numel", "nelement"}
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


@dataclass(frozen=True)
class Captured:
    """``module``: the traced GraphModule (sharing the model's submodules); ``shapes``: the example's shape
    of every node computing a tensor; ``constants``: the nodes that only compute with shapes (``x.size(0)``,
    products of sizes), with their values on the example; ``specialised``: the graph holds the example's
    shapes as constants."""

    module: fx.GraphModule
    shapes: dict[fx.Node, torch.Size]
    constants: dict[fx.Node, object]
    specialised: bool


def _plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


class _Recorder(fx.Interpreter):
    """Runs a GraphModule and keeps each node's value (shapes only for tensors)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


class ExampleProxy(fx.Proxy):
    """A proxy that answers shape questions with the example's values: plain ints and ``torch.Size``."""

    def _example(self) -> Any:
        return self.tracer.values[self.node]  # type: ignore[attr-defined]

    def size(self, dim: int | None = None) -> Any:
        value = self._example()
        return value.size() if dim is None else value.size(dim)

    def dim(self) -> int:
        return self._example().dim()

    def numel(self) -> int:
        return self._example().numel()

    @property
    def shape(self) -> torch.Size:
        return self._example().shape

    @property
    def ndim(self) -> int:
        return self._example().dim()

    def __len__(self) -> int:
        return len(self._example())


class ExampleTracer(fx.Tracer):
    """fx tracing that runs ``example`` through every node as it is recorded, so that shapes are numbers."""

    def __init__(self, example: torch.Tensor) -> None:
        super().__init__()
        self.example = example
        self.values: dict[fx.Node, object] = {}
        self._running = False

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ExampleProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Callable | None = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self.values[proxy.node] = self._run(proxy.node)
        return proxy

    def _run(self, node: fx.Node) -> object:
        if node.op == "placeholder":
            return self.example
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: self.values[n])
        self._running = True  # the module's own attributes and submodules, not proxies of them
        try:
            if node.op == "get_attr":
                return operator.attrgetter(node.target)(self.root)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            if node.op == "call_module":
                return self.root.get_submodule(node.target).forward(*args, **kwargs)
            return None
        finally:
            self._running = False

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        return attr_val if self._running else super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        return forward(*args, **kwargs) if self._running else super().call_module(m, forward, args, kwargs)


def _shape_nodes(graph: fx.Graph, values: dict[fx.Node, object]) -> dict[fx.Node, object]:
    """Nodes computing only from shapes (a shape query of a tensor, or plain arithmetic on such nodes),
    with their values."""
    found: dict[fx.Node, object] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "output") or not _plain(values.get(node)):
            continue
        query = ((node.op == "call_method" and node.target in SHAPE_METHODS)
                 or (node.op == "call_function" and node.target is getattr and node.args[1] in SHAPE_ATTRIBUTES))
        inputs = node.all_input_nodes
        if query or (inputs and all(n in found for n in inputs)):
            found[node] = values[node]
    return found


def capture(model: nn.Module, example: torch.Tensor) -> Captured:
    """``model``'s graph and its shapes on ``example`` (see the module docstring). Call in eval mode, under
    ``torch.no_grad``; raises what tracing raised where neither tracer can read the forward."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as symbolic:  # fx raises many kinds (TraceError, TypeError...): try with the example's shapes
        tracer = ExampleTracer(example)
        try:
            graph = tracer.trace(model)
        except Exception as concrete:
            raise concrete from symbolic
        gm = fx.GraphModule(tracer.root, graph)
        values, specialised = tracer.values, True
    else:
        recorder = _Recorder(gm)
        recorder.run(example)
        values, specialised = recorder.values, False
    shapes = {n: v.shape for n, v in values.items() if isinstance(v, torch.Tensor)}
    return Captured(gm, shapes, _shape_nodes(gm.graph, values), specialised)
