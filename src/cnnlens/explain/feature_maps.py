"""Feature maps (the seeds' "filter outputs"): what chosen layers output for some images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlens.explain import core


class _Done(Exception):
    """Raised once every requested layer has fired: the rest of the network need not run."""


def feature_maps(model: nn.Module, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for ``images`` in one forward pass: ``{name: [N,C,h,w]}`` (any output shape).

    Each output is copied the moment its layer returns, so a later in-place op (``ReLU(inplace=True)``
    after a conv) does not change it; a layer the forward pass calls twice reports its first call.
    The pass stops after the last requested layer; hooks are removed and the model left as it was.

    >>> maps = feature_maps(model, images, ["features.0", "features.4"])
    >>> maps["features.0"].shape   # [N, 64, 48, 48]
    """
    core.check_images(images)
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}; valid names: "
                         f"{', '.join(core.layer_names(model))}")
    modules = {name: core.get_layer(model, name) for name in layers}
    outputs: dict[str, torch.Tensor] = {}
    with core.guarded(model, images), core.hooks() as handles, torch.no_grad():
        def make_hook(name: str):  # noqa: ANN202 - a forward hook
            def hook(_m: nn.Module, _inp: object, out: object) -> None:
                if name in outputs:
                    return
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"layer {name!r} outputs {type(out).__name__}, not a tensor")
                outputs[name] = out.clone()
                if len(outputs) == len(modules):
                    raise _Done
            return hook

        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        try:
            model(images.detach())
        except _Done:
            pass
    missing = [name for name in modules if name not in outputs]
    if missing:
        raise ValueError(f"layers {missing} did not run in the model's forward pass")
    return {name: outputs[name] for name in layers}
