"""Extremal perturbations' parts against TorchRay (the paper's authors' code), which imports torchvision and
so runs in the separate venv that ``make peers`` builds; skipped where it is absent. The whole method cannot
agree to rounding: TorchRay places its parameter points on cell corners and counts a margin around the image
in the area term (the paper's area is the image's); with one-pixel cells the points coincide, and there the
smooth max-convolution mask and the perturbation's blend must be TorchRay's exactly. The whole optimisation
cannot be: at its start most of the mask's values tie exactly, and which of the tied pixels the area term's
sort pushes up is arbitrary (on the same numbers the two differ by 2e-3 after one step); where the model
decides clearly, both must keep the same pixels."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from cnnlens.explain import extremal_perturbation
from cnnlens.explain.extremal import blend, mask_weights, perturbation_pyramid, smooth_mask
from conftest import CentreSquare, centre_square_images

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".venv-peers" / "bin" / "python"
pytestmark = pytest.mark.skipif(not (ROOT / ".venv-peers" / ".installed").exists(),
                                reason="no .venv-peers (make peers builds it)")


def test_smooth_masks_and_fade_blend_are_torchrays(tmp_path):
    g = torch.Generator().manual_seed(0)
    params = torch.rand(3, 13, 17, generator=g)
    params[params < 0.6] = 0  # sparse, so the smooth max has points of every weight to choose between
    images = torch.rand(3, 2, 13, 17, generator=g)
    masks = torch.rand(3, 13, 17, generator=g)
    sigma, levels = 3.0, 6  # a whole number: TorchRay crops its margin at round(sigma) but places points at sigma
    area, steps = 144 / (48 + 2 * 3) ** 2, 300  # the square, over the image and its margin of round(sigma)
    torch.save({"params": params, "sigma": sigma, "images": images, "masks": masks, "levels": levels,
                "tests": str(ROOT / "tests"), "area": area, "steps": steps}, tmp_path / "in.pt")
    proc = subprocess.run([str(PEERS), str(ROOT / "tests" / "peers" / "torchray_peer.py"), str(tmp_path / "in.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    weights, radius = mask_weights((13, 17), 1, sigma)
    torch.testing.assert_close(smooth_mask(params, weights, radius, 1), theirs["masks"], rtol=0, atol=2e-6)
    ours = blend(perturbation_pyramid(images, "fade", levels, 1.0), masks)
    torch.testing.assert_close(ours, theirs["faded"], rtol=0, atol=2e-6)
    # the whole method: TorchRay returns the mask before its last update, so it ran one step more
    ours = extremal_perturbation(CentreSquare(), centre_square_images(2), 0, areas=area, steps=steps,
                                 perturbation="fade", step=1, sigma=sigma, levels=levels, jitter=False, fast=False)
    kept, theirs_kept = ours > 0.5, theirs["extremal"] > 0.5
    iou = (kept & theirs_kept).sum((1, 2)) / (kept | theirs_kept).sum((1, 2))
    assert iou.min() > 0.9, iou
    assert kept[:, 18:30, 18:30].float().mean() > 0.9 and theirs_kept[:, 18:30, 18:30].float().mean() > 0.9
