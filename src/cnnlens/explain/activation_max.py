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
Vedaldi 2015) are there for it. A neuron is optimised on a canvas of its receptive field, which is all
it sees; every pass runs the folded-BatchNorm copy of the model (``fast=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlens._checks import check_int, is_int
from cnnlens.explain import accel, core
from cnnlens.explain.integrated_gradients import gaussian_blur
from cnnlens.explain.receptive_field import ReceptiveField, receptive_field
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
        images: ``[F,C,H,W]`` in [0,1]; image i maximises unit ``units[i]`` (a neuron's: gray outside the
            canvas of its receptive field that was optimised, see :func:`activation_maximization`).
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
                 device: torch.device, dtype: torch.dtype, decay: float | torch.Tensor = 1.0, colors: torch.Tensor | None = None,
                 center: torch.Tensor | None = None) -> None:
        f, c, h, w = shape
        self.kind, self.size = kind, (h, w)
        sqrt = (_COLOR_SQRT if colors is None else colors).to(device=device, dtype=dtype).expand(f, 3, 3)
        # lucid's normalisation: the longest column has length 1 (per image: each may have its own colours)
        self.colors = sqrt / sqrt.norm(dim=1).amax(1)[:, None, None]
        # the sigmoid's centre: gray, or the data's mean colour (its logit is added before the sigmoid)
        self.offset = (None if center is None else
                       torch.logit(center.to(device=device, dtype=dtype).clamp(0.02, 0.98)).expand(f, 3)[:, :, None, None])
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if kind == "pixel":
            init = init_std * torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        else:
            init = init_std * torch.randn((f, c, h, w // 2 + 1, 2), generator=generator, device=gen_device, dtype=dtype)
            fy = torch.fft.fftfreq(h, dtype=dtype)[:, None]
            fx = torch.fft.rfftfreq(w, dtype=dtype)[None, :]
            # 1/frequency**decay scaling: with decay 1 every frequency band gets about equal energy (lucid's fft_image);
            # a tensor decay [f] gives each image its own.
            radius = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w)).to(device)
            if isinstance(decay, torch.Tensor):
                decay = decay.to(device=device, dtype=dtype).reshape(f, 1, 1, 1)
            scale = radius ** -decay
            if isinstance(decay, torch.Tensor) or decay != 1.0:
                # other decays keep 1/f's total energy: they move energy between frequencies, not the step size
                # (unscaled, 1/f**1.5 made the lowest frequencies ~4x faster and the colours left the data's)
                scale = scale * (radius**-1).norm() / scale.norm(dim=(-2, -1), keepdim=True)
            self.scale = scale[..., None]
        self.param = init.to(device).requires_grad_(True)

    def __call__(self) -> torch.Tensor:
        if self.kind == "pixel":
            x = self.param
        else:
            x = torch.fft.irfftn(torch.view_as_complex(self.param * self.scale), s=self.size, dim=(2, 3), norm="ortho") / 4.0
            if x.shape[1] == 3:  # decorrelated colours: optimise in a whitened colour space
                x = torch.einsum("ndc,nchw->ndhw", self.colors, x)
        return torch.sigmoid(x if self.offset is None else x + self.offset)


