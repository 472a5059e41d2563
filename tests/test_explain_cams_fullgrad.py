"""FullGrad by value: a toy worked out by hand, and its decomposition's completeness (the input part and the
bias parts sum to the logit for a ReLU network: exact in float64 on the random conv + BN + residual models,
where BatchNorm's implicit biases count), plus fast path, targets and batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.explain.full_grad import full_grad, full_gradients


class Toy(nn.Module):
    """``logit = 2 * mean(ReLU(x - 0.3))``: a 1x1 convolution (weight 1, bias -0.3), ReLU, GAP, linear (2, bias 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, dtype=torch.float64)  # the weights set in float64: -0.3 exactly as written
        self.fc = nn.Linear(1, 1, dtype=torch.float64)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-0.3)
            self.fc.weight.fill_(2.0)
            self.fc.bias.fill_(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_full_grad_by_hand():
    x = torch.tensor([[0.1, 0.2], [0.5, 0.9]], dtype=torch.float64).view(1, 1, 2, 2)
    # z = x - 0.3 = [[-0.2, -0.1], [0.2, 0.6]]: the gradient is 2/4 where z > 0
    # input part: 0.5 * x there = [[0, 0], [0.25, 0.45]], scaled to [0,1]: [[0, 0], [5/9, 1]]
    # the conv's bias part: 0.5 * -0.3 there, |.| = [[0, 0], [0.15, 0.15]], scaled: [[0, 0], [1, 1]]
    expected = torch.tensor([[0, 0], [5 / 9 + 1, 2]]).double()
    torch.testing.assert_close(full_grad(Toy(), x, 0, fast=False)[0], expected)
    parts = full_gradients(Toy(), x, 0, fast=False)
    with torch.no_grad():
        logit = float(Toy()(x)[0, 0])  # 2 * (0.2 + 0.6) / 4 = 0.4
    assert abs(logit - 0.4) < 1e-12
    assert abs(float(parts.input.sum() + sum(p.sum() for p in parts.biases)) - logit) < 1e-12


def test_the_parts_sum_to_the_logit_on_a_relu_batchnorm_residual_model(random_model_and_images):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    targets = [0, 5, 2, 6]
    parts = full_gradients(model, images, targets, fast=False)
    assert len(parts.biases) == 8  # 4 convolutions with a bias, 3 BatchNorm, the linear layer
    total = parts.input.flatten(1).sum(1) + sum(p.flatten(1).sum(1) for p in parts.biases)
    logits = model(images)[torch.arange(4), targets]
    torch.testing.assert_close(total, logits, rtol=0, atol=1e-10)
    # and folding BatchNorm into the convolutions would merge parts: the fast path keeps them apart
    fast = full_gradients(model, images, targets, fast=True)
    for a, b in zip(fast.biases, parts.biases):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10 * float(b.abs().max()))


def test_fast_path_targets_and_batches(random_model_and_images):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    exact = full_grad(model, images, [0, 5, 2, 6], fast=False)
    assert exact.shape == (4, 16, 16) and exact.min() >= 0 and exact.abs().max() > 0
    torch.testing.assert_close(full_grad(model, images, [0, 5, 2, 6]), exact, rtol=0, atol=1e-10)
    for i, t in enumerate([0, 5, 2, 6]):
        torch.testing.assert_close(full_grad(model, images[i : i + 1], t, fast=False)[0], exact[i], rtol=1e-10,
                                   atol=1e-12)
    predicted = model(images).argmax(1)
    torch.testing.assert_close(full_grad(model, images, fast=False), full_grad(model, images, predicted, fast=False))


def test_bad_targets_are_clear(random_model_and_images):
    model, images = random_model_and_images
    with pytest.raises(ValueError, match="target has 2 entries but images has N=4"):
        full_grad(model, images, [1, 2])
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 6\]"):
        full_grad(model, images, 7)
