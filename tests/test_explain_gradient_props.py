"""Invariants of the gradient and CAM methods on random models: batching, batch size, in-place ReLUs,
completeness, CAM = Grad-CAM on a GAP head, reproducible noise, devices."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from cnnlens.explain.cam import cam
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.guided_backprop import guided_backprop
from cnnlens.explain.guided_grad_cam import guided_grad_cam
from cnnlens.explain.integrated_gradients import gaussian_blur, integrated_gradients, integrated_gradients_result, make_baseline
from cnnlens.explain.saliency import saliency
from cnnlens.explain.smoothgrad import smoothgrad

TARGETS = [1, 0, 6, 4]
METHODS = {
    "saliency": saliency,
    "guided_backprop": guided_backprop,
    "integrated_gradients": functools.partial(integrated_gradients, n_steps=8, batch_size=5),
    "smoothgrad": functools.partial(smoothgrad, n_samples=3, generator=None),
    "grad_cam": grad_cam,
    "cam": cam,
    "guided_grad_cam": guided_grad_cam,
}


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert b.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


def no_inplace(model: nn.Module) -> nn.Module:
    copy_ = copy.deepcopy(model)
    for m in copy_.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return copy_


@pytest.mark.parametrize("name", [n for n in METHODS if n != "smoothgrad"])
def test_batched_equals_one_image_at_a_time(random_model_and_images, name):
    model, images = random_model_and_images
    method = METHODS[name]
    batched = method(model, images, TARGETS)
    assert batched.shape == (4, 16, 16)
    singles = torch.cat([method(model, images[i:i + 1], TARGETS[i]) for i in range(4)])
    close(batched, singles)


@pytest.mark.parametrize("name", [n for n in METHODS if n != "smoothgrad"])
def test_in_place_relus_change_nothing(random_model_and_images, name):
    model, images = random_model_and_images
    close(METHODS[name](model, images, TARGETS), METHODS[name](no_inplace(model), images, TARGETS))


def test_predicted_class_is_the_default_target(random_model_and_images):
    model, images = random_model_and_images
    predicted = model(images).argmax(1)
    other = (predicted + 1) % 7
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for name, method in METHODS.items():
        if name == "smoothgrad":
            method = functools.partial(smoothgrad, n_samples=2, generator=g())
            default = method(model, images)
            method = functools.partial(smoothgrad, n_samples=2, generator=g())
        else:
            default = method(model, images)
        close(default, method(model, images, predicted.tolist()))
        assert not torch.allclose(default, method(model, images, other)), name  # the target matters


def test_smoothgrad_does_not_depend_on_batch_size(random_model_and_images):
    model, images = random_model_and_images
    results = [smoothgrad(model, images, TARGETS, n_samples=5, sigma=0.2, batch_size=bs, reduce=None,
                          generator=torch.Generator().manual_seed(7)) for bs in (1, 3, 8, 20, None)]
    for r in results[1:]:
        close(r, results[0])


def test_smoothgrad_noise_is_seeded_and_really_averages(random_model_and_images):
    model, images = random_model_and_images
    run = lambda seed, n=4: smoothgrad(model, images, TARGETS, n_samples=n, sigma=0.2,  # noqa: E731
                                       generator=torch.Generator().manual_seed(seed), reduce=None)
    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    assert (run(1) - run(2)).abs().max() > 1e-3 * run(1).abs().max()
    # sigma = 0: every copy is the image itself, so SmoothGrad is the plain (absolute) gradient
    close(smoothgrad(model, images, TARGETS, sigma=0.0, n_samples=3, reduce=None), saliency(model, images, TARGETS, reduce=None))
    # the mean of draws 1 and 2 of a 2-sample run equals the average of the two 1-sample runs on those draws
    two = run(3, n=2)
    g = torch.Generator().manual_seed(3)
    scale = 0.2 * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    draws = [images + torch.randn(images.shape, generator=g) * scale for _ in range(2)]
    by_hand = sum(saliency(model, d, TARGETS, reduce=None) for d in draws) / 2
    close(two, by_hand)


class Recorder(nn.Module):
    """A linear model that keeps every batch it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * 8 * 8, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def test_smoothgrad_noise_is_sigma_times_each_images_range():
    images = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    images[1] = 0.4 + 0.2 * images[1]  # value range ~0.2
    images[2] = 0.3  # range 0: no noise at all
    ranges = images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))
    model = Recorder()
    # fast=False: the recording model itself must see the batches, not a prepared copy of it.
    smoothgrad(model, images, 0, fast=False, n_samples=100, sigma=0.25,
               batch_size=7, generator=torch.Generator().manual_seed(1))
    noisy = torch.cat(model.seen[1:])  # seen[0]: the clean pass that checks the targets
    assert noisy.shape == (300, 2, 8, 8)
    noise = (noisy - images.repeat(100, 1, 1, 1)).reshape(100, 3, -1).transpose(0, 1).flatten(1)  # [3, 100*128]
    torch.testing.assert_close(noise.std(dim=1)[:2], 0.25 * ranges[:2], rtol=0.03, atol=0)
    assert (noise.mean(dim=1)[:2].abs() < 4 * 0.25 * ranges[:2] / noise.shape[1] ** 0.5).all()  # 4 standard errors
    assert noise[2].abs().max() == 0


