"""The benchmark's tiny version runs end to end, measures every method against its peers, and finds the
same answers as they do (agreement is what makes a speed comparison count). Not a timed test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Captum 0.9's DeepLift drops its max-pool rule behind an nn.ReLU module (tests/test_explain_reference.py).
CAPTUM_LOSES_MAX_POOL_RULE = {"DeepLIFT", "DeepLiftShap"}

pytest.importorskip("captum")
pytest.importorskip("lime")


@pytest.mark.slow
def test_smoke_benchmark_writes_tables_and_agrees_with_the_peers(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, check=False, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "results" / "smoke.json").read_text())
    methods = {r["method"] for r in payload["results"]}
    assert methods == {"saliency", "SmoothGrad", "guided backprop", "integrated gradients", "input x gradient",
                       "deconvnet", "DeepLIFT", "DeepLiftShap", "GradientSHAP", "Blur IG", "Guided IG", "XRAI", "VarGrad", "SmoothGrad-Squared", "Grad-CAM",
                       "Grad-CAM++", "XGrad-CAM", "Layer-CAM", "Score-CAM", "SS-CAM", "IS-CAM", "occlusion", "LIME",
                       "RISE", "KernelSHAP", "feature ablation", "LRP"}
    for result in payload["results"]:
        s = result["summary"]
        assert s["cnnlens_best"] > 0 and s["floor"] > 0
        assert any(c["side"] == "peer" for c in result["contestants"]), result["method"]
        # Same inputs, same answers: the deterministic methods agree to float rounding; SmoothGrad with the
        # same noise draws; LIME with lime's masks given to cnnlens's scoring and ridge.
        # DeepLIFT: Captum 0.9 loses its max-pool rule behind an nn.ReLU module, as these models have
        # (tests/test_explain_reference.py): cnnlens is checked against its own float64 computation below.
        if result["method"] not in CAPTUM_LOSES_MAX_POOL_RULE:
            # KernelSHAP: Captum holds the two constraints by a weight of 1e6 and fits in float32 (1.3e-3 on the
            # smoke model's 62 segments; 1.8e-4 on the full run; the float64 unit tests: 1e-4)
            assert s["max_rel_diff"] < (1e-2 if result["method"] == "KernelSHAP" else 1e-4), (result["method"], s["max_rel_diff"])
        else:
            assert result.get("vs_float64"), f"{result['method']} is checked against float64"
        # Against the same method in float64, every side is right on all but a few values (max-pool near-ties
        # may route a pixel's gradient differently under another float32 rounding: see the benchmark's doc).
        for name, err in result.get("vs_float64", {}).items():
            if result["method"] in CAPTUM_LOSES_MAX_POOL_RULE and name.startswith("Captum"):
                continue  # its max-pool rule is lost, see above
            assert err["frac_off"] < 0.01, (result["method"], name, err)
    doc = (tmp_path / "benchmarks.md").read_text()
    assert "| occlusion |" in doc and "| LIME |" in doc and "measured apart in the peers' venv" in doc
    assert "## Whole datasets" in doc and "## Opt-in bfloat16" in doc
    stream = {(r["method"], r["n"]): r for r in payload["stream"]}
    assert {n for _, n in stream} == {48, 192} and all(r["ok"] for r in stream.values())
    assert not (ROOT / "docs" / "benchmarks-smoke.md").exists()
