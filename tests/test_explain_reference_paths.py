"""Guided IG and Blur IG against PAIR's ``saliency`` package (``saliency.core``, framework-free numpy), in
float64 where both algorithms are deterministic, on the random conv + BN + residual models gray and RGB;
and hand-worked values on a linear model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_random_model
from torch import nn

pair = pytest.importorskip("saliency.core")

from cnnlens.explain.blur_ig import blur_ig  # noqa: E402
from cnnlens.explain.guided_ig import guided_ig  # noqa: E402
from cnnlens.explain.integrated_gradients import gaussian_blur  # noqa: E402

TARGETS = [0, 3, 5]


@pytest.fixture
def numpy_quantile_keyword(monkeypatch):
    """saliency 0.2.1 calls ``np.quantile(..., interpolation=)``, which numpy 2 renamed ``method=``."""
    quantile = np.quantile
    monkeypatch.setattr(np, "quantile", lambda a, q, interpolation=None, **kw: quantile(a, q, method=interpolation, **kw))


def pair_gradients(model: nn.Module, target: int):
    """PAIR's ``call_model_function``: gradients of ``target``'s logit for a batch of HWC images."""

    def call(batch, call_model_args=None, expected_keys=None):
        x = torch.from_numpy(np.asarray(batch)).permute(0, 3, 1, 2).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
        return {pair.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

    return call


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


@pytest.fixture(params=[1, 3], ids=["gray", "rgb"])
def model_and_images(request):
    c = request.param
    model = make_random_model(c, seed=c).double()
    return model, torch.rand(3, c, 16, 16, generator=torch.Generator().manual_seed(20 + c), dtype=torch.float64)


@pytest.mark.parametrize("max_dist", [0.02, 1.0])
def test_guided_ig_matches_pair_in_float64(model_and_images, numpy_quantile_keyword, max_dist):
    model, images = model_and_images
    ours = guided_ig(model, images, TARGETS, n_steps=20, max_dist=max_dist, reduce=None, fast=False)
    for i, t in enumerate(TARGETS):
        oracle = pair.GuidedIG().GetMask(hwc(images[i]), pair_gradients(model, t), x_steps=20, max_dist=max_dist)
        assert np.abs(oracle).max() > 0
        np.testing.assert_allclose(hwc(ours[i]), oracle, rtol=0, atol=1e-12 * np.abs(oracle).max())
    # the guided path really is another one than the straight line
    straight = guided_ig(model, images, TARGETS, n_steps=20, max_dist=0.0, reduce=None, fast=False)
    assert (ours - straight).abs().max() > 0.01 * ours.abs().max()


@pytest.mark.parametrize("sqrt", [False, True])
def test_blur_ig_matches_pair_in_float64(model_and_images, sqrt):
    model, images = model_and_images
    ours = blur_ig(model, images, TARGETS, max_sigma=6.0, n_steps=10, sqrt=sqrt, batch_size=7, reduce=None, fast=False)
    for i, t in enumerate(TARGETS):
        # batch_size=1: PAIR weighs a whole batch of steps by its last step's sigma difference
        oracle = pair.BlurIG().GetMask(hwc(images[i]), pair_gradients(model, t), max_sigma=6.0, steps=10, sqrt=sqrt,
                                       batch_size=1)
        assert np.abs(oracle).max() > 0
        np.testing.assert_allclose(hwc(ours[i]), oracle, rtol=0, atol=1e-12 * np.abs(oracle).max())


def test_zero_border_blur_is_scipys_constant_mode():
    from scipy import ndimage

    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.3, 1.7, 30.0):
        oracle = np.stack([ndimage.gaussian_filter(hwc(img), sigma=[sigma, sigma, 0], mode="constant") for img in x])
        np.testing.assert_allclose(gaussian_blur(x, sigma, border="zeros").permute(0, 2, 3, 1).numpy(), oracle,
                                   rtol=0, atol=1e-14)


def test_on_a_linear_model_guided_ig_is_exact_and_blur_ig_is_the_blurred_difference():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 2)).double().eval()
    x = torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = model[1].weight.detach().reshape(2, 2, 4, 4)
    # every feature ends at the image, whatever path it took: sum of moves x w = (x - b) w
    for max_dist in (0.0, 0.1, 1.0):
        torch.testing.assert_close(guided_ig(model, x, [0, 1], baseline=0.25, n_steps=7, max_dist=max_dist, reduce=None),
                                   (x - 0.25) * w[[0, 1]])
    # Blur IG of a linear model: w times the change of the image from its most blurred version, up to the
    # forward-difference and Riemann errors (small for many steps)
    far = gaussian_blur(x, 3.0, border="zeros")
    out = blur_ig(model, x, [1, 1], max_sigma=3.0, n_steps=300, grad_step=1e-4, reduce=None)
    torch.testing.assert_close(out, (x - far) * w[1], rtol=0, atol=2e-3 * float((x - far).abs().max() * w.abs().max()))


def test_bad_options_name_the_argument():
    model, x = make_random_model(1), torch.rand(2, 1, 8, 8)
    for call, match in [
        (lambda: guided_ig(model, x, fraction=0), r"fraction must be a number in \(0, 1\]"),
        (lambda: guided_ig(model, x, max_dist=2), r"max_dist must be a number in \[0, 1\]"),
        (lambda: guided_ig(model, x, n_steps=0), "n_steps must be an int >= 1"),
        (lambda: blur_ig(model, x, max_sigma=0), "max_sigma must be a positive number of pixels"),
        (lambda: blur_ig(model, x, grad_step=-1), "grad_step must be a positive number"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


def test_an_image_equal_to_its_baseline_gets_nothing_and_the_others_are_batch_independent():
    model = make_random_model(3, seed=2)
    x = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    x[1] = 0.0
    both = guided_ig(model, x, [0, 1, 2], n_steps=6, fast=False)
    assert both[1].abs().max() == 0
    torch.testing.assert_close(guided_ig(model, x[2:], 2, n_steps=6, fast=False), both[2:], rtol=1e-5, atol=1e-7)
    blurred = [blur_ig(model, x, [0, 1, 2], n_steps=5, max_sigma=4.0, batch_size=bs, fast=False) for bs in (1, 4, 64)]
    for b in blurred[1:]:
        torch.testing.assert_close(b, blurred[0], rtol=1e-5, atol=1e-7)


def test_xrai_matches_pair_given_the_same_attribution_and_segments(model_and_images):
    from cnnlens.explain.integrated_gradients import integrated_gradients
    from cnnlens.explain.xrai import xrai, xrai_segments

    model, images = model_and_images
    images = images[:1]
    black, white = (images.amin(dim=(1, 2, 3), keepdim=True).expand_as(images),
                    images.amax(dim=(1, 2, 3), keepdim=True).expand_as(images))
    attr = sum(integrated_gradients(model, images, 3, baseline=b, n_steps=6, reduce=None, fast=False)
               for b in (black, white)) / 2
    segments = xrai_segments(images[0])
    # the segments are PAIR's own: Felzenszwalb at its six scales on the 224x224 image, dilated
    from saliency.core.xrai import _get_segments_felzenszwalb

    theirs = _get_segments_felzenszwalb(hwc(images[0]))
    assert len(theirs) == segments.shape[0] > 20
    assert all(np.array_equal(segments[j].numpy(), theirs[j]) for j in range(len(theirs)))
    for algorithm in ("full", "fast"):
        ours = xrai(model, images, 3, n_steps=6, algorithm=algorithm, fast=False)
        params = pair.XRAIParameters(algorithm=algorithm)
        oracle = pair.XRAI().GetMask(hwc(images[0]), None, segments=[m.numpy() for m in segments],
                                     base_attribution=hwc(attr[0]), extra_parameters=params)
        np.testing.assert_allclose(ours[0].numpy(), oracle, rtol=0, atol=1e-12 * np.abs(oracle).max())
        assert len(np.unique(oracle)) >= 3  # several regions, not one (16x16 images, 50-pixel minimum)


def test_xrai_regions_by_hand():
    from cnnlens.explain.xrai import xrai_regions

    attr = torch.tensor([[4.0, 2, 0, 0], [4, 2, 0, -2]])
    column = lambda *cs: torch.zeros(2, 4, dtype=torch.bool).index_fill_(1, torch.tensor(cs), True)  # noqa: E731
    masks = torch.stack([column(0, 1), column(0), column(2, 3), column(1, 2)])  # A, B, C, D
    # full: B (mean 4) first; then A adds column 1 (gain 2), beating D (cols 1-2: 1) and C (-0.5); then D adds
    # column 2 (0) before C's columns 2-3 (-0.5); C's last column 3 gains (0 - 2) / 2 = -1
    torch.testing.assert_close(xrai_regions(attr, masks, min_pixel_diff=1), torch.tensor([[4.0, 2, 0, -1]] * 2))
    # stop once 30% is covered (after B and A): the rest gets its own mean, -0.5
    torch.testing.assert_close(xrai_regions(attr, masks, min_pixel_diff=1, area_threshold=0.3),
                               torch.tensor([[4.0, 2, -0.5, -0.5]] * 2))
    # masks adding fewer pixels than min_pixel_diff drop out: with 3, only A and C (4 pixels each) count
    torch.testing.assert_close(xrai_regions(attr, masks, min_pixel_diff=3), torch.tensor([[3.0, 3, -0.5, -0.5]] * 2))


def test_xrai_bad_options_name_the_argument():
    from cnnlens.explain.xrai import xrai

    model, x = make_random_model(1), torch.rand(2, 1, 8, 8)
    for kw, match in [({"algorithm": "greedy"}, "algorithm must be one of 'full', 'fast'"),
                      ({"area_threshold": 0}, r"area_threshold must be a number in \(0, 1\]"),
                      ({"min_pixel_diff": 0}, "min_pixel_diff must be an int >= 1"),
                      ({"segments": [torch.ones(1, 8, 8, dtype=torch.bool)]}, "segments must be one bool tensor"),
                      ({"attributions": torch.rand(2, 8, 7)}, r"attributions must be a tensor \[N,C,H,W\] or \[N,H,W\]")]:
        with pytest.raises(ValueError, match=match):
            xrai(model, x, **kw)
