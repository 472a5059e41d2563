"""Every method on foreign models written in the styles people use (``zoo_models``): ``.view`` after a
convolution, ``F.relu``, a reused ReLU module, ``nn.Sequential``, a torchvision-style ResNet, a
MobileNet-style block with Hardswish and squeeze-excitation, tanh / ELU / GELU / SiLU / LeakyReLU,
non-square RGB input.

The default (fast) path must give the same maps as the model itself: in float64 the comparison is exact to
rounding (no max-pool near-ties flip), so any difference is a real bug of the fast path. The model is left
exactly as it was, and torch's global random state is never touched.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from torch import nn
from conftest import assert_model_untouched, quick_xrai
from zoo_models import NO_RELU, ZOO, build_view_tanh

from cnnlens.explain import cam, grad_cam, guided_backprop, guided_grad_cam, integrated_gradients, occlusion, saliency
from cnnlens.explain import lime as lime_map
from cnnlens.explain import extremal_perturbation, feature_ablation, kernel_shap, rise
from cnnlens.explain import (ablation_cam, eigen_cam, full_grad, grad_cam_pp, hires_cam, is_cam, layer_cam,
                             score_cam, ss_cam, xgrad_cam)
from cnnlens.explain.smoothgrad import smoothgrad
from cnnlens.explain import deconvnet, deeplift, deeplift_shap, gradient_shap, input_x_gradient, smoothgrad_squared, vargrad
from cnnlens.explain import blur_ig, guided_ig
from cnnlens.explain.lrp import lrp
from cnnlens.explain import accel

#: Each method with small settings; all take fast=.
METHODS = {
    "saliency": saliency,
    "smoothgrad": functools.partial(smoothgrad, n_samples=3, batch_size=4),
    "guided-backprop": guided_backprop,
    "integrated-gradients": functools.partial(integrated_gradients, n_steps=4, batch_size=8),
    "input-x-gradient": input_x_gradient,
    "deconvnet": deconvnet,
    "deeplift": deeplift,
    "deeplift-shap": functools.partial(deeplift_shap, n_baselines=2, batch_size=3),
    "gradient-shap": functools.partial(gradient_shap, n_baselines=2, n_samples=3, batch_size=4),
    "vargrad": functools.partial(vargrad, n_samples=3, batch_size=4),
    "smoothgrad-squared": functools.partial(smoothgrad_squared, n_samples=3, batch_size=4),
    # fraction=1: every feature moves at once, so the path does not hinge on near-ties of |gradient| (a 1e-16
    # difference between the fast copy and the model can swap two features at the quantile, as on the GELU model)
    "guided-ig": functools.partial(guided_ig, n_steps=4, fraction=1.0),
    "blur-ig": functools.partial(blur_ig, n_steps=4, max_sigma=4.0, batch_size=8),
    "xrai": quick_xrai,
    "lrp": lrp,
    "lrp-epsilon-gamma-box": functools.partial(lrp, composite="epsilon-gamma-box"),
    "grad-cam": grad_cam,
    "guided-grad-cam": guided_grad_cam,
    "grad-cam-pp": grad_cam_pp,
    "xgrad-cam": xgrad_cam,
    "layer-cam": layer_cam,
    "hires-cam": hires_cam,
    "score-cam": functools.partial(score_cam, batch_size=16),
    "ss-cam": functools.partial(ss_cam, n_samples=2, batch_size=16),
    "is-cam": functools.partial(is_cam, n_samples=2, batch_size=16),
    "ablation-cam": functools.partial(ablation_cam, batch_size=16),
    "eigen-cam": eigen_cam,
    "full-grad": full_grad,
    "occlusion": functools.partial(occlusion, patch=6, stride=6),
    "lime": functools.partial(lime_map, n_samples=24, n_segments=8),
    "rise": functools.partial(rise, n_masks=16, batch_size=8),
    "kernel-shap": functools.partial(kernel_shap, n_samples=24, n_segments=8),
    "feature-ablation": functools.partial(feature_ablation, n_segments=8),
    "extremal-perturbation": functools.partial(extremal_perturbation, steps=3, batch_size=2),
}
RANDOM = {"rise", "kernel-shap", "smoothgrad", "lime", "ss-cam"}  # seeded through a generator argument
RANDOM |= {"deeplift-shap", "gradient-shap", "vargrad", "smoothgrad-squared"}
#: Rules for ReLUs: a model that computes none is refused (with the rule's name).
RELU_RULES = {"guided-backprop": "guided backprop guides ReLUs", "guided-grad-cam": "guided backprop guides ReLUs",
              "deconvnet": "the deconvnet rectifies the gradients of ReLUs"}
#: The methods that read a layer (none can hook a layer inside a TorchScript archive).
LAYER_METHODS = {"grad-cam", "guided-grad-cam", "cam", "grad-cam-pp", "xgrad-cam", "layer-cam", "hires-cam", "score-cam",
                 "ss-cam", "is-cam", "ablation-cam", "eigen-cam", "full-grad"}


def _call(name: str, model: torch.nn.Module, images: torch.Tensor, *, fast: bool, **kw: object) -> torch.Tensor:
    if name in RANDOM:
        kw["generator"] = torch.Generator().manual_seed(3)
    return METHODS[name](model, images, [0, 1], fast=fast, **kw)


def _images(shape: tuple[int, int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(2, *shape, generator=torch.Generator().manual_seed(11), dtype=dtype)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model_name", list(ZOO))
def test_every_method_on_every_zoo_model_fast_equals_the_model_itself(model_name, method):
    build, shape = ZOO[model_name]
    if method in RELU_RULES and model_name in NO_RELU:
        with pytest.raises(ValueError, match=RELU_RULES[method]):
            _call(method, build(), _images(shape), fast=True)
        return
    model = build().double()
    images = _images(shape, torch.float64)
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast = _call(method, model, images, fast=True)
    exact = _call(method, model, images, fast=False)
    assert fast.shape == exact.shape == (2, *shape[1:])
    assert torch.isfinite(fast).all() and exact.abs().max() > 0
    torch.testing.assert_close(fast, exact, rtol=1e-7, atol=1e-9 * float(exact.abs().max()))
    assert_model_untouched(model, modes)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


#: Zoo models whose head is global average pooling + one nn.Linear of a module's output: CAM applies to
#: exactly these (FunctionalNet pools a ``Tensor.relu()`` result, which no module outputs: CAM says so).
GAP_HEADS = {"tiny_resnet", "leaky_relu", "elu", "silu", "gelu", "tanh", "non_square_rgb"}


@pytest.mark.parametrize("model_name", list(ZOO))
def test_cam_on_a_gap_head_is_grad_cam_of_the_pooled_map_times_its_area_and_says_why_elsewhere(model_name):
    build, shape = ZOO[model_name]
    model = build().double()
    images = _images(shape, torch.float64)
    if model_name not in GAP_HEADS:
        with pytest.raises(ValueError, match="CAM needs a model whose output is one nn.Linear"):
            cam(model, images, [0, 1])
        return
    low = cam(model, images, [0, 1], upsample=False)
    assert (low < 0).any() and (low > 0).any()
    # dlogit_t/dF = w[t] / (h w) everywhere on such a head: signed Grad-CAM of the pooled map = CAM / (h w)
    from cnnlens.explain import core

    with core.guarded(model, images):
        layer = core.pooled_layer(model, images)
    assert layer is not None
    grad = grad_cam(model, images, [0, 1], layer=layer, relu=False, upsample=False)
    torch.testing.assert_close(grad * low.shape[1] * low.shape[2], low, rtol=1e-9, atol=1e-12)
    # and Grad-CAM's default layer for a model with no cam_layer is that map
    torch.testing.assert_close(grad_cam(model, images, [0, 1], relu=False, upsample=False), grad)


def test_view_flatten_model_runs_on_the_default_path_and_says_why_once(caplog):
    # The crash: channels-last weights make conv outputs channels-last, and x.view(-1, n) then fails.
    model = build_view_tanh()
    images = _images((1, 48, 48))
    with caplog.at_level(logging.INFO, logger="cnnlens.explain"):
        for _ in range(3):
            maps = saliency(model, images, [0, 1])
    torch.testing.assert_close(maps, saliency(model, images, [0, 1], fast=False), rtol=1e-5, atol=1e-7)
    notes = [r for r in caplog.records if "channels-last copy not used" in r.getMessage()]
    assert len(notes) == 1 and "view" in notes[0].getMessage()
    # the copy is channels-last up to the last module that outputs a map, contiguous after it (where the
    # .view is): its convolutions keep the fast layout; the user's model carries no hook of cnnlens's
    copy_ = accel.prepared(model, example=images)
    convs = [m for m in copy_.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert "channels-last up to" in notes[0].getMessage()
    assert not any(m._forward_hooks for m in model.modules())
    torch.testing.assert_close(grad_cam(model, images, [0, 1]), grad_cam(model, images, [0, 1], fast=False),
                               rtol=1e-5, atol=1e-7)


class _ReusedReluView(nn.Module):
    """One ReLU module after both convolutions, then ``x.view``: the ReLU's last run feeds the flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 12 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(x.view(x.size(0), -1))


