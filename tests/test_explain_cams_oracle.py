"""The CAM family against torchcam 0.5 (an independent implementation) on random conv + BN + residual models,
gray and RGB, in float64, like with like (cnnlens with ``fast=False``, both sides on the model itself, maps at
the layer's resolution and not normalised). Where torchcam differs, the test shows why and who follows the
paper:

- Grad-CAM++: torchcam's ``GradCAMpp`` divides by its denominator on a copy (``alpha[mask].div_`` indexes with a
  boolean mask, which copies), so its weights are ``sum g^2 ReLU(g)``; and its denominator sums ``A g^3`` over
  positions where the paper multiplies ``sum A`` by the position's ``g^3``. Its ``SmoothGradCAMpp`` divides
  correctly: with zero noise, on a layer whose gradient is constant per channel (the one a GAP + linear head
  reads, where the two denominators agree), it is cnnlens's Grad-CAM++.
- In-place ReLU after the layer: torchcam keeps a reference to the layer's output, which the ReLU then
  overwrites, so its "bn_a" map is the map of the ReLU's output; cnnlens explains the layer asked for.
- Score-CAM, SS-CAM, IS-CAM: torchcam scales each low-resolution map to [0,1] before upsampling it, the paper
  (and pytorch-grad-cam) after; on a layer at the input's resolution they agree.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_random_model

from cnnlens.explain.cam_family import combine, layer_and_gradient
from cnnlens.explain.grad_cam_pp import grad_cam_pp
from cnnlens.explain.is_cam import is_cam
from cnnlens.explain.layer_cam import layer_cam
from cnnlens.explain.score_cam import score_cam
from cnnlens.explain.ss_cam import ss_cam
from cnnlens.explain.xgrad_cam import xgrad_cam

methods = pytest.importorskip("torchcam.methods")

TARGETS = [0, 3, 6, 2]


@pytest.fixture(params=[1, 3], ids=["gray", "rgb"])
def model_and_images(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, torch.Tensor]:
    c = request.param
    model = make_random_model(in_channels=c, seed=20 + c).double()
    images = torch.rand(4, c, 16, 16, generator=torch.Generator().manual_seed(30 + c), dtype=torch.float64)
    return model, images


def torchcam_map(extractor_class: type, model: torch.nn.Module, images: torch.Tensor, layer: str,
                 **kwargs: object) -> torch.Tensor:
    """torchcam's documented use, on a copy of the model (its hooks and modes stay off ours), not normalised;
    ``kwargs`` go to the call (``eps=0``: torchcam's 1e-8 in its denominators is not scaled to them, and a
    gradient of 1e-4 makes ``g^2`` that small; a 0/0 weight is NaN, which torchcam's ``nansum`` leaves out,
    as cnnlens gives it weight 0)."""
    model = copy.deepcopy(model)
    with extractor_class(model, target_layer=layer, input_shape=tuple(images.shape[1:])) as extractor:
        scores = model(images)
        return extractor(class_idx=TARGETS, scores=scores, normalized=False, **kwargs)[0].detach()


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-6) -> None:
    assert theirs.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=rtol * float(theirs.abs().max()))


@pytest.mark.parametrize("layer", ["stem", "conv_b", "relu_out", "head"])
@pytest.mark.parametrize("ours, theirs", [(xgrad_cam, "XGradCAM"), (layer_cam, "LayerCAM")], ids=["xgrad", "layer"])
def test_gradient_cams_equal_torchcam(model_and_images, layer, ours, theirs):
    model, images = model_and_images
    kwargs = {"eps": 0.0} if theirs == "XGradCAM" else {}
    expected = torchcam_map(getattr(methods, theirs), model, images, layer, **kwargs)
    close(ours(model, images, TARGETS, layer=layer, upsample=False, fast=False), expected, 1e-9)


class ZeroNoise:
    """Stands in for torchcam's noise distribution: SmoothGradCAMpp on the image itself."""

    def sample(self, size: torch.Size) -> torch.Tensor:
        return torch.zeros(size, dtype=torch.float64)


def test_grad_cam_pp_equals_torchcam_smooth_grad_cam_pp_without_noise_where_the_gradient_is_constant(
        model_and_images):
    model, images = model_and_images
    model = copy.deepcopy(model)
    with methods.SmoothGradCAMpp(model, target_layer="head", num_samples=2,
                                 input_shape=tuple(images.shape[1:])) as extractor:
        extractor._distrib = ZeroNoise()
        model(images)
        expected = extractor(class_idx=TARGETS, normalized=False, eps=0.0)[0].detach()
    close(grad_cam_pp(model, images, TARGETS, layer="head", upsample=False, fast=False), expected)


