"""Guided backpropagation (Springenberg et al. 2015): the input gradient with every ReLU's backward
pass also clamping negative incoming gradients.

At a ReLU ``f_out = max(f_in, 0)``: ``R_in = (f_in > 0) * (R_out > 0) * R_out`` instead of
``(f_in > 0) * R_out``. Every ReLU the forward pass runs is guided, however the model calls it:
``nn.ReLU`` modules (also one module reused in several places, as torchvision's ResNet does),
``F.relu``, ``torch.relu`` and ``Tensor.relu``, in place or not. A ``torch.overrides.TorchFunctionMode``
active for the one call passes each ReLU's output through an identity whose backward clamps at 0; the
model is not modified and nothing outlives the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.saliency import saliency
from cnnlens.explain.registry import method


class _ClampGradient(torch.autograd.Function):
    """Identity forward; backward lets only the positive part of the gradient through."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        # A fresh tensor, not a view: a later in-place op on a custom Function's view is an autograd error.
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


#: The ways a forward pass computes a ReLU (nn.ReLU calls F.relu).
RELU_FUNCTIONS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})


class _GuideReLUs(TorchFunctionMode):
    """Guide every ReLU computed while active; ``count`` says how many ran."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        out = func(*args, **(kwargs or {}))
        if func in RELU_FUNCTIONS and isinstance(out, torch.Tensor) and out.requires_grad:
            self.count += 1
            # ReLU's own backward then applies (f_in > 0): together the guided backprop rule.
            return _ClampGradient.apply(out)
        return out


@contextlib.contextmanager
def guiding_relus() -> Iterator[_GuideReLUs]:
    """Guide every ReLU of the forward passes run in this block (for one call: the mode ends with it)."""
    with _GuideReLUs() as mode:
        yield mode


@method("guided-backprop", "Guided backprop", kind="gradient", in_report=2, class_average=True)
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
    core.check_images(images)
    with core.guarded(model, images):
        net = accel.prepared(model, example=images) if fast else model
        with guiding_relus() as guide:
            grad = saliency(net, images, target, reduce=None, abs=False, fast=False)
    if guide.count == 0:
        raise ValueError(f"guided backprop guides ReLUs, and this {type(model).__name__} computes none "
                         "(no nn.ReLU, F.relu or torch.relu in its forward pass); use saliency or "
                         "integrated gradients instead")
    return core.reduce_channels(grad, reduce)
