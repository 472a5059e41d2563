"""The metrics the peers have, each against the peer's own function on the same maps: Average Drop and
Increase in Confidence (torch-cam's ClassificationMetric), infidelity and max-sensitivity (Captum, fed the
same perturbations), random-logit and MPRT (Quantus); ROAD's MoRF/LeRF orders by hand."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
from conftest import make_random_model
from torch import nn

from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.saliency import saliency
from cnnlens.faithfulness.confidence import confidence_change, scale_to_unit
from cnnlens.faithfulness.order import pixel_ranks
from cnnlens.faithfulness.random_logit import flat_ssim, random_logit, random_other_class
from cnnlens.faithfulness.randomization import mprt
from cnnlens.faithfulness.road import noisy_linear_imputation, road
from cnnlens.faithfulness.sensitivity import infidelity, infidelity_noise, max_sensitivity, sensitivity_noise


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def model64(random_model_and_images):
    model, images = random_model_and_images
    return model.double(), images.double()


def signed_saliency(model, x, t):
    return saliency(model, x, t, reduce="sum", abs=False, fast=False)


class GivenMaps:
    """A torch-cam CAM extractor that returns given maps (normalised as torch-cam normalises its CAMs)."""

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        from torchcam.methods.core import _CAM

        self.model, self.maps, self.normalize = model, maps, _CAM._normalize

    def __call__(self, class_idx=None, scores=None, normalized=True, **kw):
        return [self.normalize(self.maps.clone())]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


@pytest.mark.parametrize("maps_of", ["grad-cam", "signed-saliency"])
def test_average_drop_and_increase_match_torchcam(random_model_and_images, maps_of):
    metrics = pytest.importorskip("torchcam.metrics")
    model, images = model64(random_model_and_images)
    targets = [1, 4, 0, 2]
    maps = grad_cam(model, images, targets, fast=False) if maps_of == "grad-cam" else signed_saliency(model, images, targets)
    ours = confidence_change(model, images, maps, targets)
    metric = metrics.ClassificationMetric(GivenMaps(model, maps), lambda z: z.softmax(-1))
    metric.update(images, class_idx=targets)
    ref = metric.summary()
    assert ref["avg_drop"] == pytest.approx(float(ours.drop.mean()), rel=1e-9, abs=1e-12)
    assert ref["conf_increase"] == pytest.approx(float(ours.increase.double().mean()), abs=1e-12)
    # by hand: the masked image is the scaled map times the image
    with torch.no_grad():
        o = model(scale_to_unit(maps)[:, None] * images).softmax(1)[torch.arange(4), targets]
    torch.testing.assert_close(ours.masked, o, rtol=1e-9, atol=1e-12)


def test_confidence_change_by_hand():
    # Y = 0.8 and a map that keeps everything (O = Y): no drop, no increase; a map that hides everything on a
    # model whose class 0 wins on black: an increase, no drop
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[-1.0, -1, -1, -1], [1, 1, 1, 1]]))
        model[1].bias.zero_()
    x = torch.full((1, 1, 2, 2), 0.5)
    everything = confidence_change(model, x, torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), 1)
    # scaled map (0, 1/3, 2/3, 1) * 0.5: logit 1 = 1, logit 0 = -1 (instead of 2 / -2)
    y, o = torch.sigmoid(torch.tensor(4.0, dtype=torch.float64)), torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(everything.drop, ((y - o) / (y + 1e-7))[None])
    assert not everything.increase.item()
    flat = confidence_change(model, x, torch.zeros(1, 2, 2), 0)  # constant map -> 0: black image, class 0 p = 0.5
    assert flat.drop.item() == 0 and flat.increase.item()


def test_infidelity_matches_captum_given_the_same_perturbations(random_model_and_images):
    captum_metrics = pytest.importorskip("captum.metrics")
    model, images = model64(random_model_and_images)
    n, c = images.shape[:2]
    targets = torch.tensor([2, 0, 6, 3])
    maps = signed_saliency(model, images, targets)
    noise = infidelity_noise(images, 6, 0.05, seeded(3))
    for normalize in (True, False):
        ours = infidelity(model, images, maps, targets, perturbations=noise, normalize=normalize)

        def perturb(inputs, noise=noise):  # Captum repeats each image K times, in order
            i = noise.reshape(n * 6, 1, 16, 16).expand(-1, c, -1, -1).to(inputs)
            return i, inputs - i

        ref = captum_metrics.infidelity(lambda z: model(z).softmax(1), perturb, images,
                                        (maps / c)[:, None].expand(-1, c, -1, -1), target=targets,
                                        n_perturb_samples=6, normalize=normalize)
        torch.testing.assert_close(ours, ref.double(), rtol=1e-7, atol=1e-12)


def test_infidelity_of_the_gradient_under_tiny_noise_is_near_zero_by_hand():
    # p_0 = s / (s + 1) with s = w . x + 5 (logits log s and 0): its gradient w / (s + 1)^2 predicts the change
    # under noise of std 1e-4 up to second order, so its infidelity is ~1e-6 of a random map's
    w = torch.randn(1, 1, 6, 6, generator=seeded(0), dtype=torch.float64)

    class Ratio(nn.Module):
        def forward(self, x):
            s = (x * w).sum((1, 2, 3)) + 5
            return torch.stack([torch.log(s), torch.zeros_like(s)], 1)

    w.abs_()
    x = torch.rand(2, 1, 6, 6, generator=seeded(1), dtype=torch.float64)
    noise = infidelity_noise(x, 8, 1e-4, seeded(2))
    s = (x * w).sum((1, 2, 3)) + 5
    grad_p = (w[:, 0] / (s + 1)[:, None, None] ** 2)  # d(s/(s+1))/dx
    good = infidelity(Ratio().eval(), x, grad_p, 0, perturbations=noise)
    bad = infidelity(Ratio().eval(), x, torch.rand(2, 6, 6, generator=seeded(4), dtype=torch.float64), 0,
                     perturbations=noise)
    assert good.max() < 1e-6 * bad.min()


def test_max_sensitivity_matches_captum_given_the_same_shifts(random_model_and_images):
    captum_metrics = pytest.importorskip("captum.metrics")
    model, images = model64(random_model_and_images)
    n = images.shape[0]
    targets = torch.tensor([1, 1, 5, 0])
    shifts = sensitivity_noise(images, 5, 0.02, seeded(7))
    ours = max_sensitivity(model, images, signed_saliency, targets, shifts=shifts)

    def perturb(inputs, perturb_radius=0.02):
        return inputs + shifts.reshape(n * 5, *images.shape[1:]).to(inputs)

    def explain(inputs, target):  # Captum passes the inputs as a tuple, under no_grad, and wants a tuple back
        with torch.enable_grad():
            return (signed_saliency(model, inputs[0] if isinstance(inputs, tuple) else inputs, target),)

    ref = captum_metrics.sensitivity_max(explain, images, perturb, n_perturb_samples=5, target=targets)
    torch.testing.assert_close(ours, ref.double(), rtol=1e-7, atol=1e-12)
    # a map that ignores the image is not sensitive at all
    const = max_sensitivity(model, images, lambda m, x, t: torch.ones(x.shape[0], 16, 16, dtype=x.dtype), targets,
                            shifts=shifts)
    assert torch.equal(const, torch.zeros(n, dtype=torch.float64))


def quantus_explainer(fn):
    def explain(model, inputs, targets, **kw):
        x = torch.as_tensor(inputs, dtype=torch.float64)
        return fn(model, x, torch.as_tensor(targets)).detach().numpy()[:, None]

    return explain


def test_mprt_is_quantus_mprt_layer_by_layer(random_model_and_images):
    quantus = pytest.importorskip("quantus")
    model, images = model64(random_model_and_images)
    targets = np.array([0, 3, 5, 1])
    explain = quantus_explainer(signed_saliency)
    a = explain(model, images.numpy(), targets)
    for order in ("top_down", "independent"):
        torch.manual_seed(5)
        state = torch.get_rng_state()
        ours = mprt(model, images, signed_saliency, torch.as_tensor(targets), order=order, seed=42)
        assert torch.equal(torch.get_rng_state(), state)  # Quantus's seeding, without touching the user's stream
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_layer = quantus.MPRT(layer_order=order, seed=42, disable_warnings=True)(
                model=model, x_batch=images.numpy(), y_batch=targets, a_batch=a, explain_func=explain, device="cpu",
                channel_first=True)
            average = quantus.MPRT(layer_order=order, seed=42, return_average_correlation=True, disable_warnings=True)(
                model=model, x_batch=images.numpy(), y_batch=targets, a_batch=a, explain_func=explain, device="cpu",
                channel_first=True)
        assert list(per_layer)[1:] == list(ours.layers)
        ref = np.array([per_layer[k] for k in ours.layers])
        np.testing.assert_allclose(ours.similarity.numpy(), ref, rtol=0, atol=1e-12)
        # Quantus's average also counts the original-vs-original similarity (1): cnnlens's score does not
        n_layers = len(ours.layers)
        np.testing.assert_allclose(np.array(average), (ours.score.numpy() * n_layers + 1) / (n_layers + 1), atol=1e-12)


def test_random_logit_is_quantus_random_logit_image_by_image(random_model_and_images):
    quantus = pytest.importorskip("quantus")
    model, images = model64(random_model_and_images)
    targets = np.array([0, 3, 5, 1])
    explain = quantus_explainer(signed_saliency)
    for i in range(4):  # one image per call: Quantus divides by the largest value of the whole batch
        np.random.seed(42)  # Quantus's choice of the other class, repeated
        others = np.delete(np.arange(7), targets[i])
        off = others[np.random.randint(0, 6, 1)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = quantus.RandomLogit(num_classes=7, seed=42, disable_warnings=True)(
                model=model, x_batch=images[i:i + 1].numpy(), y_batch=targets[i:i + 1],
                a_batch=explain(model, images[i:i + 1].numpy(), targets[i:i + 1]), explain_func=explain, device="cpu",
                channel_first=True)
        ours = random_logit(model, images[i:i + 1], signed_saliency, targets[i:i + 1].tolist(), off_target=off.tolist())
        assert ours.score.item() == pytest.approx(ref[0], rel=1e-9, abs=1e-12)


def test_flat_ssim_and_other_class_by_hand():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a, b = torch.rand(3, 5, 4, generator=seeded(1), dtype=torch.float64), torch.rand(3, 5, 4, generator=seeded(2), dtype=torch.float64)
    for i in range(3):
        x, y = a[i].flatten().numpy(), b[i].flatten().numpy()
        rng = float(max(x.max(), y.max()) - min(x.min(), y.min()))
        assert flat_ssim(a, b)[i].item() == pytest.approx(skimage_metrics.structural_similarity(x, y, data_range=rng), rel=1e-12)
    torch.testing.assert_close(flat_ssim(a, a), torch.ones(3, dtype=torch.float64))
    t = torch.tensor([0, 3, 6] * 400)
    off = random_other_class(t, 7, seeded(0))
    assert (off != t).all() and off.min() >= 0 and off.max() <= 6
    counts = torch.bincount(off[t == 3], minlength=7).double()
    assert counts[3] == 0 and (counts[[0, 1, 2, 4, 5, 6]] / 400 - 1 / 6).abs().max() < 0.06


def test_road_orders_by_hand(random_model_and_images):
    model, images = random_model_and_images
    maps = torch.rand(4, 16, 16, generator=seeded(5))  # no ties
    g = seeded(9)
    morf = road(model, images, maps, [0, 1, 2, 3], order="morf", percentiles=(25, 50), generator=seeded(9))
    # by hand: the same generator's ranks, then its noise; remove the top 25% / 50% and impute
    ranks = pixel_ranks(maps, g)
    noise = torch.randn(images.shape, generator=g)
    for p, share in enumerate((64, 128)):
        keep = (ranks >= share).view(4, 1, 16, 16)
        x = noisy_linear_imputation(images, keep, fallback=images.mean(dim=(0, 2, 3)), noise_values=noise)
        with torch.no_grad():
            expect = model(x).softmax(1)[torch.arange(4), [0, 1, 2, 3]]
        torch.testing.assert_close(morf.probs[:, p], expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(morf.score, morf.probs.double().mean(1))
    # LeRF of a map is MoRF of its negation
    lerf = road(model, images, maps, [0, 1, 2, 3], order="lerf", percentiles=(25, 50), generator=seeded(9))
    neg = road(model, images, -maps, [0, 1, 2, 3], order="morf", percentiles=(25, 50), generator=seeded(9))
    torch.testing.assert_close(lerf.probs, neg.probs)
    # 0% removed: the image itself
    none = road(model, images, maps, [0, 1, 2, 3], percentiles=(0,))
    with torch.no_grad():
        torch.testing.assert_close(none.probs[:, 0], model(images).softmax(1)[torch.arange(4), [0, 1, 2, 3]],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda m, x: road(m, x, torch.rand(2, 8, 8), order="middle"), "order must be one of 'morf', 'lerf'"),
    (lambda m, x: road(m, x, torch.rand(2, 8, 8), percentiles=(120,)), r"percentiles must be a non-empty list of numbers in \[0, 100\]"),
    (lambda m, x: infidelity(m, x, torch.rand(2, 8, 8), noise=0), "noise must be a number > 0"),
    (lambda m, x: infidelity(m, x, torch.rand(2, 8, 8), n_perturbations=0), "n_perturbations must be a positive int"),
    (lambda m, x: max_sensitivity(m, x, signed_saliency, radius=-1), "radius must be a number > 0"),
    (lambda m, x: confidence_change(m, x, torch.rand(2, 8, 7)), r"maps have size \(8, 7\) but the images are \(8, 8\)"),
    (lambda m, x: random_logit(m, x, signed_saliency, 1, off_target=1), "off_target must differ from the target"),
    (lambda m, x: mprt(m, x, signed_saliency, order="bottom_up"), "order must be one of 'top_down', 'independent'"),
])
def test_bad_inputs_give_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_random_model(1), torch.rand(2, 1, 8, 8))


@pytest.mark.parametrize("metric", ["deletion", "confidence", "infidelity", "road"])
def test_a_metric_first_leaves_the_model_fit_for_gradient_methods(metric):
    # the metrics score through the model's cached fast copy: made under inference mode, its weights could not
    # be differentiated by a gradient method called on the same model afterwards
    from cnnlens.faithfulness.deletion import deletion

    model, x, maps = make_random_model(1, 5, seed=3), torch.rand(3, 1, 16, 16, generator=seeded(0)), torch.rand(3, 16, 16)
    {"deletion": lambda: deletion(model, x, maps), "confidence": lambda: confidence_change(model, x, maps),
     "infidelity": lambda: infidelity(model, x, maps), "road": lambda: road(model, x, maps, percentiles=(50,))}[metric]()
    torch.testing.assert_close(saliency(model, x, 1), saliency(model, x, 1, fast=False), rtol=1e-4, atol=1e-6)
