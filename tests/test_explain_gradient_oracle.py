"""The gradient and CAM methods against Captum, an independent implementation, on random models
(conv + BN + in-place ReLU + max-pool + residual + GAP + linear), grayscale and RGB.

Like with like: cnnlens runs the model itself here (``fast=False``), as Captum does, so both sides round
the same float32 operations on any CPU and agree to 1e-5. The fast path (a folded, channels-last copy)
rounds differently, which at max-pool near-ties can send a gradient through the other input: it is
checked against float64 in ``test_fast_ties.py``."""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("captum.attr")
from captum.attr import (  # noqa: E402
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from captum.attr._core.noise_tunnel import NoiseTunnel as _NoiseTunnelClass  # noqa: E402

from cnnlens.explain.grad_cam import grad_cam  # noqa: E402
from cnnlens.explain.guided_backprop import guided_backprop  # noqa: E402
from cnnlens.explain.guided_grad_cam import guided_grad_cam  # noqa: E402
from cnnlens.explain.integrated_gradients import integrated_gradients  # noqa: E402
from cnnlens.explain.saliency import saliency  # noqa: E402
from cnnlens.explain.smoothgrad import smoothgrad  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns about its ReLU hooks

TARGETS = [0, 3, 6, 2]


def assert_rel_close(ours: torch.Tensor, oracle: torch.Tensor, rel: float = 1e-5) -> None:
    """Agreement to ``rel`` relative to the oracle's largest magnitude (elementwise relative error is
    meaningless where the oracle is ~0)."""
    oracle = oracle.detach()
    assert ours.shape == oracle.shape
    assert oracle.abs().max() > 0  # a vacuous comparison of zeros would prove nothing
    torch.testing.assert_close(ours, oracle, rtol=rel, atol=rel * float(oracle.abs().max()))


def test_saliency_matches_captum(random_model_and_images):
    model, images = random_model_and_images
    ours = saliency(model, images, TARGETS, reduce=None, fast=False)
    assert_rel_close(ours, Saliency(model).attribute(images, target=TARGETS, abs=True))
    signed = saliency(model, images, TARGETS, reduce=None, abs=False, fast=False)
    assert_rel_close(signed, Saliency(model).attribute(images, target=TARGETS, abs=False))
    assert (signed < 0).any()  # the signed variant really is signed
    assert_rel_close(saliency(model, images, TARGETS, fast=False), signed.abs().amax(dim=1))


def test_guided_backprop_matches_captum(random_model_and_images):
    # Captum hooks the same in-place nn.ReLU modules through its own backward-hook machinery.
    model, images = random_model_and_images
    oracle = GuidedBackprop(model).attribute(images, target=TARGETS)
    ours = guided_backprop(model, images, TARGETS, reduce=None, fast=False)
    assert_rel_close(ours, oracle)
    # guided backprop really differs from the plain gradient on these models
    plain = saliency(model, images, TARGETS, reduce=None, abs=False, fast=False)
    assert (ours - plain).abs().max() > 0.1 * plain.abs().max()


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"])
def test_integrated_gradients_matches_captum(random_model_and_images, method):
    model, images = random_model_and_images
    oracle = IntegratedGradients(model).attribute(images, target=TARGETS, n_steps=20, method=method)
    ours = integrated_gradients(model, images, TARGETS, n_steps=20, method=method, reduce=None, batch_size=7, fast=False)
    assert_rel_close(ours, oracle)


def test_integrated_gradients_trapezoid_is_captum_rescaled(random_model_and_images):
    # Captum's riemann_trapezoid puts weights 1/n (halved at the ends) on n points spaced 1/(n-1), which
    # sum to (n-1)/n; the trapezoid rule's weights are 1/(n-1): exactly n/(n-1) times Captum's.
    model, images = random_model_and_images
    n = 10
    baseline = torch.full_like(images, 0.5)
    oracle = IntegratedGradients(model).attribute(images, baselines=baseline, target=TARGETS, n_steps=n,
                                                  method="riemann_trapezoid")
    ours = integrated_gradients(model, images, TARGETS, baseline=baseline, n_steps=n, method="riemann_trapezoid",
                                reduce=None, fast=False)
    assert_rel_close(ours, oracle * n / (n - 1))


@pytest.mark.parametrize("layer", [None, "stem.0", "conv_b", "relu_out", "head.1"])
def test_grad_cam_matches_captum(random_model_and_images, layer):
    # None = "head", the module whose output the global average pooling reads (conv + in-place ReLU).
    model, images = random_model_and_images
    module = dict(model.named_modules())[layer or "head"]
    low = LayerGradCam(model, module).attribute(images, target=TARGETS, relu_attributions=True)
    ours_low = grad_cam(model, images, TARGETS, layer=layer, upsample=False, fast=False)
    assert_rel_close(ours_low, low[:, 0])
    up = LayerAttribution.interpolate(low, tuple(images.shape[2:]), interpolate_mode="bilinear")
    assert_rel_close(grad_cam(model, images, TARGETS, layer=layer, fast=False), up[:, 0])
    signed = LayerGradCam(model, module).attribute(images, target=TARGETS, relu_attributions=False)
    assert_rel_close(grad_cam(model, images, TARGETS, layer=layer, relu=False, upsample=False, fast=False), signed[:, 0])


@pytest.mark.parametrize("layer", [None, "conv_a"])
def test_guided_grad_cam_matches_captum(random_model_and_images, layer):
    model, images = random_model_and_images
    module = dict(model.named_modules())[layer or "head"]
    oracle = GuidedGradCam(model, module).attribute(images, target=TARGETS, interpolate_mode="bilinear")
    assert_rel_close(guided_grad_cam(model, images, TARGETS, layer=layer, reduce=None, fast=False), oracle)


def _captum_with_our_noise(monkeypatch, images, n_samples, sigma, seed):
    """Make Captum's NoiseTunnel add exactly the noise cnnlens draws: for s = 0..n-1,
    ``randn(images.shape, generator)`` scaled by sigma * (max - min) of each image."""
    g = torch.Generator().manual_seed(seed)
    scale = sigma * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
    noise = torch.stack([torch.randn(images.shape, generator=g) for _ in range(n_samples)], dim=1)  # [N,n,C,H,W]
    noise = (noise * scale.view(-1, 1, 1, 1, 1)).flatten(0, 1)  # Captum's order: image-major

    def add_noise(inp, stdev, n):
        assert inp.shape == images.shape and n == n_samples
        return inp.repeat_interleave(n, dim=0) + noise

    monkeypatch.setattr(_NoiseTunnelClass, "_add_noise_to_input", staticmethod(add_noise))


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq"])
def test_smoothgrad_saliency_matches_captum_noise_tunnel_with_same_noise(random_model_and_images, monkeypatch, nt_type):
    model, images = random_model_and_images
    _captum_with_our_noise(monkeypatch, images, 6, 0.2, seed=5)
    oracle = NoiseTunnel(Saliency(model)).attribute(images, nt_type=nt_type, nt_samples=6, stdevs=1.0,
                                                    target=TARGETS, abs=True)
    ours = smoothgrad(model, images, TARGETS, n_samples=6, sigma=0.2, squared=nt_type == "smoothgrad_sq",
                      generator=torch.Generator().manual_seed(5), batch_size=5, reduce=None, fast=False)
    assert_rel_close(ours, oracle)


def test_smoothgrad_around_guided_backprop_and_ig_matches_captum(random_model_and_images, monkeypatch):
    model, images = random_model_and_images
    _captum_with_our_noise(monkeypatch, images, 4, 0.15, seed=2)
    oracle = NoiseTunnel(GuidedBackprop(model)).attribute(images, nt_samples=4, stdevs=1.0, target=TARGETS)
    ours = smoothgrad(model, images, TARGETS, method=guided_backprop, n_samples=4,
                      generator=torch.Generator().manual_seed(2), reduce=None, fast=False)
    assert_rel_close(ours, oracle)

    oracle = NoiseTunnel(IntegratedGradients(model)).attribute(images, nt_samples=4, stdevs=1.0, target=TARGETS,
                                                               n_steps=8)
    ig = functools.partial(integrated_gradients, n_steps=8)
    ours = smoothgrad(model, images, TARGETS, method=ig, n_samples=4,
                      generator=torch.Generator().manual_seed(2), batch_size=3, reduce=None, fast=False)
    assert_rel_close(ours, oracle)
