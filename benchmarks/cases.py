"""The benchmark's contestants: for each method, cnnlens's calls and the peers' calls on the same inputs.

A peer is measured with its default settings and with its batching knob set to the batch size at which
the model itself runs fastest in the peer's (contiguous) layout, measured for the floor: the best
batching a user of that peer could choose.

A *case* is one (model, method): images, the explained classes, a list of :class:`Contestant` (each a
zero-argument callable returning an output comparable across sides), how many model passes the
method needs (for the floor), and an agreement check between cnnlens and the peer.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cnnlens.explain import accel
from cnnlens.explain.accel.incremental import NotDecomposable, local_plan

os.environ.setdefault("TQDM_DISABLE", "1")  # lime 0.2 draws a tqdm bar over its samples: not part of the work
from cnnlens.explain.core import last_conv_layer
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.guided_backprop import guided_backprop
from cnnlens.explain.integrated_gradients import integrated_gradients
from cnnlens.explain.lime import hide_values, lime_explain, relabel, segment_images, weighted_ridge
from cnnlens.explain.core import class_score
from cnnlens.explain.occlusion import occlusion
from cnnlens.explain.saliency import saliency
from cnnlens.explain.smoothgrad import smoothgrad
from models import module_twin


@dataclass
class Contestant:
    """One way of computing the method: ``run()`` returns the output compared across sides."""

    name: str
    side: str  # "cnnlens" or "peer"
    run: Callable[[], torch.Tensor]
    config: str = ""
    default: bool = False  # the library's default settings (as opposed to its best batching)
    warmup: Callable[[], object] | None = None  # a cheaper call that fills the same caches (None: run itself)


@dataclass
class Case:
    """One (model, method) measurement."""

    model: str
    method: str
    settings: str
    images: int
    contestants: list[Contestant]
    passes: int  # model passes per image (forward or forward+backward)
    pass_kind: str  # "fwd" or "fwd+bwd"
    agreement: Callable[[], dict[str, float | str]] | None = None
    notes: list[str] = field(default_factory=list)
    reference: Callable[[], torch.Tensor] | None = None  # the same output computed in float64


def float64(fn: Callable[..., torch.Tensor], model: nn.Module, x: torch.Tensor, *args: object,
            **kwargs: object) -> Callable[[], torch.Tensor]:
    """``fn`` run on float64 copies of the model and images: the reference every side is measured against."""
    def run() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(copy.deepcopy(model).double(), x.double(), *args, **kwargs)
    return run


def error_vs(ours: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Largest error relative to the reference's scale, and the fraction of values off by > 1e-4 of it."""
    ours, reference = ours.detach().double().cpu(), reference.detach().double().cpu()
    scale = float(reference.abs().max())
    err = (ours - reference).abs()
    return {"max_rel_err": float(err.max()) / scale, "frac_off": float((err > 1e-4 * scale).double().mean())}


@dataclass(frozen=True)
class Sizes:
    """The workload: full benchmark or smoke."""

    smoothgrad_samples: int = 50
    ig_steps: int = 50
    patch: int = 5
    lime_samples: int = 1000
    sigma: float = 0.15


def _supports(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def plan_reason(model: nn.Module, x: torch.Tensor) -> str | None:
    """Why incremental occlusion and LIME's tables do not apply to ``model`` on images like ``x`` (None: they do)."""
    was = [m.training for m in model.modules()]
    model.eval()
    try:
        local_plan(model, x)
    except NotDecomposable as why:
        return str(why)
    finally:
        for m, mode in zip(model.modules(), was):
            m.training = mode
    return None


def captum():
    """Captum's attribution module, or None when it is not installed."""
    try:
        import captum.attr as attr
    except ImportError:
        return None
    return attr


def _quiet(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Run ``fn`` without the peers' UserWarnings (Captum warns about in-place ReLU hooks on every call)."""
    @functools.wraps(fn)
    def run() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return run


def max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference, and the same relative to the peer's largest magnitude."""
    ours, theirs = ours.detach().double().cpu(), theirs.detach().double().cpu()
    if ours.shape != theirs.shape:
        raise ValueError(f"outputs differ in shape: {tuple(ours.shape)} vs {tuple(theirs.shape)}")
    diff = float((ours - theirs).abs().max())
    scale = float(theirs.abs().max())
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale if scale > 0 else float("nan")}


# ---------------------------------------------------------------- gradient methods


def saliency_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes) -> Case:
    attr = captum()
    cs = [Contestant("cnnlens", "cnnlens", lambda: saliency(model, x, t, reduce=None), "default", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: saliency(fast, x, t, reduce=None), "prepared(model)")]
    if attr:
        cs.append(Contestant("Captum Saliency", "peer", lambda: attr.Saliency(model).attribute(x, target=t),
                             "default (one pass)", default=True))
    return Case(name, "saliency", "|d logit / dx|", len(x), cs, 1, "fwd+bwd",
                reference=float64(saliency, model, x, t, reduce=None))


def guided_backprop_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor,
                         sizes: Sizes) -> Case:
    attr = captum()
    cs = [Contestant("cnnlens", "cnnlens", lambda: guided_backprop(model, x, t, reduce=None), "default", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: guided_backprop(fast, x, t, reduce=None), "prepared(model)")]
    if attr:
        cs.append(Contestant("Captum GuidedBackprop", "peer",
                             _quiet(lambda: attr.GuidedBackprop(model).attribute(x, target=t)), "default", default=True))
    return Case(name, "guided backprop", "", len(x), cs, 1, "fwd+bwd",
                reference=float64(guided_backprop, model, x, t, reduce=None))


def input_x_gradient_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor,
                          sizes: Sizes) -> Case:
    from cnnlens.explain.input_x_gradient import input_x_gradient

    attr = captum()
    cs = [Contestant("cnnlens", "cnnlens", lambda: input_x_gradient(model, x, t, reduce=None), "default", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: input_x_gradient(fast, x, t, reduce=None), "prepared(model)")]
    if attr:
        cs.append(Contestant("Captum InputXGradient", "peer", lambda: attr.InputXGradient(model).attribute(x, target=t),
                             "default (one pass)", default=True))
    return Case(name, "input x gradient", "", len(x), cs, 1, "fwd+bwd",
                reference=float64(input_x_gradient, model, x, t, reduce=None))


