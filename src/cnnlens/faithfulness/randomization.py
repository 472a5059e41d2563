"""Model-parameter randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

If an explanation reflects what the model learned, destroying the learned weights must change it. The
weights are re-initialised from the output back, either *cascading* (stage k: the top k layers random)
or *independent* (stage k: only layer k random), always on a deep copy: the user's model is never
touched. Each randomised map is compared with the original by the Spearman rank correlation of absolute
values and by SSIM; a method whose maps stay similar (guided backprop, in the paper) fails the check.

"Layers" are the modules that own parameters, in the order a forward pass calls them, with every
normalisation layer joined to the parametric layer before it (conv + its BatchNorm are one layer).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens._ranks import rank_correlation
from cnnlens._checks import check_choice
from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.faithfulness._checks import check_maps

MODES = ("cascading", "independent")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
#: SSIM as Wang et al. 2004 and skimage (gaussian_weights=True, sigma=1.5, use_sample_covariance=False).
SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03

#: An attribution method as the runner passes it: ``fn(model, images, target) -> [N,H,W]``.
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LayerGroup:
    """One randomisation unit: a parametric module and the normalisation layers that follow it."""

    name: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class RandomizationResult:
    """Similarity of randomised to original maps, per method, layer stage and image.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        layers: randomised layer names, output first; stage ``k`` (0-based) randomised ``layers[k]``
            (independent) or ``layers[:k+1]`` (cascading).
        spearman, ssim: method -> ``[L,N]`` similarity at each stage (1 = unchanged).
        example_maps: method -> ``[L+1,H,W]`` maps of one image: the original, then each stage.
        example_index: which image ``example_maps`` shows.
    """

    mode: str
    layers: tuple[str, ...]
    spearman: dict[str, torch.Tensor]
    ssim: dict[str, torch.Tensor]
    example_maps: dict[str, torch.Tensor]
    example_index: int


def parameter_layers(model: nn.Module, example: torch.Tensor) -> list[LayerGroup]:
    """The model's layers from the output back, found by calling it once on ``example`` ``[1,C,H,W]``.

    A layer is a module with parameters of its own, in the order the forward pass first calls it
    (registration order can differ); a normalisation layer joins the layer before it. Modules the
    forward pass never calls are left out: randomising them could not change anything.
    """
    owners = {m: name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    if not owners:
        raise ValueError("model has no parameters to randomise")
    called: list[nn.Module] = []
    with core.guarded(model), core.hooks() as handles, torch.inference_mode():
        for m in owners:
            handles.append(m.register_forward_pre_hook(lambda mod, _inp: called.append(mod) if mod not in called else None))
        model(example[:1])
    groups: list[list[str]] = []
    for m in called:
        if isinstance(m, NORM_LAYERS) and groups:
            groups[-1].append(owners[m])
        else:
            groups.append([owners[m]])
    return [LayerGroup("+".join(g), tuple(g)) for g in reversed(groups)]


@torch.no_grad()
def randomize_layer(model: nn.Module, group: LayerGroup, seed: int) -> None:
    """Re-initialise ``group``'s modules of ``model`` in place (call it on a copy).

    Conv/linear-like parameters get fresh draws from PyTorch's default initial distribution,
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = weight[0].numel()``, from a generator seeded
    with ``seed`` (the global RNG is not used). Normalisation layers are reset to their initial state
    (``reset_parameters``: scale 1, shift 0, running mean 0, running variance 1), which is what
    re-initialising them means.
    """
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    for name in group.modules:
        m = modules[name]
        if isinstance(m, NORM_LAYERS) and hasattr(m, "reset_parameters"):
            m.reset_parameters()
            continue
        params = dict(m.named_parameters(recurse=False))
        weight = params.get("weight")
        for pname, p in params.items():
            ref = weight if weight is not None and weight.dim() >= 2 else p
            fan_in = ref[0].numel() if ref.dim() >= 2 else ref.numel()
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).to(p))


def spearman(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """``[N]`` Spearman rank correlation between the maps ``a[i]`` and ``b[i]`` (of |values| by default).

    Pearson correlation of the average ranks (:func:`cnnlens._ranks.rank_correlation`; ties as in
    ``scipy.stats.spearmanr``). Undefined when a map is constant: then identical maps score 1 and any
    other pair 0 (a constant ranks nothing).

    >>> spearman(maps, maps)  # tensor([1., 1., ...])
    """
    check_maps(a, "a")
    check_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if absolute:
        a, b = a.abs(), b.abs()
    return rank_correlation(a, b)


def _gaussian_window(sigma: float, device: torch.device) -> torch.Tensor:
    radius = int(SSIM_TRUNCATE * sigma + 0.5)  # scipy.ndimage.gaussian_filter's radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def scale_abs(maps: torch.Tensor) -> torch.Tensor:
    """``|m| / max|m|`` per map (an all-zero map stays zero): Adebayo et al.'s normalisation before SSIM."""
    a = maps.detach().abs().double()
    return a / a.flatten(1).amax(1).clamp(min=1e-300)[:, None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """``[N]`` structural similarity (Wang et al. 2004) between the maps ``a[i]`` and ``b[i]``.

    Batched torch port of ``skimage.metrics.structural_similarity(a, b, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: Gaussian-weighted local means,
    variances and covariance, ``S = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))``,
    averaged over the pixels at least 5 px from the border (as skimage crops). ``normalize`` first maps
    each to ``|m| / max|m|`` so that ``data_range=1``. Maps must be at least 11x11.
    """
    check_maps(a, "a")
    check_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    win = _gaussian_window(SSIM_SIGMA, a.device)
    if min(a.shape[1:]) < win.numel():
        raise ValueError(f"SSIM needs maps of at least {win.numel()}x{win.numel()} pixels, got {tuple(a.shape[1:])}")
    x, y = (scale_abs(a), scale_abs(b.to(a.device))) if normalize else (a.double(), b.to(a.device).double())
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1).reshape(-1, 1, *a.shape[1:])
    stack = F.conv2d(F.conv2d(stack, win.view(1, 1, 1, -1)), win.view(1, 1, -1, 1))  # "valid" = skimage's crop
    mx, my, mxx, myy, mxy = stack.reshape(a.shape[0], 5, *stack.shape[2:]).unbind(1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data_range = 1
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _state(model: nn.Module, group: LayerGroup) -> dict[str, dict[str, torch.Tensor]]:
    modules = dict(model.named_modules())
    return {name: {k: v.clone() for k, v in modules[name].state_dict().items()} for name in group.modules}


def model_randomization(model: nn.Module, images: torch.Tensor, methods: Mapping[str, Explainer],
                        target: Target = None, *, mode: str = "cascading", layers: Sequence[str] | None = None,
                        original_maps: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
                        example_index: int = 0) -> RandomizationResult:
    """Randomise ``model``'s layers from the output back (on a copy) and compare each method's maps.

    Adebayo et al. 2018. ``methods``: name -> ``fn(model, images, target) -> [N,H,W]``;
    ``mode``: ``"cascading"`` (top k layers random at stage k) or ``"independent"`` (only layer k);
    ``layers``: names from :func:`parameter_layers` to use (default all), ordered from the output back;
    ``original_maps``: the methods' maps on the intact model, if already computed; ``target`` is resolved
    once on the intact model (None = its predicted class) and kept fixed. Layer k is re-initialised with
    seed ``seed + k`` (:func:`randomize_layer`), so cascading and independent draw the same weights.

    >>> r = model_randomization(model, images, {"saliency": saliency, "guided-backprop": guided_backprop})
    >>> r.spearman["saliency"].mean(1)  # [L]: falls towards 0 as layers are randomised
    """
    core.check_images(images)
    check_choice(mode, MODES, "mode")
    if not methods:
        raise ValueError("methods is empty; give at least one name -> explanation function")
    n, _, h, w = images.shape
    if not 0 <= example_index < n:
        raise ValueError(f"example_index must be in [0, {n - 1}], got {example_index}")
    images = images.detach()
    with core.guarded(model), torch.inference_mode():
        logits = core.predict_logits(model, images)
    t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=images.device)
    all_layers = parameter_layers(model, images)
    if layers is None:
        groups = all_layers
    else:
        by_name = {g.name: g for g in all_layers}
        unknown = [name for name in layers if name not in by_name]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; layers (output first): {', '.join(by_name)}")
        groups = [g for g in all_layers if g.name in set(layers)]
    original: dict[str, torch.Tensor] = {}
    for name, fn in methods.items():
        given = None if original_maps is None else original_maps.get(name)
        original[name] = (fn(model, images, t) if given is None else given).detach()
        check_maps(original[name], f"maps of {name!r}", n=n, size=(h, w))
    copy_ = copy.deepcopy(model)
    for p in copy_.parameters():
        p.grad = None
    spear = {name: torch.empty(len(groups), n, dtype=torch.float64) for name in methods}
    sim = {name: torch.empty(len(groups), n, dtype=torch.float64) for name in methods}
    example = {name: [original[name][example_index].cpu()] for name in methods}
    for k, group in enumerate(groups):
        saved = _state(copy_, group) if mode == "independent" else None
        randomize_layer(copy_, group, seed + all_layers.index(group))
        for name, fn in methods.items():
            maps = fn(copy_, images, t).detach()
            check_maps(maps, f"maps of {name!r}", n=n, size=(h, w))
            spear[name][k] = spearman(original[name], maps).cpu()
            sim[name][k] = ssim(original[name], maps).cpu()
            example[name].append(maps[example_index].cpu())
        if saved is not None:
            modules = dict(copy_.named_modules())
            for mname, state in saved.items():
                modules[mname].load_state_dict(state)
    return RandomizationResult(mode=mode, layers=tuple(g.name for g in groups), spearman=spear, ssim=sim,
                               example_maps={k: torch.stack(v) for k, v in example.items()},
                               example_index=example_index)


