"""Occlusion: Captum's Occlusion as the oracle, a one-pixel toy model worked out by hand, batching, guarding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cnnlens.explain.occlusion import occlusion
from conftest import assert_model_untouched, make_random_model

captum_attr = pytest.importorskip("captum.attr")


def captum_occlusion(model: nn.Module, images: torch.Tensor, target: torch.Tensor, patch: tuple[int, int],
                     stride: tuple[int, int], fill: str, output: str) -> torch.Tensor:
    """Captum's answer, one channel of its [N,C,H,W] (its windows span all channels, so they agree)."""
    forward = (lambda x: model(x).softmax(1)) if output == "probability" else model
    if fill == "black+white":
        return sum(captum_occlusion(model, images, target, patch, stride, f, output) for f in ("black", "white"))
    baselines = {"black": 0.0, "white": 1.0}.get(fill)
    if baselines is None:
        baselines = images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    c = images.shape[1]
    attr = captum_attr.Occlusion(forward).attribute(images, target=target, sliding_window_shapes=(c, *patch),
                                                    strides=(1, *stride), baselines=baselines, perturbations_per_eval=64)
    assert torch.equal(attr[:, :1].expand_as(attr), attr)
    return attr[:, 0]


CASES = [  # (patch, stride, fill, output)
    ((5, 5), (1, 1), "black", "probability"),
    ((5, 5), (1, 1), "black", "logit"),
    ((4, 4), (3, 3), "white", "probability"),
    ((3, 5), (2, 3), "mean", "logit"),
    ((3, 3), (2, 2), "black+white", "probability"),
]


@pytest.mark.parametrize(("patch", "stride", "fill", "output"), CASES)
def test_matches_captum_occlusion_in_float64(random_model_and_images, patch, stride, fill, output):
    model, images = random_model_and_images
    model, images = copy.deepcopy(model).double(), images.double()
    target = torch.tensor([0, 3, 6, 2])
    ours = occlusion(model, images, target, patch=patch, stride=stride, fill=fill, output=output, batch_size=7)
    ref = captum_occlusion(model, images, target, patch, stride, fill, output)
    assert ref.abs().max() > 1e-4  # the comparison is not between two zero maps
    # Captum sums in float64 and divides in float32 (feature_ablation.py: single_attrib.float() / weight)
    torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_matches_captum_in_float32(random_model_and_images):
    model, images = random_model_and_images
    ours = occlusion(model, images, patch=5, stride=2, output="logit")
    target = model(images).argmax(1)
    ref = captum_occlusion(model, images, target, (5, 5), (2, 2), "black", "logit")
    # float32 logits differ in the last bits between batch layouts: compare on the map's scale
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * float(ref.abs().max()))


class OnePixel(nn.Module):
    """logits = [x[0, r, c], 0]: only one pixel matters, so the occlusion map can be worked out by hand."""

    def __init__(self, r: int, c: int) -> None:
        super().__init__()
        self.r, self.c = r, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, 0, self.r, self.c]
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_one_pixel_model_by_hand():
    # 6x6 image, 3x3 patches, stride 1: patch starts 0..3 on each axis; the pixel is (2,2) with value v.
    # A pixel at row h is covered by the starts in [h-2, h] ∩ [0,3]; of those, the ones in [0,2] also cover
    # row 2. Fraction per axis: h=0..5 -> 1/1, 2/2, 3/3, 2/3, 1/2, 0/1. Black fill drops the logit by v.
    v = 0.8
    images = torch.full((1, 1, 6, 6), 0.3)
    images[0, 0, 2, 2] = v
    frac = torch.tensor([1, 1, 1, 2 / 3, 1 / 2, 0])
    expected = v * frac[:, None] * frac[None, :]
    got = occlusion(OnePixel(2, 2), images, target=0, patch=3, stride=1, fill="black", output="logit")
    torch.testing.assert_close(got[0], expected)
    assert (got[0] != 0).sum() == 25  # exactly the pixels of the 5x5 block of patches that cover (2,2)

    # probability of class 0 is sigmoid(x): the drop is sigmoid(v) - sigmoid(0)
    got_p = occlusion(OnePixel(2, 2), images, target=0, patch=3, fill="black")
    torch.testing.assert_close(got_p[0], (torch.sigmoid(torch.tensor(v)) - 0.5) * frac[:, None] * frac[None, :])

    # white fill raises the pixel to 1: the "drop" is v - 1 < 0; black+white sums both
    got_w = occlusion(OnePixel(2, 2), images, target=0, patch=3, fill="white", output="logit")
    torch.testing.assert_close(got_w[0], (v - 1) * frac[:, None] * frac[None, :])
    got_bw = occlusion(OnePixel(2, 2), images, target=0, patch=3, fill="black+white", output="logit")
    torch.testing.assert_close(got_bw, got + got_w)
    got_f = occlusion(OnePixel(2, 2), images, target=0, patch=3, fill=0.5, output="logit")
    torch.testing.assert_close(got_f[0], (v - 0.5) * frac[:, None] * frac[None, :])