def deconvnet_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor,
                   sizes: Sizes) -> Case:
    from cnnlens.explain.deconvnet import deconvnet

    attr = captum()
    cs = [Contestant("cnnlens", "cnnlens", lambda: deconvnet(model, x, t, reduce=None), "default", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: deconvnet(fast, x, t, reduce=None), "prepared(model)")]
    if attr:
        cs.append(Contestant("Captum Deconvolution", "peer",
                             _quiet(lambda: attr.Deconvolution(model).attribute(x, target=t)), "default", default=True))
    return Case(name, "deconvnet", "", len(x), cs, 1, "fwd+bwd", reference=float64(deconvnet, model, x, t, reduce=None))


def deeplift_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor,
                  sizes: Sizes) -> Case:
    from cnnlens.explain.deeplift import deeplift

    attr = captum()
    cs = [Contestant("cnnlens", "cnnlens", lambda: deeplift(model, x, t, reduce=None), "default", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: deeplift(fast, x, t, reduce=None), "prepared(model)")]
    if attr:
        cs.append(Contestant("Captum DeepLift", "peer", _quiet(lambda: attr.DeepLift(model).attribute(x, target=t)),
                             "default (zero baseline)", default=True))
        twin = module_twin(model)
        if twin is not None:
            cs.append(Contestant("Captum DeepLift", "peer", _quiet(lambda: attr.DeepLift(twin).attribute(x, target=t)),
                                 "module twin (nn.ReLU, nn.MaxPool2d)", default=True))
    # Captum loses its max-pool rule behind an nn.ReLU module (tests/test_explain_reference.py): where the
    # model max-pools after a ReLU its maps differ from the float64 reference by more than rounding
    return Case(name, "DeepLIFT", "Rescale, zero baseline", len(x), cs, 2, "fwd+bwd",
                reference=float64(deeplift, model, x, t, reduce=None))


def _captum_lrp_view(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """What a Captum user prepares for ``LRP`` by hand: a copy with each BatchNorm fused into its convolution
    (cnnlens's fold), the model's normalisation applied to the images instead, out-of-place ReLUs."""
    peer = accel.prepare(model, channels_last=False, pack=False)  # plain nn.Conv2d: Captum's rules go by type
    if isinstance(getattr(peer, "normalize", None), nn.Module):
        with torch.no_grad():
            x = peer.normalize(x)
        peer.normalize = nn.Identity()
    for m in peer.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return peer, x


def lrp_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes) -> Case:
    """LRP-epsilon on every layer (Captum's default rules) against Captum's ``LRP`` on the canonised view;
    Captum has no rule for residual adds (its maps there are not LRP's), so no peer on ResNet-18."""
    from cnnlens.explain.lrp import lrp

    attr = captum()
    options = dict(composite="epsilon", epsilon=1e-9, reduce=None)
    cs = [Contestant("cnnlens", "cnnlens", lambda: lrp(model, x, t, **options), "default", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: lrp(fast, x, t, **options), "prepared(model)")]
    notes = []
    if attr and not name.startswith("resnet"):
        from captum.attr._utils.lrp_rules import EpsilonRule

        peer, x_peer = _captum_lrp_view(model, x)

        def captum_lrp() -> torch.Tensor:
            for m in peer.modules():  # Captum removes its rules after each call; none for these by default
                if isinstance(m, (nn.Identity, nn.Flatten)):
                    m.rule = EpsilonRule(1e-9)
            return attr.LRP(peer).attribute(x_peer, target=t)

        cs.append(Contestant("Captum LRP", "peer", _quiet(captum_lrp), "default rules, canonised view (not timed)",
                             default=True))
        notes.append("Captum's view: BatchNorm fused, normalisation applied to the images, out-of-place ReLUs, "
                     "pass-through rules on Identity / Flatten (tests/test_explain_lrp.py: equal to 1e-7 in float64)")
    return Case(name, "LRP", "epsilon rule (1e-9) on every layer", len(x), cs, 1, "fwd+bwd",
                reference=float64(lrp, model, x, t, **options), notes=notes)


def _noise_scale(x: torch.Tensor, sigma: float) -> float:
    """Captum takes one stdev for the batch: the benchmark images share the same value range."""
    return float(sigma * (x.amax() - x.amin()))


@contextlib.contextmanager
def _captum_noise(noise: torch.Tensor) -> Iterator[None]:
    """Make Captum's NoiseTunnel add ``noise`` (``[N*n,C,H,W]``, image-major) instead of its own draws."""
    from captum.attr._core.noise_tunnel import NoiseTunnel

    original = NoiseTunnel.__dict__["_add_noise_to_input"]
    NoiseTunnel._add_noise_to_input = staticmethod(lambda inp, stdev, n: inp.repeat_interleave(n, dim=0) + noise)
    try:
        yield
    finally:
        NoiseTunnel._add_noise_to_input = original


