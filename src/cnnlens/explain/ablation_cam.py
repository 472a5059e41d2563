"""Ablation-CAM (Desai & Ramaswamy 2020): each channel weighted by the share of the target's score lost when it
is zeroed.

``w_k = (y_t - y_t^{-k}) / y_t``, ``y_t^{-k}`` the target's logit with channel ``k`` of the layer's output set
to 0, ``map = ReLU(sum_k w_k A_k)``: no gradients, one pass of the layers after the ablated one per channel and
image.
"""

from __future__ import annotations

from collections.abc import Callable

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
    as in the paper: a logit near 0 makes them large. The ``N x K`` ablated copies share their image's layers up
    to the ablated one: each image runs once through them, the layer's output is copied and ablated per
    channel (``batch_size`` copies at a time; None: as many as hold 2^24 of its values), and only the layers
    after it run on the copies (a skip connection around the layer still sees the image: its map broadcasts
    over the copies). Checked on two channels against running every copy through the whole model, which
    is done instead where the model does not allow it (a concatenation with an earlier map, a reshape by the
    input's batch size). ``fast`` (default): the checked prepared copy with the layer kept unfolded, under
    ``inference_mode``; ``fast=False``: the model itself. Returns ``[N,H,W]`` (``upsample=False``: the
    layer's ``[N,h,w]``).

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
        net = accel.prepared(model, keep=[name], example=x) if fast else model
        forward = accel.fast_forward(net, fast=False)  # inference mode, in the copy's own input layout
        zeroed: list[tuple[torch.Tensor, torch.Tensor]] = []  # per ablated copy: the row of the layer's output
        # it starts from and the channel it zeroes

        def ablate(module: nn.Module, inputs: tuple[object, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not zeroed:
                return None
            rows, channels = zeroed[0]
            out = output[rows]  # a copy (advanced indexing): the layer's own output stays as it was
            out[torch.arange(out.shape[0], device=out.device), channels] = 0
            return out

        def scores_of(batch: torch.Tensor, rows: torch.Tensor, channels: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
            """The target logits of ``batch`` run with the layer's output row ``rows[j]``, channel
            ``channels[j]`` zeroed, as copy ``j``."""
            zeroed[:] = [(rows, channels)]
            try:
                return core.target_scores(forward(batch), targets)
            finally:
                zeroed.clear()

        scores = torch.empty(n, k, dtype=x.dtype, device=x.device)
        with core.hooks() as handles:
            handles.append(core.get_layer(net, name).register_forward_hook(ablate))
            if batch_size is not None:
                core.check_batch_size(batch_size, x.device)
            chunk = batch_size or min(k, max(1, SHARED_ELEMENTS // acts[0].numel()))
            check = torch.arange(min(k, chunk, 2), device=x.device)  # two channels tell the shapes and values
            zero = torch.zeros_like(check)
            plain = scores_of(x[zero], torch.arange(len(check), device=x.device), check, t[zero])
            if _shared_pass_agrees(lambda: scores_of(x[:1], zero, check, t[zero]), plain, logits):
                per_image = -(-k // chunk)
                for j, _ in core.batch_ranges(n * per_image, 1, progress=progress, description="ablation-cam"):
                    i, c = divmod(j, per_image)
                    channels = torch.arange(c * chunk, min((c + 1) * chunk, k), device=x.device)
                    rows = torch.zeros_like(channels)
                    scores[i, channels] = scores_of(x[i:i + 1], rows, channels, t[i].expand(len(channels)))
            else:  # the model does not take one image's prefix for many copies: every copy runs the whole model
                _, bs = score_forward(model, x, batch_size, fast=fast)
                flat = scores.view(-1)
                for start, end in core.batch_ranges(n * k, bs, progress=progress, description="ablation-cam"):
                    idx = torch.arange(start, end, device=x.device)
                    flat[start:end] = scores_of(x[idx // k], torch.arange(end - start, device=x.device), idx % k,
                                                t[idx // k])
    clean = core.target_scores(logits, t)
    weights = (clean[:, None] - scores) / clean[:, None]
    return combine(weights, acts, x, relu=relu, upsample=upsample)


#: Layer-output elements of the ablated copies of one shared pass (float32: 64 MiB).
SHARED_ELEMENTS = 2**24


def _shared_pass_agrees(shared: Callable[[], torch.Tensor], plain: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether the shared pass (one image's layers up to the ablated one run once, its output copied and ablated
    per channel, the rest run on the copies) gives the scores of the plain one (each copy through the whole
    model) on a few channels. It does wherever the layers after the ablated one treat the copies as a batch and
    whatever they take from before it (a skip connection) broadcasts over the copies; where it cannot run (a
    concatenation with an earlier map, a reshape by the input's batch size) or differs, the plain pass is used."""
    try:
        got = shared()
    except (RuntimeError, ValueError):
        return False
    scale = float(logits.abs().max())
    tol = (1e-4 if got.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10) * max(scale, 1e-30)
    return got.shape == plain.shape and bool(((got - plain).abs() <= tol).all())