def test_integrated_gradients_does_not_depend_on_batch_size(random_model_and_images):
    model, images = random_model_and_images
    results = [integrated_gradients(model, images, TARGETS, n_steps=6, batch_size=bs, reduce=None) for bs in (1, 5, 24, 100)]
    for r in results[1:]:
        close(r, results[0])


def test_integrated_gradients_completeness_gap_shrinks_with_steps(random_model_and_images):
    model, images = random_model_and_images
    coarse = integrated_gradients_result(model, images, TARGETS, n_steps=8, batch_size=256)
    fine = integrated_gradients_result(model, images, TARGETS, n_steps=256, batch_size=512)
    # logits here are O(1); measured: |gap| ~1e-2 with 8 steps, ~1e-3 with 256
    assert fine.gap.abs().max() < 3e-3
    assert fine.gap.abs().max() < coarse.gap.abs().max() / 4
    torch.testing.assert_close(fine.scores, model(images).gather(1, torch.tensor(TARGETS)[:, None])[:, 0].detach())
    torch.testing.assert_close(fine.baseline_scores, model(torch.zeros_like(images))[:, TARGETS].diagonal().detach())
    torch.testing.assert_close(fine.gap, fine.attributions.sum(dim=(1, 2, 3)) - (fine.scores - fine.baseline_scores))
    # the [N,H,W] map is the channel sum, so its total is the completeness sum too
    maps = integrated_gradients(model, images, TARGETS, n_steps=8, batch_size=256)
    close(maps, coarse.attributions.sum(dim=1))


def test_integrated_gradients_baselines(random_model_and_images):
    model, images = random_model_and_images
    # the image as its own baseline: no path, no attribution
    assert integrated_gradients(model, images, TARGETS, baseline=images, reduce=None).abs().max() == 0
    mean = make_baseline(images, "mean")
    torch.testing.assert_close(mean[:, :, 5, 7], images.mean(dim=(2, 3)))
    assert mean.std(dim=(2, 3)).max() == 0
    for baseline in ("mean", "blur", 0.5, images[0], images[:1] * 0.5):
        r = integrated_gradients_result(model, images, TARGETS, baseline=baseline, n_steps=64, batch_size=256)
        torch.testing.assert_close(r.baseline_scores, model(r.baseline)[:, TARGETS].diagonal().detach())
        assert r.gap.abs().max() < 1e-2, baseline if isinstance(baseline, str) else "tensor"  # measured <= 4e-3


def test_blur_baseline_matches_scipy():
    images = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (1.0, 1.5, 2.0):
        # scipy's "mirror" is torch's "reflect"; its radius int(3 sigma + .5) equals ceil(3 sigma) here
        oracle = ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(gaussian_blur(images, sigma).numpy(), oracle, rtol=1e-10, atol=1e-12)
    const = torch.full((1, 1, 6, 6), 0.7)
    torch.testing.assert_close(make_baseline(const, "blur", blur_sigma=3.0), const)