def smoothgrad_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes,
                    fast_batch: int, peer_batch: int) -> Case:
    attr = captum()
    n_s, sigma = sizes.smoothgrad_samples, sizes.sigma

    def ours(m: nn.Module, batch_size: int | None = None) -> torch.Tensor:
        return smoothgrad(m, x, t, n_samples=n_s, sigma=sigma, generator=torch.Generator().manual_seed(0),
                          batch_size=batch_size, reduce=None)

    cs = [Contestant("cnnlens", "cnnlens", lambda: ours(model), "default (batch 16)", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: ours(fast, fast_batch), f"prepared(model), batch {fast_batch}")]
    agreement = None
    notes = []
    if attr:
        stdev = _noise_scale(x, sigma)

        def peer(batch: int | None) -> torch.Tensor:
            return attr.NoiseTunnel(attr.Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=n_s, stdevs=stdev, target=t, nt_samples_batch_size=batch)

        per_image = max(1, peer_batch // len(x))  # nt_samples_batch_size counts samples per image
        cs.append(Contestant("Captum NoiseTunnel(Saliency)", "peer", lambda: peer(None),
                             "default (all samples in one batch)", default=True))
        cs.append(Contestant("Captum NoiseTunnel(Saliency)", "peer", lambda: peer(per_image),
                             f"nt_samples_batch_size={per_image}"))

        def agreement() -> dict[str, float | str]:
            # The same noise on both sides: cnnlens's draws handed to Captum.
            g = torch.Generator().manual_seed(0)
            scale = sigma * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
            noise = torch.stack([torch.randn(x.shape, generator=g) for _ in range(n_s)], dim=1)
            noise = (noise * scale.view(-1, 1, 1, 1, 1)).flatten(0, 1)
            with _captum_noise(noise):
                theirs = peer(None)
            return {**max_diff(ours(model), theirs), "compared": "same noise draws"}
        notes.append("outputs compared with the same noise draws (cnnlens's draws handed to Captum)")
    return Case(name, "SmoothGrad", f"{n_s} samples, sigma {sigma}", len(x), cs, n_s, "fwd+bwd", agreement, notes)


def noise_tunnel_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes,
                      fast_batch: int, nt_type: str) -> Case:
    """VarGrad (``nt_type="vargrad"``) or SmoothGrad-Squared (``"smoothgrad_sq"``) of the signed / absolute
    gradient, against Captum's NoiseTunnel given cnnlens's noise."""
    from cnnlens.explain.smoothgrad_squared import smoothgrad_squared
    from cnnlens.explain.vargrad import vargrad

    attr = captum()
    n_s, sigma = sizes.smoothgrad_samples, sizes.sigma
    fn, label, signed = {"vargrad": (vargrad, "VarGrad", True),
                         "smoothgrad_sq": (smoothgrad_squared, "SmoothGrad-Squared", False)}[nt_type]

    def ours(m: nn.Module, batch_size: int | None = None) -> torch.Tensor:
        return fn(m, x, t, n_samples=n_s, sigma=sigma, generator=torch.Generator().manual_seed(0),
                  batch_size=batch_size, reduce=None)

    cs = [Contestant("cnnlens", "cnnlens", lambda: ours(model), "default (batch 16)", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: ours(fast, fast_batch), f"prepared(model), batch {fast_batch}")]
    agreement, notes = None, []
    if attr:
        stdev = _noise_scale(x, sigma)

        def peer() -> torch.Tensor:
            return attr.NoiseTunnel(attr.Saliency(model)).attribute(x, nt_type=nt_type, nt_samples=n_s, stdevs=stdev,
                                                                    target=t, abs=not signed)

        cs.append(Contestant("Captum NoiseTunnel(Saliency)", "peer", peer, "default (all samples in one batch)",
                             default=True))

        def agreement() -> dict[str, float | str]:
            g = torch.Generator().manual_seed(0)
            scale = sigma * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
            noise = torch.stack([torch.randn(x.shape, generator=g) for _ in range(n_s)], dim=1)
            with _captum_noise((noise * scale.view(-1, 1, 1, 1, 1)).flatten(0, 1)):
                theirs = peer()
            return {**max_diff(ours(model), theirs), "compared": "same noise draws"}
        notes.append("outputs compared with the same noise draws (cnnlens's draws handed to Captum)")
    return Case(name, label, f"{n_s} samples, sigma {sigma}", len(x), cs, n_s, "fwd+bwd", agreement, notes)


def deeplift_shap_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor,
                       sizes: Sizes, fast_batch: int, n_baselines: int = 8) -> Case:
    from cnnlens.explain.deeplift_shap import deeplift_shap

    attr = captum()
    base = torch.rand(n_baselines, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    cs = [Contestant("cnnlens", "cnnlens", lambda: deeplift_shap(model, x, t, baselines=base, reduce=None),
                     "default (batch 16)", default=True),
          Contestant("cnnlens fast", "cnnlens",
                     lambda: deeplift_shap(fast, x, t, baselines=base, batch_size=fast_batch, reduce=None),
                     f"prepared(model), batch {fast_batch}")]
    if attr:
        cs.append(Contestant("Captum DeepLiftShap", "peer",
                             _quiet(lambda: attr.DeepLiftShap(model).attribute(x, baselines=base, target=t)),
                             "default (all pairs in one batch)", default=True))
        twin = module_twin(model)
        if twin is not None:
            cs.append(Contestant("Captum DeepLiftShap", "peer",
                                 _quiet(lambda: attr.DeepLiftShap(twin).attribute(x, baselines=base, target=t)),
                                 "module twin (nn.ReLU, nn.MaxPool2d)", default=True))
    # as DeepLIFT: Captum's max-pool rule is lost behind an nn.ReLU module
    return Case(name, "DeepLiftShap", f"{n_baselines} uniform-noise baselines", len(x), cs, 2 * n_baselines,
                "fwd+bwd", reference=float64(deeplift_shap, model, x, t, baselines=base, reduce=None))


def gradient_shap_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes,
                       fast_batch: int, n_samples: int = 16, n_baselines: int = 8) -> Case:
    from cnnlens.explain.gradient_shap import gradient_shap

    attr = captum()
    base = torch.rand(n_baselines, *x.shape[1:], generator=torch.Generator().manual_seed(1))

    def ours(m: nn.Module, batch_size: int | None = None) -> torch.Tensor:
        return gradient_shap(m, x, t, baselines=base, n_samples=n_samples, generator=torch.Generator().manual_seed(0),
                             batch_size=batch_size, reduce=None)

    cs = [Contestant("cnnlens", "cnnlens", lambda: ours(model), "default (batch 16)", default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: ours(fast, fast_batch), f"prepared(model), batch {fast_batch}")]
    agreement, notes = None, []
    if attr:
        def peer() -> torch.Tensor:
            return attr.GradientShap(model).attribute(x, baselines=base, n_samples=n_samples, target=t)

        cs.append(Contestant("Captum GradientShap", "peer", peer, "default (all samples in one batch)", default=True))

        def agreement() -> dict[str, float | str]:
            # cnnlens's draws (baseline indices, then points on the path; no noise) handed to Captum, image-major
            g = torch.Generator().manual_seed(0)
            n = len(x)
            chosen = torch.randint(n_baselines, (n_samples * n,), generator=g)
            alphas = torch.rand(n_samples * n, generator=g)
            major = lambda v: v.view(n_samples, n).t().reshape(-1).numpy().copy()  # noqa: E731
            choice, uniform = np.random.choice, np.random.uniform
            np.random.choice = lambda k, size: major(chosen)
            np.random.uniform = lambda lo, hi, size: major(alphas.double())
            try:
                theirs = peer()
            finally:
                np.random.choice, np.random.uniform = choice, uniform
            return {**max_diff(ours(model), theirs), "compared": "same draws"}
        notes.append("outputs compared with the same draws (cnnlens's baseline indices and path points handed to Captum)")
    return Case(name, "GradientSHAP", f"{n_samples} samples, {n_baselines} uniform-noise baselines", len(x), cs,
                n_samples, "fwd+bwd", agreement, notes)


