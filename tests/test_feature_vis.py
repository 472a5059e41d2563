"""Readable feature visualisation (issue 14): the objective rises for a channel, a neuron and a class; a
planted first-layer filter is recovered; batching units changes nothing; the transforms are what they
say; receptive fields equal the hand-computed ones; streamed exemplars equal a brute-force top-k; dead
filters are named; the model and torch's global generator are untouched."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.explain.activation_max import (_neuron_canvas, activation_maximization, class_model_images, color_correlation,
                                            spectrum_decay,
                                            gram_diversity)
from cnnlens.explain.exemplars import choose_filters, dataset_exemplars, layer_exemplars
from cnnlens.explain.receptive_field import ReceptiveField, receptive_field
from cnnlens.explain.robustness import Transforms
from cnnlens.models.small_cnn import SmallCNN
from conftest import assert_model_untouched, make_random_model


def planted_net(size: int = 7) -> nn.Sequential:
    """conv(1 -> 2) holding a horizontal and a vertical step edge (zero mean, unit norm), ReLU, GAP, linear."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    kernels = torch.stack([torch.tanh(2 * yy), torch.tanh(2 * xx)])
    kernels = kernels - kernels.mean((1, 2), keepdim=True)
    kernels = kernels / kernels.flatten(1).norm(dim=1)[:, None, None]
    conv = nn.Conv2d(1, 2, size, padding=size // 2)
    with torch.no_grad():
        conv.weight.copy_(kernels[:, None].float())
        conv.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()


def best_patch_correlation(image: torch.Tensor, kernel: torch.Tensor) -> float:
    """Highest Pearson correlation between a k x k patch of ``image`` [H,W] and ``kernel``."""
    k = kernel.shape[-1]
    patches = F.unfold(image[None, None].double(), k)[0].T
    patches = patches - patches.mean(1, keepdim=True)
    w = kernel.flatten().double()
    return float((patches @ w / (patches.norm(dim=1).clamp_min(1e-9) * w.norm())).max())


# ------------------------------------------------------------------------------ activation maximisation


@pytest.mark.parametrize("objective", ["channel", "neuron"])
def test_readable_default_raises_the_objective_and_reports_it_truly(objective):
    model = make_random_model(in_channels=3, seed=2)
    res = activation_maximization(model, "relu_a", [0, 2, 7], objective=objective, input_shape=(3, 16, 16), steps=24,
                                  generator=torch.Generator().manual_seed(0))
    assert res.images.shape == (3, 3, 16, 16) and res.objective == objective
    assert (res.activation > res.start_activation).all()
    acts = {}
    handle = model.relu_a.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.clone()))
    with torch.no_grad():
        model(res.images)
    handle.remove()
    own = acts["a"][torch.arange(3), torch.tensor([0, 2, 7])]  # [3, 8, 8]
    expected = own[:, 4, 4] if objective == "neuron" else own.mean((1, 2))
    assert res.position == ((4, 4) if objective == "neuron" else None)
    torch.testing.assert_close(res.activation, expected)
    torch.testing.assert_close(res.peak, own.flatten(1).amax(1))


def test_neuron_ascent_starts_where_the_relu_is_off():
    # bias -5 turns the ReLU off everywhere at the start: a plain ReLU gradient is zero there for ever
    net = planted_net()
    with torch.no_grad():
        net[0].bias.fill_(-1.0)
    res = activation_maximization(net, "1", [0, 1], objective="neuron", input_shape=(1, 16, 16), steps=48,
                                  generator=torch.Generator().manual_seed(0))
    assert (res.start_activation == 0).all() and (res.activation > 0.5).all()


def test_planted_edges_are_recovered():
    net = planted_net()
    kernels = net[0].weight[:, 0].detach()
    res = activation_maximization(net, "1", [0, 1], input_shape=(1, 32, 32), steps=64,
                                  generator=torch.Generator().manual_seed(0))
    for i in range(2):
        own, other = best_patch_correlation(res.images[i, 0], kernels[i]), best_patch_correlation(res.images[i, 0], kernels[1 - i])
        assert own > 0.9 and own > other + 0.2  # the edge at its own orientation, not at the other one


def test_a_planted_checkerboard_neuron_survives_the_transforms():
    # a one-pixel shift inverts a checkerboard: a jitter on its 7-pixel field (the old one-pixel minimum) drove
    # the readable image to -0.55 correlation with it; Lucent's amount scaled to 7 px rounds to no jitter
    size = 7
    idx = torch.arange(size)
    board = ((idx[:, None] + idx[None, :]) % 2 * 2 - 1).double()
    board = board - board.mean()
    board = board / board.norm()
    net = planted_net(size)
    with torch.no_grad():
        net[0].weight[0, 0].copy_(board.float())
    assert Transforms.for_size(size, size).jitter == 0 and Transforms.for_size(18, 18).jitter == 1
    res = activation_maximization(net, "1", [0], objective="neuron", input_shape=(1, 16, 16), steps=128,
                                  generator=torch.Generator().manual_seed(0))
    r, c = res.position
    crop = res.images[0, 0, r - 3 : r + 4, c - 3 : c + 4].double().flatten()
    assert float(torch.corrcoef(torch.stack([crop, board.flatten()]))[0, 1]) > 0.6
    assert float(res.activation[0]) > 0.5 * float(board.clamp_min(0).sum())


