"""Ablation-CAM's shared pass (each image's layers up to the ablated one run once, only the rest on the ablated
copies) against the plain definition, every copy through the whole model, in float64: on a residual model (the
skip connection around the layer broadcasts over the copies) it is taken and exact; on a model that
concatenates an earlier map after the layer it cannot run, and the plain pass gives the same exact maps."""

from __future__ import annotations

import pytest
import torch
from conftest import make_random_model, seeded
from torch import nn

from cnnlens.explain.ablation_cam import ablation_cam


class Concatenating(nn.Module):
    """A dense-block-like net: the ablated layer's map is concatenated with the map before it."""

    def __init__(self, in_channels: int = 1, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early = self.stem(x)
        return self.fc(torch.cat([early, self.block(early)], dim=1).mean(dim=(2, 3)))


def by_definition(model: nn.Module, images: torch.Tensor, targets: list[int], layer: str) -> torch.Tensor:
    """``sum_k (y_t - y_t^{-k}) / y_t * A_k`` with each ``y_t^{-k}`` from its own whole pass of the model."""
    module = dict(model.named_modules())[layer]
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    with torch.no_grad():
        clean = model(images)
    handle.remove()
    acts = seen[0]
    maps = []
    for i, t in enumerate(targets):
        drops = []
        for k in range(acts.shape[1]):
            def zero(_m, _i, out, k=k):
                out = out.clone()
                out[:, k] = 0
                return out

            handle = module.register_forward_hook(zero)
            with torch.no_grad():
                drops.append(model(images[i:i + 1])[0, t])
            handle.remove()
        w = (clean[i, t] - torch.stack(drops)) / clean[i, t]
        maps.append((w[:, None, None] * acts[i]).sum(0))
    return torch.stack(maps)


def rows_through(module: nn.Module, calls: list[int]):
    return module.register_forward_pre_hook(lambda _m, inputs: calls.append(inputs[0].shape[0]))


@pytest.mark.parametrize("batch_size", [None, 3])
def test_shared_pass_on_a_residual_model_is_the_definition(batch_size):
    model = make_random_model(in_channels=3, seed=5).double()
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    targets = [1, 4]
    stem_rows: list[int] = []
    handle = rows_through(model.stem, stem_rows)
    try:
        ours = ablation_cam(model, images, targets, layer="relu_a", relu=False, upsample=False,
                            batch_size=batch_size, fast=False)
    finally:
        handle.remove()
    oracle = by_definition(model, images, targets, "relu_a")
    scale = float(oracle.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-10 * scale)
    # after the probes and the check: one image per pass up to the layer (8 channels, batch_size copies a pass)
    passes = 2 * -(-8 // (batch_size or 8))
    assert stem_rows[-passes - 1:] == [1] * (passes + 1)  # the shared check ran one image too
    fast = ablation_cam(model, images, targets, layer="relu_a", relu=False, upsample=False, batch_size=batch_size)
    torch.testing.assert_close(fast, oracle, rtol=0, atol=1e-10 * scale)


def test_a_concatenation_with_an_earlier_map_falls_back_to_whole_passes():
    model = seeded(Concatenating(in_channels=1), 2).double()
    images = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    targets = [0, 2, 4]
    stem_rows: list[int] = []
    handle = rows_through(model.stem, stem_rows)
    try:
        ours = ablation_cam(model, images, targets, layer="block", relu=False, upsample=False, batch_size=4,
                            fast=False)
    finally:
        handle.remove()
    oracle = by_definition(model, images, targets, "block")
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-10 * float(oracle.abs().max()))
    assert stem_rows[-5:] == [4, 4, 4, 4, 2]  # 3 images x 6 channels, 4 copies a pass: the whole model each time