@pytest.mark.parametrize("layer", ["conv_b", "head"])
def test_torchcam_grad_cam_pp_weights_are_g_squared_relu_g_which_is_not_the_paper(model_and_images, layer):
    model, images = model_and_images
    theirs = torchcam_map(methods.GradCAMpp, model, images, layer)
    acts, grads, _ = layer_and_gradient(model, images, TARGETS, layer, fast=False)
    undivided = combine((grads**2 * grads.clamp(min=0)).sum(dim=(2, 3)), acts, images, relu=True, upsample=False)
    close(undivided, theirs)  # torchcam's map: the alpha division never reaches alpha
    ours = grad_cam_pp(model, images, TARGETS, layer=layer, upsample=False, fast=False)
    assert (ours - theirs).abs().max() > 10 * theirs.abs().max()  # and the paper's weights are far from it


def test_torchcam_explains_the_relu_output_when_an_in_place_relu_follows_the_layer(model_and_images):
    model, images = model_and_images
    # (XGrad-CAM: Layer-CAM's and HiResCAM's maps of a layer and of its ReLU's output are the same function)
    theirs = torchcam_map(methods.XGradCAM, model, images, "bn_a", eps=0.0)
    close(xgrad_cam(model, images, TARGETS, layer="relu_a", upsample=False, fast=False), theirs, 1e-9)
    ours = xgrad_cam(model, images, TARGETS, layer="bn_a", upsample=False, fast=False)
    assert (ours - theirs).abs().max() > 1e-2 * theirs.abs().max()  # bn_a's negative values count in its sums


def score_map(extractor_class: type, model: torch.nn.Module, images: torch.Tensor, layer: str,
              **kwargs: object) -> torch.Tensor:
    """torchcam's Score-CAM family (forward only), not normalised, at the layer's resolution."""
    model = copy.deepcopy(model)
    with extractor_class(model, target_layer=layer, input_shape=tuple(images.shape[1:]), **kwargs) as extractor:
        with torch.no_grad():
            model(images)
        return extractor(class_idx=TARGETS, normalized=False)[0].detach()


def test_score_cam_equals_torchcam_at_the_input_resolution(model_and_images):
    model, images = model_and_images
    expected = score_map(methods.ScoreCAM, model, images, "stem", batch_size=7)
    close(score_cam(model, images, TARGETS, layer="stem", upsample=False, batch_size=5, fast=False), expected)


def test_is_cam_equals_torchcam_at_the_input_resolution(model_and_images):
    model, images = model_and_images
    expected = score_map(methods.ISCAM, model, images, "stem", batch_size=7, num_samples=4)
    close(is_cam(model, images, TARGETS, layer="stem", n_samples=4, upsample=False, batch_size=9, fast=False),
          expected)


class SeededNoise:
    """torchcam's noise distribution replaced by cnnlens's draws: ``std * randn(size, generator)`` in order."""

    def __init__(self, seed: int, std: float) -> None:
        self.generator, self.std = torch.Generator().manual_seed(seed), std

    def sample(self, size: torch.Size) -> torch.Tensor:
        return self.std * torch.randn(size, generator=self.generator).double()


def test_ss_cam_equals_torchcam_with_the_same_noise_draws(model_and_images):
    model, images = model_and_images
    model_copy = copy.deepcopy(model)
    with methods.SSCAM(model_copy, target_layer="stem", batch_size=6, num_samples=3, std=0.5,
                       input_shape=tuple(images.shape[1:])) as extractor:
        extractor._distrib = SeededNoise(4, 0.5)
        with torch.no_grad():
            model_copy(images)
        expected = extractor(class_idx=TARGETS, normalized=False)[0].detach()
    ours = ss_cam(model, images.double(), TARGETS, layer="stem", n_samples=3, std=0.5, upsample=False, batch_size=5,
                  generator=torch.Generator().manual_seed(4), fast=False)
    close(ours, expected)


def test_score_cam_below_the_input_resolution_upsamples_then_scales_where_torchcam_scales_first(model_and_images):
    model, images = model_and_images
    acts, _, _ = layer_and_gradient(model, images, TARGETS, "head", fast=False)

    def by_hand(scale_first: bool) -> torch.Tensor:
        """Score-CAM written out one image and channel at a time."""
        maps = torch.zeros(acts.shape[0], *acts.shape[2:], dtype=acts.dtype)
        for i in range(acts.shape[0]):
            scores = []
            for k in range(acts.shape[1]):
                a = acts[i, k]
                if scale_first:
                    a = (a - a.min()) / (a.max() - a.min() + 1e-8)
                up = torch.nn.functional.interpolate(a[None, None], size=images.shape[2:], mode="bilinear")[0, 0]
                if not scale_first:
                    up = (up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else up * 0
                with torch.no_grad():
                    scores.append(model(images[i : i + 1] * up)[0, TARGETS[i]])
            w = torch.stack(scores).softmax(0)
            maps[i] = (w[:, None, None] * acts[i]).sum(0).clamp(min=0)
        return maps

    paper = by_hand(scale_first=False)
    close(score_cam(model, images, TARGETS, layer="head", upsample=False, fast=False), paper)
    theirs = score_map(methods.ScoreCAM, model, images, "head")
    close(by_hand(scale_first=True), theirs)
    assert (paper - theirs).abs().max() > 1e-4 * theirs.abs().max()  # the order matters at 8x8 -> 16x16
