"""Grad-CAM (Selvaraju et al. 2017): a layer's feature maps weighted by their mean gradient.

``alpha_k = mean_ij d logit_t / d A_k[i,j]``, ``map = ReLU(sum_k alpha_k A_k)``, bilinearly upsampled to the
input size. ``A`` is the output of one layer (default: the model's ``cam_layer`` if it names one, else the
last ``nn.Conv2d``).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.registry import Paper, method


def layer_output_and_gradient(model: nn.Module, images: torch.Tensor, target: Target,
                              layer: str | nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, dlogit_t/dA, target)`` for the output ``A`` ``[N,C,h,w]`` of ``layer``, in one forward pass.

    The forward hook hands the rest of the model a clone of ``A``, so that an in-place op right after
    the layer (``nn.ReLU(inplace=True)`` after a conv) cannot overwrite the activation kept here; the graph
    starts at ``A`` (the layers before it run without recording anything for a backward pass).
    Call inside ``core.guarded``.
    """
    name = layer if isinstance(layer, str) else type(layer).__name__
    module = core.get_layer(model, layer)
    kept: list[torch.Tensor] = []

    def keep(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"layer {name!r} outputs {shape}; Grad-CAM needs a layer whose output is a "
                             "feature map [N,C,h,w] (a conv, BatchNorm, ReLU or pooling layer)")
        kept.append(output.detach().requires_grad_(True))  # the graph starts here: nothing before it is kept
        return kept[-1].clone()

    with core.hooks() as handles:
        handles.append(module.register_forward_hook(keep))
        x = images.detach()
        logits = model(x)
    if len(kept) != 1:
        raise ValueError(f"layer {name!r} ran {len(kept)} times in one forward pass; "
                         "Grad-CAM needs a layer that runs exactly once")
    t = core.resolve_target(target, x.shape[0], logits.shape[1], logits=logits.detach, device=x.device)
    score = core.target_scores(logits, t).sum()
    (grad,) = torch.autograd.grad(score, kept[0], allow_unused=True) if score.requires_grad else (None,)
    if grad is None:
        raise ValueError(f"the target score does not depend on layer {name!r}; choose a layer on the path to the output")
    return kept[0].detach(), grad, t


@method("grad-cam", "Grad-CAM", kind="cam", layer=True, streamable=True, in_report=3, class_average=True,
        contrastive=0,
        paper=Paper("Selvaraju et al.", 2017, "Grad-CAM: visual explanations from deep networks via gradient-based "
                    "localization"))
def grad_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
             layer: str | nn.Module | None = None, relu: bool = True, upsample: bool = True,
             fast: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of ``layer`` (a name from ``model.named_modules()``; default
    ``core.default_cam_layer``: the model's ``cam_layer``, else the feature map its head pools, else the
    last ``nn.Conv2d``): ``ReLU(sum_k mean_ij(d logit_t / d A_k) * A_k)``.

    Returns ``[N,H,W]`` bilinearly upsampled to the input, or the layer's own ``[N,h,w]`` with
    ``upsample=False``; ``relu=False`` keeps the negative part. This is Captum's ``LayerGradCam`` with
    ``relu_attributions=True`` followed by ``LayerAttribution.interpolate(..., "bilinear")``. ``fast``:
    as in :func:`~cnnlens.explain.saliency.saliency`, the layer itself kept unfolded.

    >>> maps = grad_cam(model, images, layer="features.8")
    """
    core.check_images(images)
    with core.guarded(model, images):
        name = core.default_cam_layer(model, images) if layer is None else core.layer_name(model, layer)
        net = accel.prepared(model, keep=[name], example=images) if fast else model
        acts, grads, _ = layer_output_and_gradient(net, images, target, name)
    cam = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1)
    if relu:
        cam = cam.clamp(min=0)
    return core.upsample(cam, tuple(images.shape[2:])) if upsample else cam
