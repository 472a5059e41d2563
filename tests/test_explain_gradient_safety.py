"""The model and the images are left exactly as they were, also when a call raises; every bad input
gives a clear error."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_model_untouched, make_random_model, quick_xrai
from torch import nn

from cnnlens.explain import accel
from cnnlens.explain.cam import cam
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.guided_backprop import guided_backprop
from cnnlens.explain.guided_grad_cam import guided_grad_cam
from cnnlens.explain.integrated_gradients import integrated_gradients, integrated_gradients_result
from cnnlens.explain.saliency import masked_image, saliency
from cnnlens.explain.smoothgrad import smoothgrad
from cnnlens.explain.rise import rise
from cnnlens.explain.extremal import extremal_perturbation
from cnnlens.explain.kernel_shap import kernel_shap
from cnnlens.explain.feature_ablation import feature_ablation
from cnnlens.explain import (ablation_cam, eigen_cam, full_grad, grad_cam_pp, hires_cam, is_cam, layer_cam,
                             score_cam, ss_cam, xgrad_cam)


def seeded_ss_cam(model: nn.Module, images: torch.Tensor, target: object = None, **kw: object) -> torch.Tensor:
    """SS-CAM with a fresh seeded generator at every call, so that two calls draw the same noise."""
    return ss_cam(model, images, target, n_samples=2, batch_size=8, generator=torch.Generator().manual_seed(0), **kw)


#: The CAM family's new members, with small settings: fast (METHODS) and on the model itself (EXACT).
CAMS = {
    "grad_cam_pp": grad_cam_pp, "xgrad_cam": xgrad_cam, "layer_cam": layer_cam, "hires_cam": hires_cam,
    "eigen_cam": eigen_cam, "score_cam": functools.partial(score_cam, batch_size=8), "ss_cam": seeded_ss_cam,
    "is_cam": functools.partial(is_cam, n_samples=2, batch_size=8),
    "ablation_cam": functools.partial(ablation_cam, batch_size=8),
    "full_grad": full_grad,
}
from cnnlens.explain.input_x_gradient import input_x_gradient
from cnnlens.explain.deconvnet import deconvnet
from cnnlens.explain.deeplift import deeplift
from cnnlens.explain.deeplift_shap import deeplift_shap
from cnnlens.explain.gradient_shap import gradient_shap
from cnnlens.explain.vargrad import vargrad
from cnnlens.explain.smoothgrad_squared import smoothgrad_squared
from cnnlens.explain.guided_ig import guided_ig
from cnnlens.explain.blur_ig import blur_ig
from cnnlens.explain.lrp import lrp

METHODS = {
    "saliency": saliency,
    "guided_backprop": guided_backprop,
    "integrated_gradients": functools.partial(integrated_gradients, n_steps=4, batch_size=3),
    "smoothgrad": functools.partial(smoothgrad, n_samples=3, batch_size=2),
    "smoothgrad_guided": functools.partial(smoothgrad, method=guided_backprop, n_samples=2),
    "grad_cam": grad_cam,
    "cam": cam,
    "guided_grad_cam": guided_grad_cam,
    **CAMS,
    "input_x_gradient": input_x_gradient,
    "deconvnet": deconvnet,
    "deeplift": deeplift,
    "deeplift_shap": functools.partial(deeplift_shap, n_baselines=2, batch_size=3),
    "gradient_shap": functools.partial(gradient_shap, n_baselines=2, n_samples=3, batch_size=2),
    "vargrad": functools.partial(vargrad, n_samples=3, batch_size=2),
    "smoothgrad_squared": functools.partial(smoothgrad_squared, n_samples=2),
    "guided_ig": functools.partial(guided_ig, n_steps=4),
    "blur_ig": functools.partial(blur_ig, n_steps=4, max_sigma=4.0, batch_size=5),
    "lrp": lrp,
    "lrp_gamma_box": functools.partial(lrp, composite="epsilon-gamma-box"),
    "xrai": quick_xrai,
    "rise": functools.partial(rise, n_masks=12, batch_size=5),
    "extremal_perturbation": functools.partial(extremal_perturbation, steps=3, batch_size=4),
    "kernel_shap": functools.partial(kernel_shap, n_segments=5, n_samples=10, batch_size=4),
    "feature_ablation": functools.partial(feature_ablation, n_segments=5, batch_size=4),
}
#: The methods that draw random numbers (a generator makes them repeatable).
RANDOM = {"smoothgrad", "smoothgrad_guided", "deeplift_shap", "gradient_shap", "vargrad", "smoothgrad_squared"}

#: The same calls on the model itself (fast=False): Exploding counts the forward calls of the model it is.
EXACT = {
    "saliency": functools.partial(saliency, fast=False),
    "guided_backprop": functools.partial(guided_backprop, fast=False),
    "integrated_gradients": functools.partial(integrated_gradients, n_steps=4, batch_size=3, fast=False),
    "smoothgrad": functools.partial(smoothgrad, n_samples=3, batch_size=2, fast=False),
    "smoothgrad_guided": functools.partial(smoothgrad, method=guided_backprop, n_samples=2, fast=False),
    "grad_cam": functools.partial(grad_cam, fast=False),
    "cam": cam,
    "guided_grad_cam": functools.partial(guided_grad_cam, fast=False),
    **{name: functools.partial(fn, fast=False) for name, fn in CAMS.items()},
    "input_x_gradient": functools.partial(input_x_gradient, fast=False),
    "deconvnet": functools.partial(deconvnet, fast=False),
    "deeplift": functools.partial(deeplift, fast=False),
    "deeplift_shap": functools.partial(deeplift_shap, n_baselines=2, batch_size=3, fast=False),
    "gradient_shap": functools.partial(gradient_shap, n_baselines=2, n_samples=3, batch_size=2, fast=False),
    "vargrad": functools.partial(vargrad, n_samples=3, batch_size=2, fast=False),
    "smoothgrad_squared": functools.partial(smoothgrad_squared, n_samples=2, fast=False),
    "guided_ig": functools.partial(guided_ig, n_steps=4, fast=False),
    "blur_ig": functools.partial(blur_ig, n_steps=4, max_sigma=4.0, batch_size=5, fast=False),
    "lrp": functools.partial(lrp, fast=False),
    "lrp_gamma_box": functools.partial(lrp, composite="epsilon-gamma-box", fast=False),
    "xrai": functools.partial(quick_xrai, fast=False),
    "rise": functools.partial(rise, n_masks=12, batch_size=5, fast=False),
    "extremal_perturbation": functools.partial(extremal_perturbation, steps=3, batch_size=4, fast=False),
    "kernel_shap": functools.partial(kernel_shap, n_segments=5, n_samples=10, batch_size=4, fast=False),
    "feature_ablation": functools.partial(feature_ablation, n_segments=5, batch_size=4, fast=False),
}


class Exploding(nn.Module):
    """The random model, raising on its ``fail_on``-th forward call (after the inner layers and hooks ran)."""

    def __init__(self, fail_on: int | None = None) -> None:
        super().__init__()
        self.net = make_random_model(3, seed=4)
        self.fail_on, self.calls = fail_on, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")
        return out


def mixed_mode(model: nn.Module) -> list[bool]:
    """Put the model in train mode with one BatchNorm in eval mode; return the modes to restore."""
    model.train()
    model.net.bn_a.eval()
    return [m.training for m in model.modules()]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()  # BN running statistics too: the methods run in eval mode
    assert after.keys() == before.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("images_require_grad", [False, True])
@pytest.mark.parametrize("name", list(METHODS))
def test_model_and_images_untouched(name, images_require_grad):
    model = Exploding()
    modes = mixed_mode(model)
    state = snapshot(model)
    frozen = model.net.stem[0].weight
    frozen.requires_grad_(False)  # a user's frozen layer stays frozen
    images = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0)).requires_grad_(images_require_grad)
    original = images.detach().clone()
    out = METHODS[name](model, images, [0, 5, 2])
    assert out.shape == (3, 12, 12) and torch.isfinite(out).all() and out.abs().max() > 0
    assert_model_untouched(model, modes)
    assert_same_state(model, state)
    assert not frozen.requires_grad and all(p.requires_grad for p in model.parameters() if p is not frozen)
    assert images.requires_grad == images_require_grad and images.grad is None
    torch.testing.assert_close(images.detach(), original, rtol=0, atol=0)


# the call on which each method's work is well under way (hooks registered, some gradients taken)
FAIL_ON = {"saliency": 1, "guided_backprop": 1, "integrated_gradients": 3, "smoothgrad": 3,
           "smoothgrad_guided": 2, "grad_cam": 1, "cam": 1, "guided_grad_cam": 3, "input_x_gradient": 1,
           "deconvnet": 1, "deeplift": 1, "deeplift_shap": 3, "gradient_shap": 2, "vargrad": 3,
           "smoothgrad_squared": 2}
# the CAMs: 1 is the default layer's probe, 2 the pass that hooks the layer, 3 the first masked / ablated batch
FAIL_ON.update({"grad_cam_pp": 2, "xgrad_cam": 2, "layer_cam": 2, "hires_cam": 2, "eigen_cam": 2, "score_cam": 3,
                "ss_cam": 3, "is_cam": 3, "ablation_cam": 3, "full_grad": 1})
FAIL_ON |= {"guided_ig": 2, "blur_ig": 2}  # 1: the clean logits; then the first path step
FAIL_ON |= {"xrai": 3}  # its target pass, then integrated gradients' clean logits and first steps
FAIL_ON |= {"lrp": 1, "lrp_gamma_box": 1}  # the relevance pass (z^B's probe stops at the first layer, uncounted)
FAIL_ON |= {"rise": 2, "kernel_shap": 3, "feature_ablation": 2}  # 1: the clean images; then the perturbed batches
FAIL_ON |= {"extremal_perturbation": 3}  # 1: the clean logits; then the optimisation's steps


@pytest.mark.parametrize("name", list(METHODS))
def test_model_untouched_after_an_error_mid_call(name):
    model = Exploding(fail_on=FAIL_ON[name])
    modes = mixed_mode(model)
    state = snapshot(model)
    # seeded: on some draws (seed 0) the class-1 map of Grad-CAM, XGrad-CAM or HiResCAM is 0 everywhere after its
    # ReLU, and the last check failed at random
    images = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match="boom"):
        EXACT[name](model, images, 1)
    assert model.calls == FAIL_ON[name]
    assert_model_untouched(model, modes)
    assert_same_state(model, state)
    assert not images.requires_grad and images.grad is None
    model.fail_on = None  # and the model still works normally afterwards
    assert EXACT[name](model, images, 1).abs().max() > 0


@pytest.mark.parametrize("name", [n for n in METHODS if n != "cam"])
def test_an_error_inside_the_prepared_copy_leaves_model_and_copy_clean(name):
    model = Exploding()
    modes = mixed_mode(model)
    state = snapshot(model)
    images = torch.rand(3, 3, 12, 12)
    with pytest.raises(ValueError, match="target classes must be in"):  # raised after the copy's forward pass
        METHODS[name](model, images, 99)
    assert_model_untouched(model, modes)
    assert_same_state(model, state)
    layer = "net.head"  # grad_cam's default layer here (the map the pooling reads), kept unfolded in its copy
    copies = [accel.prepared(model), accel.prepared(model, keep=[layer])]
    assert all(c is not model for c in copies)
    for copy_ in copies:  # the guide hooks and Grad-CAM's hook were on the copy: all gone
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in copy_.modules())
    seeded = (lambda: {"generator": torch.Generator().manual_seed(0)}) if name in RANDOM else dict
    torch.testing.assert_close(METHODS[name](model, images, 1, **seeded()), EXACT[name](model, images, 1, **seeded()),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", [grad_cam, guided_grad_cam])
def test_unknown_layer_lists_the_valid_ones_and_leaves_the_model_alone(method):
    model = Exploding()
    modes = mixed_mode(model)
    with pytest.raises(ValueError, match=r"unknown layer 'net\.nope'; valid layer names: net, net\.stem, .*net\.head\.0"):
        method(model, torch.rand(2, 3, 8, 8), layer="net.nope")
    assert_model_untouched(model, modes)


@pytest.mark.parametrize("layer", ["net.fc", "net.gap"])
def test_grad_cam_on_a_layer_that_is_no_feature_map_or_has_no_extent(layer):
    model = Exploding()
    modes = mixed_mode(model)
    if layer == "net.fc":
        with pytest.raises(ValueError, match=r"layer 'net\.fc' outputs \(2, 7\); Grad-CAM needs a layer whose output is a feature map"):
            grad_cam(model, torch.rand(2, 3, 8, 8), layer=layer)
    else:  # a [N,C,1,1] map is a feature map, just a trivial one: allowed, and constant
        out = grad_cam(model, torch.rand(2, 3, 8, 8), 0, layer=layer, relu=False)
        torch.testing.assert_close(out, out[:, :1, :1].expand_as(out))
    assert_model_untouched(model, modes)


class TwiceRelu(nn.Module):
    """One ReLU module used twice, and one conv the output never depends on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.unused, self.relu = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3), nn.ReLU()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unused(x)
        return self.fc(self.relu(self.relu(self.conv(x))).mean(dim=(2, 3)))