def test_class_model_images_raise_each_logit():
    model = make_random_model(in_channels=1, num_classes=4, seed=5)
    res = class_model_images(model, [0, 1, 2, 3], input_shape=(1, 16, 16), steps=48, lr=0.1,
                             generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(res.images)
    torch.testing.assert_close(res.activation, logits.diag())
    assert res.objective == "class" and (res.activation > res.start_activation + 0.05).all()


def test_batched_units_equal_one_at_a_time_in_float64():
    model = make_random_model(in_channels=3, seed=4).double()
    # the model itself: from this constant start every max-pool window is a tie, and the prepared copy's
    # channels-last kernels round identical images of one batch apart (1e-16 at odd sizes), which breaks
    # the ties differently; test_fast_copy_agrees_with_the_model covers the copy from a random start
    options = {"input_shape": (3, 16, 16), "steps": 12, "transforms": None, "init_std": 0.0, "objective": "neuron",
               "fast": False}
    together = activation_maximization(model, "relu_a", [1, 6, 2], **options)
    for j, u in enumerate([1, 6, 2]):
        alone = activation_maximization(model, "relu_a", [u], **options)
        torch.testing.assert_close(together.images[j : j + 1], alone.images, rtol=0, atol=1e-10)
        torch.testing.assert_close(together.activation[j : j + 1], alone.activation, rtol=0, atol=1e-10)


def test_fast_copy_agrees_with_the_model():
    # the folded-BatchNorm, channels-last copy computes the same function: from the same random start the
    # ascent follows the same path (float64: no max-pool ties to break differently)
    model = make_random_model(in_channels=3, seed=4).double()
    for objective in ("channel", "neuron"):
        runs = [activation_maximization(model, "relu_a", [1, 6, 2], objective=objective, input_shape=(3, 16, 16), steps=10,
                                        fast=fast, generator=torch.Generator().manual_seed(3)) for fast in (True, False)]
        torch.testing.assert_close(runs[0].images, runs[1].images, rtol=0, atol=1e-8)
        torch.testing.assert_close(runs[0].activation, runs[1].activation, rtol=1e-8, atol=1e-10)


def test_neuron_is_optimised_on_its_receptive_field_and_measured_on_the_whole_input():
    model = SmallCNN(in_channels=1, num_classes=3, input_size=48).eval()
    field = receptive_field(model, "block3.relu", (1, 48, 48))  # 18 px, stride 4, offset -7
    warp = Transforms.for_size(18, 18)
    canvas = _neuron_canvas(field, (6, 6), warp, 0)
    top, left, bottom, right = field.box(6, 6)
    # the canvas's own grid puts the neuron's field where it is in the input, with room for the warp's reach
    k = canvas.position
    assert canvas.top + field.offset[0] + k[0] * field.stride[0] == top
    assert canvas.left + field.offset[1] + k[1] * field.stride[1] == left
    assert top - canvas.top >= 2 + 1 and canvas.top + canvas.size[0] - bottom >= 2 + 1  # shifts of 2 px, + bilinear
    assert canvas.size[0] * canvas.size[1] < 48 * 48
    res = activation_maximization(model, "block3.relu", [3, 7], objective="neuron", input_shape=(1, 48, 48), steps=6,
                                  generator=torch.Generator().manual_seed(0))
    outside = torch.ones(48, 48, dtype=torch.bool)
    outside[max(canvas.top, 0) : canvas.top + canvas.size[0], max(canvas.left, 0) : canvas.left + canvas.size[1]] = False
    assert (res.images[:, :, outside] == 0.5).all() and (res.images[:, :, ~outside] != 0.5).any()
    acts = {}
    handle = model.block3.relu.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.clone()))
    with torch.no_grad():
        model(res.images)
    handle.remove()
    torch.testing.assert_close(res.activation, acts["a"][[0, 1], [3, 7], 6, 6])
    # a border neuron sees the zero padding: no canvas there
    assert _neuron_canvas(field, (0, 0), warp, 0) is None


