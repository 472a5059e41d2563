"""Convolutions of the prepared copy with their weights kept in oneDNN's own layout, for passes that need no
gradient through them.

On the CPU, ``F.conv2d`` hands oneDNN a plain (or channels-last) weight and oneDNN reorders it into its
blocked layout on every call: it reads and writes every weight once per pass. For the small batches of a
gradient CAM that is a large part of the pass (ResNet-18 on 4 images of 3x128x128, one thread: 34.9 ms of
convolutions, 31.5 ms with the weights reordered once; layer4's 512->512 convolutions 3.4 -> 2.6 ms each).
:class:`PackedConv2d` keeps the reordered weight and calls oneDNN's convolution on it
(``torch.ops.mkldnn._convolution_pointwise``, the op PyTorch's own compiler emits for CPU convolutions) where
that computes the same function: a plain float32 CPU tensor needing no gradient, laid out channels-last
(oneDNN's op always answers channels-last; ``nn.Conv2d`` does so only for such an input, and a contiguous map
must stay contiguous for the ``x.view`` of the user's head), outside autocast and any ``TorchFunctionMode``,
with oneDNN turned on. Everywhere else (a gradient through the layer, a GPU, bfloat16 autocast, LRP's rules,
which read ``F.conv2d`` calls) it is the ``nn.Conv2d`` it was.

Only cnnlens's own copies are packed (:func:`pack_convolutions`, called by
:func:`cnnlens.explain.accel.copies.prepare`); the user's model is never touched. The prepared copy is checked
against the model before it is used, so a CPU whose oneDNN computes something else never serves a map.

>>> fast = prepare(model)   # its convolutions reorder their weights on their first channels-last pass
"""

from __future__ import annotations

import torch
from torch import nn

#: oneDNN's convolution on a pre-reordered weight, where this build of torch has it.
AVAILABLE = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
             and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))


class PackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose forward-only float32 CPU passes run on a weight reordered once for oneDNN.

    The reordered weight is made on the first such pass (for that input's shape: oneDNN picks the layout
    for it, and the packed weight serves every other batch and image size too) and remade if the weight changes. It is
    not part of the module's state: ``state_dict``, ``deepcopy`` and pickling see a plain ``nn.Conv2d``'s. It
    costs one more copy of the weight in memory.
    """

    _packed: tuple[tuple, torch.Tensor] | None = None

    def packs(self, x: torch.Tensor) -> bool:
        """Whether this pass runs on the packed weight (else it is ``nn.Conv2d``'s own)."""
        return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                # channels-last and nothing else (one channel or a 1x1 map is both): nn.Conv2d's output layout
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                and self.weight.dtype == torch.float32 and self.weight.device.type == "cpu"
                and not self.weight.is_inference()  # made under inference_mode: no version to tell a change by
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                                      or (self.bias is not None and self.bias.requires_grad)))
                and not torch.is_autocast_enabled("cpu")
                and torch.backends.mkldnn.enabled  # a user who turned oneDNN off gets nn.Conv2d's other kernels
                # a TorchFunctionMode (LRP's rules, a user's tracer) or a tensor subclass expects F.conv2d
                and not torch._C._is_torch_function_mode_enabled())

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version, self.weight.stride())
        if self._packed is None or self._packed[0] != key:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                    list(x.shape))
            self._packed = (key, packed)
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packs(x):
            return super().forward(x)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed_weight(x), self.bias, list(self.padding), list(self.stride), list(self.dilation),
            self.groups, "none", [], "")

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_packed", None)  # an opaque oneDNN tensor: neither copied nor pickled, remade on use
        return state


def packable(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.Conv2d`` that :class:`PackedConv2d` computes the same way: zero
    padding given as numbers (not ``"same"``)."""
    return (AVAILABLE and type(module) is nn.Conv2d and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def pack_convolutions(model: nn.Module) -> nn.Module:
    """``model`` (one of cnnlens's own copies, changed in place and returned) with each packable convolution
    a :class:`PackedConv2d`: the same module, names, parameters and hooks, only its class changed."""
    for module in model.modules():
        if packable(module):
            module.__class__ = PackedConv2d
    return model
