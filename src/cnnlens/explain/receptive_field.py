"""The receptive field of a layer: which input pixels one position of its output can see, measured on the
model by gradients rather than assumed from its architecture.

For an interior output position the gradient of its activations (a random positive mix of the channels,
which cannot cancel) with respect to
the input is non-zero exactly inside its receptive field, except where a ReLU or a max-pool gates a path
off for that input; the union over a batch of random probe images closes those gaps, and the field is
the bounding box of the union. Two neighbouring positions give the stride; the box of position 0 (which
may start above or left of the image: padding) gives the offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlens.explain import core

#: Random probe images whose gradients are united (a path a ReLU closes for one is open for others).
PROBES = 16


@dataclass(frozen=True)
class ReceptiveField:
    """Where output position ``(i, j)`` of a layer looks in the input.

    Attributes:
        size: ``(rows, columns)`` of the field of an interior position.
        stride: input pixels between neighbouring output positions.
        offset: input ``(row, column)`` of the top-left corner of position (0, 0)'s field (negative with padding).
        output: the layer's ``(rows, columns)`` for this input size.
        input: the input's ``(rows, columns)``.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    output: tuple[int, int]
    input: tuple[int, int]

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of position ``(row, col)``'s field (end exclusive), not clipped."""
        top, left = self.offset[0] + row * self.stride[0], self.offset[1] + col * self.stride[1]
        return top, left, top + self.size[0], left + self.size[1]

    def crop(self, image: torch.Tensor, row: int, col: int, fill: float = 0.5) -> torch.Tensor:
        """The field of ``(row, col)`` cut from ``image`` ``[C,H,W]``, ``[C, *size]``; outside the image ``fill``."""
        top, left, bottom, right = self.box(row, col)
        c, h, w = image.shape
        out = image.new_full((c, *self.size), fill)
        t, l_, b, r = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
        if t < b and l_ < r:
            out[:, t - top : b - top, l_ - left : r - left] = image[:, t:b, l_:r]
        return out


class _Stop(Exception):
    """Raised once the layer has run: nothing after it is needed."""


def _support(model: nn.Module, module: nn.Module, name: str, input_shape: tuple[int, int, int],
             positions: list[tuple[int, int]] | None, generator: torch.Generator) -> tuple[tuple[int, int], list[torch.Tensor]]:
    """The layer's output size, and for each position the boolean union ``[H,W]`` of input pixels with a
    non-zero gradient over the probes."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    captured: list[torch.Tensor] = []
    with core.guarded(model), core.hooks() as handles:
        for p in model.parameters():
            p.requires_grad_(False)

        def capture(_m: nn.Module, _inp: object, out: object) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                raise ValueError(f"layer {name!r} outputs {getattr(out, 'shape', type(out).__name__)}, not a feature map "
                                 "[N,C,H,W]; a receptive field needs spatial positions")
            captured.append(out)
            raise _Stop

        if isinstance(module, nn.ReLU):  # a ReLU sees what its input sees, and its input has a gradient where it is off
            def keep_input(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
                if inp[0].dim() != 4:
                    capture(_m, inp, inp[0])  # raises: not a feature map
                captured.append(inp[0])
                return (inp[0].clone(), *inp[1:])

            def stop(_m: nn.Module, _inp: object, _out: object) -> None:
                raise _Stop

            handles.append(module.register_forward_pre_hook(keep_input))
            handles.append(module.register_forward_hook(stop))
        else:
            handles.append(module.register_forward_hook(capture))
        x = torch.rand((PROBES, *input_shape), generator=generator).to(device=device, dtype=dtype).requires_grad_(True)
        try:
            model(x)
        except _Stop:
            pass
        if not captured:
            raise ValueError(f"layer {name!r} did not run in the model's forward pass")
        out = captured[0]
        size = (int(out.shape[2]), int(out.shape[3]))
        if positions is None:
            return size, []
        unions = []
        # channels weighted at random: with a plain sum two channels' gradients could cancel exactly
        weights = (0.5 + torch.rand(out.shape[:2], generator=generator)).to(out)
        for i, (r, c) in enumerate(positions):
            (grad,) = torch.autograd.grad((out[:, :, r, c] * weights).sum(), x, retain_graph=i < len(positions) - 1)
            unions.append((grad != 0).any(0).any(0).cpu())
    return size, unions


def _bounds(mask: torch.Tensor, name: str) -> tuple[int, int, int, int]:
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError(f"no input pixel has a gradient at layer {name!r} for {PROBES} random images "
                         "(is the layer constant, or cut off from the input?)")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def receptive_field(model: nn.Module, layer: str | nn.Module, input_shape: tuple[int, int, int], *,
                    seed: int = 0) -> ReceptiveField:
    """Measure ``layer``'s receptive field for inputs of ``input_shape`` ``(C,H,W)`` (Araujo et al. 2019,
    "Computing receptive fields of convolutional neural networks", measured instead of derived).

    A position near the middle of the output is interior; its gradient support, united over
    :data:`PROBES` random images (drawn from a generator seeded with ``seed``), is the field. The model is
    left as it was. For small_cnn's ``block2.conv`` (3x3 conv, 2x2 pool, 3x3 conv): size 8, stride 2.

    >>> receptive_field(model, "block2.conv", (1, 48, 48))
    ReceptiveField(size=(8, 8), stride=(2, 2), offset=(-2, -2), output=(24, 24), input=(48, 48))
    """
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3 and all(isinstance(v, int) and v > 0 for v in input_shape)):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
    module = core.get_layer(model, layer)
    name = core.layer_name(model, layer)
    shape = tuple(int(v) for v in input_shape)
    gen = torch.Generator().manual_seed(seed)
    (rows, cols), _ = _support(model, module, name, shape, None, gen)
    r, c = rows // 2, cols // 2
    # the middle position, and its neighbours below and right (when there are any) for the stride
    positions = [(r, c)] + ([(r + 1, c)] if r + 1 < rows else []) + ([(r, c + 1)] if c + 1 < cols else [])
    _, unions = _support(model, module, name, shape, positions, gen)
    top, left, bottom, right = _bounds(unions[0], name)
    sr = _bounds(unions[1], name)[0] - top if r + 1 < rows else 0
    sc = _bounds(unions[-1], name)[1] - left if c + 1 < cols else 0
    # a field wider than the image is clipped on both sides and does not move: the output's spacing then
    sr, sc = sr if sr > 0 else max(1, round(shape[1] / rows)), sc if sc > 0 else max(1, round(shape[2] / cols))
    return ReceptiveField(size=(bottom - top, right - left), stride=(sr, sc), offset=(top - r * sr, left - c * sc),
                          output=(rows, cols), input=(shape[1], shape[2]))
