"""Model-randomisation sanity check: layers, copies, stages, similarity measures against oracles."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import make_random_model
from skimage.metrics import structural_similarity
from torch import nn

from cnnlens.explain.saliency import saliency
from cnnlens.faithfulness.randomization import (model_randomization, parameter_layers, randomize_layer, scale_abs,
                                                spearman, ssim)


def image_method(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """An 'explanation' that ignores the model (the paper's edge-detector argument): the image itself."""
    return images[:, 0].clone()


def grad_method(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return saliency(model, images, target)


@pytest.fixture
def model_and_images() -> tuple[nn.Module, torch.Tensor]:
    return make_random_model(1, 5, seed=3), torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(4))


def test_layers_are_ordered_from_the_output_with_bn_joined(model_and_images) -> None:
    model, images = model_and_images
    groups = parameter_layers(model, images)
    assert [g.name for g in groups] == ["fc", "head.0", "conv_b+bn_b", "conv_a+bn_a", "stem.0+stem.1"]
    assert groups[2].modules == ("conv_b", "bn_b")


def test_layers_follow_the_forward_pass_not_registration() -> None:
    class Backwards(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)      # registered first, called last
            self.conv = nn.Conv2d(1, 4, 3)
            self.unused = nn.Linear(3, 3)  # never called: cannot matter

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean((2, 3)))

    assert [g.name for g in parameter_layers(Backwards(), torch.rand(1, 1, 8, 8))] == ["fc", "conv"]


def test_cascading_leaves_the_user_model_bit_identical(model_and_images) -> None:
    model, images = model_and_images
    model.train()  # also a model in training mode: BN statistics must not move
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    r = model_randomization(model, images, {"saliency": grad_method}, mode="cascading")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert r.spearman["saliency"].shape == (5, 3) and r.ssim["saliency"].shape == (5, 3)  # one per layer and image
    assert r.example_maps["saliency"].shape == (6, 16, 16)


def test_stages_randomise_the_right_layers(model_and_images) -> None:
    """Cascading stage k differs from the model in layers 0..k; independent stage k only in layer k."""
    model, images = model_and_images
    groups = parameter_layers(model, images)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[dict[str, torch.Tensor]] = []

    def spy(m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return grad_method(m, x, t)

    def changed(state: dict[str, torch.Tensor]) -> set[str]:
        return {g.name for g in groups if any(not torch.equal(state[f"{mod}.{p}"], original[f"{mod}.{p}"])
                                              for mod in g.modules for p in dict(model.get_submodule(mod).state_dict()))}

    for mode in ("cascading", "independent"):
        seen.clear()
        model_randomization(model, images, {"spy": spy}, mode=mode, seed=5)
        stages = [changed(s) for s in seen[1:]]  # seen[0]: the original maps
        names = [g.name for g in groups]
        expected = [set(names[:k + 1]) if mode == "cascading" else {names[k]} for k in range(len(names))]
        assert stages == expected


def test_a_method_that_ignores_the_model_stays_identical(model_and_images) -> None:
    model, images = model_and_images
    for mode in ("cascading", "independent"):
        r = model_randomization(model, images, {"image": image_method, "saliency": grad_method}, mode=mode)
        assert torch.allclose(r.spearman["image"], torch.ones(5, 3, dtype=torch.float64))
        assert torch.allclose(r.ssim["image"], torch.ones(5, 3, dtype=torch.float64))
        assert r.spearman["saliency"][-1].mean() < 0.9  # the gradient does change


def test_same_seed_same_result_and_given_original_maps_are_used(model_and_images) -> None:
    model, images = model_and_images
    a = model_randomization(model, images, {"s": grad_method}, seed=1)
    b = model_randomization(model, images, {"s": grad_method}, seed=1)
    c = model_randomization(model, images, {"s": grad_method}, seed=2)
    assert torch.equal(a.spearman["s"], b.spearman["s"])
    assert not torch.equal(a.spearman["s"], c.spearman["s"])
    fake = {"s": torch.ones(3, 16, 16)}
    d = model_randomization(model, images, {"s": grad_method}, seed=1, original_maps=fake)
    assert torch.equal(d.example_maps["s"][0], fake["s"][0])


def test_randomize_layer_draws_pytorch_default_scale_and_resets_bn(model_and_images) -> None:
    model, images = model_and_images
    group = parameter_layers(model, images)[2]  # conv_b + bn_b
    randomize_layer(model, group, seed=0)
    w = model.conv_b.weight
    bound = 1 / (w[0].numel() ** 0.5)
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.equal(model.bn_b.weight, torch.ones(8)) and torch.equal(model.bn_b.running_var, torch.ones(8))


def test_spearman_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 12, 12, generator=g).round(decimals=1)  # many ties
    b = torch.randn(4, 12, 12, generator=g)
    b[1, :6] = 0.0
    ours = spearman(a, b)
    ref = [scipy.stats.spearmanr(a[i].abs().flatten(), b[i].abs().flatten()).statistic for i in range(4)]
    assert np.allclose(ours.numpy(), ref, atol=1e-10)
    signed = spearman(a, b, absolute=False)
    assert np.allclose(signed.numpy(), [scipy.stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic
                                        for i in range(4)], atol=1e-10)