class GlobalMix(nn.Module):
    """conv, then every position plus the image's mean: a neuron here depends on the whole input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.relu(y + 10 * x.mean((2, 3), keepdim=True))


def test_a_neuron_that_sees_the_whole_input_is_optimised_on_the_whole_input():
    torch.manual_seed(0)
    model = GlobalMix().eval()
    field = ReceptiveField(size=(3, 3), stride=(1, 1), offset=(-1, -1), output=(24, 24), input=(24, 24))  # what the conv says
    res = activation_maximization(model, "relu", [0, 1], objective="neuron", input_shape=(1, 24, 24), steps=20, field=field,
                                  generator=torch.Generator().manual_seed(0))
    # the random-canvas check saw the mean term and refused the canvas: the whole image was optimised
    assert (res.images != 0.5).float().mean() > 0.9
    with torch.no_grad():
        torch.testing.assert_close(res.activation, model(res.images)[[0, 1], [0, 1], 12, 12])


def test_color_correlation_by_hand():
    # colours that vary only along gray (r = g = b = v, variance s2): cov = s2 * ones(3,3), one direction
    # (1,1,1)/sqrt(3) with eigenvalue 3 s2, so the square root's first column is sqrt(s2) * (1,1,1)
    v = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    images = v[:, None, None, None].expand(4, 3, 1, 1)
    sqrt = color_correlation(images)
    s2 = float(v.var())
    torch.testing.assert_close(sqrt[:, 0], torch.full((3,), math.sqrt(s2), dtype=torch.float64))
    torch.testing.assert_close(sqrt[:, 1:], torch.zeros(3, 2, dtype=torch.float64), atol=1e-7, rtol=0)
    noisy = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sqrt = color_correlation(noisy)  # in general: a square root of the covariance
    torch.testing.assert_close(sqrt @ sqrt.T, torch.cov(noisy.transpose(0, 1).reshape(3, -1)))
    with pytest.raises(ValueError, match=r"images must be RGB \[N,3,H,W\]"):
        color_correlation(torch.rand(2, 1, 4, 4))


def power_law_images(a: float, n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random-phase images whose amplitude spectrum is exactly ``f**-a`` (f > 0)."""
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(size, dtype=torch.float64)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    amplitude = torch.where(radius > 0, radius.clamp_min(1e-12) ** -a, torch.zeros_like(radius))
    # the spectrum of real noise has Hermitian phases; its unit-modulus part keeps them
    noise = torch.fft.fft2(torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return torch.fft.ifft2(amplitude * noise / noise.abs().clamp_min(1e-12)).real


def test_spectrum_decay_recovers_a_power_law_and_is_clamped():
    for a in (1.0, 1.5, 2.0):
        assert spectrum_decay(power_law_images(a)) == pytest.approx(a, abs=1e-6)
    assert spectrum_decay(power_law_images(0.5)) == 1.0  # clamped to [low, high]
    assert spectrum_decay(power_law_images(3.0)) == 2.5
    assert spectrum_decay(power_law_images(0.5), low=0.0) == pytest.approx(0.5, abs=1e-6)
    assert spectrum_decay(torch.full((2, 3, 8, 8), 0.3)) == 1.0  # constant patches: nothing to fit, the low end
    with pytest.raises(ValueError, match=r"images must be \[N,C,H,W\] with H, W >= 2"):
        spectrum_decay(torch.rand(3, 8, 8))


def test_a_steeper_decay_per_unit_starts_smoother_and_matches_a_lone_run():
    model = make_random_model(in_channels=1, seed=2)
    options = {"input_shape": (1, 16, 16), "transforms": None, "fast": False}
    start = activation_maximization(model, "relu_a", [0, 0, 0], steps=0, decay_power=torch.tensor([1.0, 2.0, 3.0]),
                                    generator=torch.Generator().manual_seed(0), **options)
    x = start.images - start.images.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(x.double()).abs().pow(2)[:, 0]
    f = torch.sqrt(torch.fft.fftfreq(16)[:, None] ** 2 + torch.fft.fftfreq(16)[None, :] ** 2)
    high = (power * (f > 0.25)).sum((1, 2)) / power.sum((1, 2))
    assert high[0] > 2 * high[1] > 4 * high[2]  # the same noise, each image scaled by its own 1/f**decay
    both = activation_maximization(model, "relu_a", [0, 1], steps=5, decay_power=torch.tensor([1.5, 1.5]),
                                   generator=torch.Generator().manual_seed(0), **options)
    one = activation_maximization(model, "relu_a", [0, 1], steps=5, decay_power=1.5,
                                  generator=torch.Generator().manual_seed(0), **options)
    torch.testing.assert_close(both.images, one.images)  # a tensor of equal values is that number
    # any decay keeps 1/f's total spectral energy: it moves energy to low frequencies, not the step size
    from cnnlens.explain.activation_max import _Image

    scaled = [_Image((2, 1, 16, 16), "fourier", 0.01, torch.Generator().manual_seed(3), torch.device("cpu"),
                     torch.float64, d) for d in (1.0, torch.tensor([1.5, 2.5]))]
    ones = scaled[0].scale.expand(2, 1, *scaled[0].scale.shape[-3:])
    torch.testing.assert_close(scaled[1].scale.flatten(1).norm(dim=1), ones.flatten(1).norm(dim=1))
    assert scaled[1].scale[1, 0, 0, 1, 0] > scaled[1].scale[0, 0, 0, 1, 0] > ones[0, 0, 0, 1, 0]  # lowest frequency
    with pytest.raises(ValueError, match=r"decay_power must be a number or a tensor of one value per unit \(\[2\]\)"):
        activation_maximization(model, "relu_a", [0, 1], steps=1, decay_power=torch.tensor([1.0, 2.0, 3.0]), **options)


def test_data_colours_start_at_the_data_mean_and_are_checked():
    model = make_random_model(in_channels=3, seed=2)
    mean = torch.tensor([0.7, 0.5, 0.2])
    colors = color_correlation(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    res = activation_maximization(model, "relu_a", [0], input_shape=(3, 16, 16), steps=0, init_std=0.0, colors=colors,
                                  color_mean=mean)
    torch.testing.assert_close(res.images[0], mean[:, None, None].expand(3, 16, 16))
    moved = activation_maximization(model, "relu_a", [0], input_shape=(3, 16, 16), steps=16, colors=colors,
                                    color_mean=mean, generator=torch.Generator().manual_seed(0))
    assert (moved.activation > moved.start_activation + 0.2).all()
    # colours per unit: the image with the same colours as a lone run is that run's image, the other differs
    # (the model itself: from a constant start the copy's kernels break max-pool ties by batch size)
    options = {"input_shape": (3, 16, 16), "steps": 5, "init_std": 0.0, "transforms": None, "fast": False}
    both = activation_maximization(model, "relu_a", [0, 0], colors=torch.stack([colors, torch.eye(3)]),
                                   color_mean=torch.stack([mean, mean.flip(0)]), **options)
    one = activation_maximization(model, "relu_a", [0], colors=colors, color_mean=mean, **options)
    torch.testing.assert_close(both.images[:1], one.images)
    assert not torch.allclose(both.images[1], one.images[0])
    with pytest.raises(ValueError, match=r"colors must be a tensor of shape \[3, 3\] \(or \[units, 3, 3\]\) for RGB inputs"):
        activation_maximization(model, "relu_a", [0], input_shape=(3, 16, 16), steps=1, colors=torch.eye(2))
    with pytest.raises(ValueError, match="colors gives 3 units. colours for 2 units"):
        activation_maximization(model, "relu_a", [0, 1], input_shape=(3, 16, 16), steps=1, colors=colors.expand(3, 3, 3))
    gray = make_random_model(in_channels=1, seed=2)
    with pytest.raises(ValueError, match=r"color_mean must be a tensor of shape \[3\] \(or \[units, 3\]\) for RGB inputs"):
        activation_maximization(gray, "relu_a", [0], input_shape=(1, 16, 16), steps=1, color_mean=mean)


def test_feature_visualisation_is_exported():
    import cnnlens.explain as explain

    for name in ("activation_maximization", "class_model_images", "receptive_field", "dataset_exemplars",
                 "layer_exemplars", "choose_filters", "Transforms", "color_correlation"):
        assert name in explain.__all__ and getattr(explain, name) is not None
    assert explain.Transforms is Transforms and explain.activation_maximization is activation_maximization


def test_diversity_makes_a_units_images_differ():
    model = make_random_model(in_channels=1, seed=6)
    runs = {d: activation_maximization(model, "relu_a", [2], images_per_unit=3, diversity=d, input_shape=(1, 16, 16),
                                       steps=24, generator=torch.Generator().manual_seed(1)) for d in (0.0, 20.0)}
    assert runs[0.0].units == (2, 2, 2) and runs[0.0].images.shape[0] == 3

    def similarity(images: torch.Tensor) -> float:
        acts = {}
        handle = model.relu_a.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.clone()))
        with torch.no_grad():
            model(images)
        handle.remove()
        return float(gram_diversity(acts["a"], 3).mean())

    assert similarity(runs[20.0].images) < similarity(runs[0.0].images) - 0.01


