"""kill -9 of the real commands while they write: afterwards the output folder is the old one, byte for byte,
or a complete new one (every entry its marker lists, and its JSON readable), never a mix; and the next
run there removes what the kill left.

Each command runs as its own process on a run imported from ``zoo_models``,
so the process can load the model; it is killed at random moments between its start and its measured
duration, so some kills land while the new folder is being written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zoo_models

TESTS = Path(__file__).parent
FER = "angry,disgust,fear,happy,sad,surprise,neutral"
MARKER = ".cnnlens-output.json"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def complete(folder: Path) -> bool:
    """A whole cnnlens output: its marker lists exactly its entries, and every JSON file in it parses."""
    marker = json.loads((folder / MARKER).read_text())
    entries = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    for p in folder.rglob("*.json"):
        json.loads(p.read_text())
    return entries == sorted(marker["files"])


def temporaries(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob(".*") if p.name.endswith((".tmp", ".old")))


def cnnlens(*args: object) -> list[str]:
    return [sys.executable, "-c", "import sys; from cnnlens.cli import main; sys.argv[0] = 'cnnlens'; main()",
            *map(str, args)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    from click.testing import CliRunner

    from cnnlens.cli import main
    from cnnlens.data.synth import write_faces

    root = tmp_path_factory.mktemp("kills")
    write_faces(root / "faces", 60, seed=4)
    torch.save(zoo_models.build_sequential(size=16).state_dict(), root / "net.pt")
    res = CliRunner().invoke(main, ["import", "--model", "zoo_models:build_sequential", "--builder-kwargs",
                                    '{"size": 16}', "--weights", str(root / "net.pt"), "--classes", FER,
                                    "--input-shape", "1,16,16", "--out", str(root / "run")])
    assert res.exit_code == 0, res.output
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return root, env


#: command -> its arguments before --out (root = the test folder: run/, faces/).
COMMANDS = {
    "evaluate": lambda r: ["evaluate", r / "run", "--data", f"synth:{r / 'faces'}"],
    "explain": lambda r: ["explain", r / "run", "--data", f"synth:{r / 'faces'}", "--methods", "saliency,occlusion",
                          "--images", "0,1,2,3"],
    "report": lambda r: ["report", r / "run", "--data", f"synth:{r / 'faces'}", "--methods", "saliency,grad-cam",
                         "--average-methods", "none", "--filter-layers", "none", "--no-progress"],
    "faithfulness": lambda r: ["faithfulness", r / "run", "--data", f"synth:{r / 'faces'}", "--methods",
                               "saliency,grad-cam", "--n-images", "20", "--n-randomization-images", "2"],
    "data synth": lambda r: ["data", "synth", "--n", "300"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_kill_9_of_a_real_command_leaves_the_old_or_a_complete_new_output(name: str, setup, tmp_path: Path) -> None:
    root, env = setup
    out = tmp_path / "out"
    args = [*COMMANDS[name](root), "--out", out, "--overwrite"]
    started = time.perf_counter()
    first = subprocess.run(cnnlens(*args), env=env, capture_output=True, text=True, timeout=300)
    duration = time.perf_counter() - started
    assert first.returncode == 0, first.stderr
    assert complete(out)
    rng = random.Random(hash(name) % 1000)
    for _ in range(3):
        old = snapshot(out)
        proc = subprocess.Popen(cnnlens(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 1.0) * duration)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert snapshot(out) == old or complete(out), name  # never a mix
    again = subprocess.run(cnnlens(*args), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert complete(out) and temporaries(tmp_path) == []  # what the kills left is gone
