"""Every registered method on Keras models (``cnnlens.explain.registry.names()``), each checked twice:

- against a PyTorch twin with the same weights and the same layer names (``test_keras.SequentialTwin`` /
  ``FunctionalTwin``): every method must give the twin's maps, so nothing in a method depends on the model
  being Keras (layer lookup, default layers, hooks, layouts, batching, fallbacks). Both sides run ``fast=False``
  in float64; Keras computes its BatchNormalization and averages in float32 even there, so the two agree to
  float32 rounding, which Grad-CAM++'s cubes and Score-CAM's softmax raise to ~3e-5: hence 1e-4 of the largest
  value (a real difference is of the order of the values).
- against Captum and torchcam on the same Keras-on-torch module, like with like (the oracle sees the same
  ``nn.Module``; its hooks land on the same layer views), where they implement the method; and CAM and
  Grad-CAM against their closed form on the GAP + Dense head.

After every method the model is as it was: modes, no ``.grad``, no hooks, Keras's variables unchanged.
"""

from __future__ import annotations

import copy
import inspect
import logging

import numpy as np
import pytest
import torch
from conftest import assert_model_untouched
from test_keras import FunctionalTwin, SequentialTwin, functional_cnn, images, keras, keras_output, sequential_cnn

from cnnlens.explain import core, registry
from cnnlens.models.foreign import Scored
from cnnlens.models.keras import KerasModel

captum_attr = pytest.importorskip("captum.attr")
torchcam_methods = pytest.importorskip("torchcam.methods")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns about its ReLU hooks

#: Small settings, passed to the methods that take them.
SMALL = {"steps": 4, "n_samples": 3, "n_steps": 6, "n_baselines": 3, "n_masks": 40, "patch": 4, "stride": 4, "n_segments": 8,
         "batch_size": 5}
TARGETS = [0, 2]


def build(kind: str) -> tuple[Scored, Scored, keras.Model]:
    """(Keras model in the adapter, its PyTorch twin, the Keras model): the seeds' Sequential CNN ending in
    softmax (gray; explained as log p) or the residual functional one with a GAP + Dense logits head (RGB)."""
    if kind == "sequential":
        model = sequential_cnn()
        return Scored(KerasModel(model), scores="probabilities"), Scored(SequentialTwin(model), scores="probabilities"), model
    model = functional_cnn()
    return Scored(KerasModel(model)), Scored(FunctionalTwin(model)), model


@pytest.fixture(scope="module", params=["sequential", "functional"])
def models(request: pytest.FixtureRequest) -> tuple[Scored, Scored, keras.Model, torch.Tensor]:
    net, twin, model = build(request.param)
    return net, twin, model, images(2, net.model.input_shape[0])


def options(name: str) -> dict[str, object]:
    entry = registry.get(name)
    params = inspect.signature(entry.result or entry.fn).parameters
    kwargs = {k: v for k, v in SMALL.items() if k in params}
    if "fast" in inspect.signature(entry.fn).parameters:
        kwargs["fast"] = False
    if "generator" in params:
        kwargs["generator"] = torch.Generator().manual_seed(3)
    if "progress" in params:
        kwargs["progress"] = False
    return kwargs


def run(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | str:
    """The method's maps, or the message of the ValueError it raises (both models must raise the same)."""
    try:
        return registry.get(name).fn(model, x, TARGETS, **options(name))
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize("name", registry.names())
def test_every_method_gives_the_pytorch_twins_maps_and_leaves_the_keras_model_as_it_was(models, name):
    net, twin, model, x = models
    modes = [m.training for m in net.modules()]
    weights = [w.copy() for w in model.get_weights()]
    ours, theirs = run(name, net, x), run(name, twin, x)
    if isinstance(theirs, str):  # e.g. CAM on a Flatten head: the same refusal
        assert ours == theirs
    elif name == "lrp":  # Keras computes its layers with its own ops, out of LRP's reach: refused by name
        assert isinstance(ours, str) and "LRP gives its rules to the layers computed by F.conv2d" in ours, ours
        assert "'model.conv' (KerasConv2D) uses its weight another way" in ours
    else:
        assert not isinstance(ours, str), ours
        assert ours.shape == theirs.shape == (2, 16, 16) and torch.isfinite(ours).all()
        assert theirs.abs().max() > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4 * float(theirs.abs().max()))
    assert_model_untouched(net, modes)
    for w, v in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, v)


def close(ours: torch.Tensor, oracle: torch.Tensor, rel: float = 1e-6) -> None:
    """Like with like (the same Keras ops on both sides): agreement to ``rel`` of the largest value (the oracle
    forms its inputs in another order, which the float32 inside Keras's BatchNormalization can round apart)."""
    oracle = oracle.detach()
    assert ours.shape == oracle.shape and oracle.abs().max() > 0
    torch.testing.assert_close(ours, oracle, rtol=0, atol=rel * float(oracle.abs().max()))


def test_gradient_methods_equal_captum_on_the_same_keras_module(models):
    net, _, _, x = models
    call = {"target": TARGETS}
    close(registry.get("saliency").fn(net, x, TARGETS, reduce=None, fast=False),
          captum_attr.Saliency(net).attribute(x, abs=True, **call))
    close(registry.get("integrated-gradients").fn(net, x, TARGETS, n_steps=8, reduce=None, fast=False),
          captum_attr.IntegratedGradients(net).attribute(x, n_steps=8, method="gausslegendre", **call))
    close(registry.get("input-x-gradient").fn(net, x, TARGETS, reduce=None, fast=False),
          captum_attr.InputXGradient(net).attribute(x, **call))
    # the Keras ReLU layers are nn.ReLU views, which Captum guides through its own module hooks
    guided = registry.get("guided-backprop").fn(net, x, TARGETS, reduce=None, fast=False)
    close(guided, captum_attr.GuidedBackprop(net).attribute(x, **call))
    plain = registry.get("saliency").fn(net, x, TARGETS, reduce=None, abs=False, fast=False)
    assert (guided - plain).abs().max() > 0.05 * plain.abs().max()  # the guiding did something
    close(registry.get("deconvnet").fn(net, x, TARGETS, reduce=None, fast=False),
          captum_attr.Deconvolution(net).attribute(x, **call))


