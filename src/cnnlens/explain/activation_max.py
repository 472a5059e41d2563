"""Activation maximisation (Erhan et al. 2009; Simonyan et al. 2014): the input a filter or class likes most.

Gradient ascent on input images from a noise start: image i maximises the mean activation of filter
``filters[i]`` of ``layer`` (or the logit of ``class_scores[i]``), all images in one batch. Regularisers
keep the pictures readable: random jitter each step, Gaussian blur of the pixels (Yosinski et al. 2015),
an L2 and a total-variation penalty (Mahendran & Vedaldi 2015), or a decorrelated Fourier
parameterisation (Olah et al. 2017, as in lucid/lucent) instead of raw pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlens._checks import check_int, is_int
from cnnlens.explain import core
from cnnlens.explain.integrated_gradients import gaussian_blur

PARAMETERIZATIONS = ("pixel", "fourier")
# lucid's colour decorrelation: square root of the ImageNet colour covariance (Olah et al. 2017).
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


@dataclass(frozen=True)
class ActMaxResult:
    """Images that maximise chosen units, and how strongly.

    Attributes:
        images: ``[F,C,H,W]`` in [0,1]; image i maximises unit ``units[i]``.
        activation: ``[F]`` the objective each image reaches (no jitter).
        start_activation: ``[F]`` the objective of the noise it started from.
        units: the filters (or classes) optimised, in order.
        layer: the layer's name, or None for class scores.
    """

    images: torch.Tensor
    activation: torch.Tensor
    start_activation: torch.Tensor
    units: tuple[int, ...]
    layer: str | None


class _Stop(Exception):
    """Raised by the capture hook: nothing after the chosen layer needs computing."""


class _Image:
    """An image batch parameterised by free tensors (pixels or a scaled spectrum) mapped into [0,1]."""

    def __init__(self, shape: tuple[int, ...], kind: str, generator: torch.Generator | None, device: torch.device) -> None:
        f, c, h, w = shape
        self.kind, self.size = kind, (h, w)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if kind == "pixel":
            init = 0.5 * torch.randn(shape, generator=generator, device=gen_device)
        else:
            init = 0.01 * torch.randn((f, c, h, w // 2 + 1, 2), generator=generator, device=gen_device)
            fy = torch.fft.fftfreq(h)[:, None]
            fx = torch.fft.rfftfreq(w)[None, :]
            # 1/frequency scaling: every frequency band gets about equal energy (lucid's fft_image).
            self.scale = (1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))).to(device)[..., None]
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


def activation_maximization(model: nn.Module, layer: str | None = None, filters: Sequence[int] | None = None, *,
                            class_scores: Sequence[int] | None = None, input_shape: tuple[int, int, int],
                            steps: int = 128, lr: float = 0.05, parameterization: str = "pixel",
                            jitter: int = 1, blur: float = 0.0, l2: float = 0.0, tv: float = 0.0,
                            generator: torch.Generator | None = None) -> ActMaxResult:
    """Optimise one image per filter of ``layer`` (or per class in ``class_scores``), all in one batch.

    Objective for image i: ``mean_{h,w} layer(x_i)[filters[i], h, w] - l2 * mean (x_i - 0.5)^2 - tv * TV(x_i)``
    (or the logit ``model(x_i)[class_scores[i]]``), maximised with Adam for ``steps`` steps from noise.
    ``filters=None`` takes every channel of the layer. ``parameterization="pixel"`` optimises
    ``sigmoid(p)`` pixel logits (``blur`` = sigma of a Gaussian blur applied to them after each step);
    ``"fourier"`` optimises a 1/f-scaled spectrum with decorrelated colours. ``jitter`` = random shift of
    up to that many pixels each step. Runs on the model's device; the model and its ``.grad`` are untouched.

    >>> res = activation_maximization(model, "features.3", [0, 5, 9], input_shape=(1, 48, 48),
    ...                               generator=torch.Generator().manual_seed(0))
    >>> res.images.shape, bool((res.activation > res.start_activation).all())
    """
    if (layer is None) == (class_scores is None):
        raise ValueError("give either layer (with filters) or class_scores, not both and not neither")
    if class_scores is not None and filters is not None:
        raise ValueError("filters= applies to a layer; with class_scores= leave it None")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be 'pixel' or 'fourier', got {parameterization!r}")
    if parameterization == "fourier" and blur:
        raise ValueError("blur= applies to the 'pixel' parameterization; the Fourier one already favours smooth images")
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(is_int(v, 1) for v in input_shape)):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
    check_int(steps, "steps", 0)
    if jitter < 0 or blur < 0 or l2 < 0 or tv < 0 or not lr > 0:
        raise ValueError(f"jitter, blur, l2, tv must be >= 0 and lr > 0, got {jitter=}, {blur=}, {l2=}, {tv=}, {lr=}")
    module = core.get_layer(model, layer) if layer is not None else None
    device = next(model.parameters(), torch.empty(0)).device
    gen_device = generator.device if generator is not None else torch.device("cpu")

    with core.guarded(model), core.hooks() as handles:
        for p in model.parameters():
            p.requires_grad_(False)  # gradients w.r.t. the image only; guarded() restores the flags
        captured: list[torch.Tensor] = []
        if module is not None:
            def capture(_m: nn.Module, _inp: object, out: object) -> None:
                if not isinstance(out, torch.Tensor) or out.dim() < 2:
                    raise TypeError(f"layer {layer!r} outputs {type(out).__name__}, not a tensor [N,C,...]")
                captured.append(out)
                raise _Stop

            handles.append(module.register_forward_hook(capture))

        def objective_per_unit(x: torch.Tensor) -> torch.Tensor:
            """Activation ``[N, units]`` averaged over positions (or logits)."""
            captured.clear()
            try:
                out = model(x)
            except _Stop:
                pass
            if module is not None:
                if not captured:
                    raise ValueError(f"layer {layer!r} did not run in the model's forward pass")
                out = captured[0]
            return out.flatten(2).mean(2) if out.dim() > 2 else out

        with torch.no_grad():
            count = objective_per_unit(torch.full((1, *input_shape), 0.5, device=device)).shape[1]
        requested = class_scores if class_scores is not None else filters
        units = _check_units(range(count) if requested is None else requested, count,
                             "filter" if module is not None else "class")
        input_shape = tuple(input_shape)
        idx = torch.tensor(units, device=device)

        image = _Image((len(units), *input_shape), parameterization, generator, device)
        # Adam by hand: torch.optim's first construction costs ~3 s of imports on this machine.
        mean, sq = torch.zeros_like(image.param), torch.zeros_like(image.param)
        beta1, beta2 = 0.9, 0.999

        def objective(x: torch.Tensor) -> torch.Tensor:
            return objective_per_unit(x).gather(1, idx[:, None]).squeeze(1)

        with torch.no_grad():
            start = objective(image())
        for step in range(1, steps + 1):
            x = image()
            if jitter:
                dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator, device=gen_device).tolist()
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            gain = objective(x)
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
            reached = objective(final)
    return ActMaxResult(images=final.detach(), activation=reached.detach(), start_activation=start.detach(),
                        units=units, layer=layer if isinstance(layer, str) else None)
