"""The CAM family against pytorch-grad-cam (jacobgil's), which needs torchvision and so runs in the separate
venv that ``make peers`` builds (``.venv-peers``: torch 2.14.1, torchvision 0.29.1, grad-cam); torchvision must
never enter ``.venv``. Skipped where that venv is absent. Float64, the random conv + BN + residual models gray
and RGB, on the stem's map (the input's resolution, so that no side resizes); pytorch-grad-cam returns each
map after ReLU scaled to [0,1] (``(m - min) / (max + 1e-7)``), and cnnlens's maps are compared after the same.
Where the two differ by a documented choice the test says which:
- Eigen-CAM: pytorch-grad-cam centres the activations (cnnlens's ``center=True``) and keeps the SVD's sign.
- FullGrad: pytorch-grad-cam scales each channel of each part to [0,1] on its own and resizes with
  align_corners=False, the paper's code (and cnnlens) each part as a whole, with align_corners=True: the test
  rebuilds pytorch-grad-cam's map from cnnlens's parts (full_gradients).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from conftest import make_random_model

from cnnlens.explain import METHODS

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".venv-peers" / "bin" / "python"
#: ``make peers`` writes this once the venv is complete
pytestmark = pytest.mark.skipif(not (ROOT / ".venv-peers" / ".installed").exists(),
                                reason="no .venv-peers (make peers builds it)")
TARGETS = [0, 3, 6, 2]


@pytest.fixture(scope="module", params=[1, 3], ids=["gray", "rgb"])
def peer_maps(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    c = request.param
    model = make_random_model(in_channels=c, seed=40 + c).double()
    with torch.no_grad():  # gradients of order 1: the peer's eps (1e-6 beside Grad-CAM++'s g^2) then changes nothing
        model.fc.weight.mul_(1000)
    images = torch.rand(4, c, 16, 16, generator=torch.Generator().manual_seed(50 + c), dtype=torch.float64)
    folder = tmp_path_factory.mktemp("peers")
    torch.save({"args": (c, 7), "state": model.state_dict(), "images": images, "targets": TARGETS, "layer": "stem"},
               folder / "in.pt")
    proc = subprocess.run([str(PEERS), str(ROOT / "tests" / "peers" / "grad_cam_peer.py"), str(ROOT / "tests"),
                           str(folder / "in.pt"), str(folder / "out.pt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model, images, torch.load(folder / "out.pt")


def scaled(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's scaling of each map: ReLU, minus its minimum, over its maximum + 1e-7."""
    maps = maps.clamp(min=0)
    maps = maps - maps.flatten(1).amin(1).view(-1, 1, 1)
    return maps / (maps.flatten(1).amax(1).view(-1, 1, 1) + 1e-7)


@pytest.mark.parametrize("name", ["hires-cam", "ablation-cam", "grad-cam-pp", "xgrad-cam", "layer-cam", "score-cam"])
def test_cams_equal_pytorch_grad_cam(peer_maps, name):
    model, images, theirs = peer_maps
    ours = METHODS[name](model, images, TARGETS, layer="stem", upsample=False, fast=False)
    assert theirs[name].abs().max() > 0
    torch.testing.assert_close(scaled(ours), theirs[name], rtol=0, atol=1e-4)  # its maps are float32


def test_eigen_cam_equals_pytorch_grad_cam_centred_up_to_the_svds_sign(peer_maps):
    model, images, theirs = peer_maps
    raw = METHODS["eigen-cam"](model, images, layer="stem", upsample=False, relu=False, center=True, fast=False)
    for i in range(len(images)):
        err = min(float((scaled(s * raw[i : i + 1]) - theirs["eigen-cam"][i : i + 1]).abs().max()) for s in (1, -1))
        assert err < 1e-5, (i, err)


def test_full_grads_parts_are_pytorch_grad_cams_which_scales_each_channel_apart(peer_maps):
    # pytorch-grad-cam scales every channel of every part to [0,1] on its own (scale_accross_batch_and_channels),
    # the paper's code each part as a whole (cnnlens): built from cnnlens's parts its way, the maps are its maps
    from cnnlens.explain.full_grad import full_gradients

    model, images, theirs = peer_maps
    parts = full_gradients(model, images, TARGETS, fast=False)

    def per_channel(part: torch.Tensor) -> torch.Tensor:
        n, k = part.shape[:2]
        maps = torch.nn.functional.interpolate(scaled(part.abs().flatten(0, 1))[:, None], size=images.shape[2:],
                                               mode="bilinear", align_corners=False)[:, 0]
        return maps.reshape(n, k, *images.shape[2:]).sum(1)

    total = per_channel(parts.input) + sum(per_channel(p) for p in parts.biases if p.dim() == 4)
    torch.testing.assert_close(scaled(total), theirs["full-grad"], rtol=0, atol=1e-4)
    ours = scaled(METHODS["full-grad"](model, images, TARGETS, fast=False))
    assert (ours - theirs["full-grad"]).abs().max() > 1e-2  # and the two scalings do differ
