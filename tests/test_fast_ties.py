"""What the fast path guarantees for gradient methods, on any x86 CPU (AVX2 or AVX-512).

The fast path differentiates a folded-BatchNorm, channels-last copy of the model. It is the same function:
in float64 its maps equal the model's to rounding (1e-10). In float32 it rounds differently from the model,
and where two inputs of a max-pooling window (nearly) tie, a different rounding can send the gradient
through the other input: the gradient of such an input is ill-conditioned, and whether a float32 path
lands on float64's side depends on the CPU's kernels (seen: on AVX-512 the model itself and the fast path
both flip one RGB SmoothGrad sample; with AVX2 kernels only the fast path does). So the float32 check is
tie-aware: every input the methods differentiate (the images, SmoothGrad's noisy copies, integrated
gradients' path points) whose forward pass has no near-tie in float64 (no max-pool window whose two
largest inputs nearly tie, no ReLU input next to its kink) gets the same gradient maps
from the fast path as from float64, to 1e-4 of the largest value; the near-tied ones are left out, and
they must be few. ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` runs this with AVX2 kernels.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from cnnlens.explain import (eigen_cam, full_grad, grad_cam, grad_cam_pp, guided_backprop, guided_grad_cam,
                             hires_cam, integrated_gradients, layer_cam, saliency, xgrad_cam)
from cnnlens.explain.smoothgrad import smoothgrad
from cnnlens.explain import deconvnet, deeplift, deeplift_shap, gradient_shap, input_x_gradient, smoothgrad_squared, vargrad
from cnnlens.explain import blur_ig, guided_ig
from cnnlens.explain.lrp import lrp
from conftest import quick_xrai

TARGETS = [0, 3, 6, 2]
METHODS = {
    "saliency": functools.partial(saliency, reduce=None, abs=False),
    "guided-backprop": functools.partial(guided_backprop, reduce=None),
    "integrated-gradients": functools.partial(integrated_gradients, n_steps=8, reduce=None),
    "grad-cam": functools.partial(grad_cam, upsample=False, relu=False),
    "guided-grad-cam": functools.partial(guided_grad_cam, reduce=None),
    "grad-cam-pp": functools.partial(grad_cam_pp, upsample=False, relu=False),
    "xgrad-cam": functools.partial(xgrad_cam, upsample=False, relu=False),
    "layer-cam": functools.partial(layer_cam, upsample=False, relu=False),
    "hires-cam": functools.partial(hires_cam, upsample=False, relu=False),
    "eigen-cam": functools.partial(eigen_cam, upsample=False, relu=False),
    "full-grad": full_grad,
    "smoothgrad": functools.partial(smoothgrad, n_samples=6, sigma=0.2, reduce=None, batch_size=5),
    "smoothgrad-guided": functools.partial(smoothgrad, method=guided_backprop, n_samples=4, reduce=None),
    "input-x-gradient": functools.partial(input_x_gradient, reduce=None),
    "deconvnet": functools.partial(deconvnet, reduce=None),
    "deeplift": functools.partial(deeplift, baseline="blur", reduce=None),
    "deeplift-shap": functools.partial(deeplift_shap, n_baselines=3, batch_size=5, reduce=None),
    "gradient-shap": functools.partial(gradient_shap, n_baselines=3, n_samples=4, sigma=0.1, batch_size=5, reduce=None),
    "vargrad": functools.partial(vargrad, n_samples=4, reduce=None),
    "smoothgrad-squared": functools.partial(smoothgrad_squared, n_samples=4, reduce=None),
    "guided-ig": functools.partial(guided_ig, n_steps=8, reduce=None),
    "blur-ig": functools.partial(blur_ig, n_steps=8, max_sigma=6.0, batch_size=7, reduce=None),
    "xrai": quick_xrai,
    "lrp": functools.partial(lrp, reduce=None),
    "lrp-epsilon-gamma-box": functools.partial(lrp, composite="epsilon-gamma-box", reduce=None),
    "lrp-alpha2-beta1": functools.partial(lrp, composite="alpha2-beta1", reduce=None),
}
#: The methods that draw random numbers: seeded through their generator.
RANDOM = {"smoothgrad", "smoothgrad-guided", "deeplift-shap", "gradient-shap", "vargrad", "smoothgrad-squared"}


def _run(name: str, model: torch.nn.Module, images: torch.Tensor, fast: bool) -> torch.Tensor:
    kw = {"generator": torch.Generator().manual_seed(5)} if name in RANDOM else {}
    return METHODS[name](model, images, TARGETS, fast=fast, **kw)


@pytest.mark.parametrize("name", list(METHODS))
def test_fast_path_is_the_same_function_in_float64(random_model_and_images, name):
    model, images = random_model_and_images
    m64, x64 = copy.deepcopy(model).double(), images.double()
    exact = _run(name, m64, x64, fast=False)
    fast = _run(name, m64, x64, fast=True)
    assert exact.abs().max() > 0
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-10 * float(exact.abs().max()))


#: A max-pool window nearly ties when its two largest (positive) inputs are closer than this fraction of the
#: layer's largest |input|: float32 rounding (~1e-7 relative, a few times that after the stem) can then swap them.
NEAR_TIE = 1e-5

#: The per-input gradient maps every method above is built from (SmoothGrad and IG average these).
PER_INPUT = {
    "saliency": functools.partial(saliency, reduce=None, abs=False),
    "guided-backprop": functools.partial(guided_backprop, reduce=None),
    "grad-cam": functools.partial(grad_cam, upsample=False, relu=False),
    "guided-grad-cam": functools.partial(guided_grad_cam, reduce=None),
    "grad-cam-pp": functools.partial(grad_cam_pp, upsample=False, relu=False),
    "xgrad-cam": functools.partial(xgrad_cam, upsample=False, relu=False),
    "layer-cam": functools.partial(layer_cam, upsample=False, relu=False),
    "hires-cam": functools.partial(hires_cam, upsample=False, relu=False),
    "lrp": functools.partial(lrp, reduce=None),
    "lrp-epsilon-gamma-box": functools.partial(lrp, composite="epsilon-gamma-box", reduce=None),
}


def differentiated_inputs(images: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The images, SmoothGrad's noisy copies (its draw: 6 samples, sigma 0.2 of each image's range, seed 5)
    and integrated gradients' path points (8 Gauss-Legendre steps from zero); with each one's target."""
    from cnnlens.explain.integrated_gradients import quadrature

    g = torch.Generator().manual_seed(5)
    scale = 0.2 * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    noisy = [images + torch.randn(images.shape, generator=g) * scale for _ in range(6)]
    alphas, _ = quadrature("gausslegendre", 8)
    path = [a.item() * images for a in alphas]
    inputs = torch.cat([images, *noisy, *path])
    return inputs, TARGETS * (1 + len(noisy) + len(path))


