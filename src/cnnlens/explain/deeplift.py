"""DeepLIFT with the Rescale rule (Shrikumar, Greenside & Kundaje 2017): the difference of the target score
from its value at a baseline, distributed back to the input by multipliers instead of gradients.

``DeepLIFT(x) = (x - b) * m``, where ``m`` is backpropagated like a gradient except that every
elementwise nonlinearity ``y = f(z)`` uses the finite-difference multiplier ``(f(z) - f(z_b)) / (z - z_b)``
(its derivative where ``|z - z_b|`` is below ``eps`` or
rounding noise, :data:`NOISE_ULPS`) and max-pooling sends ``max(o, o_b) - o_b`` to the input's
argmax and ``o - max(o, o_b)`` to the baseline's (Captum's rule: both keep summation-to-delta). For a
network of linear layers, ReLU-like activations and max-pools, ``sum DeepLIFT(x) = logit_t(x) - logit_t(b)``
exactly. Image and baseline run as one batch ``[x; b]``; a ``TorchFunctionMode`` active for the one call
replaces the backward of every nonlinearity the forward pass computes (``nn.ReLU``, ``F.relu``, in place or
not, reused modules; ELU, LeakyReLU, sigmoid, tanh, softplus, GELU, SiLU, ...; ``nn.MaxPool2d`` and
``F.max_pool2d``); the model is not modified.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlens._checks import is_number
from cnnlens._types import Reduce, Target
from cnnlens.explain import accel, core
from cnnlens.explain.core import RELU_FUNCTIONS
from cnnlens.explain.guided_backprop import with_backward_rule
from cnnlens.explain.integrated_gradients import make_baseline
from cnnlens.explain.registry import Paper, method

#: Elementwise nonlinearities whose backward becomes the rescale multiplier (the modules call these).
ELEMENTWISE = RELU_FUNCTIONS | frozenset({
    F.elu, F.elu_, F.leaky_relu, F.leaky_relu_, F.hardtanh, F.hardtanh_, F.relu6, F.selu, F.celu,
    torch.sigmoid, torch.Tensor.sigmoid, torch.Tensor.sigmoid_, F.sigmoid, torch.tanh, torch.Tensor.tanh,
    torch.Tensor.tanh_, F.tanh, F.softplus, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
})
#: The 2-D max-pooling entry points (``nn.MaxPool2d`` calls the first two).
MAX_POOLS = frozenset({F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d})


def _pool_arguments(input: torch.Tensor, kernel_size: object, stride: object = None, padding: object = 0,
                    dilation: object = 1, ceil_mode: bool = False, return_indices: bool = False) -> dict[str, object]:
    """The arguments of a max-pool call, by name (``torch.max_pool2d`` spells 'no stride' ``[]``)."""
    return {"kernel_size": kernel_size, "stride": stride if stride not in ([], ()) else None, "padding": padding,
            "dilation": dilation, "ceil_mode": ceil_mode}


#: Differences below this many units of the last place of a layer's largest value (per image) are rounding
#: noise: float32 computes the image's and the baseline's equal values (a black region against a black
#: baseline) a few ulps apart, and the ratio of two rounding errors would be an arbitrary multiplier.
NOISE_ULPS = 16
#: Max-pool inputs closer than this fraction of the layer's largest value count as tied (the first wins),
#: in every dtype: about 16 float32 ulps, so float32 and float64 break the same ties alike.
TIE = 2e-6


def noise_floor(x: torch.Tensor, n: int, fraction: float | None = None) -> torch.Tensor:
    """``[n, 1, ...]``: rounding noise of the pair batch ``[x; x_b]``, :data:`NOISE_ULPS` of its largest value
    (or ``fraction`` of it)."""
    dims = tuple(range(1, x.dim()))  # reduced in place: flatten(1) would copy a channels-last tensor
    top = torch.maximum(x.detach().amax(dim=dims), x.detach().amin(dim=dims).neg_())
    share = NOISE_ULPS * torch.finfo(x.dtype).eps if fraction is None else fraction
    return (share * torch.maximum(top[:n], top[n:])).view(-1, *[1] * (x.dim() - 1))


def no_difference(x: torch.Tensor, dx: torch.Tensor, n: int, eps: float) -> torch.Tensor:
    """``[n, ...]`` bool: where ``dx = x[:n] - x[n:]`` is below ``eps`` plus rounding noise."""
    return dx.abs() < eps + noise_floor(x, n)


def _elementwise_rule(op: Callable[[torch.Tensor], torch.Tensor], n: int, eps: float, *, relu: bool = False):
    """The rescale multiplier of elementwise ``op`` on the pair batch ``[z; z_b]`` (both halves alike);
    ``relu``: ``op`` is a ReLU, whose derivative ``z > 0`` needs no autograd pass."""

    def rule(before: torch.Tensor, out: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        dz = before[:n] - before[n:]
        small = no_difference(before, dz, n, eps)
        ratio = (out[:n] - out[n:]).div_(dz.masked_fill_(small, 1.0))
        if not bool(small.any()):  # one multiplier for both halves
            return lambda grad: (grad.unflatten(0, (2, n)) * ratio).flatten(0, 1)
        if relu:  # no difference to rescale: the derivative, at each half's own input (0 at 0, as autograd's)
            slope = (before > 0).to(before.dtype)
        else:
            with torch.enable_grad():
                z = before.detach().requires_grad_(True)
                (slope,) = torch.autograd.grad(op(z.clone()).sum(), z)
        multiplier = torch.where(small, slope.unflatten(0, (2, n)), ratio).flatten(0, 1)
        return lambda grad: grad * multiplier

    return rule


def max_pool(x: torch.Tensor, pool: dict[str, object], *, return_indices: bool = False) -> object:
    """``F.max_pool2d(x, **pool)``, on the CPU in channels-last for an NCHW input and back: torch's NCHW max-pool
    kernel is ~10x its channels-last one there (6.4 against 0.5 ms for [16,32,48,48], one thread, torch 2.13),
    the models that need NCHW (``x.view(x.size(0), -1)``) keep it, and the values and indices are the same."""
    if x.device.type != "cpu" or x.dim() != 4 or x.shape[1] == 1 or not x.is_contiguous():
        return F.max_pool2d(x, **pool, return_indices=return_indices)
    out = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), **pool, return_indices=return_indices)
    return tuple(o.contiguous() for o in out) if return_indices else out.contiguous()


def _two(v: object) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))  # type: ignore[index]


def first_argmax(x: torch.Tensor, pool: dict[str, object], out_size: tuple[int, int],
                 tol: torch.Tensor) -> torch.Tensor:
    """Max-pool indices (flat ``h * W + w``, ``[N,C,oh,ow]``) where values apart by rounding noise count as
    tied, so the choice does not depend on how a kernel rounded them. Overlapping windows: the winner is the
    window's first input within ``tol`` (``[N,1,1,1]``) of its max. Non-overlapping windows (``MaxPool2d(k)``,
    the common case) take a rule five times cheaper (two max-pools, not ``k*k`` strided passes): the input at
    window position ``r`` beats the max at position ``m > r`` when within ``(m - r) tol`` of it, at most
    ``(k*k - 1) tol``; the same winners wherever the near-ties are closer than ``tol``."""
    (kh, kw), (dh, dw), (ph, pw) = _two(pool["kernel_size"]), _two(pool["dilation"]), _two(pool["padding"])
    sh, sw = _two(pool["stride"] if pool["stride"] is not None else pool["kernel_size"])
    (oh, ow), (h, w) = out_size, x.shape[2:]
    if (sh, sw) == (kh, kw) and (dh, dw, ph, pw) == (1, 1, 0, 0):
        # Non-overlapping windows (the usual MaxPool2d(k)): a bonus of (k*k - 1 - position in the window) x tol
        # makes the first of values within tol the largest, and torch's own pooling finds it (two passes).
        rank = (torch.arange(h, device=x.device) % kh)[:, None] * kw + (torch.arange(w, device=x.device) % kw)[None, :]
        bonus = (kh * kw - 1 - rank).to(x.dtype)
        return max_pool(x + bonus * tol.view(-1, 1, 1, 1), pool, return_indices=True)[1]
    # -inf padding as max-pooling's, enough on the far sides for ceil_mode's last windows
    extra_h = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    extra_w = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    padded = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h), value=-torch.inf)
    # Window position (i, j) of every window at once is a strided view of the padded map: the window's max,
    # then, from the last position to the first, where a value is within tol of it (the first one wins).
    # Elementwise passes over [N,C,oh,ow]; unfolding the windows and an argmax over them cost 10x more.
    views = [(i, j, padded[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw])
             for i in range(kh) for j in range(kw)]
    top = views[0][2]
    for _, _, v in views[1:]:
        top = torch.maximum(top, v)
    low = top - tol.view(-1, 1, 1, 1)
    rows = torch.arange(oh, device=x.device)[:, None] * sh - ph
    cols = torch.arange(ow, device=x.device)[None, :] * sw - pw
    index = torch.zeros(top.shape, dtype=torch.long, device=x.device)
    for i, j, v in reversed(views):
        index = torch.where(v >= low, (rows + i * dh) * w + cols + j * dw, index)
    return index


def _max_pool_rule(pool: dict[str, object], n: int, eps: float):
    """Captum's max-pool rule on ``[x; x_b]``: ``max(o, o_b) - o_b`` to x's argmax, ``o - max(o, o_b)`` to
    the baseline's, divided by the input difference (the gradient where it is below ``eps``)."""

    def rule(before: torch.Tensor, out: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        # The argmax, with values within rounding noise of each other counted as tied (the first one wins): a
        # constant baseline ties every window, and float32 kernels of another layout would otherwise pick
        # any of the tied inputs by their rounding.
        tie = noise_floor(before, n, TIE)
        index = first_argmax(before, pool, tuple(out.shape[2:]), torch.cat([tie, tie])).flatten(2)
        top = torch.maximum(out[:n], out[n:])
        delta_out = torch.cat([top - out[n:], out[:n] - top])
        dx = before[:n] - before[n:]
        small = no_difference(before, dx, n, eps)
        any_small = bool(small.any())
        dx = dx.masked_fill_(small, 1.0)

        def grad_input(grad: torch.Tensor) -> torch.Tensor:
            def scatter(values: torch.Tensor) -> torch.Tensor:  # sums where windows overlap (unpooling overwrites)
                flat = values.new_zeros(*before.shape[:2], before.shape[2] * before.shape[3])
                return flat.scatter_add_(2, index, values.flatten(2)).view(before.shape)

            moved = scatter(grad * delta_out)
            rescaled = (moved[:n] + moved[n:]).div_(dx)
            if any_small:
                return torch.where(small, scatter(grad).unflatten(0, (2, n)), rescaled).flatten(0, 1)
            return torch.cat([rescaled, rescaled])

        return grad_input

    return rule


class _Rescale(TorchFunctionMode):
    """DeepLIFT's backward for every nonlinearity computed on the pair batch ``[x; b]`` (``2 n`` rows)
    while active; ``count`` says how many."""

    def __init__(self, n: int, eps: float) -> None:
        super().__init__()
        self.n, self.eps, self.count = n, eps, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        kwargs = kwargs or {}
        x = args[0] if args else None
        paired = isinstance(x, torch.Tensor) and x.requires_grad and x.dim() >= 1 and x.shape[0] == 2 * self.n
        if not paired or "out" in kwargs or (func not in ELEMENTWISE and func not in MAX_POOLS):
            return func(*args, **kwargs)
        self.count += 1
        if func in ELEMENTWISE:
            op = lambda t: func(t, *args[1:], **kwargs)  # noqa: E731
            rule = _elementwise_rule(op, self.n, self.eps, relu=func in RELU_FUNCTIONS)
            return with_backward_rule(op, x, rule, keep_input=True)
        if x.dim() != 4:  # an unbatched or odd pooling: its gradient
            self.count -= 1
            return func(*args, **kwargs)
        bound = inspect.signature(_pool_arguments).bind(*args, **kwargs).arguments
        pool = _pool_arguments(*args, **kwargs)
        out = with_backward_rule(lambda t: max_pool(t, pool), x, _max_pool_rule(pool, self.n, self.eps))
        if bound.get("return_indices", False) or func is F.max_pool2d_with_indices:
            return out, max_pool(x.detach(), pool, return_indices=True)[1]
        return out


def deeplift_pair(net: nn.Module, images: torch.Tensor, baselines: torch.Tensor, target: Target,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Raw DeepLIFT ``[N,C,H,W]`` of ``images`` against same-shaped ``baselines`` on ``net`` (already guarded),
    the resolved targets and how many nonlinearities were rescaled."""
    n = images.shape[0]
    pair = torch.cat([images, baselines]).detach().requires_grad_(True)
    with _Rescale(n, eps) as mode:
        logits = net(pair)
    t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits[:n].detach(), device=images.device)
    # both halves' scores: each half then carries the same gradient, which the max-pool rule needs
    score = core.target_scores(logits[:n], t).sum() + core.target_scores(logits[n:], t).sum()
    (grad,) = torch.autograd.grad(score, pair)
    return (images - baselines) * grad[:n], t, mode.count


def check_rescaled(model: nn.Module, count: int, name: str) -> None:
    """A TorchScript model computes its nonlinearities inside its compiled graph, where DeepLIFT cannot
    rescale them: raise rather than return gradient x difference under DeepLIFT's name."""
    if count == 0 and any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ValueError(f"{name} rescales the model's nonlinearities, and this TorchScript archive computes them "
                         "inside its compiled graph, out of reach; explain the eager model, or use integrated "
                         "gradients instead")


def check_eps(eps: float) -> None:
    if not is_number(eps) or not eps > 0:
        raise ValueError(f"eps must be a positive number (below it an input difference counts as none), got {eps!r}")


@method("deeplift", "DeepLIFT", kind="gradient",
        paper=Paper("Shrikumar, Greenside & Kundaje", 2017, "Learning important features through propagating "
                    "activation differences"))
def deeplift(model: nn.Module, images: torch.Tensor, target: Target = None, *,
             baseline: str | float | torch.Tensor = "zeros", eps: float = 1e-10, reduce: Reduce = "sum",
             fast: bool = True) -> torch.Tensor:
    """DeepLIFT, Rescale rule (Shrikumar et al. 2017): ``(x - b) * m``, ``m`` the gradient with every
    nonlinearity's derivative replaced by ``(f(z) - f(z_b)) / (z - z_b)``.

    ``baseline``: as in :func:`~cnnlens.explain.integrated_gradients.integrated_gradients` (``"zeros"``,
    the default as in Captum, is a black image for cnnlens's [0,1] inputs; ``"mean"``, ``"blur"``, a number
    or a tensor). Returns ``[N,H,W]`` summed over channels (signed; for ReLU / max-pool networks the sum
    over pixels is exactly ``logit_t(x) - logit_t(b)``), raw ``[N,C,H,W]`` with ``reduce=None``: Captum's
    ``DeepLift`` (which rescales listed module types only, ``nn.ReLU`` among them; here also ``F.relu``,
    reused modules and GELU / SiLU / Hardswish, whose plain gradient Captum keeps; max-pools with overlapping
    windows add where Captum's unpooling overwrites). ``fast``: as in
    :func:`~cnnlens.explain.saliency.saliency`.

    >>> maps = deeplift(model, images, target=3, baseline="blur")
    """
    core.check_images(images)
    check_eps(eps)
    x = images.detach()
    base = make_baseline(x, baseline)
    with core.guarded(model, images):
        net = accel.prepared(model, example=x) if fast else model
        attr, _, count = deeplift_pair(net, x, base, target, float(eps))
    check_rescaled(model, count, "DeepLIFT")
    return core.reduce_channels(attr, reduce)
