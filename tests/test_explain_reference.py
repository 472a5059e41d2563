"""Input x gradient, deconvnet, DeepLIFT, DeepLiftShap, GradientSHAP, VarGrad and SmoothGrad-Squared:
hand-worked toys, Captum on the random conv + BN + residual models (gray and RGB, ``fast=False``: like
with like), and the properties the papers promise (DeepLIFT's summation-to-delta)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_random_model
from torch import nn

pytest.importorskip("captum.attr")
from captum.attr import (  # noqa: E402
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    GradientShap,
    InputXGradient,
    NoiseTunnel,
    Saliency,
)
from captum.attr._core.noise_tunnel import NoiseTunnel as _NoiseTunnelClass  # noqa: E402

from cnnlens.explain.deconvnet import deconvnet  # noqa: E402
from cnnlens.explain.deeplift import deeplift  # noqa: E402
from cnnlens.explain.deeplift_shap import deeplift_shap  # noqa: E402
from cnnlens.explain.gradient_shap import gradient_shap  # noqa: E402
from cnnlens.explain.guided_backprop import guided_backprop  # noqa: E402
from cnnlens.explain.input_x_gradient import input_x_gradient  # noqa: E402
from cnnlens.explain.saliency import saliency  # noqa: E402
from cnnlens.explain.smoothgrad import smoothgrad  # noqa: E402
from cnnlens.explain.smoothgrad_squared import smoothgrad_squared  # noqa: E402
from cnnlens.explain.vargrad import vargrad  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns about its ReLU hooks

TARGETS = [0, 3, 6, 2]


def assert_rel_close(ours: torch.Tensor, oracle: torch.Tensor, rel: float = 1e-5) -> None:
    oracle = oracle.detach()
    assert ours.shape == oracle.shape
    assert oracle.abs().max() > 0
    torch.testing.assert_close(ours, oracle, rtol=rel, atol=rel * float(oracle.abs().max()))


class TwoUnits(nn.Module):
    """One pixel x -> h = ReLU([x, -x]) -> logits (2 h1 + 3 h2, -2 h1 + 3 h2)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.hidden, self.relu, self.out = nn.Linear(1, 2, bias=False), nn.ReLU(inplace=inplace), nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.out.weight.copy_(torch.tensor([[2.0, 3.0], [-2.0, 3.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.hidden(x.flatten(1))))


@pytest.mark.parametrize("inplace", [False, True])
def test_two_units_by_hand(inplace):
    model, x = TwoUnits(inplace).eval(), torch.tensor([0.5, -0.5]).view(2, 1, 1, 1)
    # x = .5: h = [.5, 0], unit 2 is off. gradient of class 0: 2; guided: 2; deconvnet: max([2, 3], 0) . [1, -1] = -1
    # x = -.5: h = [0, .5]. class 1: gradient 3 * -1 = -3; guided: (3 > 0) -> -3; deconvnet max([-2, 3], 0) . [1, -1] = -3
    t = [0, 1]
    torch.testing.assert_close(saliency(model, x, t, reduce=None, abs=False).flatten(), torch.tensor([2.0, -3]))
    torch.testing.assert_close(guided_backprop(model, x, t, reduce=None).flatten(), torch.tensor([2.0, -3]))
    torch.testing.assert_close(deconvnet(model, x, t, reduce=None).flatten(), torch.tensor([-1.0, -3]))
    torch.testing.assert_close(deconvnet(model, x, [1, 0], reduce=None).flatten(), torch.tensor([-3.0, -1]))
    # input x gradient: .5 * 2 and -.5 * -3
    torch.testing.assert_close(input_x_gradient(model, x, t).flatten(), torch.tensor([1.0, 1.5]))
    # DeepLIFT from b = -.5 at x = .5: dz = [1, -1], dh = [.5, -.5], multipliers [.5, .5]; class 0:
    # (2 * .5 * 1 + 3 * .5 * -1) * dx = -.5 = f(x) - f(b) = 1 - 1.5 (the gradient times dx would say 2)
    torch.testing.assert_close(deeplift(model, x[:1], 0, baseline=-0.5).flatten(), torch.tensor([-0.5]))
    # from b = 0 (the default): dh = [.5, 0], multipliers [1, 0] (unit 2: 0 / -.5): class 1 -> -2 * .5 = -1
    torch.testing.assert_close(deeplift(model, x[:1], 1).flatten(), torch.tensor([-1.0]))
    # x = b: no difference, no attribution (the eps fallback to the derivative, times dx = 0)
    assert deeplift(model, x[:1], 0, baseline=0.5).abs().max() == 0


class PoolOnly(nn.Module):
    """A 1x2 image -> optional ReLU -> max over the two pixels -> logit = that max."""

    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu, self.pool = (nn.ReLU() if relu else nn.Identity()), nn.MaxPool2d((1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(x)).flatten(1)


def pixels(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, 2)


@pytest.mark.parametrize("relu", [False, True])
def test_deeplift_max_pool_by_hand(relu):
    model = PoolOnly(relu).double().eval()
    # x = [3, 1], b = [0, 2]: max 3 vs 2; the rise 3 - 2 goes to x's argmax (pixel 0): [1, 0]
    torch.testing.assert_close(deeplift(model, pixels(3, 1), 0, baseline=pixels(0, 2), reduce=None).flatten(),
                               torch.tensor([1.0, 0], dtype=torch.float64))
    # x = [2, 1], b = [0, 3]: max 2 vs 3; the drop 2 - 3 goes to the baseline's argmax (pixel 1): [0, -1]
    torch.testing.assert_close(deeplift(model, pixels(2, 1), 0, baseline=pixels(0, 3), reduce=None).flatten(),
                               torch.tensor([0.0, -1], dtype=torch.float64))


def test_captum_deeplift_loses_the_max_pool_rule_behind_a_relu_module_and_we_do_not():
    # ReLU of positive inputs is the identity, so ReLU -> max-pool must attribute as the max-pool alone.
    # Captum 0.9 gets the pool alone right and, behind an nn.ReLU module, falls back to the pool's
    # gradient: its attributions no longer add up to f(x) - f(b) (its own convergence delta says so).
    x, b = pixels(0.291, 0.0), pixels(0.0, 0.081)
    alone, behind = PoolOnly(False).double().eval(), PoolOnly(True).double().eval()
    expected = torch.tensor([0.21, 0.0], dtype=torch.float64)
    torch.testing.assert_close(DeepLift(alone).attribute(x, baselines=b, target=0).flatten().detach(), expected)
    torch.testing.assert_close(deeplift(alone, x, 0, baseline=b, reduce=None).flatten(), expected)
    torch.testing.assert_close(deeplift(behind, x, 0, baseline=b, reduce=None).flatten(), expected)
    captum, delta = DeepLift(behind).attribute(x, baselines=b, target=0, return_convergence_delta=True)
    assert abs(float(delta)) > 0.08 and captum.flatten()[0].item() == pytest.approx(0.291)


def test_input_x_gradient_and_deconvnet_match_captum(random_model_and_images):
    model, images = random_model_and_images
    assert_rel_close(input_x_gradient(model, images, TARGETS, reduce=None, fast=False),
                     InputXGradient(model).attribute(images, target=TARGETS))
    ours = deconvnet(model, images, TARGETS, reduce=None, fast=False)
    assert_rel_close(ours, Deconvolution(model).attribute(images, target=TARGETS))
    assert (ours - guided_backprop(model, images, TARGETS, reduce=None, fast=False)).abs().max() > 0.1 * ours.abs().max()


def avg_pooled(model: nn.Module) -> nn.Module:
    """The random model with its max-pool swapped for an average pool (Captum's DeepLIFT is then right)."""
    model = copy.deepcopy(model)
    model.pool = nn.AvgPool2d(2)
    return model


@pytest.mark.parametrize("baseline", ["zeros", "random"])
def test_deeplift_matches_captum(random_model_and_images, baseline):
    model, images = random_model_and_images
    model = avg_pooled(model)  # conv + BN + in-place ReLU + residual + GAP
    base = torch.zeros_like(images) if baseline == "zeros" else torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    oracle = DeepLift(model).attribute(images, baselines=base, target=TARGETS)
    ours = deeplift(model, images, TARGETS, baseline=base, reduce=None, fast=False)
    assert_rel_close(ours, oracle)
    assert (ours - input_x_gradient(model, images, TARGETS, reduce=None, fast=False)).abs().max() > 0.01 * ours.abs().max()


def scores(model: nn.Module, x: torch.Tensor, t: list[int]) -> torch.Tensor:
    return model(x).gather(1, torch.tensor(t)[:, None])[:, 0]


@pytest.mark.parametrize("fast", [False, True])
def test_deeplift_sums_to_the_score_difference_on_max_pool_nets_in_float64(random_model_and_images, fast):
    model, images = random_model_and_images
    m64, x64 = copy.deepcopy(model).double(), images.double()
    base = torch.rand(x64.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    maps = deeplift(m64, x64, TARGETS, baseline=base, fast=fast)
    with torch.no_grad():
        delta = scores(m64, x64, TARGETS) - scores(m64, base, TARGETS)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), delta, rtol=0, atol=1e-12)
    # DeepLiftShap: the mean over baselines of the same
    shap = deeplift_shap(m64, x64, TARGETS, baselines=base[:3], batch_size=5, fast=fast)
    with torch.no_grad():
        mean_base = torch.stack([scores(m64, base[j:j + 1].expand_as(x64), TARGETS) for j in range(3)]).mean(0)
    torch.testing.assert_close(shap.sum(dim=(1, 2)), scores(m64, x64, TARGETS).detach() - mean_base, rtol=0, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_deeplift_fast_float32_agrees_with_float64_where_the_image_is_as_black_as_the_baseline(channels):
    # A black baseline (and a black region of the image) ties every max-pool window; ties are broken by the
    # first input within rounding noise, not by float32 rounding, so the fast copy's channels-last kernels
    # route the baseline's share alike (seen on small_cnn: its normalisation turns black into -2).
    from zoo_models import seeded

    from cnnlens.models.small_cnn import SmallCNN

    model = seeded(SmallCNN(in_channels=channels), channels)
    images = torch.rand(4, channels, 32, 32, generator=torch.Generator().manual_seed(channels))
    images[:, :, :, :12] = 0.0
    exact = deeplift(copy.deepcopy(model).double(), images.double(), TARGETS, reduce=None, fast=False)
    for fast in (False, True):
        ours = deeplift(model, images, TARGETS, reduce=None, fast=fast)
        torch.testing.assert_close(ours.double(), exact, rtol=0, atol=1e-4 * float(exact.abs().max()))


class ReusedFunctional(nn.Module):
    """One ReLU module used twice, F.relu, Tensor.relu_, F.max_pool2d and an in-place residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.relu, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.a(x))
        y = F.max_pool2d(y, 2)
        z = self.relu(self.b(y))
        z += y
        return self.fc(F.relu(z).relu_().mean(dim=(2, 3)))


def test_deeplift_sums_to_the_difference_however_the_model_calls_its_nonlinearities():
    model = ReusedFunctional().double().eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    maps = deeplift(model, x, [0, 1, 2], baseline=base)
    with torch.no_grad():
        delta = scores(model, x, [0, 1, 2]) - scores(model, base, [0, 1, 2])
    torch.testing.assert_close(maps.sum(dim=(1, 2)), delta, rtol=0, atol=1e-12)


def test_deeplift_shap_matches_captum(random_model_and_images):
    model, images = random_model_and_images
    model = avg_pooled(model)
    base = torch.rand(3, *images.shape[1:], generator=torch.Generator().manual_seed(3))
    oracle = DeepLiftShap(model).attribute(images, baselines=base, target=TARGETS)
    assert_rel_close(deeplift_shap(model, images, TARGETS, baselines=base, batch_size=5, reduce=None, fast=False), oracle)


def test_deeplift_shap_default_baselines_come_from_the_generator():
    model, images = make_random_model(1, seed=0), torch.rand(2, 1, 12, 12)
    one = deeplift_shap(model, images, 1, n_baselines=4, generator=torch.Generator().manual_seed(7))
    base = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(one, deeplift_shap(model, images, 1, baselines=base), rtol=0, atol=0)
    assert not torch.equal(one, deeplift_shap(model, images, 1, n_baselines=4, generator=torch.Generator().manual_seed(8)))


def our_gradient_shap_draws(images: torch.Tensor, n_baselines: int, n_samples: int, seed: int, sigma: float):
    """What gradient_shap draws from its generator, in Captum's image-major order: baseline indices, alphas,
    noise ``[N * n_samples, C, H, W]``."""
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    chosen = torch.randint(n_baselines, (n_samples * n,), generator=g)
    alphas = torch.rand(n_samples * n, generator=g)
    scale = sigma * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
    noise = torch.stack([torch.randn(images.shape, generator=g) for _ in range(n_samples)])  # [S,N,C,H,W]
    noise = noise * scale.view(1, -1, 1, 1, 1)

    def image_major(v: torch.Tensor) -> torch.Tensor:  # sample-major stream -> Captum's image-major order
        return v.reshape(n_samples, n, *v.shape[1:]).transpose(0, 1).reshape(n_samples * n, *v.shape[1:])

    return image_major(chosen), image_major(alphas), noise.transpose(0, 1).flatten(0, 1)


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_gradient_shap_matches_captum_given_the_same_draws(random_model_and_images, monkeypatch, sigma):
    model, images = random_model_and_images
    base = torch.rand(3, *images.shape[1:], generator=torch.Generator().manual_seed(4))
    chosen, alphas, noise = our_gradient_shap_draws(images, 3, 4, seed=6, sigma=sigma)
    monkeypatch.setattr(np.random, "choice", lambda k, size: chosen.numpy().copy())
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: alphas.double().numpy().copy())
    monkeypatch.setattr(_NoiseTunnelClass, "_add_noise_to_input",
                        staticmethod(lambda inp, stdev, n: inp.repeat_interleave(n, dim=0) + noise))
    oracle = GradientShap(model).attribute(images, baselines=base, n_samples=4, stdevs=1.0, target=TARGETS)
    ours = gradient_shap(model, images, TARGETS, baselines=base, n_samples=4, sigma=sigma, batch_size=5,
                         generator=torch.Generator().manual_seed(6), reduce=None, fast=False)
    assert_rel_close(ours, oracle)


def _captum_noise(monkeypatch, images, n_samples, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    scale = sigma * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
    noise = torch.stack([torch.randn(images.shape, generator=g) for _ in range(n_samples)], dim=1)
    noise = (noise * scale.view(-1, 1, 1, 1, 1)).flatten(0, 1)
    monkeypatch.setattr(_NoiseTunnelClass, "_add_noise_to_input",
                        staticmethod(lambda inp, stdev, n: inp.repeat_interleave(n, dim=0) + noise))


def test_vargrad_and_smoothgrad_squared_match_captum_noise_tunnel(random_model_and_images, monkeypatch):
    model, images = random_model_and_images
    _captum_noise(monkeypatch, images, 6, 0.2, seed=5)
    oracle = NoiseTunnel(Saliency(model)).attribute(images, nt_type="vargrad", nt_samples=6, stdevs=1.0,
                                                    target=TARGETS, abs=False)
    ours = vargrad(model, images, TARGETS, n_samples=6, sigma=0.2, batch_size=5, reduce=None, fast=False,
                   generator=torch.Generator().manual_seed(5))
    assert_rel_close(ours, oracle, rel=1e-4)  # a difference of two means of squares
    oracle = NoiseTunnel(Saliency(model)).attribute(images, nt_type="smoothgrad_sq", nt_samples=6, stdevs=1.0,
                                                    target=TARGETS)
    ours = smoothgrad_squared(model, images, TARGETS, n_samples=6, sigma=0.2, batch_size=7, reduce=None, fast=False,
                              generator=torch.Generator().manual_seed(5))
    assert_rel_close(ours, oracle)


def test_vargrad_of_a_linear_model_is_zero_and_of_a_relu_is_the_bernoulli_variance():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(3, 1, 2, 2)
    w = float(linear[1].weight.abs().max())
    assert vargrad(linear, x, 1, n_samples=5, generator=torch.Generator().manual_seed(0), reduce=None).max() < 1e-6 * w * w
    # logit = ReLU(p0) + ReLU(p1) on the image [0, 1] (range 1, so sigma=1 is noise of std 1): pixel 0's
    # gradient is 1 where its noise is > 0 (probability q over the draws), else 0: variance q (1 - q)
    relu = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(2, 1, bias=False)).eval()
    with torch.no_grad():
        relu[2].weight.fill_(1.0)
    img = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    var = vargrad(relu, img, 0, n_samples=400, sigma=1.0, generator=torch.Generator().manual_seed(1), reduce=None)
    g = torch.Generator().manual_seed(1)
    q = float(torch.stack([torch.randn(img.shape, generator=g)[0, 0, 0, 0] for _ in range(400)]).gt(0).double().mean())
    assert 0.3 < q < 0.7 and float(var[0, 0, 0, 0]) == pytest.approx(q * (1 - q), abs=1e-6)


def test_bad_options_name_the_argument():
    model, x = make_random_model(1), torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        deeplift(model, x, eps=0)
    with pytest.raises(ValueError, match="baseline must be one of 'zeros', 'mean', 'blur'"):
        deeplift(model, x, baseline="noise")
    with pytest.raises(ValueError, match=r"baselines must be a tensor \[B,C,H,W\] .* \(1, 8, 8\), got \(3, 8, 8\)"):
        deeplift_shap(model, x, baselines=torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="n_baselines must be an int >= 1"):
        gradient_shap(model, x, n_baselines=0)
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        gradient_shap(model, x, n_samples=0)
    with pytest.raises(ValueError, match="sigma must be a number >= 0"):
        gradient_shap(model, x, sigma=-1)
    with pytest.raises(ValueError, match="pass at most one of them"):
        smoothgrad(model, x, squared=True, variance=True)
    with pytest.raises(ValueError, match="the deconvnet rectifies the gradients of ReLUs, and this Sequential computes none"):
        deconvnet(nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(64, 2)), x)


@pytest.mark.parametrize("name", ["deeplift-shap", "gradient-shap", "vargrad"])
def test_random_methods_do_not_depend_on_the_batch_size(name):
    model, x = make_random_model(3, seed=2), torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    fn = {"deeplift-shap": deeplift_shap, "gradient-shap": gradient_shap, "vargrad": vargrad}[name]
    kw = {"n_samples": 4, "sigma": 0.1} if name != "deeplift-shap" else {"n_baselines": 3}
    runs = [fn(model, x, [0, 1, 2], batch_size=bs, generator=torch.Generator().manual_seed(9), fast=False, **kw)
            for bs in (1, 5, 64)]
    for r in runs[1:]:
        torch.testing.assert_close(r, runs[0], rtol=1e-5, atol=1e-7)
    # per-sample targets: image 1 for target 1 alone is its row of the batch (DeepLiftShap's background, drawn
    # once for all images, does not depend on N; the others draw per image)
    if name == "deeplift-shap":
        alone = fn(model, x[1:2], 1, generator=torch.Generator().manual_seed(9), fast=False, **kw)
        torch.testing.assert_close(alone, runs[0][1:2], rtol=1e-5, atol=1e-7)