def color_correlation(images: torch.Tensor) -> torch.Tensor:
    """The square root of the colour covariance of ``images`` ``[N,3,H,W]`` (every pixel a sample): ``U sqrt(S)``
    from the eigendecomposition ``cov = U S U^T``, as Lucid computed its ImageNet matrix
    (``color_correlation_svd_sqrt``); pass it as ``colors=`` to optimise in the data's own decorrelated colours.

    >>> colors = color_correlation(train_images[:512])   # [3,3]
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be RGB [N,3,H,W], got {getattr(images, 'shape', type(images).__name__)}")
    x = images.detach().double().transpose(0, 1).reshape(3, -1)
    cov = torch.cov(x)
    vals, vecs = torch.linalg.eigh(cov)
    order = torch.argsort(vals, descending=True)  # the luminance-like direction first, as in lucid's matrix
    sqrt = vecs[:, order] * vals[order].clamp_min(0).sqrt()
    sqrt = sqrt * torch.where(sqrt.sum(0) < 0, -1.0, 1.0)  # a sign per direction: the first one positive (brighter)
    return sqrt.to(images.dtype if images.is_floating_point() else torch.float32)


def spectrum_decay(images: torch.Tensor, low: float = 1.0, high: float = 2.5) -> float:
    """The exponent ``a`` of the amplitude spectrum ``|F(f)| ~ f**-a`` of ``images`` ``[N,C,H,W]`` (each mean
    removed, power averaged over images and channels, least squares of ``log |F|`` on ``log f`` over every
    frequency but 0), clamped to ``[low, high]``: pass it as ``decay_power=`` so that the Fourier
    parameterisation starts from the data's own spectrum, as ``colors=`` gives it the data's colours. Lucid's
    fixed 1 is the natural-image value; a filter's real patches of drawn, flat-coloured plates fit about 1.5.

    >>> spectrum_decay(exemplar_patches)   # e.g. 1.47
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or min(images.shape[-2:]) < 2:
        raise ValueError(f"images must be [N,C,H,W] with H, W >= 2, got {getattr(images, 'shape', type(images).__name__)}")
    x = images.detach().double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    amplitude = torch.fft.fft2(x).abs().pow(2).mean((0, 1)).sqrt()
    h, w = amplitude.shape
    radius = torch.sqrt(torch.fft.fftfreq(h, dtype=torch.float64)[:, None] ** 2
                        + torch.fft.fftfreq(w, dtype=torch.float64)[None, :] ** 2)
    keep = (radius > 0) & (amplitude > 0)
    if int(keep.sum()) < 2:  # constant images: no spectrum to fit
        return float(low)
    design = torch.stack([torch.ones_like(radius[keep]), radius[keep].log()], 1)
    fit = torch.linalg.lstsq(design, amplitude[keep].log()[:, None]).solution
    return float(min(max(-float(fit[1, 0]), low), high))


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


def _transforms(transforms: Transforms | bool | None, input_shape: Sequence[int], field: ReceptiveField | None) -> Transforms | None:
    if transforms is True and field is not None:  # a neuron: sized to what it sees, not to the image
        return Transforms.for_size(*field.size)
    if transforms is True:
        return Transforms.for_size(int(input_shape[1]), int(input_shape[2]))
    if transforms is None or transforms is False:
        return None
    if not isinstance(transforms, Transforms):
        raise TypeError(f"transforms must be True (scaled to the input size), None or a Transforms, got {transforms!r}")
    return None if transforms.identity else transforms


@dataclass(frozen=True)
class _Canvas:
    """The part of the input a neuron's optimisation needs: its receptive field plus the warp's reach.

    ``top``, ``left``: where the canvas sits in the input (may run past its edges); ``size``: its
    ``(rows, columns)``; ``position``: the neuron's position on the layer's output for the canvas."""

    top: int
    left: int
    size: tuple[int, int]
    position: tuple[int, int]

    def paste(self, canvas: torch.Tensor, shape: tuple[int, int], fill: float = 0.5) -> torch.Tensor:
        """``canvas`` ``[N,C,h,w]`` in a ``fill`` image of ``shape`` ``(H, W)`` at its place (clipped to the image)."""
        n, c, h, w = canvas.shape
        out = canvas.new_full((n, c, *shape), fill)
        t, l_ = max(self.top, 0), max(self.left, 0)
        b, r = min(self.top + h, shape[0]), min(self.left + w, shape[1])
        out[:, :, t:b, l_:r] = canvas[:, :, t - self.top : b - self.top, l_ - self.left : r - self.left]
        return out


def _reach(warp: Transforms | None, jitter: int, radius: float) -> int:
    """How far (pixels) a point within ``radius`` of the warp's centre can be sampled from: the shifts, then
    the rotation and zoom (``|R(a) / z - I| * radius`` at the extremes), one more for bilinear sampling."""
    if warp is None:
        return jitter
    angles = (0.0, math.radians(warp.degrees))
    turn = max(math.hypot(math.cos(a) / z - 1, math.sin(a) / z) for a in angles for z in warp.scale)
    return warp.pad + warp.jitter + warp.fine_jitter + jitter + math.ceil(turn * radius) + 1


