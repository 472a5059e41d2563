"""FullGrad (Srinivas & Fleuret 2019): the input-gradient and every layer's bias-gradient, each made a map.

For a network of ReLUs, linear layers, BatchNorm (an affine map in eval mode) and pooling, the logit is exactly
``f(x) = sum grad_x f * x + sum_layers sum grad_b f * b``: the input part plus one bias part per layer with a bias
(a convolution's bias, a BatchNorm's ``beta - gamma mean / sqrt(var + eps)``, a linear layer's bias), where
``grad_b f * b`` at a layer is the gradient with respect to its output times its bias, position by position.
The map: ``psi(|grad_x f * x|) + sum_{conv, BatchNorm} psi(|grad_z f * b|)``, summed over channels, with ``psi``
scaling each part of each image to [0,1] and upsampling it bilinearly to the input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.registry import Paper, method


class FullGradients(NamedTuple):
    """FullGrad's decomposition of the target logits: ``input`` = ``grad_x f * x`` ``[N,C,H,W]``, and ``biases``:
    one ``grad_z f * b`` per call of a layer with a bias, in the order they ran (``[N,K,h,w]`` for convolutions
    and BatchNorm, ``[N,K]`` for linear layers); ``target`` ``[N]``. For ReLU networks
    ``input.sum() + sum(b.sum())`` per image is the target's logit."""

    input: torch.Tensor
    biases: list[torch.Tensor]
    target: torch.Tensor


def _bias(module: nn.Module) -> torch.Tensor | None:
    """The bias ``module`` adds to its output, per channel: a BatchNorm's implicit one in eval mode,
    ``beta - gamma * mean / sqrt(var + eps)``; else a 1-D ``bias`` of its own (a convolution's, a linear
    layer's, a separable convolution's from another framework); None for other modules."""
    if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
        scale = torch.rsqrt(module.running_var + module.eps)
        gamma = module.weight.detach() if module.affine else torch.ones_like(scale)
        beta = module.bias.detach() if module.affine else torch.zeros_like(scale)
        return beta - gamma * module.running_mean * scale
    bias = getattr(module, "bias", None)
    return bias.detach() if isinstance(bias, torch.Tensor) and bias.dim() == 1 else None


def full_gradients(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                   fast: bool = True) -> FullGradients:
    """FullGrad's parts (:class:`FullGradients`) in one forward and one backward pass. ``fast``: the checked
    prepared copy (channels-last) with every layer that has a bias kept unfolded (folding BatchNorm into a
    convolution would merge two bias parts into one); ``fast=False``: the model itself."""
    core.check_images(images)
    with core.guarded(model, images):
        names = [name for name, m in model.named_modules() if name and _bias(m) is not None]
        for name, m in model.named_modules():
            core.check_hookable(m, name)  # every layer with a bias is hooked
        net = accel.prepared(model, keep=names, example=images) if fast else model
        outputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (the output of one call, the bias it added)

        def keep(module: nn.Module, inputs: tuple[object, ...], output: object) -> object:
            bias = _bias(module)
            if not isinstance(output, torch.Tensor) or output.dim() < 2 or output.shape[1] != bias.numel():
                return None  # not a bias added to each channel of the output
            outputs.append((output, bias))
            return output.clone()  # an in-place op after the layer (ReLU) changes the clone, not what is differentiated

        with core.hooks() as handles:
            handles.extend(m.register_forward_hook(keep) for m in net.modules() if _bias(m) is not None)
            x = core.input_with_grad(images)
            logits = net(x)
        t = core.resolve_target(target, x.shape[0], logits.shape[1], logits=logits.detach, device=x.device)
        grads = torch.autograd.grad(core.target_scores(logits, t).sum(), [x, *(out for out, _ in outputs)],
                                    allow_unused=True)
    parts = []
    for (out, bias), grad in zip(outputs, grads[1:]):
        shape = (1, -1) + (1,) * (out.dim() - 2)
        parts.append(torch.zeros_like(out.detach()) if grad is None else grad * bias.to(grad.dtype).reshape(shape))
    return FullGradients(grads[0] * images.detach(), parts, t)


def _scaled(part: torch.Tensor) -> torch.Tensor:
    """``|part|`` scaled to [0,1] over each image's channels and positions (0 where it is constant)."""
    a = part.abs()
    low = a.flatten(1).amin(dim=1).reshape(-1, *[1] * (a.dim() - 1))
    span = a.flatten(1).amax(dim=1).reshape(-1, *[1] * (a.dim() - 1)) - low
    return torch.where(span > 0, (a - low) / torch.where(span > 0, span, 1), 0)


@method("full-grad", "FullGrad", kind="gradient", style="relative",
        paper=Paper("Srinivas & Fleuret", 2019, "Full-gradient representation for neural network visualization"))
def full_grad(model: nn.Module, images: torch.Tensor, target: Target = None, *, fast: bool = True) -> torch.Tensor:
    """FullGrad (Srinivas & Fleuret 2019): ``psi(|grad_x f * x|) + sum_l psi(|grad_{z_l} f * b_l|)``, summed over
    channels, ``[N,H,W]``; ``psi`` scales each part of each image to [0,1], then upsamples it bilinearly.

    The layers ``l`` are the convolutions with a bias and the BatchNorm layers (their implicit bias in eval
    mode); linear layers' bias parts are scalars per unit and, as in the paper's code, not drawn.
    :func:`full_gradients` gives the parts themselves, which for a ReLU network sum to the logit. The
    reference code (idiap/fullgrad-saliency) and pytorch-grad-cam's ``FullGrad`` do the same, dividing by
    ``max + 1e-6`` (here: exactly, a constant part giving 0) and upsampling with ``align_corners=True`` (as
    here). ``fast``: as in :func:`full_gradients` (so not streamable: the stream's copy folds BatchNorm).

    >>> maps = full_grad(model, images, target=3)
    """
    parts = full_gradients(model, images, target, fast=fast)
    size = tuple(images.shape[2:])
    total = _scaled(parts.input).sum(dim=1)
    for part in parts.biases:
        if part.dim() == 4:
            maps = _scaled(part).sum(dim=1, keepdim=True)
            total = total + F.interpolate(maps, size=size, mode="bilinear", align_corners=True)[:, 0]
    return total
