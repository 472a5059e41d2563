"""Infidelity and max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (In)fidelity and
Sensitivity of Explanations", NeurIPS).

* Infidelity: how well the map predicts the change of the target's score under random perturbations,
  ``E_I[(I . map - (f(x) - f(x - I)))^2]``; lower is better. With ``normalize`` (default) the map is first
  scaled by the least-squares ``beta = E[I.map (f(x) - f(x-I))] / E[(I.map)^2]``, so maps of any scale
  compare (Captum's ``normalize=True``). ``I`` is Gaussian pixel noise shared by the channels (the map
  has one value per pixel), ``f`` the target's softmax probability.
* Max-sensitivity: how much the map changes when the image moves a little,
  ``max_k ||e(x + d_k) - e(x)|| / ||e(x)||`` with ``d_k`` uniform in ``[-r, r]`` per input value; lower is
  better. It re-runs the explanation ``n_perturbations`` times.

Captum's ``captum.metrics.infidelity`` and ``sensitivity_max`` compute the same numbers given the same
perturbations (the tests feed them ours); here the perturbations come from a seeded generator.

>>> infidelity(model, images, maps, generator=torch.Generator().manual_seed(0))   # [N]
>>> max_sensitivity(model, images, lambda m, x, t: saliency(m, x, t), target)      # [N]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnlens._checks import check_count, is_number
from cnnlens._types import Target
from cnnlens.explain import core
from cnnlens.explain.accel import fast_forward
from cnnlens.faithfulness._checks import check_generator, check_maps

#: Infidelity's default noise std, in pixel units of [0,1] images; max-sensitivity's default radius
#: (Captum's ``perturb_radius``).
NOISE, RADIUS = 0.05, 0.02
#: A map function as the runner passes it: ``fn(model, images, target) -> [N,H,W]``.
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_positive(value: object, name: str) -> float:
    if not is_number(value) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def infidelity_noise(images: torch.Tensor, n_perturbations: int, noise: float = NOISE,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The perturbations ``I`` ``[N,K,1,H,W]``: Gaussian noise of std ``noise``, one draw per pixel and sample."""
    n, _, h, w = images.shape
    return noise * torch.randn(n, n_perturbations, 1, h, w, generator=check_generator(generator),
                               dtype=torch.float64).to(images.device)


def infidelity(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
               n_perturbations: int = 10, noise: float = NOISE, normalize: bool = True,
               perturbations: torch.Tensor | None = None, generator: torch.Generator | None = None,
               batch_size: int | None = None) -> torch.Tensor:
    """Infidelity of ``maps`` ``[N,H,W]`` per image, ``[N]`` float64 (Yeh et al. 2019); lower is better.

    ``infid = mean_k (beta I_k . map - (f(x) - f(x - I_k)))^2``, ``beta`` the least-squares scale with
    ``normalize`` (else 1), ``f`` the target's softmax probability, ``I_k`` :func:`infidelity_noise`
    (or ``perturbations`` ``[N,K,1,H,W]`` given). Captum's ``infidelity(forward, perturb, x, a, target=t,
    normalize=True)`` with ``a = map / C`` on every channel and ``perturb`` returning the same ``I``.

    >>> infidelity(model, images, grad_cam(model, images)).mean()
    """
    core.check_images(images)
    n, c, h, w = images.shape
    check_maps(maps, n=n, size=(h, w))
    if perturbations is None:
        check_count(n_perturbations, "n_perturbations")
        perturbations = infidelity_noise(images, n_perturbations, _check_positive(noise, "noise"), generator)
    elif tuple(perturbations.shape[:1]) + tuple(perturbations.shape[2:]) != (n, 1, h, w):
        raise ValueError(f"perturbations must have shape [N,K,1,H,W] = [{n},K,1,{h},{w}], got {tuple(perturbations.shape)}")
    k = perturbations.shape[1]
    images = images.detach()
    pert = perturbations.to(images.device)
    shifted = (images[:, None] - pert.to(images.dtype)).reshape(n * k, c, h, w)
    with core.guarded(model, images):
        forward = fast_forward(model, images)  # outside inference mode: the cached copy serves gradient methods too
    with core.guarded(model, images), torch.inference_mode():
        clean = core.predict_logits(model, images, batch_size)
        t = core.resolve_target(target, n, clean.shape[1], logits=lambda: clean, device=images.device)
        bs = batch_size or max(core.default_batch_size(images.device), 64)
        f_x = clean.double().softmax(1).gather(1, t[:, None])
        f_shift = torch.cat([forward(shifted[s:s + bs]).double().softmax(1) for s in range(0, n * k, bs)])
        f_shift = f_shift.gather(1, t.repeat_interleave(k)[:, None]).reshape(n, k)
    delta = (f_x - f_shift).clone()  # f(x) - f(x - I), a normal tensor
    dot = (pert[:, :, 0].double() * maps.detach().to(pert.device).double()[:, None]).sum((2, 3))  # I . map [N,K]
    if normalize:
        beta = (dot * delta).mean(1) / (dot * dot).mean(1)
        beta = torch.where((dot * dot).mean(1) > 0, beta, torch.zeros_like(beta))
        dot = beta[:, None] * dot
    return ((dot - delta) ** 2).mean(1)