def test_grad_cam_layer_run_twice_or_not_on_the_path():
    model, x = TwiceRelu().eval(), torch.rand(2, 1, 6, 6)
    with pytest.raises(ValueError, match="layer 'relu' ran 2 times in one forward pass"):
        grad_cam(model, x, layer="relu")
    with pytest.raises(ValueError, match="the target score does not depend on layer 'unused'"):
        grad_cam(model, x, layer="unused")
    assert_model_untouched(model, [False] * 5)
    assert grad_cam(model, x, layer="conv").shape == (2, 6, 6)


class FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


class ModuleRelu(FunctionalRelu):
    """The same network with an nn.ReLU module instead of F.relu."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


class TanhOnly(FunctionalRelu):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3)))


def test_guided_backprop_guides_functional_relus_as_modules():
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights whatever ran before
        functional = FunctionalRelu().double()
    module = ModuleRelu().double()
    module.load_state_dict(functional.state_dict())
    images = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # guided Grad-CAM on one layer for both (by default the module model's pooled map is its ReLU module,
    # which the functional one does not have)
    for method in (guided_backprop, functools.partial(guided_grad_cam, layer="conv")):
        ours = method(functional, images, [0, 2], reduce=None)
        torch.testing.assert_close(ours, method(module, images, [0, 2], reduce=None), rtol=1e-10, atol=1e-12)
        assert_model_untouched(functional, [True, True, True])
    # and it is really guided: the plain gradient differs
    plain = saliency(functional, images, [0, 2], reduce=None, abs=False)
    assert (guided_backprop(functional, images, [0, 2], reduce=None) - plain).abs().max() > 0


def test_guided_backprop_without_any_relu():
    model = TanhOnly()
    for method in (guided_backprop, guided_grad_cam, functools.partial(smoothgrad, method=guided_backprop)):
        with pytest.raises(ValueError, match=r"guided backprop guides ReLUs.*computes none"):
            method(model, torch.rand(2, 1, 6, 6))
        assert_model_untouched(model, [True, True, True])


class MlpHead(nn.Module):
    def __init__(self, flatten: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.flatten = flatten
        self.fc1, self.fc2 = nn.Linear(4 * 36 if flatten else 4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = h.flatten(1) if self.flatten else h.mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(h)))


class SoftmaxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3))).softmax(dim=1)


class NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.parametrize("model, why", [
    (MlpHead(flatten=True), "the input of its last nn.Linear is not the spatial mean of any feature map"),
    (MlpHead(flatten=False), "the input of its last nn.Linear is not the spatial mean of any feature map"),
    (SoftmaxHead(), "the output of its last nn.Linear is not the model's output"),
    (NoLinear(), "it has no nn.Linear layer"),
])
def test_cam_on_a_model_without_a_gap_linear_head(model, why):
    modes = [m.training for m in model.modules()]
    with pytest.raises(ValueError, match=r"CAM needs a model whose output is one nn\.Linear .*" + why.replace(".", r"\.")
                       + r".*Use grad_cam"):
        cam(model, torch.rand(2, 1, 6, 6))
    assert_model_untouched(model, modes)


def test_cam_finds_a_functional_mean_head():
    # F.adaptive_avg_pool2d / x.mean in forward, no pooling module: found from the forward pass alone
    model = SoftmaxHead()
    model.forward = lambda x: model.fc(model.conv(x).mean(dim=(2, 3)))  # the same net without the softmax
    x = torch.rand(2, 1, 6, 6)
    expected = torch.einsum("nk,nkhw->nhw", model.fc.weight[[2, 0]].detach(), model.conv(x).detach())
    torch.testing.assert_close(cam(model, x, [2, 0], upsample=False), expected)


class SkipThenPool(nn.Module):
    """``out = bn(conv(x)); out += x; GAP; linear``: the pooled map is BatchNorm's output changed in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x
        return self.fc(out.mean(dim=(2, 3)))


