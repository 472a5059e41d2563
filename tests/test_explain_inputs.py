"""Silent wrong answers become clear errors: NaN/Inf images, images far outside [0,1], and a model whose
forward hook changes its output (the fast paths must not bypass the hook)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from conftest import make_random_model

from cnnlens.explain import METHODS, occlusion
from cnnlens.explain.lime import lime

SMALL = {"smoothgrad": {"n_samples": 2}, "integrated-gradients": {"n_steps": 2}, "occlusion": {"patch": 8, "stride": 8},
         "lime": {"n_samples": 8, "n_segments": 4}}


def _method(name: str):
    return functools.partial(METHODS[name], **SMALL.get(name, {}))


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_the_images_is_an_error_naming_where(name, bad):
    model = make_random_model(1, seed=0)
    images = torch.rand(2, 1, 16, 16)
    images[1, 0, 3, 4] = bad
    with pytest.raises(ValueError, match=r"1 NaN or Inf value\(s\), the first at index \(1, 0, 3, 4\) \(image 1\)"):
        _method(name)(model, images, 0)


@pytest.mark.parametrize("name", list(METHODS))
def test_images_far_outside_0_1_warn_with_the_range_seen(name):
    model = make_random_model(1, seed=0)
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    with pytest.warns(UserWarning, match=r"images range from [\d.e-]+ to 25\d\.?\d*, but .* \[0,1\].*255"):
        _method(name)(model, images, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # images in [0,1]: no warning at all
        _method(name)(model, images / 255, 0)


def test_occlusion_and_lime_respect_a_forward_hook_that_changes_the_output():
    model = make_random_model(1, seed=0)
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    unhooked = occlusion(model, images, 0, patch=4, stride=2, fast=False)
    handle = model.head.register_forward_hook(lambda m, i, o: o * 3.0 + 0.5)  # the user's hook changes the maps
    try:
        hooked_exact = occlusion(model, images, 0, patch=4, stride=2, fast=False)
        hooked_default = occlusion(model, images, 0, patch=4, stride=2)
        torch.testing.assert_close(hooked_default, hooked_exact, rtol=1e-5, atol=1e-6)
        assert (hooked_exact - unhooked).abs().max() > 1e-3  # the hook really matters
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        torch.testing.assert_close(lime(model, images, 0, n_samples=30, generator=g()),
                                   lime(model, images, 0, n_samples=30, generator=g(), fast=False), rtol=1e-5, atol=1e-6)
        assert len(model.head._forward_hooks) == 1  # the user's hook is still there, and only it
    finally:
        handle.remove()


@pytest.mark.parametrize("name", list(METHODS))
def test_float64_images_for_a_float32_model_say_what_to_do(name):
    model = make_random_model(1, seed=0)
    with pytest.raises(TypeError, match=r"images are torch.float64 but the model's parameters are torch.float32.*images.to"):
        _method(name)(model, torch.rand(2, 1, 16, 16, dtype=torch.float64), 0)