def blur_ig_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes,
                 fast_batch: int, max_sigma: float = 10.0) -> Case:
    """Blur IG against PAIR's ``saliency.core.BlurIG`` (numpy, one image at a time, the model's gradients in
    float32; ``batch_size=1``: with more, PAIR weighs a batch of steps by its last step's sigma difference)."""
    from cnnlens.explain.blur_ig import blur_ig

    steps = sizes.ig_steps
    cs = [Contestant("cnnlens", "cnnlens", lambda: blur_ig(model, x, t, max_sigma=max_sigma, n_steps=steps, reduce=None),
                     "default (batch 16)", default=True),
          Contestant("cnnlens fast", "cnnlens",
                     lambda: blur_ig(fast, x, t, max_sigma=max_sigma, n_steps=steps, batch_size=fast_batch, reduce=None),
                     f"prepared(model), batch {fast_batch}")]
    try:
        import saliency.core as pair
    except ImportError:
        pair = None
    if pair is not None:
        def gradients(target: int):
            def call(batch, call_model_args=None, expected_keys=None):
                # NCHW strides, written out: a permuted one-channel HWC batch counts as contiguous, but its strides
                # lead the convolutions to channels-last outputs, which a model's x.view(x.size(0), -1) refuses
                xb = torch.from_numpy(np.asarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)
                xb = xb.clone(memory_format=torch.contiguous_format).requires_grad_(True)
                (grad,) = torch.autograd.grad(model(xb)[:, target].sum(), xb)
                return {pair.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}
            return call

        def peer() -> torch.Tensor:
            maps = [pair.BlurIG().GetMask(img.permute(1, 2, 0).numpy(), gradients(int(c)), max_sigma=max_sigma,
                                          steps=steps, batch_size=1) for img, c in zip(x, t)]
            return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).float()

        cs.append(Contestant("PAIR saliency BlurIG", "peer", peer, "batch_size=1 (one image, one step at a time)",
                             default=True))
    return Case(name, "Blur IG", f"{steps} steps, max sigma {max_sigma}", len(x), cs, steps, "fwd+bwd",
                reference=float64(blur_ig, model, x, t, max_sigma=max_sigma, n_steps=steps, reduce=None))


@contextlib.contextmanager
def _numpy_quantile_keyword() -> Iterator[None]:
    """saliency 0.2.1 calls ``np.quantile(..., interpolation=)``, which numpy 2 renamed ``method=``."""
    quantile = np.quantile
    np.quantile = lambda a, q, interpolation=None, **kw: quantile(a, q, method=interpolation or "linear", **kw)
    try:
        yield
    finally:
        np.quantile = quantile


def _pair_gradients(model: nn.Module, target: int, dtype: torch.dtype = torch.float32):
    """PAIR's ``call_model_function``: gradients of ``target``'s logit for a batch of HWC images, the model's
    own dtype (PAIR keeps its path in float64 numpy)."""
    import saliency.core as pair

    def call(batch, call_model_args=None, expected_keys=None):
        xb = torch.from_numpy(np.asarray(batch)).permute(0, 3, 1, 2).to(dtype)  # NCHW strides, as in Blur IG's
        xb = xb.clone(memory_format=torch.contiguous_format).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xb)[:, target].sum(), xb)
        return {pair.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}
    return call


def guided_ig_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor,
                   sizes: Sizes) -> Case:
    """Guided IG against PAIR's ``saliency.core.GuidedIG`` (numpy, one image and one step at a time; it has no
    batching knob). The timed outputs differ by float32 (cnnlens's path) against float64 (PAIR's path): the
    feature selection sorts gradients, so near-ties pick other features; the agreement runs both in float64."""
    from cnnlens.explain.guided_ig import guided_ig

    steps = sizes.ig_steps
    cs = [Contestant("cnnlens", "cnnlens", lambda: guided_ig(model, x, t, n_steps=steps, reduce=None),
                     "default (fast)", default=True),
          Contestant("cnnlens", "cnnlens", lambda: guided_ig(model, x, t, n_steps=steps, reduce=None, fast=False),
                     "fast=False (the model itself)")]
    agreement, notes = None, []
    try:
        import saliency.core as pair
    except ImportError:
        pair = None
        notes.append("PAIR saliency not installed")
    if pair is not None:
        def peer(m: nn.Module = model, images: torch.Tensor = x, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            with _numpy_quantile_keyword():
                maps = [pair.GuidedIG().GetMask(img.permute(1, 2, 0).double().numpy(), _pair_gradients(m, int(c), dtype),
                                                x_steps=steps) for img, c in zip(images, t)]
            return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).to(images.dtype)

        cs.append(Contestant("PAIR saliency GuidedIG", "peer", peer, "default (one image, one step at a time)",
                             default=True))

        def agreement() -> dict[str, float | str]:
            m64, x64 = copy.deepcopy(model).double(), x.double()
            return {**max_diff(guided_ig(m64, x64, t, n_steps=steps, reduce=None, fast=False),
                               peer(m64, x64, torch.float64)), "compared": "float64 on both sides"}
        notes.append("agreement in float64 on both sides (the timed float32 maps differ where near-tied gradients "
                     "select other features)")
    return Case(name, "Guided IG", f"{steps} steps, fraction 0.25, max_dist 0.02, black baseline", len(x), cs,
                steps, "fwd+bwd", agreement, notes)


