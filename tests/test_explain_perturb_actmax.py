"""Activation maximisation: each filter's image excites that filter far more than noise and more than the
other filters' images; class scores rise; the model (modes, BN statistics, .grad, hooks) is untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.explain.activation_max import activation_maximization, total_variation
from conftest import assert_model_untouched


def distinct_filter_net() -> nn.Sequential:
    """conv(1->4, 3x3) + in-place ReLU + BN + head, with four filters that want different pictures:
    horizontal stripes, vertical stripes, a bright image, a dark image."""
    conv = nn.Conv2d(1, 4, 3, padding=1)
    stripes = torch.tensor([[1.0, 1, 1], [-2, -2, -2], [1, 1, 1]])
    with torch.no_grad():
        conv.weight.copy_(torch.stack([stripes, stripes.T, torch.full((3, 3), 1 / 9), torch.full((3, 3), -1 / 9)])[:, None])
        conv.bias.copy_(torch.tensor([0.1, 0.1, -0.4, 0.6]))
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def filter_means(net: nn.Sequential, images: torch.Tensor) -> torch.Tensor:
    """A[i, f] = mean activation of filter f on image i after the ReLU, computed directly."""
    with torch.no_grad():
        return torch.relu(net[0](images)).mean(dim=(2, 3))


@pytest.mark.parametrize("parameterization", ["pixel", "fourier"])
def test_each_filter_image_excites_its_filter_most(parameterization):
    net = distinct_filter_net().eval()
    res = activation_maximization(net, "1", [0, 1, 2, 3], input_shape=(1, 16, 16), steps=64, lr=0.1,
                                  parameterization=parameterization, generator=torch.Generator().manual_seed(0))
    assert res.images.shape == (4, 1, 16, 16) and res.units == (0, 1, 2, 3) and res.layer == "1"
    assert 0 <= float(res.images.min()) and float(res.images.max()) <= 1
    a = filter_means(net, res.images)
    torch.testing.assert_close(res.activation, a.diag())  # the reported activation is the real one
    assert (res.activation > 3 * res.start_activation).all()  # far more than the noise it started from
    off = a.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf"))
    assert (a.diag() > off.amax(dim=0)).all()  # more than any other filter's image does


def test_subset_of_filters_in_given_order_and_regularisers():
    # the bright and dark filters want smooth images, which blur, L2 and TV leave reachable
    net = distinct_filter_net().eval()
    res = activation_maximization(net, "1", [3, 2], input_shape=(1, 16, 16), steps=48, lr=0.1, blur=0.5,
                                  l2=0.1, tv=0.05, jitter=2, parameterization="pixel", transforms=None,
                                  generator=torch.Generator().manual_seed(1))
    assert res.units == (3, 2)
    a = filter_means(net, res.images)
    torch.testing.assert_close(res.activation, torch.stack([a[0, 3], a[1, 2]]))
    assert (res.activation > 2 * res.start_activation).all()
    assert a[0, 3] > a[1, 3] and a[1, 2] > a[0, 2]
    assert total_variation(res.images).max() < 0.05  # smooth pictures


def test_every_filter_when_none_and_rgb_fourier_runs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        net[0].bias.fill_(0.2)
    res = activation_maximization(net, "0", None, input_shape=(3, 12, 12), steps=20, lr=0.1,
                                  parameterization="fourier", generator=torch.Generator().manual_seed(0))
    assert res.images.shape == (5, 3, 12, 12) and res.units == tuple(range(5))
    assert (res.activation > res.start_activation).all()


def test_class_scores_rise():
    net = distinct_filter_net().eval()
    res = activation_maximization(net, class_scores=[0, 1, 2], input_shape=(1, 16, 16), steps=32, lr=0.1,
                                  parameterization="pixel", generator=torch.Generator().manual_seed(0))
    assert res.layer is None and res.units == (0, 1, 2)
    with torch.no_grad():
        logits = net(res.images)
    torch.testing.assert_close(res.activation, logits.diag())
    assert (res.activation > res.start_activation + 0.05).all()


def test_seeded_reproducible():
    net = distinct_filter_net().eval()
    runs = [activation_maximization(net, "0", [1, 3], input_shape=(1, 8, 8), steps=5,
                                    generator=torch.Generator().manual_seed(4)) for _ in range(2)]
    assert torch.equal(runs[0].images, runs[1].images)


def test_model_untouched_train_mode_bn_and_grads():
    net = distinct_filter_net().train()
    net[2].eval()
    net[5].weight.requires_grad_(False)
    modes = [m.training for m in net.modules()]
    requires = [p.requires_grad for p in net.parameters()]
    stats = net[2].running_mean.clone()
    # class scores pass through BatchNorm: eval mode inside, so the running statistics must not move
    activation_maximization(net, class_scores=[0], input_shape=(1, 8, 8), steps=3)
    activation_maximization(net, "0", [0], input_shape=(1, 8, 8), steps=3)
    assert_model_untouched(net, modes)
    assert [p.requires_grad for p in net.parameters()] == requires
    assert torch.equal(net[2].running_mean, stats)


class TupleLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = TupleLayer()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pair(x)[0].flatten(1))


def test_errors_leave_the_model_untouched():
    net = TupleNet().train()
    modes = [m.training for m in net.modules()]
    with pytest.raises(TypeError, match="layer 'pair' outputs tuple"):
        activation_maximization(net, "pair", [0], input_shape=(1, 4, 4), steps=1)
    assert_model_untouched(net, modes)
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    (("0", [4]), {}, ValueError, r"filter index 4 is out of range: there are 4 \(0..3\)"),
    (("0", [-1]), {}, ValueError, "filter index -1 is out of range"),
    (("0", []), {}, ValueError, "filter list is empty"),
    (("0", [1.0]), {}, TypeError, "filter indices must be ints"),
    (("conv9", [0]), {}, ValueError, "unknown layer 'conv9'; valid layer names: 0, 1, 2"),
    ((), {"class_scores": [3]}, ValueError, r"class index 3 is out of range: there are 3"),
    (("0", [0]), {"class_scores": [0]}, ValueError, "either layer .* or class_scores"),
    ((), {}, ValueError, "either layer .* or class_scores"),
    ((None, [0]), {"class_scores": [0]}, ValueError, "filters= applies to a layer"),
    (("0", [0]), {"parameterization": "cppn"}, ValueError, "parameterization must be 'pixel' or 'fourier'"),
    (("0", [0]), {"parameterization": "fourier", "blur": 1.0}, ValueError, "blur= applies to the 'pixel'"),
    (("0", [0]), {"objective": "class"}, ValueError, "objective must be 'channel' or 'neuron'"),
    (("0", [0]), {"position": (1, 1)}, ValueError, "position= applies to objective='neuron'"),
    (("0", [0]), {"objective": "neuron", "position": (8, 0)}, ValueError, r"position must be \(row, column\) inside the layer's 8x8"),
    (("0", [0]), {"diversity": 1.0}, ValueError, "pass images_per_unit >= 2"),
    ((), {"class_scores": [0], "objective": "neuron"}, ValueError, "apply to a layer"),
    (("0", [0]), {"transforms": 3}, TypeError, "transforms must be True"),
    (("0", [0]), {"images_per_unit": 0}, ValueError, "images_per_unit must be an int >= 1"),
    (("0", [0]), {"input_shape": (8, 8)}, ValueError, r"input_shape must be \(C, H, W\)"),
    (("0", [0]), {"steps": -1}, ValueError, "steps must be an int >= 0"),
    (("0", [0]), {"lr": 0.0}, ValueError, "lr > 0"),
])
def test_bad_inputs_give_clear_errors(args, kwargs, error, match):
    net = distinct_filter_net().eval()
    modes = [m.training for m in net.modules()]
    options = {"input_shape": (1, 8, 8), "steps": 1, **kwargs}
    with pytest.raises(error, match=match):
        activation_maximization(net, *args, **options)
    assert_model_untouched(net, modes)


def test_total_variation_by_hand():
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1.0
    # one bright pixel in a 7x7 image: 2 vertical + 2 horizontal unit differences over 42 pairs each
    torch.testing.assert_close(total_variation(x), torch.tensor([2 / 42 + 2 / 42]))