def test_deeplift_equals_captum_on_the_twin_where_captum_cannot_see_keras_relus():
    """Captum's DeepLift rescales an nn.ReLU only where the module's output is one op on its input; a Keras
    ReLU view permutes around the ReLU, so Captum differentiates it plainly. cnnlens rescales the ReLU function
    itself: on the Keras model it equals Captum's DeepLift on the PyTorch twin (no max-pooling: Captum rescales
    nn.MaxPool2d modules, cnnlens the function)."""
    net, twin, _ = build("functional")
    x = images(2, 3)
    ours = registry.get("deeplift").fn(net, x, TARGETS, reduce=None, fast=False)
    close(ours, captum_attr.DeepLift(twin, eps=1e-10).attribute(x, baselines=torch.zeros_like(x), target=TARGETS), 1e-5)
    plain = captum_attr.DeepLift(net, eps=1e-10).attribute(x, baselines=torch.zeros_like(x), target=TARGETS)
    assert (plain - ours).abs().max() > 0.1 * ours.abs().max()  # what Captum gives on the Keras views


@pytest.mark.parametrize("layer", [None, "conv", "relu"])
def test_grad_cam_and_guided_grad_cam_equal_captum_on_a_keras_layer(models, layer):
    net, _, _, x = models
    with core.guarded(net, x):  # None: the default layer (the pooled map, else the last Conv2D)
        module = core.get_layer(net, layer or core.default_cam_layer(net, x))
    low = captum_attr.LayerGradCam(net, module).attribute(x, target=TARGETS, relu_attributions=True)
    close(registry.get("grad-cam").fn(net, x, TARGETS, layer=layer, upsample=False, fast=False), low[:, 0])
    oracle = captum_attr.GuidedGradCam(net, module).attribute(x, target=TARGETS, interpolate_mode="bilinear")
    close(registry.get("guided-grad-cam").fn(net, x, TARGETS, layer=layer, reduce=None, fast=False), oracle)


@pytest.mark.parametrize("ours, theirs", [("xgrad-cam", "XGradCAM"), ("layer-cam", "LayerCAM")])
def test_gradient_cams_equal_torchcam_on_a_keras_layer(ours, theirs):
    net, _, _ = build("functional")
    x = images(2, 3)
    copied = copy.deepcopy(net)  # torchcam's hooks and modes stay off ours
    with getattr(torchcam_methods, theirs)(copied, target_layer="model.sep_relu", input_shape=(3, 16, 16)) as extractor:
        scores = copied(x)
        expected = extractor(class_idx=TARGETS, scores=scores, normalized=False,
                             **({"eps": 0.0} if theirs == "XGradCAM" else {}))[0].detach()
    close(registry.get(ours).fn(net, x, TARGETS, layer="sep_relu", upsample=False, fast=False), expected)


def test_cam_and_grad_cam_on_the_gap_dense_head_are_the_closed_form():
    """CAM = sum_k w[k, t] F_k with F the map GlobalAveragePooling2D reads (from a Keras sub-model, not the
    adapter) and w the Dense kernel; Grad-CAM of that map = ReLU(CAM) / (h w), and is the default layer."""
    net, _, model = build("functional")
    x = images(2, 3)
    features = keras_output(model, x, "add")  # [N, C, h, w]
    kernel = torch.as_tensor(model.get_layer("dense").get_weights()[0])  # [C, K]
    expected = torch.einsum("nchw,cn->nhw", features, kernel[:, TARGETS])
    low = registry.get("cam").fn(net, x, TARGETS, upsample=False)
    close(low, expected, 1e-12)
    assert (low < 0).any() and (low > 0).any()
    grad = registry.get("grad-cam").fn(net, x, TARGETS, upsample=False, fast=False)
    close(grad, expected.clamp(min=0) / 256, 1e-6)  # Keras averages in float32


def test_cam_on_a_softmax_head_says_why_and_points_to_grad_cam():
    net = Scored(KerasModel(functional_cnn(activation="softmax")), scores="probabilities")
    with pytest.raises(ValueError, match="CAM needs a model whose output is one nn.Linear.*Use grad_cam"):
        registry.get("cam").fn(net, images(1, 3), [0])
    assert registry.get("grad-cam").fn(net, images(1, 3), [0]).shape == (1, 16, 16)


def test_the_default_fast_path_gives_the_same_maps_and_falls_back_with_one_line(caplog):
    net, _, _ = build("functional")
    x = images(2, 3)
    with caplog.at_level(logging.INFO, logger="cnnlens.explain"):
        for name in ("saliency", "grad-cam", "occlusion"):
            fast = registry.get(name).fn(net, x, TARGETS, **{k: v for k, v in options(name).items() if k != "fast"})
            close(fast, run(name, net, x), 1e-6)
    lines = [r.getMessage() for r in caplog.records if "torch.fx" in r.getMessage()]
    assert len(lines) == 1 and "a Keras model runs on tensors" in lines[0], lines