@torch.no_grad()
def near_tied(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: whether the forward pass on each input (float64) has a near-tie: a max-pool window whose two
    largest inputs nearly tie, or a ReLU input within the same distance of its kink at 0 (its gradient is
    0 on one side and 1 on the other)."""
    found = torch.zeros(inputs.shape[0], dtype=torch.bool)

    def check(module: torch.nn.MaxPool2d, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        k, st = module.kernel_size, module.stride
        windows = torch.nn.functional.unfold(x, k, stride=st).reshape(x.shape[0], x.shape[1], -1,
                                                                       (x.shape[2] // st) * (x.shape[3] // st))
        top = windows.topk(2, dim=2).values
        scale = x.abs().amax(dim=(1, 2, 3)).view(-1, 1, 1)
        tie = (top[:, :, 0] > 0) & (top[:, :, 0] - top[:, :, 1] < NEAR_TIE * scale)
        found.logical_or_(tie.flatten(1).any(1))

    def kink(module: torch.nn.ReLU, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        scale = x.abs().flatten(1).amax(1).view(-1, *[1] * (x.dim() - 1))
        found.logical_or_((x.abs() < NEAR_TIE * scale).flatten(1).any(1))

    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert pools, "the test models pool with nn.MaxPool2d"
    handles = [m.register_forward_pre_hook(check) for m in pools]
    handles += [m.register_forward_pre_hook(kink) for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
    return found


@pytest.mark.parametrize("name", list(PER_INPUT))
def test_fast_path_in_float32_agrees_with_float64_wherever_nothing_nearly_ties(random_model_and_images,
                                                                                          name):
    model, images = random_model_and_images
    inputs, targets = differentiated_inputs(images)
    m64 = copy.deepcopy(model).double()
    tied = near_tied(m64, inputs.double())
    assert tied.float().mean() <= 0.25, f"{int(tied.sum())} of {len(tied)} inputs nearly tie: not a test of much"
    free = ~tied
    reference = PER_INPUT[name](m64, inputs[free].double(), [t for t, f in zip(targets, free) if f], fast=False)
    fast = PER_INPUT[name](model, inputs[free], [t for t, f in zip(targets, free) if f], fast=True).double()
    scale = reference.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (reference.dim() - 1))
    worst = float(((fast - reference).abs() / scale).max())
    assert worst <= 1e-4, f"{name}: fast path {worst:.2e} of an input's largest value away from float64"