def test_gram_diversity_by_hand():
    a = torch.zeros(2, 2, 1, 2)
    a[0, 0] = 1.0  # G_0 = [[2, 0], [0, 0]]
    a[1, :, 0, 0] = 1.0  # G_1 = [[1, 1], [1, 1]]
    # cos(G_0, G_1) = 2 / (2 * 2) = 0.5 for both
    torch.testing.assert_close(gram_diversity(a, 2), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(gram_diversity(a, 1), torch.zeros(2))


def test_global_generator_and_model_untouched():
    model = make_random_model(in_channels=1, seed=7).train()
    model.fc.weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    stats = model.bn_a.running_mean.clone()
    state = torch.random.get_rng_state()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.eval()(x)
    model.train()
    for objective in ("channel", "neuron"):  # the neuron objective hooks the in-place ReLU's input
        activation_maximization(model, "relu_a", [0, 1], objective=objective, input_shape=(1, 16, 16), steps=3,
                                images_per_unit=2, diversity=1.0, generator=torch.Generator().manual_seed(0))
    class_model_images(model, [1], input_shape=(1, 16, 16), steps=3, generator=torch.Generator().manual_seed(0))
    dataset_exemplars(model, "relu_a", [x], target=2)
    receptive_field(model, "relu_a", (1, 16, 16))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert_model_untouched(model, modes)
    assert [p.requires_grad for p in model.parameters()] == [p is not model.fc.weight for p in model.parameters()]
    assert torch.equal(model.bn_a.running_mean, stats)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- transforms


def test_transforms_scale_with_the_input_size():
    assert Transforms.for_size(48, 48) == Transforms(pad=3, jitter=2, fine_jitter=1, scale=(0.9, 1.1), degrees=10.0)
    assert Transforms.for_size(224, 224) == Transforms(pad=12, jitter=8, fine_jitter=4, scale=(0.9, 1.1), degrees=10.0)
    assert Transforms.for_size(16, 16).pad == 1  # never below one pixel
    x = torch.rand(2, 1, 8, 8)
    assert Transforms()(x) is x


def test_shift_only_transforms_move_whole_pixels_with_gray_fill():
    x = torch.rand(5, 1, 12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = Transforms(pad=1, jitter=1, fine_jitter=1)(x, torch.Generator().manual_seed(3))
    for i in range(5):  # each image is its own shift by at most 3 pixels, gray where it came from outside
        matches = []
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                shifted = torch.full_like(x[i], 0.5)
                src = x[i][:, max(0, -dy) : 12 - max(0, dy), max(0, -dx) : 10 - max(0, dx)]
                shifted[:, max(0, dy) : max(0, dy) + src.shape[1], max(0, dx) : max(0, dx) + src.shape[2]] = src
                matches.append(torch.allclose(out[i], shifted, atol=1e-12))
        assert sum(matches) == 1


def test_rotation_turns_about_the_centre():
    x = torch.full((1, 1, 9, 9), 0.5, dtype=torch.float64)
    x[0, 0, 4, 6] = 1.0  # two pixels right of the centre
    out = Transforms(degrees=45.0)(x, torch.Generator().manual_seed(0))
    ys, xs = torch.meshgrid(torch.arange(9.0, dtype=torch.float64), torch.arange(9.0, dtype=torch.float64), indexing="ij")
    w = (out[0, 0] - 0.5).clamp_min(0)
    cy, cx = float((w * ys).sum() / w.sum()) - 4, float((w * xs).sum() / w.sum()) - 4
    assert math.isclose(math.hypot(cy, cx), 2.0, abs_tol=0.25)  # still two pixels from the centre
    assert abs(cy) > 0.2  # but turned off the row


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pad": -1}, "Transforms.pad must be an int >= 0"),
    ({"jitter": 1.5}, "Transforms.jitter must be an int"),
    ({"scale": (1.2, 1.1)}, "Transforms.scale must be"),
    ({"degrees": 200}, r"Transforms.degrees must be in \[0, 180\)"),
])
def test_transforms_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transforms(**kwargs)