def test_clipped_border_patches_by_hand():
    # 5 pixels, patch 2, stride 2: starts 0, 2, 4 (Captum: ceil(3/2)+1 = 3), the last one clipped to 1 pixel.
    images = torch.full((1, 1, 5, 5), 0.5)
    got = occlusion(OnePixel(4, 4), images, target=0, patch=2, stride=2, output="logit")
    expected = torch.zeros(5, 5)
    expected[4, 4] = 0.5  # only the clipped corner patch covers (4,4); it covers nothing else
    torch.testing.assert_close(got[0], expected)


def test_batched_equals_unbatched_and_batch_size_free(random_model_and_images):
    model, images = random_model_and_images
    full = occlusion(model, images, patch=4, stride=2, fill="black+white", batch_size=5)
    one_by_one = torch.cat([occlusion(model, images[i : i + 1], patch=4, stride=2, fill="black+white") for i in range(4)])
    torch.testing.assert_close(full, one_by_one, rtol=1e-5, atol=1e-6)
    huge = occlusion(model, images, patch=4, stride=2, fill="black+white", batch_size=10_000)
    torch.testing.assert_close(full, huge, rtol=1e-5, atol=1e-6)


def test_targets_default_to_prediction(random_model_and_images):
    model, images = random_model_and_images
    predicted = model(images).argmax(1)
    default = occlusion(model, images, patch=4, stride=4)
    torch.testing.assert_close(default, occlusion(model, images, predicted, patch=4, stride=4))
    torch.testing.assert_close(default[1:2], occlusion(model, images[1:2], int(predicted[1]), patch=4, stride=4))


def test_model_and_input_untouched_also_after_error(random_model_and_images):
    model, images = random_model_and_images
    model.train()
    model.bn_a.eval()
    modes = [m.training for m in model.modules()]
    stats = model.stem[1].running_mean.clone()
    images.requires_grad_(True)
    before = images.detach().clone()
    out = occlusion(model, images, patch=4, stride=4)
    assert_model_untouched(model, modes)
    assert torch.equal(model.stem[1].running_mean, stats)  # ran in eval mode: BN statistics unchanged
    assert images.requires_grad and torch.equal(images.detach(), before)
    assert out.device == images.device and not out.requires_grad
    out.mul_(2)  # a normal tensor the caller may edit in place (not an inference-mode tensor)
    with pytest.raises(ValueError, match="target classes must be in"):
        occlusion(model, images, target=99, patch=4)
    assert_model_untouched(model, modes)
    assert images.requires_grad


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"patch": 17}, ValueError, "larger than the images"),
    ({"patch": (3, 20)}, ValueError, "larger than the images"),
    ({"patch": 0}, ValueError, "patch must be >= 1"),
    ({"patch": "5"}, TypeError, "patch must be an int or a pair"),
    ({"patch": 3, "stride": 4}, ValueError, "stride .* is larger than patch"),
    ({"fill": "grey"}, ValueError, "fill must be one of 'black', 'white', 'mean', 'black\\+white' or a float"),
    ({"fill": None}, TypeError, "fill must be one of"),
    ({"output": "softmax"}, ValueError, "output must be 'probability' or 'logit'"),
    ({"batch_size": -1}, ValueError, "batch_size must be a positive int or None"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive int or None"),
    ({"target": [0, 1]}, ValueError, "target has 2 entries but images has N=4"),
])
def test_bad_inputs_give_clear_errors(kwargs, error, match):
    model = make_random_model(1)
    images = torch.rand(4, 1, 16, 16)
    with pytest.raises(error, match=match):
        occlusion(model, images, **kwargs)


def test_bad_images_give_clear_errors():
    model = make_random_model(1)
    with pytest.raises(ValueError, match=r"\[N,C,H,W\]"):
        occlusion(model, torch.rand(1, 16, 16))
    with pytest.raises(TypeError, match="floating point"):
        occlusion(model, torch.zeros(1, 1, 16, 16, dtype=torch.uint8))


def test_progress_bar_does_not_change_the_map(random_model_and_images):
    model, images = random_model_and_images
    quiet = occlusion(model, images[:1], patch=8, stride=8)
    torch.testing.assert_close(occlusion(model, images[:1], patch=8, stride=8, progress=True), quiet)
