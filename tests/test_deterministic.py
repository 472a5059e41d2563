"""Deterministic mode: no choice is timed, so two processes compute bit-identical maps; clear_caches."""

from __future__ import annotations


import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_random_model
from torch import nn

from cnnlens import explain
from cnnlens.explain import accel, lime, occlusion
from cnnlens.explain.accel import tuning, winograd
from cnnlens.explain.accel.incremental import conv_layer

from cnnlens.explain.accel import copies

TESTS = Path(__file__).parent

MAPS = textwrap.dedent("""
    import hashlib, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from conftest import make_random_model
    from cnnlens.explain import is_deterministic, lime, occlusion, rise, score_cam

    model = make_random_model(3, num_classes=5, seed=1)
    x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    maps = [lime(model, x, None, n_samples=64, generator=torch.Generator().manual_seed(0)),
            occlusion(model, x, None, patch=4, stride=2, fill="mean"),
            score_cam(model, x, None), rise(model, x, None, n_masks=64)]  # through the local plan's scorer
    print(is_deterministic(), *(hashlib.sha256(m.contiguous().numpy().tobytes()).hexdigest() for m in maps))
""")


def _maps_digest() -> str:
    env = {**os.environ, "CNNLENS_DETERMINISTIC": "1"}
    out = subprocess.run([sys.executable, "-c", MAPS, str(TESTS)], env=env, capture_output=True, text=True, check=True,
                         timeout=300)
    return out.stdout.strip()


def test_two_processes_give_bit_identical_lime_occlusion_score_cam_and_rise_maps() -> None:
    first, second = _maps_digest(), _maps_digest()
    assert first.startswith("True ") and len(first.split()) == 5
    assert first == second


def _timing_forbidden(*args: object, **kwargs: object) -> float:
    raise AssertionError("deterministic mode timed something")


def test_deterministic_mode_never_times_and_uses_the_fixed_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "seconds_per_item", _timing_forbidden)
    monkeypatch.setattr(winograd, "seconds_per_item", _timing_forbidden)
    model = make_random_model(1, num_classes=4, seed=3)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    explain.clear_caches()
    with pytest.raises(AssertionError, match="timed something"):  # the default measures: the patch is in its way
        accel.tuned_batch_size(lambda b: None, x[:1], key=("toy",))
    with explain.deterministic():
        assert explain.is_deterministic()
        lime(model, x, None, n_samples=40, generator=torch.Generator().manual_seed(0))
        occlusion(model, x, None, patch=4, stride=4)
        assert accel.tuned_batch_size(lambda b: None, x[:1], key=("toy",)) == accel.DETERMINISTIC_BATCH["cpu"] == 16
        assert accel.tuned_batch_size(lambda b: None, x[:1], key=("toy",), candidates=(8, 32, 64)) == 8  # nearest
        assert accel.fast_scorer(model, x[:1])[1] == 16
        layer = conv_layer(nn.Conv2d(3, 4, 3, padding=1))
        assert winograd.faster(layer, (8, 3, 8, 8)) is layer  # the direct convolution, untimed
    assert not explain.is_deterministic() and tuning._TUNED == {}  # nothing measured was cached
    explain.clear_caches()


def test_switch_environment_and_context_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "_deterministic", None)
    monkeypatch.delenv("CNNLENS_DETERMINISTIC", raising=False)
    assert not explain.is_deterministic()
    for value, on in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("CNNLENS_DETERMINISTIC", value)
        assert explain.is_deterministic() is on
    monkeypatch.setenv("CNNLENS_DETERMINISTIC", "1")
    explain.set_deterministic(False)  # the call wins over the environment
    assert not explain.is_deterministic()
    with explain.deterministic():
        assert explain.is_deterministic()
        with explain.deterministic(False):
            assert not explain.is_deterministic()
        assert explain.is_deterministic()
    assert not explain.is_deterministic()
    explain.set_deterministic(None)  # back to the environment
    assert explain.is_deterministic()
    with pytest.raises(TypeError, match="set_deterministic takes True, False or None"):
        explain.set_deterministic("yes")  # type: ignore[arg-type]


def test_clear_caches_empties_every_process_wide_cache() -> None:
    model = make_random_model(1, num_classes=4, seed=5)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    accel.fast_scorer(model, x[:1])  # a prepared copy and a measured batch size
    conv = nn.Conv2d(3, 4, 3, padding=1)
    winograd._MADE[conv] = winograd.WinogradConv(conv)
    winograd._CHOSEN[("toy",)] = True
    assert tuning._TUNED and len(copies._PREPARED) and winograd._CHOSEN and len(winograd._MADE)
    explain.clear_caches()
    assert not tuning._TUNED and not len(copies._PREPARED) and not winograd._CHOSEN and not len(winograd._MADE)
