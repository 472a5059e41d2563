"""A deeper VGG-style net for facial expressions: four stages of two 3x3 convolutions, 64..512 channels.

Simonyan & Zisserman (2015) stacks of small convolutions, with BatchNorm after each convolution and a
global-average-pooling head instead of VGG's large fully connected layers (so CAM applies here too and
the net works at any input size of 16 pixels or more). A 48x48 face ends as a 512x3x3 feature map.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from cnnlens.models._common import GapClassifier, check_positive_int


def vgg_stage(in_channels: int, out_channels: int, convs: int = 2) -> nn.Sequential:
    """``convs`` times (conv3x3 - BN - ReLU), then max-pool 2; names ``conv1``, ``bn1``, ``relu1``, ..., ``pool``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, convs + 1):
        layers[f"conv{i}"] = nn.Conv2d(in_channels if i == 1 else out_channels, out_channels, 3, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
    layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class VGGFER(GapClassifier):
    """``vgg_fer``: input float32 ``[N,C,H,W]`` in [0,1] -> logits ``[N,num_classes]``.

    Layers: ``normalize``, ``stage1`` .. ``stage4`` (each ``conv1``, ``bn1``, ``relu1``, ``conv2``, ``bn2``,
    ``relu2``, ``pool``), ``gap``, ``flatten``, ``dropout``, ``fc``.

    >>> VGGFER(in_channels=1, num_classes=7, input_size=48)(torch.rand(2, 1, 48, 48)).shape
    torch.Size([2, 7])
    """

    cam_layer = "stage4"

    def __init__(self, in_channels: int = 1, num_classes: int = 7, input_size: int | Sequence[int] = 48, *,
                 channels: Sequence[int] = (64, 128, 256, 512), convs_per_stage: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int(convs_per_stage, "convs_per_stage")
        self.build(model="vgg_fer", prefix="stage", in_channels=in_channels, num_classes=num_classes,
                   input_size=input_size, channels=channels, dropout=dropout, make_block=lambda c_in, c_out: vgg_stage(c_in, c_out, convs_per_stage))