def sensitivity_noise(images: torch.Tensor, n_perturbations: int, radius: float = RADIUS,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Max-sensitivity's input shifts ``[N,K,C,H,W]``: uniform in ``[-radius, radius]`` per input value."""
    u = torch.rand(images.shape[0], n_perturbations, *images.shape[1:], generator=check_generator(generator))
    return ((2 * u - 1) * radius).to(images.device, images.dtype)


def max_sensitivity(model: nn.Module, images: torch.Tensor, explain: Explainer, target: Target = None, *,
                    maps: torch.Tensor | None = None, n_perturbations: int = 10, radius: float = RADIUS,
                    shifts: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Max-sensitivity of ``explain`` per image, ``[N]`` float64 (Yeh et al. 2019); lower is better.

    ``max_k ||e(x + d_k) - e(x)||_F / ||e(x)||_F`` (``||e(x)|| = 0`` counts as 1, as Captum does),
    ``d_k`` :func:`sensitivity_noise` or ``shifts`` ``[N,K,C,H,W]`` given; ``explain(model, images, target)
    -> [N,H,W]`` runs once per perturbation on all N images; ``maps``: ``e(x)``, if already computed.
    Captum's ``sensitivity_max(explain, x, perturb_func, n_perturb_samples=K)`` given the same shifts.

    >>> max_sensitivity(model, images, lambda m, x, t: saliency(m, x, t))
    """
    core.check_images(images)
    n, c, h, w = images.shape
    images = images.detach()
    with core.guarded(model), torch.inference_mode():
        logits = core.predict_logits(model, images)
    t = core.resolve_target(target, n, logits.shape[1], logits=lambda: logits, device=images.device)
    if shifts is None:
        check_count(n_perturbations, "n_perturbations")
        shifts = sensitivity_noise(images, n_perturbations, _check_positive(radius, "radius"), generator)
    elif tuple(shifts.shape[:1]) + tuple(shifts.shape[2:]) != (n, c, h, w):
        raise ValueError(f"shifts must have shape [N,K,C,H,W] = [{n},K,{c},{h},{w}], got {tuple(shifts.shape)}")
    base = (explain(model, images, t) if maps is None else maps).detach()
    check_maps(base, "maps", n=n, size=(h, w))
    norm = base.double().flatten(1).norm(dim=1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm)
    worst = torch.zeros(n, dtype=torch.float64, device=norm.device)
    for k in range(shifts.shape[1]):  # each pass explains all N images at once
        moved = explain(model, images + shifts[:, k].to(images), t).detach()
        worst = torch.maximum(worst, (moved.double() - base.double()).flatten(1).norm(dim=1) / norm)
    return worst
