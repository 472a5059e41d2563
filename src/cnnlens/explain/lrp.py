"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019): the target logit distributed
back, layer by layer, in proportion to each input's contribution under a rule chosen per layer.

Relevance is kept as ``R = activation * gradient``: every convolution and linear layer the forward pass
computes (``F.conv2d`` / ``F.linear``, so ``nn.Conv2d``, ``nn.Linear``, reused modules and functional calls
alike) is replaced, for the gradient only, by its rule's term (:mod:`cnnlens.explain.lrp_rules`), and
everything else is differentiated as it is, which is already the LRP rule users expect there: ReLU passes
relevance on, max-pooling gives it to the winner (Zennit's and Captum's default), average pooling, sums
and residual adds ``y = a + b`` split it in proportion to the inputs (``R_a = a / y R_y``, Zennit's
``Norm`` rule without its stabiliser: the residual canoniser), concatenation and reshapes keep it. Other
elementwise activations (ELU, GELU, SiLU, tanh, ...) pass relevance on unchanged (Zennit's ``Pass``). The
BatchNorm canoniser: a BatchNorm (eval mode) reading a layer's output is folded into that layer for its
rule, ``W' = W g / sqrt(v + eps)``, ``b' = (b - m) g / sqrt(v + eps) + beta``, in the pass, with fresh
tensors (``fast``: the speed layer's copy has them folded already); the model is never modified. One that
reads anything else stays the affine map it is, under LRP-0. A ``TorchFunctionMode`` active for the one
call does the replacing; nothing outlives it.

Relevance is taken at the first layer's input, the model's own normalisation applied (where the first-layer
rules, flat and z^B, apply), and goes back to the pixels through what the model computes before it by each
pixel's share of the Jacobian, ``R_x = J^T (R_0 / J 1)``: pixel to pixel for an elementwise normalisation
(differentiating through ``(x - m) / s`` would give the pixels ``x / (x - m)`` times their relevance). Captum
and Zennit leave normalisation outside the model; inside it, Zennit's gradient divides by ``s``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlens._checks import is_number
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.deeplift import ELEMENTWISE
from cnnlens.explain.core import RELU_FUNCTIONS
from cnnlens.explain.guided_backprop import with_backward_rule
from cnnlens.explain.lrp_rules import STABILISER, AlphaBeta, Epsilon, Flat, Gamma, Layer, Rule, ZBox, stabilise
from cnnlens.explain.registry import Paper, method

#: The layers whose rule is chosen: the ways a forward pass computes a convolution or a linear map.
LAYERS = {F.conv2d: "conv", F.linear: "linear"}
#: Elementwise activations other than ReLU (whose gradient already passes relevance on): passed on.
PASSED = ELEMENTWISE - RELU_FUNCTIONS
#: The rules a layer can take by name (``first_rule`` also ``"flat"`` and ``"z-box"``).
LAYER_RULES = ("epsilon", "zero", "gamma", "z-plus", "alpha1-beta0", "alpha2-beta1")
FIRST_RULES = ("flat", "z-box")


@dataclasses.dataclass(frozen=True)
class Composite:
    """Which rule each layer gets: ``conv`` / ``linear`` by type, ``first`` for the first layer the forward
    pass computes where its type is in ``first_types`` (None: its type's rule)."""

    conv: str
    linear: str
    first: str | None = None
    first_types: tuple[str, ...] = ("conv", "linear")


#: Zennit's composites (``zennit.composites``) and one-rule networks, by name.
COMPOSITES = {
    "epsilon-plus-flat": Composite("z-plus", "epsilon", "flat"),
    "epsilon-gamma-box": Composite("gamma", "epsilon", "z-box", ("conv",)),
    "epsilon-plus": Composite("z-plus", "epsilon"),
    "epsilon-alpha2-beta1": Composite("alpha2-beta1", "epsilon"),
    "epsilon-alpha2-beta1-flat": Composite("alpha2-beta1", "epsilon", "flat"),
    **{name: Composite(name, name) for name in LAYER_RULES},
}


def make_rule(name: str, *, epsilon: float, gamma: float, low: torch.Tensor | None = None,
              high: torch.Tensor | None = None) -> Rule:
    """The rule called ``name`` (:data:`LAYER_RULES`, :data:`FIRST_RULES`) with its parameters."""
    if name == "epsilon":
        return Epsilon(epsilon)
    if name == "zero":
        return Epsilon(0.0)
    if name == "gamma":
        return Gamma(gamma)
    if name in ("z-plus", "alpha1-beta0"):
        return AlphaBeta(1.0, 0.0)
    if name == "alpha2-beta1":
        return AlphaBeta(2.0, 1.0)
    if name == "flat":
        return Flat()
    if name == "z-box" and low is not None and high is not None:
        return ZBox(low, high)
    raise ValueError(f"unknown LRP rule {name!r}")


class _FirstInput(Exception):
    """Raised at the first layer of a probing pass, carrying its input."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a


class _Probe(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        if func in LAYERS and args and isinstance(args[0], torch.Tensor):
            raise _FirstInput(args[0].detach())
        return func(*args, **(kwargs or {}))


def input_bounds(net: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` ``[1,...]``: the first layer's input for a black and a white image (cnnlens's images
    are in [0,1]), i.e. the input's bounds after the model's own normalisation."""
    probe = torch.cat([torch.zeros_like(images[:1]), torch.ones_like(images[:1])])
    try:
        with torch.no_grad(), _Probe():
            net(probe)
    except _FirstInput as found:
        return torch.minimum(found.a[:1], found.a[1:]), torch.maximum(found.a[:1], found.a[1:])
    raise no_layers(net)


def check_ruled(net: nn.Module, seen: set[int]) -> None:
    """Raise naming the first module whose weight (a parameter of 2 or more dimensions) no ruled layer read:
    its relevance would be the plain gradient's, not its rule's (a Keras layer computing with its own ops, a
    transposed convolution, an embedding)."""
    for name, module in net.named_modules():
        if any(p.dim() >= 2 and id(p) not in seen for p in module.parameters(recurse=False)):
            raise ValueError(f"LRP gives its rules to the layers computed by F.conv2d / F.linear (nn.Conv2d, "
                             f"nn.Linear), and layer {name!r} ({type(module).__name__}) uses its weight another "
                             "way, where LRP would silently fall back to the gradient; use integrated gradients "
                             "or DeepLIFT for this model")


def no_layers(model: nn.Module) -> ValueError:
    """The error for a model in which LRP finds no layer to give a rule."""
    scripted = any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())
    where = ("this TorchScript archive computes them inside its compiled graph, out of reach" if scripted
             else f"this {type(model).__name__} computes none (no nn.Conv2d, nn.Linear, F.conv2d or F.linear)")
    return ValueError(f"LRP propagates relevance through convolution and linear layers, and {where}; "
                      "use integrated gradients or DeepLIFT instead")


def _passed(before: torch.Tensor, out: torch.Tensor):  # noqa: ANN202 (a BackwardRule)
    ratio = out / stabilise(before, STABILISER)  # R_in = before * ratio * g = R_out
    return lambda grad: grad * ratio


class _Relevance(TorchFunctionMode):
    """Every convolution and linear layer computed while active, by its rule; ``count`` says how many."""

    def __init__(self, images: torch.Tensor, composite: Composite, rules: dict[str, Rule],
                 first: Rule | None) -> None:
        super().__init__()
        self.images, self.composite, self.rules, self.first = images, composite, rules, first
        self.count = 0
        self.first_input: torch.Tensor | None = None  # the first layer's input, where it is not the images
        self.first_leaf: torch.Tensor | None = None
        self.leaves: list[torch.Tensor] = []
        self.last: tuple | None = None  # the last layer's output and how to compute its rule again
        self.weights: set[int] = set()  # the weights the ruled layers read (ids)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        kwargs = kwargs or {}
        a = args[0] if args else None
        if not isinstance(a, torch.Tensor) or not a.requires_grad or "out" in kwargs:
            return func(*args, **kwargs)
        if func in PASSED:
            return with_backward_rule(lambda t: func(t, *args[1:], **kwargs), a, _passed, keep_input=True)
        if func is F.batch_norm and self.last is not None and a is self.last[0]:
            return self._folded(args, kwargs)
        if func not in LAYERS or len(args) < 2:
            return func(*args, **kwargs)
        kind = LAYERS[func]
        rest = dict(kwargs)
        bias = args[2] if len(args) > 2 else rest.pop("bias", None)
        extra = args[3:]

        def layer(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            return func(x, w, b, *extra, **rest)

        rule = self.rules[kind]
        if self.count == 0:  # relevance is taken at the first layer's input, after the model's normalisation
            if kind in self.composite.first_types and self.first is not None:
                rule = self.first
            if a is not self.images:
                self.first_input, a = a, a.detach().requires_grad_(True)
            self.first_leaf = a
        self.count += 1
        self.weights.add(id(args[1]))
        plain = layer(a, args[1], bias)
        out = self._ruled(layer, rule, a, args[1], bias, plain, plain)
        self.last = (out, layer, rule, a, args[1], bias)
        return out

    def _ruled(self, layer: Layer, rule: Rule, a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
               plain: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``value`` forward, the rule's gradient backward (``plain = layer(a, w, bias)``, differentiable)."""
        term = rule.term(layer, a, w, bias, plain, self.leaves)
        return value.detach() + (term - term.detach())

    def _folded(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The BatchNorm canoniser: a BatchNorm in eval mode reading the last layer's output is that layer with
        ``W' = W g / sqrt(v + eps)``, ``b' = (b - m) g / sqrt(v + eps) + beta``, under the layer's rule."""
        bound = dict(zip(("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
                         args))
        bound.update(kwargs)
        value = F.batch_norm(*args, **kwargs)
        mean, var = bound.get("running_mean"), bound.get("running_var")
        if bound.get("training", False) or mean is None or var is None:  # batch statistics: not a fixed map
            return value
        _, layer, rule, a, w, b = self.last
        scale = torch.rsqrt(var + bound.get("eps", 1e-5))
        if bound.get("weight") is not None:
            scale = scale * bound["weight"]
        shift = -mean * scale + (bound["bias"] if bound.get("bias") is not None else 0)
        folded_w = w * scale.view(-1, *[1] * (w.dim() - 1))
        folded_b = shift if b is None else b * scale + shift
        self.last = None
        return self._ruled(layer, rule, a, folded_w, folded_b, layer(a, folded_w, folded_b), value)


def _pass_back(a0: torch.Tensor, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``J^T (R / J 1)`` for ``a0 = f(x)``: relevance at ``a0`` back to ``x`` by each input's share of the
    Jacobian ``J`` (exactly pixel to pixel where ``f`` is elementwise)."""
    if not a0.requires_grad:
        raise ValueError("LRP: the first layer's input does not depend on the images")
    probe = torch.zeros_like(a0, requires_grad=True)
    (vjp,) = torch.autograd.grad(a0, x, probe, create_graph=True, retain_graph=True)
    (j1,) = torch.autograd.grad(vjp, probe, torch.ones_like(vjp), allow_unused=True)
    if j1 is None:
        raise ValueError("LRP: the first layer's input does not depend on the images")
    shares = torch.where(j1 == 0, 0, relevance / torch.where(j1 == 0, 1, j1))
    (back,) = torch.autograd.grad(a0, x, shares, retain_graph=True)
    return back


def lrp_relevance(net: nn.Module, images: torch.Tensor, target: Target, composite: Composite, *,
                  epsilon: float, gamma: float, low: float | torch.Tensor | None,
                  high: float | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Raw relevance ``[N,C,H,W]`` on ``net`` (already canonised and guarded), the resolved targets and how
    many layers took a rule."""
    rules = {"conv": make_rule(composite.conv, epsilon=epsilon, gamma=gamma),
             "linear": make_rule(composite.linear, epsilon=epsilon, gamma=gamma)}
    first = None
    if composite.first == "z-box":
        if low is None or high is None:
            found = input_bounds(net, images)
            low = found[0] if low is None else low
            high = found[1] if high is None else high
        first = ZBox(torch.as_tensor(low, dtype=images.dtype), torch.as_tensor(high, dtype=images.dtype))
    elif composite.first is not None:
        first = make_rule(composite.first, epsilon=epsilon, gamma=gamma)
    x = core.input_with_grad(images)
    with _Relevance(x, composite, rules, first) as mode:
        logits = net(x)
    if mode.count:
        check_ruled(net, mode.weights)
    n = images.shape[0]
    t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits.detach(), device=images.device)
    score = core.target_scores(logits, t).sum()
    firsts = [] if mode.first_leaf is None or mode.first_leaf is x else [mode.first_leaf]
    leaves = [x, *firsts, *mode.leaves]
    grads = torch.autograd.grad(score, leaves, allow_unused=True, retain_graph=mode.first_input is not None)
    total = x.detach() * grads[0] if grads[0] is not None else torch.zeros_like(x)
    first_parts = [leaf.detach() * g for leaf, g in zip(leaves[1:], grads[1:]) if g is not None]
    if first_parts:
        first_relevance = sum(first_parts[1:], first_parts[0])
        total = total + (first_relevance if mode.first_input is None
                         else _pass_back(mode.first_input, x, first_relevance))
    return total.detach(), t, mode.count


def check_composite(composite: str, first_rule: str | None) -> Composite:
    if composite not in COMPOSITES:
        raise ValueError(f"composite must be one of {', '.join(map(repr, COMPOSITES))}, got {composite!r}")
    chosen = COMPOSITES[composite]
    if first_rule is None:
        return chosen
    if first_rule not in LAYER_RULES + FIRST_RULES:
        raise ValueError(f"first_rule must be None or one of {', '.join(map(repr, LAYER_RULES + FIRST_RULES))}, "
                         f"got {first_rule!r}")
    return dataclasses.replace(chosen, first=first_rule, first_types=("conv", "linear"))


@method("lrp", "LRP", kind="gradient",
        paper=Paper("Bach et al.", 2015, "On pixel-wise explanations for non-linear classifier decisions by "
                    "layer-wise relevance propagation"))
def lrp(model: nn.Module, images: torch.Tensor, target: Target = None, *, composite: str = "epsilon-plus-flat",
        epsilon: float = 1e-6, gamma: float = 0.25, first_rule: str | None = None,
        low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None,
        reduce: Reduce = "sum", fast: bool = True) -> torch.Tensor:
    """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019): ``R_j = sum_k
    a_j w_jk / z_k R_k`` from ``R = logit_t`` at the output down to the pixels, ``w`` and ``z`` by each
    layer's rule.

    ``composite``: Zennit's ``"epsilon-plus-flat"`` (default; flat first layer, z-plus convolutions,
    epsilon linear layers), ``"epsilon-gamma-box"`` (z^B first convolution, gamma convolutions, epsilon
    linear layers), ``"epsilon-plus"``, ``"epsilon-alpha2-beta1"``, ``"epsilon-alpha2-beta1-flat"``, or one
    rule for every layer: ``"epsilon"``, ``"zero"`` (LRP-0), ``"gamma"``, ``"z-plus"`` (= ``"alpha1-beta0"``),
    ``"alpha2-beta1"``. ``first_rule`` replaces the first layer's (``"flat"``, ``"z-box"`` or a layer rule).
    ``epsilon``, ``gamma``: the rules' parameters (Zennit's defaults). ``low`` / ``high``: z^B's bounds of
    the first layer's input (None: what the model makes of a black and a white image, i.e. [0,1] after its
    own normalisation). Returns ``[N,H,W]`` summed over channels (signed; for bias-free ReLU networks under
    LRP-0 / epsilon -> 0 the pixels sum to the logit), raw ``[N,C,H,W]`` with ``reduce=None``. BatchNorm is
    folded into the layer before it, residual adds split in proportion (the canonisers, in the pass).
    Zennit's attribution with ``attr_output`` one-hot is this divided by the logit; Captum's ``LRP`` takes per-module rules and no
    functional ReLU, residual add or reused module. ``fast``: the speed layer's checked copy.

    >>> maps = lrp(model, images, target=3, composite="epsilon-gamma-box")
    """
    core.check_images(images)
    chosen = check_composite(composite, first_rule)
    for name, value in (("epsilon", epsilon), ("gamma", gamma)):
        if not is_number(value) or not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    x = images.detach()
    with core.guarded(model, images):
        net = accel.prepared(model, example=x) if fast else model
        relevance, _, count = lrp_relevance(net, x, target, chosen, epsilon=float(epsilon), gamma=float(gamma),
                                            low=low, high=high)
    if count == 0:
        raise no_layers(model)
    return core.reduce_channels(relevance, reduce)
