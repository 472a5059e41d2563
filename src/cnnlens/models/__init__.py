"""CNN architectures, a registry that builds them by name, and a layer summary.

Every model takes float32 ``[N,C,H,W]`` in ``[0,1]`` and normalises internally with a fixed
``(x - 0.5) / 0.25`` (its first layer, ``normalize``), so no dataset statistics travel with a run.

>>> model = build("small_cnn", in_channels=1, num_classes=7, input_size=48)
>>> print(format_summary(summary(model, (1, 48, 48))))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cnnlens.models.resnet18 import ResNet18
from cnnlens.models.small_cnn import SmallCNN
from cnnlens.models.summary import LayerRow, format_summary, summary, total_params
from cnnlens.models.vgg_fer import VGGFER

#: Model name (CLI and run configs) -> builder taking ``in_channels, num_classes, input_size, **options``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "vgg_fer": VGGFER,
    "resnet18": ResNet18,
}


def build(name: str, *, in_channels: int, num_classes: int, input_size: int | Sequence[int], **options: object) -> nn.Module:
    """A freshly initialised model ``name`` for ``[N,in_channels,*input_size]`` inputs and ``num_classes`` classes.

    ``options`` are the architecture's own keyword arguments (e.g. ``dropout=0.3``); runs store them in
    ``config.json`` so a model can be rebuilt without the command line.

    >>> build("resnet18", in_channels=3, num_classes=11, input_size=(128, 128), dropout=0.2)
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(MODELS)}")
    try:
        return MODELS[name](in_channels=in_channels, num_classes=num_classes, input_size=input_size, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise TypeError(f"model {name!r} does not take option(s) {sorted(options)}: {exc}") from exc
        raise


__all__ = ["MODELS", "LayerRow", "ResNet18", "SmallCNN", "VGGFER", "build", "format_summary", "summary", "total_params"]