@dataclass(frozen=True)
class MprtResult:
    """Quantus's MPRT for N images: ``layers`` randomised in order, ``similarity`` ``[L,N]`` the Spearman
    correlation of each stage's |map| to the original's, ``score`` ``[N]`` its mean over the layers."""

    order: str
    layers: tuple[str, ...]
    similarity: torch.Tensor
    score: torch.Tensor


#: Quantus's layer orders: cascading from the output ("top_down") or one layer at a time.
MPRT_ORDERS = ("top_down", "independent")


def _reset(module: nn.Module, seed: int) -> None:
    """``module.reset_parameters()`` drawn after ``torch.manual_seed(seed)`` (as Quantus does it), with torch's
    global random state saved and restored around it: the user's random stream is left where it was."""
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        module.reset_parameters()


def mprt(model: nn.Module, images: torch.Tensor, explain: Explainer, target: Target = None, *,
         order: str = "top_down", seed: int = 42, maps: torch.Tensor | None = None) -> MprtResult:
    """Model Parameter Randomisation Test as Quantus's ``MPRT`` defines it (Adebayo et al. 2018); lower is better.

    The layers are the modules with a ``reset_parameters`` method, in registration order, reversed for
    ``order="top_down"`` (cascading from the output; ``"independent"``: one layer at a time on the
    intact model). Each is re-initialised by its own ``reset_parameters()`` after seeding torch with
    ``seed + 1``, on a copy, and every image re-explained; ``similarity[l, i]`` is the Spearman correlation
    of ``|map|`` (divided by its maximum, which ranks do not see) to the original's. ``score`` is its mean
    over the layers. Quantus's ``return_average_correlation`` means to return that, but also averages in
    the original-vs-original similarity (it skips a key ``"orig"`` but stores ``"original"``), pulling every
    score towards 1 by ``1 / (L + 1)``; the tests show both. cnnlens's own check
    (:func:`model_randomization`) joins each normalisation layer to the layer before it and goes in
    forward-pass order; this one is Quantus's, for numbers comparable with it.
    """
    core.check_images(images)
    check_choice(order, MPRT_ORDERS, "order")
    n, _, h, w = images.shape
    images = images.detach()
    with core.guarded(model), torch.inference_mode():
        logits = core.predict_logits(model, images)
    t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=images.device)
    original = (explain(model, images, t) if maps is None else maps).detach()
    check_maps(original, "maps", n=n, size=(h, w))
    copy_ = copy.deepcopy(model)
    for p in copy_.parameters():
        p.grad = None
    saved = copy.deepcopy(copy_.state_dict())
    layers = [(name, m) for name, m in copy_.named_modules() if hasattr(m, "reset_parameters")]
    if not layers:
        raise ValueError("model has no layer with reset_parameters() to randomise")
    if order == "top_down":
        layers = layers[::-1]
    similarity = torch.empty(len(layers), n, dtype=torch.float64)
    for k, (_, module) in enumerate(layers):
        if order == "independent":
            copy_.load_state_dict(saved)
        _reset(module, seed + 1)
        randomized = explain(copy_, images, t).detach()
        check_maps(randomized, "maps of the randomised model", n=n, size=(h, w))
        similarity[k] = spearman(original, randomized).cpu()
    return MprtResult(order=order, layers=tuple(name for name, _ in layers), similarity=similarity,
                      score=similarity.mean(0))
