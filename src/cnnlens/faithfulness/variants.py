"""The target probability of many changed copies of each image, batched over (image, copy) pairs: the loop
deletion/insertion curves and ROAD share (they differ only in how a copy is made)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.accel import fast_forward

#: ``make(img, k) -> x``: the copies ``[R,C,H,W]`` for ``R`` rows, row ``r`` being copy ``k[r]`` of image ``img[r]``.
MakeCopies = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def copy_probabilities(model: nn.Module, images: torch.Tensor, target: Target, copies: int, make: MakeCopies,
                       batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs[i, k] = softmax(model(copy k of image i))[t_i]`` and the targets ``t`` (None = predicted class).

    Rows of ``batch_size`` (default: the device's) (image, copy) pairs go through the model's fast copy under
    inference mode; ``make`` builds a batch's copies, so no copy of the whole ``[N*copies,...]`` set is held.
    Returns normal tensors (not inference-mode ones): ``probs`` float32 ``[N, copies]``, ``t`` ``[N]``.
    """
    n = images.shape[0]
    bs = core.check_batch_size(batch_size, images.device)
    probs = torch.empty(n * copies, dtype=torch.float32, device=images.device)
    with core.guarded(model, images):
        forward = fast_forward(model, images)  # outside inference mode: the cached copy serves gradient methods too
    with core.guarded(model, images), torch.inference_mode():
        clean = core.predict_logits(model, images)
        t = core.resolve_target(target, n, clean.shape[1], logits=lambda: clean, device=images.device)
        for start in range(0, n * copies, bs):
            row = torch.arange(start, min(start + bs, n * copies), device=images.device)
            img, k = row // copies, row % copies
            probs[start:start + len(row)] = forward(make(img, k)).float().softmax(dim=1).gather(1, t[img, None])[:, 0]
    return probs.reshape(n, copies).clone(), t.clone()