def _neuron_canvas(field: ReceptiveField, position: tuple[int, int], warp: Transforms | None, jitter: int) -> _Canvas | None:
    """A canvas smaller than the input on which the neuron at ``position`` computes the same function of its
    receptive field, or None where it would not be smaller or the field runs past the image (padding).

    The field's box plus the warp's reach on every side, widened so that the box starts on the layer's grid
    (``offset + k * stride``): the neuron is then position ``k`` of the canvas's output."""
    top, left, bottom, right = field.box(*position)
    if top < 0 or left < 0 or bottom > field.input[0] or right > field.input[1]:
        return None
    (rh, rw), (sh, sw), (oh, ow) = field.size, field.stride, field.offset
    margin = _reach(warp, jitter, 0.5 * math.hypot(rh, rw) + max(sh, sw))
    mt, ml = max(margin, oh), max(margin, ow)
    mt, ml = mt + (oh - mt) % sh, ml + (ow - ml) % sw  # the box starts on the grid: mt = oh + k * sh
    size = (mt + rh + margin, ml + rw + margin)
    if size[0] * size[1] >= field.input[0] * field.input[1]:
        return None
    return _Canvas(top=top - mt, left=left - ml, size=size, position=((mt - oh) // sh, (ml - ow) // sw))


def _canvas_agrees(run: Callable[[torch.Tensor], torch.Tensor], canvas: _Canvas, input_shape: tuple[int, ...],
                   position: tuple[int, int], device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the layer's output at the neuron on random canvases equals that at ``position`` of the full
    input with the canvas pasted into two different random images (so only the canvas matters), to float
    rounding. A model that rejects the smaller input, or that mixes positions (attention, a global pool
    before the layer), fails."""
    gen = torch.Generator().manual_seed(0)  # a local generator: the caller's and torch's global one stay untouched
    c = input_shape[0]
    small = torch.rand((2, c, *canvas.size), generator=gen).to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            out = run(small)
            if out.dim() != 4 or out.shape[2] <= canvas.position[0] or out.shape[3] <= canvas.position[1]:
                return False
            got = out[:, :, canvas.position[0], canvas.position[1]]
            inside = canvas.paste(torch.ones_like(small[:, :1]), tuple(input_shape[1:]), fill=0.0) > 0
            pasted = canvas.paste(small, tuple(input_shape[1:]))
            for _ in range(2):  # outside the canvas: each time other random pixels
                full = torch.rand((2, *input_shape), generator=gen).to(device=device, dtype=dtype)
                want = run(torch.where(inside, pasted, full))[:, :, position[0], position[1]]
                if not (want - got).abs().max() <= 1e-4 * want.abs().max() + 1e-6:
                    return False
    except (RuntimeError, ValueError, TypeError):  # the model refused the canvas's size: optimise the whole input
        return False
    return True


def activation_maximization(model: nn.Module, layer: str | None = None, filters: Sequence[int] | None = None, *,
                            class_scores: Sequence[int] | None = None, input_shape: tuple[int, int, int],
                            objective: str = "channel", position: tuple[int, int] | None = None,
                            steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, parameterization: str = "fourier",
                            transforms: Transforms | bool | None = True, diversity: float = 0.0,
                            images_per_unit: int = 1, init_std: float | None = None, decay_power: float | torch.Tensor = 1.0,
                            jitter: int = 0,
                            blur: float = 0.0, l2: float = 0.0, tv: float = 0.0,
                            colors: torch.Tensor | None = None, color_mean: torch.Tensor | None = None,
                            field: ReceptiveField | None = None, fast: bool = True,
                            generator: torch.Generator | None = None) -> ActMaxResult:
    """Optimise images for filters of ``layer`` (or for the classes in ``class_scores``), all in one batch.

    Objective for image i: ``mean_{h,w} layer(T(x_i))[u_i, h, w]`` (``objective="channel"``), or
    ``layer(T(x_i))[u_i, row, col]`` at ``position`` (``"neuron"``; default the centre of the layer's
    output), or the logit ``model(T(x_i))[c_i]``; minus ``diversity * gram_diversity``, ``l2 * mean (x_i - 0.5)^2``
    and ``tv * TV(x_i)``. ``T`` is a fresh random warp each step (``transforms=True``: Lucent's set scaled to
    the input size, or for a neuron to its measured receptive field; None: none). Maximised with Adam for ``steps`` steps from ``init_std``-sized noise
    (default 0.01 on the spectrum, 0.5 on pixel logits). ``filters=None`` takes every channel.
    ``parameterization="pixel"`` optimises ``sigmoid(p)`` pixel logits (``blur`` = Gaussian blur sigma after
    each step); ``"fourier"`` a 1/f-scaled spectrum with decorrelated colours: ``colors`` ``[3,3]`` (or ``[U,3,3]``,
    one per unit) is the square root of the colour covariance (None: Lucid's ImageNet one;
    :func:`color_correlation` of the user's images or of a unit's exemplars); ``color_mean`` ``[3]`` (or ``[U,3]``)
    centres the sigmoid on that colour instead of gray (RGB only); ``decay_power`` (or ``[U]``, one per unit) is the
    spectrum's 1/f exponent (:func:`spectrum_decay` of a unit's exemplars fits it); unlike Lucid's, a decay other
    than 1 is rescaled to 1/f's total energy, so it shifts energy to low frequencies without a larger step. ``jitter``: an extra
    integer roll (the old naive regulariser). Lucent equivalent: ``render.render_vis(model, "layer:unit")``
    with ``param.image(h, fft=True, decorrelate=True)`` and ``transform.standard_transforms``.

    A neuron sees only its receptive field (``field``, measured when None): its image is optimised on a
    canvas of that field plus the warp's reach, where the model computes the same neuron (checked on random
    canvases first, else the whole input is used), and returned pasted into a gray input of ``input_shape``;
    its activation is measured on that whole input. ``fast`` (default) runs the folded-BatchNorm,
    channels-last copy of the model (:func:`cnnlens.explain.accel.prepared`, ``layer`` kept as it is);
    ``fast=False`` the model itself. Runs on the model's device and dtype; the model and its ``.grad``
    are untouched; every random draw comes from ``generator``.

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
    if field is not None and (objective != "neuron" or not isinstance(field, ReceptiveField)):
        raise ValueError(f"field= is the layer's ReceptiveField for objective='neuron', got {field!r} with objective={objective!r}")
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
    for what, value, shape in (("colors", colors, (3, 3)), ("color_mean", color_mean, (3,))):
        if value is not None and not (isinstance(value, torch.Tensor) and tuple(value.shape[-len(shape):]) == shape
                                      and value.dim() <= len(shape) + 1 and input_shape[0] == 3):
            raise ValueError(f"{what} must be a tensor of shape {list(shape)} (or [units, {', '.join(map(str, shape))}]) for "
                             f"RGB inputs (input_shape (3, H, W)), got {getattr(value, 'shape', value)!r} with input_shape={input_shape!r}")
    input_shape = tuple(int(v) for v in input_shape)
    name = core.layer_name(model, layer) if layer is not None else None
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen_device = generator.device if generator is not None else torch.device("cpu")

    with core.guarded(model), core.hooks() as handles:
        for p in model.parameters():
            p.requires_grad_(False)  # gradients w.r.t. the image only; guarded() restores the flags
        gray = torch.full((1, *input_shape), 0.5, device=device, dtype=dtype)
        example = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
        net = accel.prepared(model, keep=[name] if name is not None else [], example=example) if fast else model
        module = net.get_submodule(name) if name is not None else None
        if objective == "neuron" and field is None:
            field = receptive_field(net, name, input_shape)
        warp = _transforms(transforms, input_shape, field if objective == "neuron" else None)
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
                out = net(accel.copy_input(net, x))
            except _Stop:
                pass
            if module is not None:
                if not captured:
                    raise ValueError(f"layer {layer!r} did not run in the model's forward pass")
                out = captured[0]
            return out

        with torch.no_grad():
            probe = run(gray)
        count = probe.shape[1]
        canvas = None
        if objective == "neuron":
            if probe.dim() != 4:
                raise ValueError(f"objective='neuron' needs a layer with a [N,C,H,W] output; {layer!r} gives {tuple(probe.shape)}")
            rows, cols = probe.shape[2:]
            position = (rows // 2, cols // 2) if position is None else tuple(position)
            if not (len(position) == 2 and all(is_int(v) for v in position) and 0 <= position[0] < rows and 0 <= position[1] < cols):
                raise ValueError(f"position must be (row, column) inside the layer's {rows}x{cols} output, got {position!r}")
            canvas = _neuron_canvas(field, position, warp, jitter)
            if canvas is not None and not _canvas_agrees(run, canvas, input_shape, position, device, dtype):
                canvas = None
        requested = class_scores if class_scores is not None else filters
        units = _check_units(range(count) if requested is None else requested, count,
                             "filter" if module is not None else "class")
        for what, value, rank in (("colors", colors, 3), ("color_mean", color_mean, 2)):
            if value is not None and value.dim() == rank and value.shape[0] != len(units):
                raise ValueError(f"{what} gives {value.shape[0]} units' colours for {len(units)} units")
        if isinstance(decay_power, torch.Tensor) and decay_power.shape != (len(units),):
            raise ValueError(f"decay_power must be a number or a tensor of one value per unit ([{len(units)}]), "
                             f"got shape {list(decay_power.shape)}")
        per_image = [v.repeat_interleave(images_per_unit, 0) if v is not None and v.dim() == r else v
                     for v, r in ((colors, 3), (color_mean, 2))]
        decay = (decay_power.double().repeat_interleave(images_per_unit, 0) if isinstance(decay_power, torch.Tensor)
                 else float(decay_power))
        units = tuple(u for u in units for _ in range(images_per_unit))
        idx = torch.tensor(units, device=device)

        def unit_values(out: torch.Tensor, where: tuple[int, int] | None) -> torch.Tensor:
            """The objective of each image's own unit ``[N]`` (a neuron at ``where``)."""
            own = out[torch.arange(out.shape[0], device=device), idx]
            if objective == "neuron":
                return own[:, where[0], where[1]]
            return own.flatten(1).mean(1) if own.dim() > 1 else own

        def whole(x: torch.Tensor) -> torch.Tensor:
            return canvas.paste(x, input_shape[1:]) if canvas is not None else x

        shape = (input_shape[0], *canvas.size) if canvas is not None else input_shape
        where = canvas.position if canvas is not None else position
        image = _Image((len(units), *shape), parameterization, float(init_std), generator, device, dtype, decay,
                       *per_image)
        # Adam by hand: torch.optim's first construction costs ~3 s of imports on this machine.
        mean, sq = torch.zeros_like(image.param), torch.zeros_like(image.param)
        beta1, beta2 = 0.9, 0.999

        with torch.no_grad():
            out = run(whole(image()))
            start = unit_values(out.clamp_min(0) if rectified else out, position)
        for step in range(1, steps + 1):
            x = image()
            if jitter:
                dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator, device=gen_device).tolist()
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if warp is not None:
                x = warp(x, generator)
            out = run(x)
            out = torch.nn.functional.leaky_relu(out, LEAK) if rectified else out
            gain = unit_values(out, where)
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
            final = whole(image())
            out = run(final)
            out = out.clamp_min(0) if rectified else out
            reached = unit_values(out, position)
            own = out[torch.arange(out.shape[0], device=device), idx]
            peak = own.flatten(1).amax(1) if own.dim() > 1 else own
    return ActMaxResult(images=final.detach(), activation=reached.detach(), start_activation=start.detach(),
                        peak=peak.detach(), units=units, layer=name,
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
