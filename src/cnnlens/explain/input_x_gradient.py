"""Input x gradient (Shrikumar et al. 2016): the input times its gradient, summed over channels."""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Reduce, Target
from cnnlens.explain import core
from cnnlens.explain.registry import Paper, method
from cnnlens.explain.saliency import saliency


@method("input-x-gradient", "Input x gradient", kind="gradient",
        paper=Paper("Shrikumar et al.", 2016, "Not just a black box: learning important features through "
                    "propagating activation differences"))
def input_x_gradient(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                     reduce: Reduce = "sum", fast: bool = True) -> torch.Tensor:
    """Input times gradient (Shrikumar et al. 2016): ``sum_c x * d logit_t / dx``, signed, ``[N,H,W]``.

    Raw ``[N,C,H,W]`` with ``reduce=None``: Captum's ``InputXGradient``.

    >>> maps = input_x_gradient(model, images, target=3)
    """
    grads = saliency(model, images, target, reduce=None, abs=False, fast=fast)
    return core.reduce_channels(images.detach() * grads, reduce)