def test_cam_sees_in_place_changes_before_the_pooling():
    model, x = SkipThenPool().eval(), torch.rand(2, 2, 6, 6)
    pooled = (model.bn(model.conv(x)) + x).detach()
    expected = torch.einsum("nk,nkhw->nhw", model.fc.weight[[1, 2]].detach(), pooled)
    torch.testing.assert_close(cam(model, x, [1, 2], upsample=False), expected)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("target, error, match", [
    ([0, 1], ValueError, "target has 2 entries but images has N=3"),
    (7, ValueError, r"target classes must be in \[0, 6\]"),
    (-1, ValueError, r"target classes must be in \[0, 6\]"),
    (1.5, TypeError, "target must be None, an int, or a sequence/tensor of ints"),
    ("happy", TypeError, "target must be None, an int, or a sequence/tensor of ints"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "target tensor must hold integers"),
    (True, TypeError, "got a bool"),
])
def test_bad_targets(name, target, error, match):
    model = make_random_model(3, seed=0)
    with pytest.raises(error, match=match):
        METHODS[name](model, torch.rand(3, 3, 8, 8), target)
    assert_model_untouched(model, [False] * len(list(model.modules())))


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("images, error, match", [
    (torch.rand(3, 8, 8), ValueError, r"images must have shape \[N,C,H,W\], got \(3, 8, 8\); add a batch dimension"),
    (torch.rand(0, 3, 8, 8), ValueError, "empty batch"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, "images must be floating point"),
    ([[0.5]], TypeError, "images must be a torch.Tensor"),
])
def test_bad_images(name, images, error, match):
    with pytest.raises(error, match=match):
        METHODS[name](make_random_model(3), images)


