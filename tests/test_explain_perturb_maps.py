"""Feature maps, class-average maps and contrastive maps: values against direct computation, guarding, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.explain.class_average import class_average_maps, contrastive, normalize_maps
from cnnlens.explain.feature_maps import feature_maps
from cnnlens.explain.occlusion import occlusion
from conftest import assert_model_untouched, make_random_model


def test_feature_maps_equal_the_layers_outputs(random_model_and_images):
    model, images = random_model_and_images
    maps = feature_maps(model, images, ["stem.0", "conv_a", "fc"])
    assert list(maps) == ["stem.0", "conv_a", "fc"]
    with torch.no_grad():
        conv = model.stem[0](images)
        stem = model.pool(model.stem(images))
        expected_a = model.conv_a(stem)
        logits = model(images)
    # stem.0 is followed by an in-place ReLU: the copy keeps its negative values
    torch.testing.assert_close(maps["stem.0"], conv)
    assert (maps["stem.0"] < 0).any()
    torch.testing.assert_close(maps["conv_a"], expected_a)
    torch.testing.assert_close(maps["fc"], logits)
    assert not any(m.requires_grad for m in maps.values())


class Explodes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the forward pass should have stopped before this layer")


def test_feature_maps_stop_after_the_last_requested_layer():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), Explodes())
    maps = feature_maps(model, torch.rand(2, 1, 8, 8), ["1", "0"])
    assert list(maps) == ["1", "0"] and maps["0"].shape == (2, 3, 6, 6)
    torch.testing.assert_close(maps["1"], maps["0"].clamp_min(0))


def test_feature_maps_leave_the_model_untouched_also_after_errors(random_model_and_images):
    model, images = random_model_and_images
    model.train()
    modes = [m.training for m in model.modules()]
    stats = model.stem[1].running_mean.clone()
    feature_maps(model, images, ["head"])
    assert torch.equal(model.stem[1].running_mean, stats)
    with pytest.raises(ValueError, match="unknown layer 'nope'; valid layer names: stem, stem.0"):
        feature_maps(model, images, ["stem", "nope"])
    assert_model_untouched(model, modes)


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Conv2d(1, 1, 1)
        self.spare = nn.Conv2d(1, 1, 1)
        self.pair = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_feature_maps_bad_inputs():
    model = Unused()
    images = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"layers \['spare'\] did not run"):
        feature_maps(model, images, ["used", "spare"])
    with pytest.raises(ValueError, match="non-empty list of layer names"):
        feature_maps(model, images, [])
    with pytest.raises(ValueError, match="non-empty list of layer names"):
        feature_maps(model, images, "used")
    assert_model_untouched(model, [m.training for m in model.modules()])


def toy_method(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None, *, scale: float = 1.0) -> torch.Tensor:
    """A stand-in explanation whose value is known: first channel times (target + 1) times scale."""
    return images[:, 0] * (target.to(images) + 1)[:, None, None] * scale


def test_class_average_by_hand():
    images = torch.zeros(5, 1, 2, 2)
    images[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 4.0, 3.0, 5.0])
    images[:, 0, 1, 1] = torch.tensor([-2.0, 1.0, 1.0, 3.0, 0.0])
    labels = torch.tensor([0, 0, 2, -1, 2])
    out = class_average_maps(toy_method, nn.Identity(), images, labels, num_classes=4, batch_size=2, scale=2.0)
    # max_abs normalisation removes the (target+1)*scale factor: each map is the image over its max |value|
    expected0 = (torch.tensor([[1.0, 0], [0, -2]]) / 2 + torch.tensor([[2.0, 0], [0, 1]]) / 2) / 2
    expected2 = (torch.tensor([[4.0, 0], [0, 1]]) / 4 + torch.tensor([[5.0, 0], [0, 0]]) / 5) / 2
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[2], expected2)
    assert out[1].isnan().all() and out[3].isnan().all()  # no images of classes 1 and 3 (label -1 skipped)
    raw = class_average_maps(toy_method, nn.Identity(), images, labels.tolist(), 4, normalize=None, batch_size=64)
    torch.testing.assert_close(raw[2], (images[2, 0] * 3 + images[4, 0] * 3) / 2)


def test_class_average_with_occlusion_matches_per_image_maps(random_model_and_images):
    model, images = random_model_and_images
    model.train()
    modes = [m.training for m in model.modules()]
    labels = torch.tensor([1, 1, 0, 1])
    out = class_average_maps(occlusion, model, images, labels, 3, batch_size=3, patch=4, stride=4)
    assert_model_untouched(model, modes)
    model.eval()
    per_image = normalize_maps(occlusion(model, images, labels, patch=4, stride=4), "max_abs")
    # maps in [-1, 1]; other batch sizes run other float32 kernels (incremental occlusion: ~2e-6 apart)
    torch.testing.assert_close(out[1], per_image[[0, 1, 3]].mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0], per_image[2], rtol=1e-5, atol=1e-5)
    assert out[2].isnan().all()


def test_normalize_maps_by_hand():
    maps = torch.tensor([[[1.0, -4.0]], [[0.0, 0.0]]])
    torch.testing.assert_close(normalize_maps(maps, "max_abs"), torch.tensor([[[0.25, -1.0]], [[0.0, 0.0]]]))
    torch.testing.assert_close(normalize_maps(maps, "minmax"), torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]]))
    with pytest.raises(ValueError, match="normalize must be 'max_abs', 'minmax' or None"):
        normalize_maps(maps, "l2")


def test_class_average_bad_inputs():
    images = torch.rand(3, 1, 4, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\] \(or -1 for unknown\)"):
        class_average_maps(toy_method, nn.Identity(), images, [0, 2, 1], 2)
    with pytest.raises(ValueError, match="labels must be 3 integer class ids"):
        class_average_maps(toy_method, nn.Identity(), images, [0, 1], 2)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        class_average_maps(toy_method, nn.Identity(), images, [0, 1, 1], 0)
    with pytest.raises(ValueError, match="unknown method 'no-such-method'"):
        class_average_maps("no-such-method", nn.Identity(), images, [0, 1, 1], 2)
    with pytest.raises(TypeError, match="method must be a callable"):
        class_average_maps(3, nn.Identity(), images, [0, 1, 1], 2)
    with pytest.raises(ValueError, match=r"must return \[N,H,W\] maps"):
        class_average_maps(lambda m, x, target: x, nn.Identity(), images, [0, 1, 1], 2)


def test_contrastive_maps():
    model = make_random_model(1, num_classes=4, seed=5)
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    true = torch.tensor([0, 1, 3])
    res = contrastive(occlusion, model, images, true, patch=4, stride=4, output="logit")
    predicted = model(images).argmax(1)
    assert torch.equal(res.predicted_class, predicted) and torch.equal(res.true_class, true)
    torch.testing.assert_close(res.true_maps, occlusion(model, images, true, patch=4, stride=4, output="logit"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.predicted_maps, occlusion(model, images, predicted, patch=4, stride=4, output="logit"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.difference, res.true_maps - res.predicted_maps)
    same = contrastive(occlusion, model, images, true, true, patch=4, stride=4)  # no mistake: no difference
    torch.testing.assert_close(same.difference, torch.zeros(3, 16, 16), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="target has 2 entries but images has N=3"):
        contrastive(occlusion, model, images, [0, 1])
