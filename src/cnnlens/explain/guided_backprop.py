"""Guided backpropagation (Springenberg et al. 2015): the input gradient with every ReLU's backward
pass also clamping negative incoming gradients.

At a ReLU ``f_out = max(f_in, 0)``: ``R_in = (f_in > 0) * (R_out > 0) * R_out`` instead of
``(f_in > 0) * R_out``. Every ReLU the forward pass runs is guided, however the model calls it:
``nn.ReLU`` modules (also one module reused in several places, as torchvision's ResNet does),
``F.relu``, ``torch.relu`` and ``Tensor.relu``, in place or not. A ``torch.overrides.TorchFunctionMode``
active for the one call passes each ReLU's output through an identity whose backward clamps at 0; the
model is not modified and nothing outlives the call. The same machinery with another backward rule gives
the deconvnet (``rule="deconvnet"``, :mod:`cnnlens.explain.deconvnet`), and :func:`with_backward_rule`
(an op run with a backward of one's own, in place or not) serves DeepLIFT's rescale rule too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import RELU_FUNCTIONS
from cnnlens.explain.saliency import saliency
from cnnlens.explain.registry import Paper, method


class _ClampGradient(torch.autograd.Function):
    """Identity forward; backward lets only the positive part of the gradient through."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        # A fresh tensor, not a view: a later in-place op on a custom Function's view is an autograd error.
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


#: A backward rule: given the op's input (a copy taken before the op, or the input itself) and its output,
#: the function that maps the gradient of the output to the gradient of the input.
BackwardRule = Callable[[torch.Tensor, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


class _WithRule(torch.autograd.Function):
    """``op(x)`` forward (in place or not); backward by the rule instead of ``op``'s own derivative."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor],
                rule: BackwardRule, keep_input: bool) -> torch.Tensor:
        before = x.clone() if keep_input else x  # an in-place op overwrites x
        out = op(x)
        if out is x:  # in place: autograd routes the gradient to x as it was before the op
            ctx.mark_dirty(x)
        # the rule keeps what it needs (fresh tensors), so a later in-place change of `out` cannot reach it
        ctx.grad_input = rule(before, out)  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return ctx.grad_input(grad), None, None, None  # type: ignore[attr-defined]


def with_backward_rule(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rule: BackwardRule, *,
                       keep_input: bool = False) -> torch.Tensor:
    """``op(x)``, differentiated by ``rule`` instead of ``op``'s own derivative; ``op`` may work in place
    (``F.relu_``: ``x`` is then changed and returned, as ``op`` alone would). ``keep_input``: the rule is
    handed a copy of ``x`` taken before the op (else ``x`` itself, overwritten if ``op`` works in place)."""
    return _WithRule.apply(x, op, rule, keep_input)


def _rectified(before: torch.Tensor, out: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The deconvnet's ReLU backward: ``R_in = max(R_out, 0)``, whatever the forward input was."""
    return lambda grad: grad.clamp(min=0)


#: The ReLU backward rules: guided backprop's ``(f_in > 0) * (R_out > 0) * R_out`` and the deconvnet's
#: ``(R_out > 0) * R_out`` (Zeiler & Fergus 2014).
RULES = ("guided", "deconvnet")


class _GuideReLUs(TorchFunctionMode):
    """Apply ``rule`` to every ReLU computed while active; ``count`` says how many ran."""

    def __init__(self, rule: str = "guided") -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(map(repr, RULES))}, got {rule!r}")
        self.rule, self.count = rule, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        kwargs = kwargs or {}
        if func not in RELU_FUNCTIONS or not args or not isinstance(args[0], torch.Tensor) or not args[0].requires_grad:
            return func(*args, **kwargs)
        self.count += 1
        if self.rule == "deconvnet":  # the ReLU's own (f_in > 0) is skipped
            return with_backward_rule(lambda t: func(t, *args[1:], **kwargs), args[0], _rectified)
        # ReLU's own backward then applies (f_in > 0): together the guided backprop rule.
        return _ClampGradient.apply(func(*args, **kwargs))


@contextlib.contextmanager
def guiding_relus(rule: str = "guided") -> Iterator[_GuideReLUs]:
    """Apply ``rule`` (:data:`RULES`) to every ReLU of the forward passes run in this block (for one call:
    the mode ends with it)."""
    with _GuideReLUs(rule) as mode:
        yield mode


def relu_rule_gradient(model: nn.Module, images: torch.Tensor, target: Target, *, rule: str,
                       fast: bool) -> torch.Tensor:
    """Raw ``[N,C,H,W]`` input gradient with every ReLU's backward replaced by ``rule`` (:data:`RULES`);
    ValueError when the model computes no ReLU."""
    core.check_images(images)
    with core.guarded(model, images):
        net = accel.prepared(model, example=images) if fast else model
        with guiding_relus(rule) as guide:
            grad = saliency(net, images, target, reduce=None, abs=False, fast=False)
    if guide.count == 0:
        what = "guided backprop guides" if rule == "guided" else "the deconvnet rectifies the gradients of"
        raise ValueError(f"{what} ReLUs, and this {type(model).__name__} computes none "
                         "(no nn.ReLU, F.relu or torch.relu in its forward pass); use saliency or "
                         "integrated gradients instead")
    return grad


@method("guided-backprop", "Guided backprop", kind="gradient", in_report=2, class_average=True,
        paper=Paper("Springenberg et al.", 2015, "Striving for simplicity: the all convolutional net"))
def guided_backprop(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                    reduce: Reduce = "max_abs", fast: bool = True) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015) through every ReLU ``model`` computes.

    ``[N,H,W]`` after ``reduce`` (default ``max_c |.|``), raw signed ``[N,C,H,W]`` with ``reduce=None``
    (Captum's ``GuidedBackprop``, which guides ``nn.ReLU`` modules only; here ``F.relu`` / ``torch.relu``
    and reused modules are guided too). Other activations (LeakyReLU, ELU, GELU, SiLU, tanh) are
    differentiated as they are, as in Captum. Raises ValueError when the model computes no ReLU.
    ``fast``: as in :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = guided_backprop(model, images, target=[0, 3])
    """
    return core.reduce_channels(relu_rule_gradient(model, images, target, rule="guided", fast=fast), reduce)