def test_bad_options():
    model, x = make_random_model(1), torch.rand(2, 1, 8, 8)
    cases = [
        (lambda: saliency(model, x, reduce="median"), ValueError, "reduce must be one of 'max_abs', 'sum'"),
        (lambda: integrated_gradients(model, x, baseline="noise"), ValueError,
         "baseline must be one of 'zeros', 'mean', 'blur', a number or a tensor, got 'noise'"),
        (lambda: integrated_gradients(model, x, baseline=torch.zeros(1, 8, 9)), ValueError,
         r"baseline tensor must have shape \[C,H,W\], \[1,C,H,W\] or \[N,C,H,W\] matching images \(2, 1, 8, 8\), got \(1, 8, 9\)"),
        (lambda: integrated_gradients(model, x, baseline=torch.zeros(3, 1, 8, 8)), ValueError, "baseline tensor must have shape"),
        (lambda: integrated_gradients(model, x, baseline="blur", blur_sigma=0), ValueError, "blur_sigma must be a positive number"),
        (lambda: integrated_gradients(model, x, method="simpson"), ValueError, "method must be one of 'gausslegendre'"),
        (lambda: integrated_gradients(model, x, n_steps=0), ValueError, "n_steps must be an int >= 1 for gausslegendre, got 0"),
        (lambda: integrated_gradients(model, x, n_steps=1, method="riemann_trapezoid"), ValueError, "n_steps must be an int >= 2"),
        (lambda: integrated_gradients(model, x, n_steps=2.5), ValueError, "n_steps must be an int"),
        (lambda: integrated_gradients_result(model, x, batch_size=0), ValueError, "batch_size must be a positive int or None"),
        (lambda: smoothgrad(model, x, n_samples=0), ValueError, "n_samples must be an int >= 1"),
        (lambda: smoothgrad(model, x, sigma=-0.1), ValueError, "sigma must be a number >= 0"),
        (lambda: smoothgrad(model, x, batch_size=-2), ValueError, "batch_size must be a positive int or None"),
        (lambda: smoothgrad(model, x, method="saliency"), TypeError, "method must be a gradient method like saliency"),
        (lambda: smoothgrad(model, x, method=lambda m, imgs, t, reduce: saliency(m, imgs, t)), ValueError,
         r"method must return raw attributions shaped like its images \(16, 1, 8, 8\) when called with reduce=None, got \(16, 8, 8\)"),
        (lambda: grad_cam(model, x, layer=nn.Conv2d(1, 1, 1)), ValueError, "layer module is not part of the model"),
        (lambda: grad_cam(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), x), ValueError, "model has no nn.Conv2d layer; pass layer="),
        (lambda: masked_image(x, torch.rand(2, 8, 7), 50), ValueError, r"saliency_map must be a tensor of shape \[N,H,W\] = \(2, 8, 8\)"),
        (lambda: masked_image(x, torch.rand(2, 8, 8), 101), ValueError, r"percentile must be a number in \[0, 100\]"),
        (lambda: masked_image(x, torch.rand(2, 8, 8), "top"), ValueError, r"percentile must be a number in \[0, 100\]"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
        assert_model_untouched(model, [False] * len(list(model.modules())))


def test_a_deep_copy_of_the_model_gives_the_same_maps():
    # nothing about the model (hooks, flags, buffers) was changed by earlier calls
    model, x = make_random_model(1, seed=9), torch.rand(2, 1, 8, 8)
    first = {n: m(model, x, 3) for n, m in METHODS.items() if n not in RANDOM}
    fresh = copy.deepcopy(model)
    for n, m in METHODS.items():
        if n not in RANDOM:
            torch.testing.assert_close(m(fresh, x, 3), first[n], rtol=0, atol=0, msg=n)
