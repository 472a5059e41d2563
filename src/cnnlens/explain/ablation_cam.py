"""Ablation-CAM (Desai & Ramaswamy 2020): each channel weighted by the share of the target's score lost when it
is zeroed.

``w_k = (y_t - y_t^{-k}) / y_t``, ``y_t^{-k}`` the target's logit with channel ``k`` of the layer's output set
to 0, ``map = ReLU(sum_k w_k A_k)``: no gradients, one forward pass per channel and image.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import accel, core
from cnnlens.explain.cam_family import combine, layer_maps, layer_name, score_forward
from cnnlens.explain.registry import Paper, method


@method("ablation-cam", "Ablation-CAM", kind="cam", layer=True,
        paper=Paper("Desai & Ramaswamy", 2020, "Ablation-CAM: visual explanations for deep convolutional network "
                    "via gradient-free localization"))
def ablation_cam(model: nn.Module, images: torch.Tensor, target: Target = None, *,
                 layer: str | nn.Module | None = None, relu: bool = True, upsample: bool = True,
                 batch_size: int | None = None, progress: bool = False, fast: bool = True) -> torch.Tensor:
    """Ablation-CAM (Desai & Ramaswamy 2020) of ``layer`` (default as :func:`~cnnlens.explain.grad_cam.grad_cam`):
    ``ReLU(sum_k (y_t - y_t^{-k}) / y_t * A_k)``, ``y_t^{-k}`` the logit with channel ``k`` zeroed.

    The paper's ablation, zero, whatever the activations' sign (pytorch-grad-cam's ``AblationCAM`` puts
    ``min(A) - 1e7`` instead where the layer's minimum is not 0). The weights divide by the target's logit,
    as in the paper: a logit near 0 makes them large. The ``N x K`` ablated passes run the whole model (a
    skip connection around the layer still sees the image) in chunks of ``batch_size``. ``fast`` (default):
    the checked prepared copy with the layer kept unfolded, under ``inference_mode``, at a measured batch size;
    ``fast=False``: the model itself at ``batch_size`` (None: the device's default). Returns ``[N,H,W]``
    (``upsample=False``: the layer's ``[N,h,w]``).

    >>> maps = ablation_cam(model, images, target=3, layer="features.8")
    """
    core.check_images(images)
    x = images.detach()
    n = x.shape[0]
    with core.guarded(model, images):
        name = layer_name(model, x, layer)
        acts, logits = layer_maps(model, x, name, fast=fast)
        t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=x.device)
        k = acts.shape[1]
        _, bs = score_forward(model, x, batch_size, fast=fast)
        net = accel.prepared(model, keep=[name], example=x) if fast else model
        forward = accel.fast_forward(net, fast=False)  # inference mode, in the copy's own input layout
        zeroed: list[torch.Tensor] = []  # the channel each image of the running chunk has zeroed

        def ablate(module: nn.Module, inputs: tuple[object, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not zeroed:
                return None
            out = output.clone()
            out[torch.arange(out.shape[0], device=out.device), zeroed[0]] = 0
            return out

        scores = torch.empty(n * k, dtype=x.dtype, device=x.device)
        with core.hooks() as handles:
            handles.append(core.get_layer(net, name).register_forward_hook(ablate))
            for start, end in core.batch_ranges(n * k, bs, progress=progress, description="ablation-cam"):
                idx = torch.arange(start, end, device=x.device)
                zeroed[:] = [idx % k]
                scores[start:end] = core.target_scores(forward(x[idx // k]), t[idx // k])
                zeroed.clear()
    clean = core.target_scores(logits, t)
    weights = (clean[:, None] - scores.reshape(n, k)) / clean[:, None]
    return combine(weights, acts, x, relu=relu, upsample=upsample)
