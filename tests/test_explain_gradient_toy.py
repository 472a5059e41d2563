"""Toy models with hand-set weights whose attributions are worked out by hand in each test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.explain.cam import cam
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.guided_backprop import guided_backprop
from cnnlens.explain.guided_grad_cam import guided_grad_cam
from cnnlens.explain.integrated_gradients import integrated_gradients, integrated_gradients_result
from cnnlens.explain.saliency import masked_image, saliency
from cnnlens.explain.smoothgrad import smoothgrad


def set_(param: torch.Tensor, values) -> None:
    with torch.no_grad():
        param.copy_(torch.tensor(values, dtype=param.dtype).reshape(param.shape))


class LinearModel(nn.Module):
    """logits = W flatten(x) + b on 2x2x2 images."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)
        set_(self.fc.weight, [[1, -2, 0, 3, 0.5, 0, -1, 2],
                              [0, 1, 1, 0, -4, 0, 0, 1]])
        set_(self.fc.bias, [0.5, -1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_saliency_of_a_linear_model_is_its_weight():
    model, x = LinearModel(), torch.rand(2, 2, 2, 2)
    raw = saliency(model, x, target=[0, 1], reduce=None, abs=False)
    torch.testing.assert_close(raw[0], torch.tensor([[[1.0, -2], [0, 3]], [[0.5, 0], [-1, 2]]]))
    torch.testing.assert_close(raw[1], torch.tensor([[[0.0, 1], [1, 0]], [[-4, 0], [0, 1]]]))
    # max over channels of |w|: class 0 -> [[max(1,.5), max(2,0)], [max(0,1), max(3,2)]]
    torch.testing.assert_close(saliency(model, x, target=0), torch.tensor([[[1.0, 2], [1, 3]]] * 2))
    torch.testing.assert_close(saliency(model, x, target=1, reduce="sum", abs=False)[0], torch.tensor([[-4.0, 1], [1, 1]]))


def test_integrated_gradients_of_a_linear_model_is_exact_for_every_quadrature():
    model, x = LinearModel(), torch.rand(2, 2, 2, 2)
    w0 = model.fc.weight[0].detach().reshape(2, 2, 2)
    for method in ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]:
        r = integrated_gradients_result(model, x, target=0, n_steps=3, method=method, baseline=0.25)
        torch.testing.assert_close(r.attributions, (x - 0.25) * w0)  # IG = (x - b) * w
        assert r.gap.abs().max() < 1e-5, method


class ReluRamp(nn.Module):
    """f(x) = ReLU(x - 0.5) on a 1x1 image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.relu = nn.ReLU()
        set_(self.fc.weight, [1.0])
        set_(self.fc.bias, [-0.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc(x.flatten(1)))


def test_integrated_gradients_gap_worked_out_by_hand():
    # Path 0 -> 1; riemann_right with 5 steps samples alpha = .2 .4 .6 .8 1: the gradient is 1 at .6 .8 1,
    # so IG = 1 * 3/5 = 0.6 while f(1) - f(0) = 0.5: gap 0.1. Middle with 4 steps (.125 .375 .625 .875): exact.
    r = integrated_gradients_result(ReluRamp(), torch.ones(1, 1, 1, 1), target=0, n_steps=5, method="riemann_right")
    torch.testing.assert_close(r.attributions.flatten(), torch.tensor([0.6]))
    torch.testing.assert_close(r.gap, torch.tensor([0.1]))
    torch.testing.assert_close(r.scores - r.baseline_scores, torch.tensor([0.5]))
    r = integrated_gradients_result(ReluRamp(), torch.ones(1, 1, 1, 1), target=0, n_steps=4, method="riemann_middle")
    torch.testing.assert_close(r.attributions.flatten(), torch.tensor([0.5]))


class TinyMLP(nn.Module):
    """x (1x1x2 image) -> W1 = [[1,2],[0,1]] -> ReLU -> W2 = [[-1, 2]]."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(2, 2, bias=False), nn.ReLU(inplace=inplace), nn.Linear(2, 1, bias=False)
        set_(self.fc1.weight, [[1, 2], [0, 1]])
        set_(self.fc2.weight, [[-1, 2]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


@pytest.mark.parametrize("inplace", [False, True])
def test_guided_backprop_worked_out_by_hand(inplace):
    # x = [1, 1]: h = [3, 1], both active. Plain gradient: W1^T [-1, 2] = [-1, 0].
    # Guided: the ReLU also drops the negative -1: W1^T [0, 2] = [0, 2].
    model, x = TinyMLP(inplace), torch.ones(1, 1, 1, 2)
    torch.testing.assert_close(saliency(model, x, 0, reduce=None, abs=False).flatten(), torch.tensor([-1.0, 0]))
    torch.testing.assert_close(guided_backprop(model, x, 0, reduce=None).flatten(), torch.tensor([0.0, 2]))
    # x = [1, -2]: h = [-3, -2] -> nothing active, both gradients 0.
    x = torch.tensor([1.0, -2]).reshape(1, 1, 1, 2)
    assert guided_backprop(model, x, 0, reduce=None).abs().max() == 0


class PointwiseGapNet(nn.Module):
    """1x1 conv with kernels [2, -1], stride 2 (no bias) -> GAP -> linear [[3, 1], [0, 2]] + [.5, -.5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, stride=2, bias=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        set_(self.conv.weight, [2, -1])
        set_(self.fc.weight, [[3, 1], [0, 2]])
        set_(self.fc.bias, [0.5, -0.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gap(self.conv(x)).flatten(1))


def strided_input() -> torch.Tensor:
    """4x4 images whose even pixels (the ones the stride-2 conv sees) are x = [[-.4, .2], [.3, .4]]."""
    images = torch.full((2, 1, 4, 4), 9.0)
    images[:, 0, ::2, ::2] = torch.tensor([[-0.4, 0.2], [0.3, 0.4]])
    return images


def test_grad_cam_and_cam_worked_out_by_hand():
    model, x = PointwiseGapNet(), strided_input()
    # A_0 = 2x, A_1 = -x; dlogit_c/dA_k = fc[c,k] / 4 everywhere, so alpha_c = fc[c] / 4.
    # class 0: (3/4)(2x) + (1/4)(-x) = 1.25x = [[-.5, .25], [.375, .5]]
    # class 1: (0)(2x) + (2/4)(-x) = -0.5x = [[.2, -.1], [-.15, -.2]]
    signed = grad_cam(model, x, target=[0, 1], relu=False, upsample=False)
    torch.testing.assert_close(signed, torch.tensor([[[-0.5, 0.25], [0.375, 0.5]], [[0.2, -0.1], [-0.15, -0.2]]]))
    low = grad_cam(model, x, target=[0, 1], upsample=False)
    torch.testing.assert_close(low, torch.tensor([[[0.0, 0.25], [0.375, 0.5]], [[0.2, 0], [0, 0]]]))
    # Bilinear 2 -> 4 (half-pixel centres): each axis maps [a, b] to [a, .75a+.25b, .25a+.75b, b].
    u = torch.tensor([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    up = grad_cam(model, x, target=[0, 1])
    torch.testing.assert_close(up, torch.stack([u @ low[0] @ u.T, u @ low[1] @ u.T]))
    # CAM: sum_k fc[c,k] A_k: class 0 -> 6x - x = 5x, class 1 -> -2x (signed, no 1/(h*w)).
    torch.testing.assert_close(cam(model, x, target=[0, 1], upsample=False),
                               torch.tensor([[[-2.0, 1], [1.5, 2]], [[0.8, -0.4], [-0.6, -0.8]]]))
    torch.testing.assert_close(cam(model, x, target=[0, 1], relu=True, upsample=False)[1], torch.tensor([[0.8, 0], [0, 0]]))
    # saliency: dlogit_0/dx = (3*2 + 1*(-1)) / 4 = 1.25, dlogit_1/dx = (2*(-1)) / 4 = -0.5 at the even
    # pixels, 0 at the pixels the stride skips
    expected = torch.zeros(2, 4, 4)
    expected[:, ::2, ::2] = torch.tensor([1.25, -0.5]).view(2, 1, 1)
    torch.testing.assert_close(saliency(model, x, [0, 1], reduce=None, abs=False)[:, 0], expected)


class ConvReluGapNet(nn.Module):
    """2x2 conv [[1, -1], [0, 2]] (valid) -> in-place ReLU -> GAP -> linear weight 2."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 2, bias=False)
        self.relu = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(1, 1, bias=False)
        set_(self.conv.weight, [[1, -1], [0, 2]])
        set_(self.fc.weight, [2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_conv_relu_net_worked_out_by_hand():
    model = ConvReluGapNet(inplace=True)
    x = torch.tensor([[1.0, 0, 2], [0, 1, 0], [1, 1, 0]]).reshape(1, 1, 3, 3)
    # A[i,j] = x[i,j] - x[i,j+1] + 2 x[i+1,j+1] = [[3, -2], [1, 1]]; ReLU -> [[3, 0], [1, 1]]; logit = 2 * 5/4.
    # Grad-CAM at the conv (before the in-place ReLU): dlogit/dA = (2/4) [A > 0] = [[.5, 0], [.5, .5]],
    # alpha = 1.5/4 = .375, signed map .375 A = [[1.125, -.75], [.375, .375]].
    torch.testing.assert_close(grad_cam(model, x, 0, layer="conv", relu=False, upsample=False),
                               torch.tensor([[[1.125, -0.75], [0.375, 0.375]]]))
    # at the ReLU: dlogit/dR = .5 everywhere, alpha = .5: .5 [[3, 0], [1, 1]]
    torch.testing.assert_close(grad_cam(model, x, 0, layer="relu", upsample=False), torch.tensor([[[1.5, 0], [0.5, 0.5]]]))
    # CAM on the ReLU'd maps: 2 * [[3, 0], [1, 1]]
    torch.testing.assert_close(cam(model, x, 0, upsample=False), torch.tensor([[[6.0, 0], [2, 2]]]))
    # saliency: .5 * the kernel placed at the three active positions (0,0), (1,0), (1,1)
    expected = 0.5 * torch.tensor([[1.0, -1, 0], [1, 2 - 1 + 1, -1], [0, 2, 2]])
    torch.testing.assert_close(saliency(model, x, 0, reduce=None, abs=False)[0, 0], expected)
    # guided backprop: the only gradient reaching the ReLU is +.5, so it equals the saliency here,
    # and guided Grad-CAM at the ReLU layer multiplies it by the (upsampled) [[1.5, 0], [.5, .5]]
    torch.testing.assert_close(guided_backprop(model, x, 0, reduce=None)[0, 0], expected)
    cam_up = grad_cam(model, x, 0, layer="relu")[0]
    torch.testing.assert_close(guided_grad_cam(model, x, 0, layer="relu", reduce=None)[0, 0], expected * cam_up)


def test_smoothgrad_of_a_linear_model_is_its_weight_whatever_the_noise():
    model, x = LinearModel(), torch.rand(3, 2, 2, 2)
    w1 = model.fc.weight[1].detach().reshape(2, 2, 2)
    out = smoothgrad(model, x, 1, n_samples=7, sigma=0.5, reduce=None, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, w1.abs().expand(3, -1, -1, -1))
    sq = smoothgrad(model, x, 1, n_samples=7, sigma=0.5, squared=True, reduce=None)
    torch.testing.assert_close(sq, (w1 ** 2).expand(3, -1, -1, -1))
    ig = integrated_gradients(model, x, 1, reduce=None, n_steps=4)
    torch.testing.assert_close(ig, x * w1)


def test_masked_image_worked_out_by_hand():
    images = torch.tensor([[0.1, 0.2], [0.3, 0.4]]).reshape(1, 1, 2, 2).repeat(1, 3, 1, 1)
    sal = torch.tensor([[[4.0, 1], [3, 2]]])
    # the 50th percentile of [1, 2, 3, 4] is 2.5: pixels with saliency 4 and 3 stay
    out = masked_image(images, sal, 50)
    torch.testing.assert_close(out, torch.tensor([[0.1, 0], [0.3, 0]]).expand(1, 3, 2, 2))
    torch.testing.assert_close(masked_image(images, sal, 0), images)  # nothing below the minimum
    # at 100 only the most salient pixel reaches the threshold
    torch.testing.assert_close(masked_image(images, sal, 100, fill=0.5)[0, 0], torch.tensor([[0.1, 0.5], [0.5, 0.5]]))
