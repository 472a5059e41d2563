"""cnnlens._allocator: glibc keeps freed heap memory once asked (measured by page faults, in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnlens._allocator import retain_freed_memory

PROBE = """
import json, resource, sys, torch
from cnnlens._allocator import retain_freed_memory
took = retain_freed_memory() if sys.argv[1] == "on" else None
faults, f0 = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(14):
    blocks = [torch.ones(6 << 20) for _ in range(3)]  # 3 x 24 MiB live at once (heap, not mmap), then freed
    float(sum(b.sum() for b in blocks))
    del blocks
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    faults.append(f1 - f0)
    f0 = f1
print(json.dumps({"took": took, "faults": faults}))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux")
def test_freed_memory_is_kept_once_asked():
    on = _probe("on")
    if on["took"] is False:
        pytest.skip("not glibc: retain_freed_memory leaves the allocator as it was")
    assert on["took"] is True
    # the same 72 MiB allocated and freed 14 times. glibc's default here: 12,256 page faults in every round after
    # the second (the heap handed back each time); kept: none in most rounds, a 24 MiB block's 6,144 in a few
    assert sum(on["faults"][2:]) < 4 * 6144, on["faults"]
    assert on["faults"][0] > 10_000  # the probe itself did touch fresh memory: it can fail


def test_a_system_without_glibc_is_left_as_it_was(monkeypatch):
    from cnnlens import _allocator

    monkeypatch.setattr(_allocator.sys, "platform", "darwin")
    assert retain_freed_memory() is False  # nothing called: the allocator is left as it was


def test_the_cnnlens_command_keeps_freed_memory(monkeypatch):
    from click.testing import CliRunner

    from cnnlens import _allocator
    from cnnlens.cli import main

    calls: list[bool] = []
    monkeypatch.setattr(_allocator, "retain_freed_memory", lambda on=True: calls.append(on) or True)
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0, result.output
    assert calls == [True]