def xrai_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes,
              fast_batch: int, peer_batch: int) -> Case:
    """XRAI (its integrated gradients from the image's min and max, PAIR's Felzenszwalb segments, the full
    greedy search) against PAIR's ``saliency.core.XRAI``: the same work on both sides; the timed maps differ by
    the integrated gradients' quadrature (PAIR: equal weights on ``linspace(0, 1, steps)``; cnnlens:
    Gauss-Legendre), so the agreement gives PAIR cnnlens's attribution and segments."""
    from cnnlens.explain.integrated_gradients import integrated_gradients
    from cnnlens.explain.xrai import xrai, xrai_segments

    n_steps = 2 * sizes.ig_steps  # PAIR's default 100 on the full run
    cs = [Contestant("cnnlens", "cnnlens", lambda: xrai(model, x, t, n_steps=n_steps), "default (fast)", default=True),
          Contestant("cnnlens", "cnnlens", lambda: xrai(model, x, t, n_steps=n_steps, fast=False),
                     "fast=False (the model itself)")]
    agreement, notes = None, []
    try:
        import saliency.core as pair
    except ImportError:
        pair = None
        notes.append("PAIR saliency not installed")
    if pair is not None:
        def peer(batch: int) -> torch.Tensor:
            params = pair.XRAIParameters(steps=n_steps)
            maps = [pair.XRAI().GetMask(img.permute(1, 2, 0).numpy(), _pair_gradients(model, int(c)), batch_size=batch,
                                        extra_parameters=params) for img, c in zip(x, t)]
            return torch.from_numpy(np.stack(maps)).float()

        cs.append(Contestant("PAIR saliency XRAI", "peer", lambda: peer(1), "default (batch_size=1)", default=True))
        if peer_batch != 1:
            cs.append(Contestant("PAIR saliency XRAI", "peer", lambda: peer(peer_batch), f"batch_size={peer_batch}"))

        def agreement() -> dict[str, float | str]:
            i = 0
            img = x[i:i + 1]
            black = img.amin(dim=(1, 2, 3), keepdim=True).expand_as(img)
            white = img.amax(dim=(1, 2, 3), keepdim=True).expand_as(img)
            attr = sum(integrated_gradients(model, img, t[i:i + 1], baseline=b, n_steps=n_steps, reduce=None)
                       for b in (black, white)) / 2
            segments = xrai_segments(img[0])
            theirs = pair.XRAI().GetMask(img[0].permute(1, 2, 0).numpy(), None, segments=[m.numpy() for m in segments],
                                         base_attribution=attr[0].permute(1, 2, 0).double().numpy())
            ours = xrai(model, img, t[i:i + 1], attributions=attr, segments=[segments])
            return {**max_diff(ours[0], torch.from_numpy(theirs)), "compared": "cnnlens's attribution and "
                                                                                "segments given to PAIR, image 0"}
        notes.append("the timed maps differ by the integrated gradients' quadrature; agreement: PAIR given cnnlens's "
                     "attribution and segments (its segments are PAIR's own: tests/test_explain_reference_paths.py)")
    return Case(name, "XRAI", f"IG {n_steps} steps x 2 baselines, Felzenszwalb segments, full search", len(x), cs,
                2 * n_steps, "fwd+bwd", agreement, notes)


def integrated_gradients_case(name: str, model: nn.Module, fast: nn.Module, x: torch.Tensor, t: torch.Tensor,
                              sizes: Sizes, fast_batch: int, peer_batch: int) -> Case:
    attr = captum()
    steps = sizes.ig_steps
    cs = [Contestant("cnnlens", "cnnlens", lambda: integrated_gradients(model, x, t, n_steps=steps, reduce=None),
                     "default (batch 16)", default=True),
          Contestant("cnnlens fast", "cnnlens",
                     lambda: integrated_gradients(fast, x, t, n_steps=steps, batch_size=fast_batch, reduce=None),
                     f"prepared(model), batch {fast_batch}")]
    if attr:
        def peer(batch: int | None) -> torch.Tensor:
            return attr.IntegratedGradients(model).attribute(x, target=t, n_steps=steps, internal_batch_size=batch)

        cs.append(Contestant("Captum IntegratedGradients", "peer", lambda: peer(None),
                             "default (all steps in one batch)", default=True))
        cs.append(Contestant("Captum IntegratedGradients", "peer", lambda: peer(peer_batch),
                             f"internal_batch_size={peer_batch}"))
    notes: list[str] = []
    return Case(name, "integrated gradients", f"{steps} steps, Gauss-Legendre, zero baseline", len(x), cs,
                steps, "fwd+bwd", None, notes, float64(integrated_gradients, model, x, t, n_steps=steps, reduce=None))


def grad_cam_case(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes) -> Case:
    attr = captum()
    layer = last_conv_layer(model)
    fast = accel.prepared(model, keep=[layer], example=x)  # checked against the model, as grad_cam's default does
    cs = [Contestant("cnnlens", "cnnlens", lambda: grad_cam(model, x, t, layer=layer, upsample=False), "default",
                     default=True),
          Contestant("cnnlens fast", "cnnlens", lambda: grad_cam(fast, x, t, layer=layer, upsample=False),
                     f"prepared(model, keep=[{layer!r}])")]
    notes = [f"layer {layer!r} (the last convolution), maps at the layer's resolution (no upsampling on any side)"]
    module = dict(model.named_modules())[layer]
    if attr:
        cs.append(Contestant("Captum LayerGradCam", "peer",
                             lambda: attr.LayerGradCam(model, module).attribute(x, target=t, relu_attributions=True)[:, 0],
                             "default", default=True))
    try:
        from torchcam.methods import GradCAM
    except ImportError:
        notes.append("torchcam not installed")
    else:
        def torchcam_run() -> torch.Tensor:
            # torchcam's documented use: hooks live for the `with` block (construction is ~0.1 ms).
            with GradCAM(model, target_layer=layer, input_shape=tuple(x.shape[1:])) as extractor:
                scores = model(x)
                return extractor(class_idx=t.tolist(), scores=scores, normalized=False)[0].detach()

        cs.append(Contestant("torchcam GradCAM", "peer", torchcam_run, "default (normalized=False)", default=True))
    notes.append("pytorch-grad-cam (it requires torchvision) is measured apart in the peers' venv: "
                 "benchmarks/peers_cams.py")
    return Case(name, "Grad-CAM", f"layer {layer}", len(x), cs, 1, "fwd+bwd", None, notes,
                float64(grad_cam, model, x, t, layer=layer, upsample=False))


# ---------------------------------------------------------------- the CAM family (torchcam has six of them)

#: cnnlens method -> (torchcam class, label); the gradient ones run once, the score ones K x variants passes.
TORCHCAM_CAMS = {"grad-cam-pp": ("GradCAMpp", "Grad-CAM++"), "xgrad-cam": ("XGradCAM", "XGrad-CAM"),
                 "layer-cam": ("LayerCAM", "Layer-CAM"), "score-cam": ("ScoreCAM", "Score-CAM"),
                 "ss-cam": ("SSCAM", "SS-CAM"), "is-cam": ("ISCAM", "IS-CAM")}