def test_cam_equals_grad_cam_of_the_pooled_layer_divided_by_its_area(random_model_and_images):
    # On a GAP + linear head dlogit_t/dF_k = w[t,k] / (h*w) everywhere, so Grad-CAM(F) = ReLU(CAM) / (h*w).
    model, images = random_model_and_images
    low = cam(model, images, TARGETS, upsample=False)
    assert low.shape == (4, 8, 8) and (low < 0).any() and (low > 0).any()
    close(grad_cam(model, images, TARGETS, layer="head", upsample=False), low.clamp(min=0) / 64)
    close(cam(model, images, TARGETS), torch.nn.functional.interpolate(low[:, None], size=16, mode="bilinear")[:, 0])


def test_grad_cam_accepts_a_module_and_defaults_to_the_pooled_feature_map(random_model_and_images):
    model, images = random_model_and_images
    # the map the global average pooling reads: "head" (conv + ReLU), not its pre-ReLU conv
    close(grad_cam(model, images, TARGETS), grad_cam(model, images, TARGETS, layer=model.head))
    assert not torch.allclose(grad_cam(model, images, TARGETS), grad_cam(model, images, TARGETS, layer="head.0"))
    close(grad_cam(model, images, TARGETS, layer="head.0"), grad_cam(model, images, TARGETS, layer=model.head[0]))
    assert not torch.allclose(grad_cam(model, images, TARGETS, layer="conv_a"), grad_cam(model, images, TARGETS))


def test_double_precision_works(random_model_and_images):
    model, images = random_model_and_images
    model, images = copy.deepcopy(model).double(), images.double()
    for name, method in METHODS.items():
        assert method(model, images, TARGETS).dtype == torch.float64, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_stay_on_cuda_and_match_cpu(random_model_and_images):
    model, images = random_model_and_images
    gpu_model, gpu_images = copy.deepcopy(model).cuda(), images.cuda()
    for name, method in METHODS.items():
        out = method(gpu_model, gpu_images, TARGETS) if name != "smoothgrad" else None
        if out is not None:
            assert out.device == gpu_images.device, name
            close(out.cpu(), method(model, images, TARGETS), rel=1e-4)
    # a CPU generator drives CUDA noise: the same draws as on CPU
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = smoothgrad(gpu_model, gpu_images, TARGETS, n_samples=3, generator=g())
    assert out.device == gpu_images.device
    close(out.cpu(), smoothgrad(model, images, TARGETS, n_samples=3, generator=g()), rel=1e-4)
    assert smoothgrad(gpu_model, gpu_images, TARGETS, n_samples=2).device == gpu_images.device


class BasicBlockNet(nn.Module):
    """torchvision's BasicBlock pattern: ``out = bn(conv(x)); out += x; relu_(out)``, or out of place."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.relu, self.fc = nn.ReLU(inplace=inplace), nn.Linear(2, 3)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        if self.inplace:
            out += x
        else:
            out = out + x
        return self.fc(self.relu(out).mean(dim=(2, 3)))


def test_in_place_ops_after_the_hooked_layer():
    # Grad-CAM at "bn" must see BatchNorm's output, not the sum the in-place += writes over it.
    a, b = BasicBlockNet(True).eval(), BasicBlockNet(False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 2, 6, 6) - 0.3
    for method in (saliency, guided_backprop, guided_grad_cam, cam, functools.partial(grad_cam, layer="bn", relu=False),
                   functools.partial(grad_cam, layer="relu")):
        close(method(a, x, [0, 1, 2]), method(b, x, [0, 1, 2]))


def test_progress_bars_change_nothing(random_model_and_images, capsys):
    model, images = random_model_and_images
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    close(smoothgrad(model, images, TARGETS, n_samples=3, generator=g(), progress=True),
          smoothgrad(model, images, TARGETS, n_samples=3, generator=g()))
    close(integrated_gradients(model, images, TARGETS, n_steps=4, progress=True),
          integrated_gradients(model, images, TARGETS, n_steps=4))
