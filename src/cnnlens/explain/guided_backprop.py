"""Guided backpropagation (Springenberg et al. 2015): the input gradient with every ReLU's backward
pass also clamping negative incoming gradients.

At a ReLU ``f_out = max(f_in, 0)``: ``R_in = (f_in > 0) * (R_out > 0) * R_out`` instead of
``(f_in > 0) * R_out``. Implemented with forward hooks on the ``nn.ReLU`` modules that pass the output
through an identity whose backward clamps at 0, so in-place ReLUs work too (a
``register_full_backward_hook`` breaks on them) and the hooks live for one call only.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Reduce, Target
from cnnlens.explain import _base, _fast
from cnnlens.explain.saliency import saliency


class _ClampGradient(torch.autograd.Function):
    """Identity forward; backward lets only the positive part of the gradient through."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        # A fresh tensor, not a view: a later in-place op on a custom Function's view is an autograd error.
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _guide(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    # ReLU's own backward then applies (f_in > 0): together the guided backprop rule.
    return _ClampGradient.apply(output)


def relu_modules(model: nn.Module) -> list[nn.Module]:
    """The ``nn.ReLU`` modules guided backprop modifies; a clear error when there are none."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("guided backprop needs nn.ReLU modules to guide, and this model has none "
                         "(F.relu / torch.relu calls cannot be hooked); use nn.ReLU modules, or saliency instead")
    return relus


def guided_backprop(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                    reduce: Reduce = "max_abs", fast: bool = True) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015) through every ``nn.ReLU`` module of ``model``.

    ``[N,H,W]`` after ``reduce`` (default ``max_c |.|``), raw signed ``[N,C,H,W]`` with ``reduce=None``
    (Captum's ``GuidedBackprop``). Raises ValueError when the model has no ``nn.ReLU`` module. ``fast``:
    as in :func:`~cnnlens.explain.saliency.saliency` (the hooks then sit on the cached copy's ReLUs).

    >>> maps = guided_backprop(model, images, target=[0, 3])
    """
    _base.check_images(images)
    relu_modules(model)
    with _base.guarded(model, images), _base.hooks() as handles:
        net = _fast.prepared(model) if fast else model
        handles.extend(m.register_forward_hook(_guide) for m in relu_modules(net))
        grad = saliency(net, images, target, reduce=None, abs=False, fast=False)
    return _base.reduce_channels(grad, reduce)