#: SS-CAM's and IS-CAM's samples in the benchmark (the defaults, 35 and 10, take minutes a side per image).
CAM_SAMPLES = 4


class _SeededNoise:
    """torchcam's SSCAM noise replaced by cnnlens's draws (``std * randn`` from a seeded generator, in order)."""

    def __init__(self, std: float) -> None:
        self.generator, self.std = torch.Generator().manual_seed(0), std

    def sample(self, size: torch.Size) -> torch.Tensor:
        return self.std * torch.randn(size, generator=self.generator)


def full_resolution_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """The last module to run whose output is a feature map at the input's resolution (where torchcam's and the
    paper's order of scaling and upsampling agree), or None."""
    found: list[str] = []
    names = {m: n for n, m in model.named_modules() if n}
    hooks = [m.register_forward_hook(lambda m, _i, out: found.append(names[m]) if isinstance(out, torch.Tensor)
                                     and out.dim() == 4 and out.shape[2:] == x.shape[2:] else None) for m in names]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return found[-1] if found else None


def cam_family_case(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes, method: str,
                    peer_batch: int) -> Case:
    """One of the CAM family against torchcam on the model's CAM layer (the map its head pools), maps at the
    layer's resolution, not normalised, on both sides."""
    from cnnlens.explain import METHODS
    from cnnlens.explain.core import default_cam_layer
    from cnnlens.explain.feature_maps import feature_maps

    fn = METHODS[method]
    layer = default_cam_layer(model, x)
    scored = method in ("score-cam", "ss-cam", "is-cam")
    kw = {"n_samples": CAM_SAMPLES} if method in ("ss-cam", "is-cam") else {}
    seeded = (lambda: {"generator": torch.Generator().manual_seed(0)}) if method == "ss-cam" else dict

    def ours(fast: bool = True) -> torch.Tensor:
        return fn(model, x, t, layer=layer, upsample=False, fast=fast, **kw, **seeded())

    cs = [Contestant("cnnlens", "cnnlens", ours, "default" if not scored else "default (local plan, Winograd, "
                     "measured batch)", default=True),
          Contestant("cnnlens", "cnnlens", lambda: ours(False), "fast=False (the model itself)")]
    k = feature_maps(model, x[:1], [layer])[layer].shape[1]  # the channels: one masked pass each
    notes = [f"layer {layer!r} (the map the head pools), maps at its resolution on every side (normalized=False)"]
    agreement = None
    try:
        from torchcam import methods as tc
    except ImportError:
        notes.append("torchcam not installed")
        tc = None
    if tc is not None:
        cls = getattr(tc, TORCHCAM_CAMS[method][0])
        extra = {"num_samples": CAM_SAMPLES} if method in ("ss-cam", "is-cam") else {}

        def peer(batch: int | None = None, noise: object = None, at: str = layer) -> torch.Tensor:
            opts = {**extra, **({"batch_size": batch} if batch is not None else {})}
            with cls(model, target_layer=at, input_shape=tuple(x.shape[1:]), **opts) as extractor:
                if noise is not None:
                    extractor._distrib = noise
                if scored:
                    with torch.no_grad():
                        model(x)
                    return extractor(class_idx=t.tolist(), normalized=False)[0].detach()
                scores = model(x)
                return extractor(class_idx=t.tolist(), scores=scores, normalized=False)[0].detach()

        label = f"torchcam {TORCHCAM_CAMS[method][0]}"
        if scored:
            cs.append(Contestant(label, "peer", peer, "default (batch_size=32)", default=True))
            if peer_batch != 32:
                cs.append(Contestant(label, "peer", lambda: peer(peer_batch), f"batch_size={peer_batch}"))
            notes.append("torchcam scales each map to [0,1] before upsampling it, the paper (and cnnlens) after: "
                         "the maps differ by that (equal where the layer has the input's resolution: "
                         "tests/test_explain_cams_oracle.py)")
        else:
            cs.append(Contestant(label, "peer", peer, "default", default=True))
        full = full_resolution_layer(model, x) if scored else None
        if scored and full is not None:
            def agreement() -> dict[str, float | str]:
                # where the layer has the input's resolution the scaling order does not matter: same maps
                theirs = peer(noise=_SeededNoise(2.0) if method == "ss-cam" else None, at=full)
                mine = fn(model, x, t, layer=full, upsample=False, fast=False, **kw, **seeded())
                return {**max_diff(mine, theirs), "compared": f"layer {full!r} (the input's resolution)"
                        + (", the same noise draws" if method == "ss-cam" else "")}
        elif method == "grad-cam-pp":
            def agreement() -> dict[str, float | str]:
                # torchcam's GradCAMpp divides on a copy (tests/test_explain_cams_oracle.py); its SmoothGradCAMpp
                # without noise is the paper's formula where the gradient is constant per channel (this layer)
                class Zero:
                    def sample(self, size: torch.Size) -> torch.Tensor:
                        return torch.zeros(size)

                with tc.SmoothGradCAMpp(model, target_layer=layer, num_samples=1,
                                        input_shape=tuple(x.shape[1:])) as extractor:
                    extractor._distrib = Zero()
                    model(x)
                    theirs = extractor(class_idx=t.tolist(), normalized=False, eps=0.0)[0].detach()
                return {**max_diff(ours(False), theirs), "compared": "torchcam SmoothGradCAMpp without noise "
                                                                     "(its GradCAMpp divides on a copy)"}
    passes = k * (CAM_SAMPLES if method in ("ss-cam", "is-cam") else 1) if scored else 1
    settings = f"layer {layer}" + (f", {CAM_SAMPLES} samples" if kw else "")
    return Case(name, TORCHCAM_CAMS[method][1], settings, len(x), cs, passes, "fwd" if scored else "fwd+bwd",
                agreement, notes)


# ---------------------------------------------------------------- perturbation methods


