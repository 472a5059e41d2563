"""Activation maximisation (Erhan et al. 2009; Simonyan et al. 2014; Olah et al. 2017): the input a
filter, one neuron or a class likes most.

Gradient ascent (Adam) on input images: image i maximises the mean activation of channel ``filters[i]``
of ``layer`` (``objective="channel"``), its activation at one position (``"neuron"``), or the logit of
``class_scores[i]``; every unit of a call is optimised in one batch. By default the pictures are made
readable as in Lucid/Lucent (Olah et al. 2017): a decorrelated Fourier parameterisation (1/f-scaled
spectrum; colour decorrelation for RGB only), transformation robustness scaled to the input size
(:class:`cnnlens.explain.robustness.Transforms`), optionally a diversity term (Gram-matrix cosine between
the images of one unit). ``parameterization="pixel", transforms=None`` is the naive ascent from noise that
students get (high-frequency "QR codes"); blur, L2 and total variation (Yosinski et al. 2015; Mahendran &
Vedaldi 2015) are there for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlens._checks import check_int, is_int
from cnnlens.explain import core
from cnnlens.explain.integrated_gradients import gaussian_blur
from cnnlens.explain.receptive_field import receptive_field
from cnnlens.explain.robustness import Transforms

PARAMETERIZATIONS = ("pixel", "fourier")
OBJECTIVES = ("channel", "neuron")
#: Adam steps by default: on the planted-filter model and the demo's deep layers the pictures stop
#: changing in measure by about this many steps (docs/feature-visualization.md, "steps").
DEFAULT_STEPS = 128
#: Adam's step size on the parameters (Lucid's 0.05).
DEFAULT_LR = 0.05
#: Slope of the surrogate below zero when the layer is a ReLU (its input is ascended, see the loop).
LEAK = 0.01
# lucid's colour decorrelation: square root of the ImageNet colour covariance (Olah et al. 2017).
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


@dataclass(frozen=True)
class ActMaxResult:
    """Images that maximise chosen units, and how strongly.

    Attributes:
        images: ``[F,C,H,W]`` in [0,1]; image i maximises unit ``units[i]``.
        activation: ``[F]`` the objective each image reaches (untransformed image, no penalty).
        start_activation: ``[F]`` the objective of the image it started from.
        peak: ``[F]`` the unit's highest activation over the layer's positions (the logit for a class):
            comparable with a dataset exemplar's peak.
        units: the filter (or class) of each image, in order (repeated with ``images_per_unit > 1``).
        layer: the layer's name, or None for class scores.
        objective: ``"channel"``, ``"neuron"`` or ``"class"``.
        position: the neuron's ``(row, column)`` on the layer's output, or None.
    """

    images: torch.Tensor
    activation: torch.Tensor
    start_activation: torch.Tensor
    peak: torch.Tensor
    units: tuple[int, ...]
    layer: str | None
    objective: str = "channel"
    position: tuple[int, int] | None = None


class _Stop(Exception):
    """Raised by the capture hook: nothing after the chosen layer needs computing."""


class _Image:
    """An image batch parameterised by free tensors (pixels or a scaled spectrum) mapped into [0,1]."""

    def __init__(self, shape: tuple[int, ...], kind: str, init_std: float, generator: torch.Generator | None,
                 device: torch.device, dtype: torch.dtype, decay: float = 1.0) -> None:
        f, c, h, w = shape
        self.kind, self.size = kind, (h, w)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if kind == "pixel":
            init = init_std * torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        else:
            init = init_std * torch.randn((f, c, h, w // 2 + 1, 2), generator=generator, device=gen_device, dtype=dtype)
            fy = torch.fft.fftfreq(h, dtype=dtype)[:, None]
            fx = torch.fft.rfftfreq(w, dtype=dtype)[None, :]
            # 1/frequency**decay scaling: with decay 1 every frequency band gets about equal energy (lucid's fft_image).
            self.scale = (torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w)) ** -decay).to(device)[..., None]
        self.param = init.to(device).requires_grad_(True)

    def __call__(self) -> torch.Tensor:
        if self.kind == "pixel":
            return torch.sigmoid(self.param)
        x = torch.fft.irfftn(torch.view_as_complex(self.param * self.scale), s=self.size, dim=(2, 3), norm="ortho") / 4.0
        if x.shape[1] == 3:  # decorrelated colours: optimise in a whitened colour space
            m = _COLOR_SQRT.to(x) / _COLOR_SQRT.norm(dim=0).max()
            x = torch.einsum("dc,nchw->ndhw", m, x)
        return torch.sigmoid(x)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image ``[N]``."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))


def gram_diversity(acts: torch.Tensor, group: int) -> torch.Tensor:
    """Lucid's diversity: per image ``[N]``, the mean cosine similarity of its channel Gram matrix with
    those of the other images of its group (``group`` consecutive images per unit). Lower = more diverse.

    ``G_i = A_i A_i^T`` over positions (``A_i``: ``[C, h*w]``); ``d_i = mean_{j != i} <G_i, G_j> / (|G_i| |G_j|)``.
    """
    if group < 2:
        return acts.new_zeros(acts.shape[0])
    a = acts.flatten(2)
    grams = torch.nn.functional.normalize((a @ a.transpose(1, 2)).flatten(1), dim=1, eps=1e-10)
    g = grams.reshape(-1, group, grams.shape[1])
    sim = g @ g.transpose(1, 2)  # [units, group, group]
    return ((sim.sum(2) - sim.diagonal(dim1=1, dim2=2)) / (group - 1)).flatten()


def _check_units(units: Sequence[int], count: int, what: str) -> tuple[int, ...]:
    units = tuple(units)
    if not units:
        raise ValueError(f"{what} list is empty; give at least one index")
    for u in units:
        if not is_int(u):
            raise TypeError(f"{what} indices must be ints, got {u!r}")
        if not 0 <= u < count:
            raise ValueError(f"{what} index {u} is out of range: there are {count} (0..{count - 1})")
    return units


def _transforms(transforms: Transforms | bool | None, input_shape: Sequence[int], model: nn.Module,
                layer: str | None, objective: str) -> Transforms | None:
    if transforms is True and objective == "neuron":  # sized to what the neuron sees, not to the image
        return Transforms.for_size(*receptive_field(model, layer, tuple(input_shape)).size)
    if transforms is True:
        return Transforms.for_size(int(input_shape[1]), int(input_shape[2]))
    if transforms is None or transforms is False:
        return None
    if not isinstance(transforms, Transforms):
        raise TypeError(f"transforms must be True (scaled to the input size), None or a Transforms, got {transforms!r}")
    return None if transforms.identity else transforms


def activation_maximization(model: nn.Module, layer: str | None = None, filters: Sequence[int] | None = None, *,
                            class_scores: Sequence[int] | None = None, input_shape: tuple[int, int, int],
                            objective: str = "channel", position: tuple[int, int] | None = None,
                            steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, parameterization: str = "fourier",
                            transforms: Transforms | bool | None = True, diversity: float = 0.0,
                            images_per_unit: int = 1, init_std: float | None = None, decay_power: float = 1.0,
                            jitter: int = 0,
                            blur: float = 0.0, l2: float = 0.0, tv: float = 0.0,
                            generator: torch.Generator | None = None) -> ActMaxResult:
    """Optimise images for filters of ``layer`` (or for the classes in ``class_scores``), all in one batch.

    Objective for image i: ``mean_{h,w} layer(T(x_i))[u_i, h, w]`` (``objective="channel"``), or
    ``layer(T(x_i))[u_i, row, col]`` at ``position`` (``"neuron"``; default the centre of the layer's
    output), or the logit ``model(T(x_i))[c_i]``; minus ``diversity * gram_diversity``, ``l2 * mean (x_i - 0.5)^2``
    and ``tv * TV(x_i)``. ``T`` is a fresh random warp each step (``transforms=True``: Lucent's set scaled to
    the input size, or for a neuron to its measured receptive field; None: none). Maximised with Adam for ``steps`` steps from ``init_std``-sized noise
    (default 0.01 on the spectrum, 0.5 on pixel logits). ``filters=None`` takes every channel.
    ``parameterization="pixel"`` optimises ``sigmoid(p)`` pixel logits (``blur`` = Gaussian blur sigma after
    each step); ``"fourier"`` a 1/f-scaled spectrum with decorrelated colours. ``jitter``: an extra
    integer roll (the old naive regulariser). Lucent equivalent: ``render.render_vis(model, "layer:unit")``
    with ``param.image(h, fft=True, decorrelate=True)`` and ``transform.standard_transforms``.
    Runs on the model's device and dtype; the model and its ``.grad`` are untouched; every random draw
    comes from ``generator``.

    >>> res = activation_maximization(model, "block2.relu", [0, 5, 9], input_shape=(1, 48, 48),
    ...                               generator=torch.Generator().manual_seed(0))
    >>> res.images.shape, bool((res.activation > res.start_activation).all())
    """
    if (layer is None) == (class_scores is None):
        raise ValueError("give either layer (with filters) or class_scores, not both and not neither")
    if class_scores is not None and filters is not None:
        raise ValueError("filters= applies to a layer; with class_scores= leave it None")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be 'pixel' or 'fourier', got {parameterization!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be 'channel' or 'neuron' (for a class, pass class_scores=), got {objective!r}")
    if class_scores is not None and (objective != "channel" or position is not None or diversity):
        raise ValueError("objective=, position= and diversity= apply to a layer; with class_scores= leave them at their defaults")
    if position is not None and objective != "neuron":
        raise ValueError(f"position= applies to objective='neuron', got objective={objective!r}")
    if parameterization == "fourier" and blur:
        raise ValueError("blur= applies to the 'pixel' parameterization; the Fourier one already favours smooth images")
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(is_int(v, 1) for v in input_shape)):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
    check_int(steps, "steps", 0)
    check_int(images_per_unit, "images_per_unit", 1)
    if init_std is None:
        init_std = 0.5 if parameterization == "pixel" else 0.01
    if jitter < 0 or blur < 0 or l2 < 0 or tv < 0 or diversity < 0 or init_std < 0 or not lr > 0:
        raise ValueError(f"jitter, blur, l2, tv, diversity, init_std must be >= 0 and lr > 0, got {jitter=}, {blur=}, "
                         f"{l2=}, {tv=}, {diversity=}, {init_std=}, {lr=}")
    if diversity and images_per_unit < 2:
        raise ValueError("diversity= compares the images of one unit: pass images_per_unit >= 2 with it")
    module = core.get_layer(model, layer) if layer is not None else None
    warp = _transforms(transforms, input_shape, model, layer, objective)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen_device = generator.device if generator is not None else torch.device("cpu")

    with core.guarded(model), core.hooks() as handles:
        for p in model.parameters():
            p.requires_grad_(False)  # gradients w.r.t. the image only; guarded() restores the flags
        captured: list[torch.Tensor] = []
        # A ReLU's output has no gradient where it is off (a start the unit ignores stays ignored): ascend a
        # leaky ReLU of its input instead, the same where positive, with a small slope where it is off.
        rectified = isinstance(module, nn.ReLU)
        if module is not None:
            def keep_input(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
                captured.append(inp[0])
                return (inp[0].clone(), *inp[1:])  # an in-place ReLU changes the clone, not what we keep

            def capture(_m: nn.Module, _inp: object, out: object) -> None:
                if not isinstance(out, torch.Tensor) or out.dim() < 2:
                    raise TypeError(f"layer {layer!r} outputs {type(out).__name__}, not a tensor [N,C,...]")
                if not rectified:
                    captured.append(out)
                raise _Stop

            if rectified:
                handles.append(module.register_forward_pre_hook(keep_input))
            handles.append(module.register_forward_hook(capture))

        def run(x: torch.Tensor) -> torch.Tensor:
            """The layer's output (or the logits) for ``x``."""
            captured.clear()
            try:
                out = model(x)
            except _Stop:
                pass
            if module is not None:
                if not captured:
                    raise ValueError(f"layer {layer!r} did not run in the model's forward pass")
                out = captured[0]
            return out

        with torch.no_grad():
            probe = run(torch.full((1, *input_shape), 0.5, device=device, dtype=dtype))
        count = probe.shape[1]
        if objective == "neuron":
            if probe.dim() != 4:
                raise ValueError(f"objective='neuron' needs a layer with a [N,C,H,W] output; {layer!r} gives {tuple(probe.shape)}")
            rows, cols = probe.shape[2:]
            position = (rows // 2, cols // 2) if position is None else tuple(position)
            if not (len(position) == 2 and all(is_int(v) for v in position) and 0 <= position[0] < rows and 0 <= position[1] < cols):
                raise ValueError(f"position must be (row, column) inside the layer's {rows}x{cols} output, got {position!r}")
        requested = class_scores if class_scores is not None else filters
        units = _check_units(range(count) if requested is None else requested, count,
                             "filter" if module is not None else "class")
        units = tuple(u for u in units for _ in range(images_per_unit))
        input_shape = tuple(input_shape)
        idx = torch.tensor(units, device=device)

        def unit_values(out: torch.Tensor) -> torch.Tensor:
            """The objective of each image's own unit ``[N]``, and its peak over positions."""
            own = out[torch.arange(out.shape[0], device=device), idx]
            if objective == "neuron":
                return own[:, position[0], position[1]]
            return own.flatten(1).mean(1) if own.dim() > 1 else own

        image = _Image((len(units), *input_shape), parameterization, float(init_std), generator, device, dtype, float(decay_power))
        # Adam by hand: torch.optim's first construction costs ~3 s of imports on this machine.
        mean, sq = torch.zeros_like(image.param), torch.zeros_like(image.param)
        beta1, beta2 = 0.9, 0.999

        with torch.no_grad():
            start = unit_values(run(image()).clamp_min(0) if rectified else run(image()))
        for step in range(1, steps + 1):
            x = image()
            if jitter:
                dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator, device=gen_device).tolist()
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if warp is not None:
                x = warp(x, generator)
            out = run(x)
            out = torch.nn.functional.leaky_relu(out, LEAK) if rectified else out
            gain = unit_values(out)
            if diversity:
                gain = gain - diversity * gram_diversity(out, images_per_unit)
            if l2:
                gain = gain - l2 * (x - 0.5).pow(2).mean(dim=(1, 2, 3))
            if tv:
                gain = gain - tv * total_variation(x)
            (grad,) = torch.autograd.grad(gain.sum(), image.param)  # w.r.t. the image only: no .grad anywhere
            with torch.no_grad():  # Adam ascent step (Kingma & Ba 2015)
                mean.mul_(beta1).add_(grad, alpha=1 - beta1)
                sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (sq / (1 - beta2**step)).sqrt_().add_(1e-8)
                image.param.addcdiv_(mean, denom, value=lr / (1 - beta1**step))
                if blur:
                    image.param.copy_(gaussian_blur(image.param, blur))
        with torch.no_grad():
            final = image()
            out = run(final)
            out = out.clamp_min(0) if rectified else out
            reached = unit_values(out)
            own = out[torch.arange(out.shape[0], device=device), idx]
            peak = own.flatten(1).amax(1) if own.dim() > 1 else own
    return ActMaxResult(images=final.detach(), activation=reached.detach(), start_activation=start.detach(),
                        peak=peak.detach(), units=units, layer=layer if isinstance(layer, str) else None,
                        objective="class" if class_scores is not None else objective,
                        position=position if objective == "neuron" else None)


def class_model_images(model: nn.Module, classes: Sequence[int], *, input_shape: tuple[int, int, int],
                       l2: float = 1.0, **options: object) -> ActMaxResult:
    """Class-model images (Simonyan et al. 2014, "Deep inside convolutional networks", sec. 2): for each
    class c, ``argmax_x S_c(x) - l2 * mean (x - 0.5)^2``, the unnormalised class score (the logit, not the
    softmax, which could rise by lowering the other classes) with an L2 penalty on the centred image;
    here with the readable parameterisation and transforms of :func:`activation_maximization` (``options``).

    >>> res = class_model_images(model, [0, 3], input_shape=(1, 48, 48), generator=torch.Generator().manual_seed(0))
    >>> res.images.shape   # what the model thinks classes 0 and 3 look like
    """
    return activation_maximization(model, class_scores=classes, input_shape=input_shape, l2=l2, **options)