# ----------------------------------------------------------------------------------- receptive field


@pytest.mark.parametrize(("layer", "size", "stride", "offset"), [
    ("block1.conv", 3, 1, -1),   # 3x3 conv, padding 1
    ("block1.pool", 4, 2, -1),   # + 2x2 max-pool
    ("block2.conv", 8, 2, -3),   # + 3x3 conv at stride 2: 4 + 2 * 2
    ("block2.relu", 8, 2, -3),
    ("block3.conv", 18, 4, -7),  # + pool, + 3x3 conv at stride 4: 10 + 2 * 4
])
def test_receptive_field_of_small_cnn_by_hand(layer, size, stride, offset):
    model = SmallCNN(in_channels=1, num_classes=3, input_size=48).eval()
    rf = receptive_field(model, layer, (1, 48, 48))
    assert (rf.size, rf.stride, rf.offset) == ((size, size), (stride, stride), (offset, offset))


def test_receptive_field_strided_dilated_and_non_square():
    model = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3, dilation=2, padding=2),
                          nn.ReLU(), nn.Conv2d(4, 2, (1, 3), padding=(0, 1)))
    # conv5/s2: 5, stride 2, offset -2; dilated 3x3 (span 5) at stride 2: 5 + 4 * 2 = 13, offset -2 - 2 * 2 = -6;
    # then 1x3: rows unchanged, columns 13 + 2 * 2 = 17, offset -6 - 2 = -8
    rf = receptive_field(model, "4", (1, 32, 40))
    assert rf == ReceptiveField(size=(13, 17), stride=(2, 2), offset=(-6, -8), output=(16, 20), input=(32, 40))
    assert rf.box(0, 1) == (-6, -6, 7, 11)