def test_a_reused_relu_before_the_view_keeps_the_first_maps_channels_last():
    torch.manual_seed(0)
    model = _ReusedReluView().eval()
    images = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    copy_ = accel.prepared(model, example=images)
    assert copy_ is not model
    seen: list[bool] = []
    handle = copy_.conv2.register_forward_pre_hook(
        lambda m, i: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        for _ in range(2):  # the run count starts again with every pass
            with torch.no_grad():
                copy_(accel.copy_input(copy_, images))
    finally:
        handle.remove()
    assert seen == [True, True]  # the ReLU's first run is not the one made contiguous
    torch.testing.assert_close(saliency(model, images, [0, 1]), saliency(model, images, [0, 1], fast=False),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", [*METHODS, "cam"])
def test_no_method_changes_torch_global_random_state(method):
    build, shape = ZOO["tiny_resnet"]
    model = build()
    images = _images(shape)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    if method == "cam":
        cam(model, images, [0, 1])
    else:
        _call(method, model, images, fast=True)
        _call(method, model, images, fast=False)
    assert torch.equal(torch.get_rng_state(), before)


class Holder(torch.nn.Module):
    """What loading a TorchScript run gives: an adapter module around the compiled archive."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.model = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@pytest.mark.parametrize("wrap", [False, True], ids=["scripted", "adapter"])
@pytest.mark.parametrize("method", [*METHODS, "cam"])
def test_torchscript_models_work_or_say_that_layers_cannot_be_hooked(method, wrap):
    build, shape = ZOO["tiny_resnet"]
    eager = build().double()  # float64: the archive's maps must equal the eager model's, on any CPU
    scripted = torch.jit.script(eager)
    model = Holder(scripted) if wrap else scripted
    images = _images(shape, torch.float64)
    if method in LAYER_METHODS:
        with pytest.raises(TypeError, match="TorchScript archive, whose layers cannot be hooked"):
            cam(model, images, [0, 1]) if method == "cam" else _call(method, model, images, fast=True)
    elif method in {"guided-backprop", "deconvnet"}:  # its ReLUs run inside the compiled graph: nothing to guide
        with pytest.raises(ValueError, match=RELU_RULES[method]):
            _call(method, model, images, fast=True)
    elif method in {"deeplift", "deeplift-shap"}:  # nor anything to rescale
        with pytest.raises(ValueError, match="rescales the model's nonlinearities, and this TorchScript archive"):
            _call(method, model, images, fast=True)
    elif method.startswith("lrp"):  # nor any layer to give a rule
        with pytest.raises(ValueError, match="convolution and linear layers, and this TorchScript archive computes"):
            _call(method, model, images, fast=True)
    else:
        exact = _call(method, eager, images, fast=False)
        assert exact.abs().max() > 0
        torch.testing.assert_close(_call(method, model, images, fast=True), exact, rtol=1e-9,
                                   atol=1e-12 * float(exact.abs().max()))