def test_spearman_of_identical_maps_is_one_and_constant_maps_defined() -> None:
    a = torch.rand(3, 12, 12)
    assert torch.equal(spearman(a, a), torch.ones(3, dtype=torch.float64))
    assert torch.equal(spearman(-a, a), torch.ones(3, dtype=torch.float64))  # absolute values
    zero = torch.zeros(3, 12, 12)
    assert torch.equal(spearman(zero, zero), torch.ones(3, dtype=torch.float64))
    assert torch.equal(spearman(a, zero), torch.zeros(3, dtype=torch.float64))


def test_ssim_matches_skimage() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 20, 17, generator=g)
    b = (a + 0.3 * torch.randn(3, 20, 17, generator=g)).abs()
    ours = ssim(a, b)
    sa, sb = scale_abs(a).numpy(), scale_abs(b).numpy()
    ref = [structural_similarity(sa[i], sb[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False) for i in range(3)]
    assert np.allclose(ours.numpy(), ref, atol=1e-10)
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(ssim(a, 7 * a), torch.ones(3, dtype=torch.float64))  # scale-free after normalising


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mode": "top-down"}, "mode must be one of 'cascading', 'independent'"),
    ({"layers": ["fc", "nope"]}, r"unknown layer\(s\) \['nope'\]; layers \(output first\): fc, head.0"),
    ({"methods": {}}, "methods is empty"),
    ({"example_index": 3}, r"example_index must be in \[0, 2\]"),
])
def test_bad_arguments_raise_clear_errors(model_and_images, kwargs, match) -> None:
    model, images = model_and_images
    args = {"methods": {"s": grad_method}, **kwargs}
    with pytest.raises(ValueError, match=match):
        model_randomization(model, images, **args)


def test_maps_of_the_wrong_shape_are_named(model_and_images) -> None:
    model, images = model_and_images
    with pytest.raises(ValueError, match=r"maps of 'bad' have size \(8, 8\)"):
        model_randomization(model, images, {"bad": lambda m, x, t: torch.rand(3, 8, 8)})
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        spearman(torch.rand(2, 12, 12), torch.rand(2, 12, 13))
    with pytest.raises(ValueError, match="SSIM needs maps of at least 11x11"):
        ssim(torch.rand(2, 8, 8), torch.rand(2, 8, 8))


def test_only_some_layers(model_and_images) -> None:
    model, images = model_and_images
    r = model_randomization(model, images, {"s": grad_method}, layers=["conv_a+bn_a", "fc"])
    assert r.layers == ("fc", "conv_a+bn_a")  # kept in output-first order
    assert r.spearman["s"].shape == (2, 3)