def test_crop_fills_outside_the_image():
    rf = ReceptiveField(size=(3, 3), stride=(1, 1), offset=(-1, -1), output=(4, 4), input=(4, 4))
    image = torch.arange(16.0).reshape(1, 4, 4)
    torch.testing.assert_close(rf.crop(image, 0, 0, fill=-1.0), torch.tensor([[[-1.0, -1, -1], [-1, 0, 1], [-1, 4, 5]]]))
    torch.testing.assert_close(rf.crop(image, 2, 1), image[:, 1:4, 0:3])


def test_receptive_field_needs_a_feature_map():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match="not a feature map"):
        receptive_field(model, "1", (1, 4, 4))


# --------------------------------------------------------------------------------------- exemplars


def test_streamed_exemplars_equal_a_brute_force_top_k(random_model_and_images):
    model, _ = random_model_and_images
    c = model.stem[0].in_channels
    images = torch.rand(23, c, 16, 16, generator=torch.Generator().manual_seed(1))
    ex = dataset_exemplars(model, "relu_a", (images[i : i + 5] for i in range(0, 23, 5)), k=4, target=3)
    acts = {}
    handle = model.relu_a.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    a = acts["a"]  # [23, 8, 8, 8]
    peak, where = a.flatten(2).max(2)  # [N, C]
    order = torch.sort(peak.T, dim=1, descending=True, stable=True).indices[:, :4]
    torch.testing.assert_close(ex.values, peak.T.gather(1, order))
    assert torch.equal(ex.index, order)
    for ch in range(a.shape[1]):
        for r in range(4):
            i = int(order[ch, r])
            pos = (int(where[i, ch]) // 8, int(where[i, ch]) % 8)
            assert tuple(ex.position[ch, r].tolist()) == pos
            torch.testing.assert_close(ex.crops[ch, r], ex.field.crop(images[i], *pos))
    torch.testing.assert_close(ex.mean, a.mean((0, 2, 3)).double())
    torch.testing.assert_close(ex.firing, (peak > 0).double().mean(0))
    kept = {}

    def keep(m, i, o):
        kept["a"] = o
        return o.clone()  # the in-place ReLU after it changes the clone

    handle = model.relu_a.register_forward_hook(keep)  # the contribution of all images at once, by hand
    logits = model(images)
    handle.remove()
    (g,) = torch.autograd.grad(logits[:, 3].sum(), kept["a"])
    expected = (g * kept["a"]).sum((2, 3)).mean(0).double()
    torch.testing.assert_close(ex.contribution, expected.detach(), rtol=1e-5, atol=1e-7)
    assert ex.count == 23 and ex.target == 3


def test_exemplars_of_several_layers_come_from_one_pass_and_equal_each_layer_alone():
    model = make_random_model(in_channels=1, seed=3)
    images = torch.rand(19, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    batches = [images[i : i + 6] for i in range(0, 19, 6)]
    fields = {name: receptive_field(model, name, (1, 16, 16)) for name in ("relu_a", "bn_a", "relu_out")}
    calls = []
    handle = model.register_forward_pre_hook(lambda m, i: calls.append(1))  # the model itself runs (a hook of the user's)
    together = layer_exemplars(model, ["relu_a", "bn_a", "relu_out"], iter(batches), k=3, target=2, fields=fields, fast=False)
    handle.remove()
    assert len(calls) == len(batches)  # one forward per batch for the three layers
    for name, ex in together.items():
        alone = dataset_exemplars(model, name, iter(batches), k=3, target=2, fast=False)
        for field in ("values", "index", "position", "crops", "mean", "firing", "contribution"):
            torch.testing.assert_close(getattr(ex, field), getattr(alone, field), rtol=1e-6, atol=1e-7, msg=f"{name} {field}")
    # bn_a's output is kept as it was before the in-place ReLU after it (relu_a) overwrote it
    assert (together["bn_a"].mean < together["relu_a"].mean - 0.01).any()
    fast = layer_exemplars(model, ["relu_a", "relu_out"], iter(batches), k=3)  # the prepared copy
    for name, ex in fast.items():
        torch.testing.assert_close(ex.values, together[name].values, rtol=1e-4, atol=1e-5)
        assert torch.equal(ex.index, together[name].index)


def test_dead_filters_are_flagged_and_never_chosen():
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():  # filters 0 and 2 answer to bright and to dark pixels; 1 and 3 can never fire
        conv.weight.copy_(torch.tensor([1.0, 1.0, -1.0, 1.0])[:, None, None, None].expand(4, 1, 3, 3) / 9)
        conv.bias.copy_(torch.tensor([0.0, -100.0, 1.0, -100.0]))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    images = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ex = dataset_exemplars(model, "1", [images[:6], images[6:]], k=3)
    choice = choose_filters(ex, 4)
    assert choice.dead == (1, 3) and set(choice.units) == {0, 2}
    assert choice.units == tuple(int(u) for u in torch.argsort(ex.mean.masked_fill(torch.tensor([False, True, False, True]), -1), descending=True)[:2])
    assert "the 2 of 4 filters with the highest mean activation on 10 images; 2 never fire on them" in choice.reason
    by_class = choose_filters(dataset_exemplars(model, "1", [images], k=2, target=1), 1, "contribution", class_name="Happy")
    assert by_class.rule == "contribution" and "contribution (gradient x activation) to class Happy" in by_class.reason
    with pytest.raises(ValueError, match="needs exemplars computed with target="):
        choose_filters(ex, 2, "contribution")
    with pytest.raises(ValueError, match="rule must be 'activation' or 'contribution'"):
        choose_filters(ex, 2, "random")


def test_exemplars_bad_inputs():
    model = make_random_model(in_channels=1, seed=0)
    with pytest.raises(ValueError, match="batches gave no images"):
        dataset_exemplars(model, "relu_a", [])
    with pytest.raises(ValueError, match="not a feature map"):
        dataset_exemplars(model, "fc", [torch.rand(2, 1, 16, 16)])
    with pytest.raises(ValueError, match="target 9 is out of range"):
        dataset_exemplars(model, "relu_a", [torch.rand(2, 1, 16, 16)], target=9)
    with pytest.raises(ValueError, match="unknown layer"):
        dataset_exemplars(model, "nope", [torch.rand(2, 1, 16, 16)])


# ------------------------------------------------------------------------------------------- report


def test_report_shows_each_filter_beside_its_exemplars(tmp_path):
    import dataclasses
    import json

    from cnnlens.report import write_report
    from test_report import TINY, tiny_inputs

    inputs = tiny_inputs()
    options = dataclasses.replace(TINY, methods=("saliency",), average_methods=(), exemplars=2, filters_per_layer=2,
                                  filter_rule="contribution:Happy")
    page = write_report(inputs, tmp_path / "r", options=options).read_text(encoding="utf-8")
    record = json.loads((tmp_path / "r/data/filters.json").read_text())["filters"]
    assert [r["layer"] for r in record] == ["relu_out", "head.1"]  # the ReLUs after the middle (conv_b) and the last conv
    ex = dataset_exemplars(inputs.model, "relu_out", [inputs.dataset.float_images()], k=2, target=0)
    choice = choose_filters(ex, 2, "contribution", class_name="Happy")
    assert record[0]["rule"] == "contribution" and record[0]["reason"] == choice.reason
    assert [f["filter"] for f in record[0]["filters"]] == list(choice.units)
    assert record[0]["filters"][0]["exemplar_index"] == ex.index[choice.units[0]].tolist()
    assert page.count('class="filter-row"') == sum(len(r["filters"]) for r in record)
    assert "contribution (gradient x activation) to class Happy" in page
    assert "What the model thinks each class looks like" in page and (tmp_path / "r/figures/class-model-0.png").is_file()
    # each shown feature map is captioned with its channel's mean to two significant digits (never "0.00")
    import re

    import numpy as np

    from cnnlens.viz import scale
    layers = json.loads((tmp_path / "r/data/filters.json").read_text())["feature_maps"]["layers"]
    captions = re.findall(r"<figcaption>#(\d+): mean ([^<]+)<", page)
    assert len(captions) == len(layers) * TINY.feature_maps
    for i, layer in enumerate(layers):
        maps = np.load(tmp_path / "r/arrays" / f"feature-maps-{layer.replace('.', '-')}.npy")
        for c, mean in captions[i * TINY.feature_maps:(i + 1) * TINY.feature_maps]:
            assert mean == scale.number(float(maps[int(c)].mean())), (layer, c, mean)


def test_report_colours_each_rgb_filter_from_its_own_patches():
    from cnnlens.report.sections.filters import exemplar_colors

    model = make_random_model(in_channels=3, seed=1)
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ex = dataset_exemplars(model, "relu_a", [images], k=3)
    got = exemplar_colors(ex, [2, 5])
    for j, u in enumerate([2, 5]):  # the square root of its patches' colour covariance, and their mean colour
        torch.testing.assert_close(got["colors"][j], color_correlation(ex.crops[u]))
        torch.testing.assert_close(got["color_mean"][j], ex.crops[u].mean((0, 2, 3)))
    gray = dataset_exemplars(make_random_model(in_channels=1, seed=1), "relu_a", [images[:, :1]], k=2)
    assert exemplar_colors(gray, [0]) == {}  # gray images: no colours to choose


def test_report_fits_each_rgb_filters_spectrum_to_its_own_patches():
    from cnnlens.report.sections.filters import exemplar_decay

    model = make_random_model(in_channels=3, seed=1)
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ex = dataset_exemplars(model, "relu_a", [images], k=3)
    got = exemplar_decay(ex, [2, 5])["decay_power"]
    # patches of uniform noise have a flat spectrum (slope ~0): the fit is clamped to its low end, Lucid's 1
    assert got.tolist() == pytest.approx([1.0, 1.0])
    smooth = ex.crops.clone()  # patches with a steeper spectrum than noise get a steeper decay
    smooth[5] = power_law_images(2.0, n=3, size=smooth.shape[-1]).expand(3, 3, -1, -1).float()
    ex_smooth = dataclasses.replace(ex, crops=smooth)
    steep = float(exemplar_decay(ex_smooth, [5])["decay_power"][0])
    assert steep == pytest.approx(2.0, abs=1e-4) and steep > float(got[1])
    gray = dataset_exemplars(make_random_model(in_channels=1, seed=1), "relu_a", [images[:, :1]], k=2)
    assert exemplar_decay(gray, [0]) == {}  # gray faces already match at 1/f: Lucid's decay is kept


def test_report_rgb_synthetic_images_start_from_each_filters_patch_colour(tmp_path):
    import dataclasses

    import numpy as np

    from cnnlens.data.imageset import ImageSet
    from cnnlens.report.context import ReportInputs
    from cnnlens.report.sections.filters import exemplar_colors, filters_section
    from test_report import CLASSES, TINY, context

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 60, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    images[:6, 0] += 190  # red images and blue ones: a filter's patches are far from gray, and filters differ
    images[6:, 2] += 190
    data = ImageSet(images, torch.arange(12) % len(CLASSES), CLASSES, tuple(f"{i}.png" for i in range(12)), None)
    inputs = ReportInputs(model=make_random_model(in_channels=3, num_classes=len(CLASSES), seed=3), dataset=data, name="rgb")
    # one tiny step: each synthetic image is still its starting colour, the mean of its filter's own patches
    options = dataclasses.replace(TINY, am_steps=1, am_lr=1e-5, exemplars=3)
    ctx = context(tmp_path, inputs, options)
    section = filters_section(ctx)
    assert "in the colours and spectral slope of its real patches" in section["text"][0]
    ex = dataset_exemplars(inputs.model, "relu_out", [data.float_images()], k=3)
    units = choose_filters(ex, 3).units
    # the sentence names the shifts the images got (none on a field under 14 px, never "up to 0 px")
    warp = Transforms.for_size(*ex.field.size)
    shift = warp.pad + warp.jitter + warp.fine_jitter
    assert (f"shifts of up to {shift} px" if shift else "no shifts") in section["text"][0]
    assert "up to 0 px" not in section["text"][0]
    synth = torch.from_numpy(np.load(tmp_path / "assets/arrays/filters-relu_out.npy"))
    want = exemplar_colors(ex, units)["color_mean"]
    r, c = (s // 2 for s in ex.field.output)
    centre = torch.stack([ex.field.crop(im, r, c).mean((1, 2)) for im in synth])  # [3 filters, 3 colours]
    torch.testing.assert_close(centre, want, atol=0.03, rtol=0)
    assert (want - 0.5).abs().max() > 0.2  # far from the gray that Lucid's default would start from


def test_report_filter_rule_errors(tmp_path):
    from cnnlens.report import ReportOptions, write_report
    from test_report import tiny_inputs

    with pytest.raises(ValueError, match="filter_rule must be 'activation' or 'contribution:CLASS'"):
        ReportOptions(filter_rule="biggest")
    with pytest.raises(ValueError, match="unknown class 'Angry'"):
        write_report(tiny_inputs(), tmp_path / "r", options=ReportOptions(filter_rule="contribution:Angry"))
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_report_filter_rule_on_a_trained_run(tmp_path):
    import json

    from click.testing import CliRunner

    from cnnlens.cli import main
    from cnnlens.data.synth import write_faces
    from cnnlens.train import TrainConfig, train

    write_faces(tmp_path / "data", 140, seed=0)
    config = TrainConfig(data=f"synth:{tmp_path / 'data'}", model="small_cnn", epochs=2, batch_size=32, lr=3e-3,
                         val_fraction=0.25, num_threads=1, device="cpu", seed=0)
    train(config, tmp_path / "run", progress=False)
    common = ["report", str(tmp_path / "run"), "--methods", "saliency", "--average-methods", "none",
              "--feature-map-layers", "none", "--am-steps", "4", "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "site"), "--filter-rule", "contribution:Happy",
                                       "--exemplars", "3", "--filters-per-layer", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "site/data/filters.json").read_text())["filters"]
    assert [r["layer"] for r in record] == ["block2.relu", "block3.relu"]
    assert all(r["rule"] == "contribution" and "to class Happy" in r["reason"] for r in record)
    assert all(len(f["exemplar_index"]) == 3 for r in record for f in r["filters"])
    result = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "bad"), "--filter-rule", "contribution:Hungry"])
    assert result.exit_code != 0 and "unknown class 'Hungry'" in result.output and not (tmp_path / "bad").exists()
