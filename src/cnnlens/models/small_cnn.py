"""The seeds' small CNN: three conv blocks [64, 128, 512], global average pooling, one linear layer.

Each block is conv3x3 (no bias: BN follows) - BatchNorm - ReLU - MaxPool2, so a 48x48 face becomes a
512x6x6 feature map. Global average pooling feeds the linear layer directly, which is exactly the
architecture class activation mapping (Zhou et al. 2016) needs: ``logit_k = sum_c w_kc mean(A_c) + b_k``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from cnnlens.models._common import GapClassifier


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 - BN - ReLU - max-pool 2, with the readable names ``conv``, ``bn``, ``relu``, ``pool``."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        bn=nn.BatchNorm2d(out_channels),
        relu=nn.ReLU(inplace=True),
        pool=nn.MaxPool2d(2),
    ))


class SmallCNN(GapClassifier):
    """``small_cnn``: input float32 ``[N,C,H,W]`` in [0,1] -> logits ``[N,num_classes]``.

    Layers (names accepted by ``layer=``): ``normalize`` ((x-0.5)/0.25), ``block1`` .. ``block3`` (each with
    ``.conv``, ``.bn``, ``.relu``, ``.pool``), ``gap``, ``flatten``, ``dropout``, ``fc``.
    ``cam_layer`` names the feature map that global average pooling reads.

    >>> SmallCNN(in_channels=1, num_classes=7, input_size=48)(torch.rand(2, 1, 48, 48)).shape
    torch.Size([2, 7])
    """

    cam_layer = "block3"

    def __init__(self, in_channels: int = 1, num_classes: int = 7, input_size: int | Sequence[int] = 48, *,
                 channels: Sequence[int] = (64, 128, 512), dropout: float = 0.0) -> None:
        super().__init__()
        self.build(model="small_cnn", prefix="block", in_channels=in_channels, num_classes=num_classes,
                   input_size=input_size, channels=channels, dropout=dropout, make_block=conv_block)
