"""Deconvnet (Zeiler & Fergus 2014): the input gradient with every ReLU's backward pass rectifying the
incoming gradient instead of masking it by the forward input.

At a ReLU ``f_out = max(f_in, 0)``: ``R_in = (R_out > 0) * R_out`` (guided backprop also keeps
``(f_in > 0)``; the plain gradient keeps only that). The same ReLU machinery as guided backprop
(:func:`~cnnlens.explain.guided_backprop.guiding_relus`): every ReLU the forward pass computes, however
the model calls it, in place or not.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Reduce, Target
from cnnlens.explain import core
from cnnlens.explain.guided_backprop import relu_rule_gradient
from cnnlens.explain.registry import Paper, method


@method("deconvnet", "Deconvnet", kind="gradient",
        paper=Paper("Zeiler & Fergus", 2014, "Visualizing and understanding convolutional networks"))
def deconvnet(model: nn.Module, images: torch.Tensor, target: Target = None, *,
              reduce: Reduce = "max_abs", fast: bool = True) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): backpropagation with ``R_in = max(R_out, 0)`` at every ReLU.

    ``[N,H,W]`` after ``reduce`` (default ``max_c |.|``), raw signed ``[N,C,H,W]`` with ``reduce=None``:
    Captum's ``Deconvolution`` (which rectifies ``nn.ReLU`` modules only; here ``F.relu`` / ``torch.relu``
    and reused modules too). Max-pooling routes the gradient to the forward argmax ("switches"), as in the
    paper. Raises ValueError when the model computes no ReLU. ``fast``: as in
    :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = deconvnet(model, images, target=[0, 3])
    """
    return core.reduce_channels(relu_rule_gradient(model, images, target, rule="deconvnet", fast=fast), reduce)