def occlusion_case(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes, stride: int,
                   peer_batch: int) -> Case:
    attr = captum()
    p = sizes.patch
    c, h, w = x.shape[1:]
    windows = (-(-(h - p) // stride) + 1) * (-(-(w - p) // stride) + 1)
    fast_call = functools.partial(occlusion, fast=True)
    plan = plan_reason(model, x)
    incremental = plan is None
    cs = [Contestant("cnnlens", "cnnlens", lambda: occlusion(model, x, t, patch=p, stride=stride), "default (batch 16)",
                     default=True, warmup=lambda: occlusion(model, x, t, patch=p, stride=p)),
          Contestant("cnnlens fast", "cnnlens", _quiet(lambda: fast_call(model, x, t, patch=p, stride=stride)),
                     "incremental" if incremental else f"plain occlusion on prepare(model) ({plan})",
                     warmup=_quiet(lambda: fast_call(model, x, t, patch=p, stride=p)))]
    notes = [] if incremental else [f"incremental occlusion does not apply: {plan}; fast = folded BN, channels-last, tuned batch"]
    if attr:
        def forward(z: torch.Tensor) -> torch.Tensor:
            return model(z).softmax(1)

        def peer(ppe: int, s: int = stride) -> torch.Tensor:
            return attr.Occlusion(forward).attribute(x, target=t, sliding_window_shapes=(c, p, p), strides=(c, s, s),
                                                     baselines=0.0, perturbations_per_eval=ppe)[:, 0]

        ppe = max(1, peer_batch // len(x))  # perturbations_per_eval counts occluded copies per image
        cs.append(Contestant("Captum Occlusion", "peer", lambda: peer(1), "default (perturbations_per_eval=1)",
                             default=True, warmup=lambda: peer(1, p)))
        if ppe != 1:
            cs.append(Contestant("Captum Occlusion", "peer", lambda: peer(ppe), f"perturbations_per_eval={ppe}",
                                 warmup=lambda: peer(ppe, p)))
    return Case(name, "occlusion", f"{p}x{p} patches, stride {stride} ({windows} windows), black, probability",
                len(x), cs, windows + 1, "fwd", None, notes)


def lime_case(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes, peer_batch: int) -> Case:
    n_s = sizes.lime_samples
    segments = segment_images(x, "slic")
    notes = [f"same SLIC segments on both sides ({int(relabel(segments)[1].float().mean())} per image on average); "
             "each side draws its own random masks, so the timed outputs differ by sampling noise; "
             "'max diff' is measured with lime's masks given to cnnlens's scoring and ridge"]
    has_fast = _supports(lime_explain, "fast")

    def ours(fast: bool = False, samples: int = n_s) -> torch.Tensor:
        kwargs = {"fast": True} if fast else {}
        return lime_explain(model, x, t, segmentation=segments, n_samples=samples,
                            generator=torch.Generator().manual_seed(0), **kwargs).map()

    # Warm-ups at the full sample count: the first full-size call after another workload (the cases before)
    # ran ~20% slower on resnet18 while the allocator adapted; a 50-sample warm-up did not adapt it.
    cheap = n_s
    cs = [Contestant("cnnlens", "cnnlens", ours, "default", default=True, warmup=lambda: ours(False, cheap))]
    if has_fast:
        cs.append(Contestant("cnnlens fast", "cnnlens", lambda: ours(True), "fast=True", warmup=lambda: ours(True, cheap)))
    else:
        notes.append("cnnlens fast not measured: lime_explain has no fast= option in this tree")
    agreement = None
    try:
        from lime import lime_image
    except ImportError:
        notes.append("lime not installed")
    else:
        images_hwc = x.permute(0, 2, 3, 1).double().cpu().numpy()
        if x.shape[1] == 1:
            images_hwc = np.repeat(images_hwc, 3, axis=-1)  # lime works on RGB; the model reads channel 0
        seg_np = segments.cpu().numpy()

        def classifier(batch: np.ndarray) -> np.ndarray:
            z = torch.from_numpy(batch).float().permute(0, 3, 1, 2)[:, : x.shape[1]].contiguous().to(x.device)
            with torch.no_grad():
                return model(z).softmax(1).cpu().numpy()

        def peer(batch: int, samples: int = n_s) -> torch.Tensor:
            maps = []
            for i in range(len(x)):
                explainer = lime_image.LimeImageExplainer(random_state=i)
                exp = explainer.explain_instance(images_hwc[i], classifier, labels=(int(t[i]),), top_labels=None,
                                                 hide_color=None, num_samples=samples, batch_size=batch,
                                                 segmentation_fn=lambda _img, s=seg_np[i]: s, random_seed=0)
                weights = dict(exp.local_exp[int(t[i])])
                maps.append(np.vectorize(lambda s: weights.get(s, 0.0))(seg_np[i]))
            return torch.from_numpy(np.stack(maps)).float()

        cs.append(Contestant("lime", "peer", lambda: peer(10), "default (batch_size=10)", default=True,
                             warmup=lambda: peer(10, cheap)))
        if peer_batch != 10:
            cs.append(Contestant("lime", "peer", lambda: peer(peer_batch), f"batch_size={peer_batch}",
                                 warmup=lambda: peer(peer_batch, cheap)))

        def agreement() -> dict[str, float | str]:
            # lime draws its masks with RandomState(random_state).randint(0, 2, (samples, S)), row 0 all on.
            i = 0
            seg = segments[i : i + 1]
            segs, num = relabel(seg)
            s = int(num[0])
            masks = np.random.RandomState(i).randint(0, 2, n_s * s).reshape(n_s, s)
            masks[0] = 1
            masks_t = torch.from_numpy(masks).bool().to(x.device)
            fill = hide_values(x[i : i + 1], segs, s, "mean")
            shown = masks_t[:, segs[0].reshape(-1)].reshape(n_s, 1, *x.shape[2:])
            with torch.no_grad():
                scores = torch.cat([class_score(model(torch.where(shown[k : k + 100], x[i : i + 1], fill)),
                                                t[i].expand(len(shown[k : k + 100])), "probability")
                                    for k in range(0, n_s, 100)])
            distance = 1 - (masks_t.sum(1).double() / s).sqrt()
            kernel = torch.exp(-(distance**2) / 0.25**2).sqrt()
            coef, _, _ = weighted_ridge(masks_t[None].double(), scores[None].double(), kernel[None], 1.0)
            ours_map = coef[0][segs[0]]
            return {**max_diff(ours_map, peer(10)[0]), "compared": "lime's masks, image 0"}

    return Case(name, "LIME", f"{n_s} samples, hide = segment mean, probability", len(x), cs, n_s + 1, "fwd",
                agreement, notes)


# ---------------------------------------------------------------- perturbation methods on masks and superpixels


def rise_case(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes, peer_batch: int) -> Case:
    """RISE against the paper's reference code (eclique/RISE's PyTorch class): the masks precomputed as one
    tensor, ``model(masks * x)`` in batches under no_grad, ``probs.T @ masks``; given cnnlens's masks."""
    from cnnlens.explain.rise import build_masks, draw_masks, rise, upsampling_matrix

    n_masks, cells, p = 8 * sizes.lime_samples, 7, 0.5  # TorchRay's 8000 masks on the full run
    h, w = x.shape[2:]

    def ours() -> torch.Tensor:
        return rise(model, x, t, n_masks=n_masks, generator=torch.Generator().manual_seed(0))

    grids, shifts = draw_masks(len(x), n_masks, cells, p, (h, w), torch.Generator().manual_seed(0))
    up_h = upsampling_matrix(cells, (cells + 1) * -(-h // cells), device=x.device)
    up_w = upsampling_matrix(cells, (cells + 1) * -(-w // cells), device=x.device)
    masks = [build_masks(grids[i].to(x.device), shifts[i].to(x.device), up_h, up_w, (h, w)) for i in range(len(x))]

    def peer(batch: int) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(len(x)):
                stack = masks[i][:, None] * x[i]
                probs = torch.cat([model(stack[k:k + batch]).softmax(1) for k in range(0, n_masks, batch)])
                out.append((probs[:, int(t[i])] @ masks[i].reshape(n_masks, -1)).reshape(h, w) / (n_masks * p))
        return torch.stack(out)

    cs = [Contestant("cnnlens", "cnnlens", ours, "default (fast)", default=True),
          Contestant("RISE reference", "peer", lambda: peer(100), "gpu_batch=100 (its default)", default=True)]
    if peer_batch != 100:
        cs.append(Contestant("RISE reference", "peer", lambda: peer(peer_batch), f"gpu_batch={peer_batch}"))
    notes = ["the reference is the paper's PyTorch class (masks precomputed, not timed); both sides use cnnlens's "
             "masks, which equal scikit-image's resize of the same grids (tests/test_explain_perturb_rise.py)"]
    return Case(name, "RISE", f"{n_masks} masks, {cells}x{cells} cells, p={p}, probability", len(x), cs,
                n_masks + 1, "fwd", None, notes)  # the same masks on both sides: the timed outputs are compared


def _superpixels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from cnnlens.explain.segmentation import superpixels

    return superpixels(x, "slic")


def feature_ablation_case(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, peer_batch: int) -> Case:
    """Feature ablation over SLIC superpixels against Captum's FeatureAblation with the same feature mask."""
    from cnnlens.explain.feature_ablation import feature_ablation

    attr = captum()
    segments, num = _superpixels(x)
    cs = [Contestant("cnnlens", "cnnlens", lambda: feature_ablation(model, x, t, segmentation=segments),
                     "default (fast)", default=True)]
    if attr:
        def peer(ppe: int) -> torch.Tensor:
            return attr.FeatureAblation(lambda z: model(z).softmax(1)).attribute(
                x, target=t, baselines=0.0, feature_mask=segments[:, None], perturbations_per_eval=ppe)[:, 0]

        ppe = max(1, peer_batch // len(x))
        cs.append(Contestant("Captum FeatureAblation", "peer", lambda: peer(1), "default (perturbations_per_eval=1)",
                             default=True))
        if ppe != 1:
            cs.append(Contestant("Captum FeatureAblation", "peer", lambda: peer(ppe), f"perturbations_per_eval={ppe}"))
    s = float(num.double().mean())  # deterministic on both sides: the timed outputs are compared
    return Case(name, "feature ablation", f"SLIC superpixels ({s:.0f} per image), black, probability", len(x), cs,
                int(s) + 1, "fwd", None, [])


def kernel_shap_case(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: Sizes, peer_batch: int) -> Case:
    """KernelSHAP over SLIC superpixels against Captum's KernelShap with the same feature mask (each side draws
    its own coalitions; the agreement check gives Captum cnnlens's)."""
    from cnnlens.explain.kernel_shap import coalitions, kernel_shap

    attr = captum()
    segments, num = _superpixels(x)
    # at least 4 coalitions per segment: with fewer than the segments the regression is underdetermined, and
    # two least-squares solvers pick different minimum-norm answers (the smoke run's tiny images have ~60)
    n_s = max(sizes.lime_samples, 4 * int(num.max()))

    def ours() -> torch.Tensor:
        return kernel_shap(model, x, t, segmentation=segments, n_samples=n_s, generator=torch.Generator().manual_seed(0))

    cs = [Contestant("cnnlens", "cnnlens", ours, "default (fast)", default=True)]
    agreement = None
    if attr:
        def peer(ppe: int, rows: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
            out = []
            for i in range(len(x)):  # Captum fits one surrogate per example
                shap = attr.KernelShap(lambda z: model(z).softmax(1))
                if rows is not None:  # cnnlens's coalitions and their weights (the Shapley kernel's where it
                    # enumerated every coalition; 1 where it drew them from the kernel; Captum's 1e6 for the two ends)
                    def given(_inputs, **_kw):
                        yield from (r[None] for r in rows)

                    wanted = iter([1e6, 1e6, *weights[2:].tolist()])
                    shap.perturb_func = given
                    shap.similarity_func = lambda *_a, **_kw: torch.tensor([next(wanted)])
                out.append(shap.attribute(x[i:i + 1], target=int(t[i]), baselines=0.0, feature_mask=segments[i:i + 1, None],
                                          n_samples=n_s, perturbations_per_eval=ppe)[0, 0])
            return torch.stack(out)

        ppe = max(1, peer_batch)
        cs.append(Contestant("Captum KernelShap", "peer", lambda: peer(1), "default (perturbations_per_eval=1)",
                             default=True))
        if ppe != 1:
            cs.append(Contestant("Captum KernelShap", "peer", lambda: peer(ppe), f"perturbations_per_eval={ppe}"))

        def agreement() -> dict[str, float | str]:
            masks, weights = coalitions(num[:1], n_s, torch.Generator().manual_seed(0), x.device)
            theirs = peer(ppe, rows=masks[0, :, : int(num[0])].long(), weights=weights[0])
            return {**max_diff(ours()[0], theirs[0]), "compared": "cnnlens's coalitions given to Captum, image 0"}

    return Case(name, "KernelSHAP", f"{n_s} coalitions, SLIC superpixels, black, probability", len(x), cs, n_s,
                "fwd", agreement, [])
