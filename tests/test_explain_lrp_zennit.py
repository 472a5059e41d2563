"""LRP's composites against Zennit's own (``zennit.composites``), which needs torchvision and so runs in the
separate venv that ``make peers`` builds (``.venv-peers``); skipped where that venv or Zennit is absent. Float64,
a random conv + BN + ReLU + max-pool + linear ``nn.Sequential`` (BatchNorm merged by Zennit's
``SequentialMergeBatchNorm``, by cnnlens's fold in the pass), gray and RGB, the output relevance
``one-hot * logit`` on both sides. Measured: equal to 1e-4 relative almost everywhere; a few pixels whose
gamma / alpha-beta sums lie near 0 differ by up to 1e-5 of the largest value (the 1e-6 stabiliser divides
rounding differences there). Average pooling is left out: Zennit's ``Norm`` rule stabilises it by 1e-6 where
cnnlens passes relevance on unstabilised (1e-3 relative apart where a pooled value is ~1e-3)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlens.explain.lrp import lrp

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".venv-peers" / "bin" / "python"
pytestmark = pytest.mark.skipif(
    not (ROOT / ".venv-peers" / ".installed").exists()
    or subprocess.run([str(PEERS), "-c", "import zennit"], capture_output=True).returncode != 0,
    reason="no .venv-peers with zennit (make peers builds it)")
TARGETS = [0, 3, 1]


def net(c: int) -> nn.Sequential:
    torch.manual_seed(c)
    model = nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 4)).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module", params=[1, 3], ids=["gray", "rgb"])
def zennit_maps(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    c = request.param
    model = net(c)
    images = torch.rand(3, c, 16, 16, generator=torch.Generator().manual_seed(20 + c), dtype=torch.float64)
    folder = tmp_path_factory.mktemp("zennit")
    torch.save({"model": model, "images": images, "targets": TARGETS}, folder / "in.pt")
    proc = subprocess.run([str(PEERS), str(ROOT / "tests" / "peers" / "zennit_peer.py"), str(folder / "in.pt"),
                           str(folder / "out.pt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model, images, torch.load(folder / "out.pt")


@pytest.mark.parametrize("composite", ["epsilon-plus-flat", "epsilon-gamma-box", "epsilon-plus", "epsilon-alpha2-beta1"])
def test_composites_equal_zennits(zennit_maps, composite):
    model, images, theirs = zennit_maps
    expected = theirs[composite]
    assert expected.abs().max() > 0
    for fast in (False, True):
        got = lrp(model, images, TARGETS, composite=composite, reduce=None, fast=fast)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
