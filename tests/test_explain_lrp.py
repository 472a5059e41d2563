"""LRP (cnnlens.explain.lrp): hand-worked relevances on a two-layer net, Captum's ``LRP`` with the same rule
per layer on random conv + linear nets (gray and RGB, float64), conservation layer by layer, the canonisers
(BatchNorm folded on a copy, residual adds split in proportion), z-plus' signs, batches and targets."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule
from conftest import assert_model_untouched, make_random_model
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cnnlens.explain import input_x_gradient
from cnnlens.explain.lrp import COMPOSITES, lrp

D = torch.float64


class TwoLayer(nn.Module):
    """``out = w2 . relu(W1 x)``, bias-free, on a 1x1x2 'image'."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2, bias=False)
        self.fc2 = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, -0.5]]))
            self.fc2.weight.copy_(torch.tensor([[3.0, 0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


# x = (1, 2): hidden pre-activations (-1, 1), so only unit 2 is on and out = 0.5 * 1 = 0.5.
HAND = {
    # LRP-0: R_h2 = 0.5, then R_x = x_i w_2i / z_2 R_h2 = (1*2, 2*-0.5) / 1 * 0.5
    "zero": (dict(composite="zero"), [1.0, -0.5]),
    # epsilon 0.5: R_h2 = 1*0.5 / (0.5+0.5) * 0.5 = 0.25; R_x = (2, -1) / (1 + 0.5) * 0.25
    "epsilon": (dict(composite="epsilon", epsilon=0.5), [1 / 3, -1 / 6]),
    # z-plus: z+ = 1*2 = 2 at unit 2: R_x = (2, 0) / 2 * 0.5
    "z-plus": (dict(composite="z-plus"), [0.5, 0.0]),
    # gamma 0.25: W + gamma W+ = (2.5, -0.5), z = 2.5 - 1 = 1.5: R_x = (2.5, -1) / 1.5 * 0.5
    "gamma": (dict(composite="gamma"), [5 / 6, -1 / 3]),
    # alpha2-beta1: at the top no negative contribution (h1 = 0), so R_h2 = 2 * 0.5 - 0 = 1; then at unit 2
    # z+ = 2, z- = -1: R_x = 2 * (2, 0) / 2 * 1 - 1 * (0, -1) / -1 * 1
    "alpha2-beta1": (dict(composite="alpha2-beta1"), [2.0, -1.0]),
    # flat first layer: unit 2's relevance 0.5 split equally over its two inputs
    "flat": (dict(composite="zero", first_rule="flat"), [0.25, 0.25]),
    # z-box on [0,1]: z = (2 - 0) + (-1 + 0.5) = 1.5: R_x = (2, -0.5) / 1.5 * 0.5
    "z-box": (dict(composite="zero", first_rule="z-box"), [2 / 3, -1 / 6]),
    # z-box, bounds given: [-1, 3]: z = (2 + 2) + (-1 + 1.5) = 4.5: R_x = (4, 0.5) / 4.5 * 0.5
    "z-box-bounds": (dict(composite="zero", first_rule="z-box", low=-1.0, high=3.0), [4 / 9, 1 / 18]),
}


@pytest.mark.parametrize("case", list(HAND))
def test_hand_worked_relevances_of_a_two_layer_net(case):
    options, expected = HAND[case]
    x = torch.tensor([[[[1.0, 2.0]]]], dtype=D)
    got = lrp(TwoLayer().double(), x, 0, reduce=None, fast=False, **options)
    torch.testing.assert_close(got.flatten(), torch.tensor(expected, dtype=D), rtol=0, atol=1e-5)  # the 1e-6 stabiliser


class CaptumNet(nn.Module):
    """Conv, ReLU, max-pool, conv, avg-pool, linear: only layer types Captum's LRP takes, each used once."""

    def __init__(self, c: int, bias: bool, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 6, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(6) if bn else None  # Captum's LRP takes no nn.Identity
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=bias)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(8 * 2 * 2, 10, bias=bias)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(10, 4, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.pool1(self.relu1(x if self.bn is None else self.bn(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(torch.flatten(x, 1))))


def _captum(model: nn.Module, images: torch.Tensor, target: list[int], conv_rule, linear_rule) -> torch.Tensor:
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.rule = conv_rule()
        elif isinstance(m, nn.Linear):
            m.rule = linear_rule()
        if hasattr(m, "rule"):  # cnnlens's stabiliser (Zennit's) for every rule
            m.rule.STABILITY_FACTOR = 1e-6
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):  # pooling passes relevance on unstabilised in cnnlens
            m.rule = EpsilonRule(1e-300)
    return LRP(model).attribute(images, target=target)


ORACLE = {  # name -> lrp's options, Captum's rule for convolutions, for linear layers, whether the nets have biases
    "epsilon": (dict(composite="epsilon"), lambda: EpsilonRule(1e-6), lambda: EpsilonRule(1e-6), True),
    # Captum's alpha1-beta0 keeps the whole bias (Zennit's z-plus b+): bias-free nets
    "epsilon-plus": (dict(composite="epsilon-plus"), Alpha1_Beta0_Rule, lambda: EpsilonRule(1e-6), False),
    "z-plus": (dict(composite="z-plus"), Alpha1_Beta0_Rule, Alpha1_Beta0_Rule, False),
    # Captum's gamma keeps b (Zennit's b + gamma b+) and W + gamma W+ also for a negative output (Zennit's
    # W + gamma W-): bias-free nets, epsilon at the linear layers (a negative convolution output is cut by ReLU)
    "gamma": (dict(composite="epsilon-gamma-box", first_rule="gamma"), lambda: GammaRule(0.25),
              lambda: EpsilonRule(1e-6), False),
}


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
@pytest.mark.parametrize("name", list(ORACLE))
def test_equals_captum_lrp_with_the_same_rules(name, channels):
    options, conv_rule, linear_rule, bias = ORACLE[name]
    torch.manual_seed(channels)
    model = CaptumNet(channels, bias).double().eval()
    images = torch.rand(3, channels, 8, 8, dtype=D, generator=torch.Generator().manual_seed(5))
    target = [0, 2, 3]
    expected = _captum(model, images, target, conv_rule, linear_rule)
    got = lrp(model, images, target, reduce=None, fast=False, **options)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9 * float(expected.abs().max()))
    torch.testing.assert_close(lrp(model, images, target, reduce=None, **options), got,
                               rtol=1e-7, atol=1e-9 * float(expected.abs().max()))


class OneLinear(nn.Module):
    """``y = x1 - x2`` (a module with a child: Captum's LRP hooks children only)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_gamma_at_a_negative_output_shares_by_w_plus_gamma_w_minus_as_zennit_not_captum():
    """One linear layer, x = (1, 2), w = (1, -1): y = -1 < 0. Zennit's generalised gamma (followed here):
    z = x . (w + gamma w-) = 1 - 2.5 = -1.5, R = x (w + gamma w-) / z * y = (1, -2.5) / -1.5 * -1;
    Captum's W + gamma W+: z = 1.25 - 2 = -0.75, R = (1.25, -2) / -0.75 * -1."""
    model = OneLinear().double()
    x = torch.tensor([[[[1.0, 2.0]]]], dtype=D)
    got = lrp(model, x, 0, composite="gamma", reduce=None, fast=False).flatten()
    torch.testing.assert_close(got, torch.tensor([2 / 3, -5 / 3], dtype=D), rtol=0, atol=1e-5)
    captum = _captum(model, x, [0], lambda: GammaRule(0.25), lambda: GammaRule(0.25)).flatten()
    torch.testing.assert_close(captum, torch.tensor([5 / 3, -8 / 3], dtype=D), rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_batchnorm_is_folded_into_its_convolution_on_a_copy(channels):
    """The canoniser: LRP of conv + BN is Captum's LRP of the fused convolution; the model keeps its BN."""
    torch.manual_seed(channels)
    model = CaptumNet(channels, bias=True, bn=True).double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.3, 0.3)
    model.train()
    fused = copy.deepcopy(model).eval()
    fused.conv1, fused.bn = fuse_conv_bn_eval(fused.conv1, fused.bn), None
    images = torch.rand(2, channels, 8, 8, dtype=D, generator=torch.Generator().manual_seed(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rule = lambda: EpsilonRule(1e-6)  # noqa: E731
    expected = _captum(fused, images, [1, 2], rule, rule)
    for fast in (False, True):
        got = lrp(model, images, [1, 2], composite="epsilon", reduce=None, fast=fast)
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9 * float(expected.abs().max()))
    assert isinstance(model.bn, nn.BatchNorm2d) and model.training
    assert_model_untouched(model, modes)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class Residual(nn.Module):
    """Bias-free: ``F.relu``, an in-place ReLU module used twice, a residual add, avg and max pooling."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c, 4, 3, padding=1, bias=False)
        self.a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.stem(x)), 2)
        h = self.relu(h + self.b(self.relu(self.a(h))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_lrp_zero_conserves_the_logit_and_is_input_times_gradient_on_bias_free_relu_nets(channels):
    """Residual adds split relevance in proportion to their inputs, so nothing is lost or made: the pixels
    sum to the logit, and LRP-0 is gradient x input (Montavon et al. 2019, sec. 10.2)."""
    torch.manual_seed(channels)
    model = Residual(channels).double()
    images = torch.rand(3, channels, 10, 10, dtype=D, generator=torch.Generator().manual_seed(1))
    target = [0, 3, 4]
    logits = model(images)[torch.arange(3), target]
    got = lrp(model, images, target, composite="zero", reduce=None)
    torch.testing.assert_close(got.sum((1, 2, 3)), logits.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, input_x_gradient(model, images, target, reduce=None, fast=False),
                               rtol=1e-9, atol=1e-12)
    # conservative up to the stabiliser (a z-plus top layer passes nothing where no weight of the class is positive)
    for composite in ("epsilon-plus-flat", "epsilon-gamma-box", "epsilon-plus"):
        sums = lrp(model, images, target, composite=composite, reduce=None).sum((1, 2, 3))
        torch.testing.assert_close(sums, logits.detach(), rtol=1e-4, atol=1e-6)


def test_z_plus_relevance_is_never_negative_for_a_positive_logit():
    """Where every layer's input is non-negative (ReLU, pooling; no residual add of signed maps)."""
    torch.manual_seed(4)
    model = CaptumNet(3, bias=True).double()
    images = torch.rand(6, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(4))
    logits = model(images).detach()
    target = logits.argmax(1)
    images, target = images[logits.max(1).values > 0], target[logits.max(1).values > 0]
    assert len(target) >= 2
    got = lrp(model, images, target, composite="z-plus", reduce=None)
    assert got.min() >= -1e-12 and got.sum() > 0
    assert lrp(model, images, target, composite="epsilon", reduce=None).min() < 0  # unlike epsilon's


def test_relevance_goes_back_through_the_models_own_normalisation_pixel_to_pixel():
    """z^B's bounds are the first layer's input for a black and a white image: with (x - 0.5) / 0.25 inside
    the model they are [-2, 2], and the map equals that of the network after the normalisation."""
    torch.manual_seed(0)
    core_net = CaptumNet(3, bias=True).double().eval()
    model = nn.Sequential(Norm(), core_net)
    images = torch.rand(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(3))
    got = lrp(model, images, [0, 1], composite="epsilon-gamma-box", reduce=None)
    with pytest.warns(UserWarning, match="range"):  # the normalised images lie outside [0,1], as they should
        expected = lrp(core_net, (images - 0.5) / 0.25, [0, 1], composite="epsilon-gamma-box", low=-2.0, high=2.0,
                       reduce=None)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    flat = lrp(model, images, [0, 1], composite="epsilon-plus-flat", reduce=None)
    torch.testing.assert_close(flat, lrp(core_net, (images - 0.5) / 0.25, [0, 1], reduce=None), rtol=1e-9, atol=1e-12)


class Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


@pytest.mark.parametrize("composite", ["epsilon-plus-flat", "epsilon-gamma-box", "alpha2-beta1"])
def test_batch_size_independent_with_per_sample_targets(composite):
    model = make_random_model(1, seed=2).double()
    images = torch.rand(5, 1, 16, 16, dtype=D, generator=torch.Generator().manual_seed(7))
    target = [0, 6, 2, 2, 5]
    whole = lrp(model, images, target, composite=composite)
    one_by_one = torch.cat([lrp(model, images[i:i + 1], target[i], composite=composite) for i in range(5)])
    torch.testing.assert_close(whole, one_by_one, rtol=1e-9, atol=1e-12)
    assert whole.shape == (5, 16, 16)
    assert not torch.allclose(whole[2], lrp(model, images[2:3], 0, composite=composite)[0])  # the target counts


def test_every_composite_runs_on_the_residual_batchnorm_model_in_float32():
    model = make_random_model(3, seed=1)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for composite in COMPOSITES:
        got = lrp(model, images, composite=composite)
        assert got.shape == (2, 16, 16) and torch.isfinite(got).all() and got.abs().max() > 0


def test_bad_options_say_what_to_pass():
    model, images = TwoLayer(), torch.rand(1, 1, 1, 2)
    with pytest.raises(ValueError, match="composite must be one of 'epsilon-plus-flat'"):
        lrp(model, images, 0, composite="zennit")
    with pytest.raises(ValueError, match="first_rule must be None or one of"):
        lrp(model, images, 0, first_rule="box")
    with pytest.raises(ValueError, match="epsilon must be a non-negative number, got -1"):
        lrp(model, images, 0, epsilon=-1)
    with pytest.raises(ValueError, match="LRP propagates relevance through convolution and linear layers"):
        lrp(nn.Sequential(nn.Flatten(), nn.ReLU()), images, 0)


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_cnnlens_small_cnn_equals_captum_on_its_canonised_view(channels):
    """cnnlens's own model (normalisation, conv + BN + in-place ReLU + max-pool blocks, GAP, flatten, linear):
    Captum's LRP (epsilon everywhere) given what a Captum user prepares by hand, the BatchNorms fused into
    their convolutions, the normalised images, out-of-place ReLUs and pass-through rules on the modules Captum
    has none for."""
    from cnnlens.models.small_cnn import SmallCNN

    torch.manual_seed(channels)
    model = SmallCNN(channels, 5, 16, channels=(4, 6, 8)).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    images = torch.rand(3, channels, 16, 16, dtype=D, generator=torch.Generator().manual_seed(8))
    target = [0, 4, 2]
    peer = copy.deepcopy(model)
    for block in (peer.block1, peer.block2, peer.block3):
        block.conv, block.bn = fuse_conv_bn_eval(block.conv, block.bn), nn.Identity()
        block.relu.inplace = False
    normalised = peer.normalize(images)
    peer.normalize = nn.Identity()
    for m in peer.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.rule = EpsilonRule(1e-6)
        elif isinstance(m, (nn.Identity, nn.Flatten, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            m.rule = EpsilonRule(1e-300)  # passed on unstabilised
    expected = LRP(peer).attribute(normalised, target=target)
    for fast in (False, True):
        got = lrp(model, images, target, composite="epsilon", reduce=None, fast=fast)
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9 * float(expected.abs().max()))


def test_a_layer_whose_weight_no_rule_reads_is_refused_by_name():
    """A transposed convolution (or a Keras layer computing with its own ops) would get the plain gradient."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(2, 2, 3, padding=1),
                          nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    images = torch.rand(2, 1, 6, 6)
    modes = [m.training for m in model.modules()]
    with pytest.raises(ValueError, match=r"layer '2' \(ConvTranspose2d\) uses its weight another way"):
        lrp(model, images, 0)
    assert_model_untouched(model, modes)
