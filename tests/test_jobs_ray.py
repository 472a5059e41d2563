"""Dataset jobs on Ray: bit-identical to the local engine, and a real two-node cluster losing a worker process,
then the whole worker node, mid-job.

Slow (Ray starts processes); every cluster is bounded (one CPU per node, a small object store) and torn down
by the test, also on failure, by the process ids it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from cnnlens.explain import accel  # noqa: E402
from cnnlens.jobs import explain_dataset, load_explanations  # noqa: E402
from cnnlens.jobs.shards import SHARDS  # noqa: E402

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
#: Every process of these tests: no usage reports, no token files (a test cluster on localhost).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}
METHODS = "saliency,smoothgrad"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder (small_cnn, one epoch on 60 synthetic faces): actors load it by its path."""
    from cnnlens.data.synth import write_faces
    from cnnlens.train import TrainConfig, train

    root = tmp_path_factory.mktemp("rayjob")
    write_faces(root / "faces", 60, seed=1)
    train(TrainConfig(data=f"synth:{root / 'faces'}", epochs=1, batch_size=16, val_fraction=0.4, device="cpu",
                      num_threads=1), root / "run", progress=False)
    return root / "run"


def _model_and_images() -> tuple[torch.nn.Module, torch.Tensor]:
    from cnnlens.models.small_cnn import SmallCNN  # importable by the workers (a test's own class is not)

    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=4).eval()
    x = (torch.rand(14, 1, 24, 24, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    return model, x


def test_ray_engine_on_a_local_cluster_is_bit_identical_to_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    model, x = _model_and_images()
    kw = {"shard_size": 5, "scores": ["deletion"], "options": {"smoothgrad": {"n_samples": 4}}}
    with accel.deterministic():  # torch runs 1 thread here (conftest), as each actor does
        local = explain_dataset(model, x, ["saliency", "grad-cam", "smoothgrad"], out=tmp_path / "local", **kw)
        # batches of 4 rows cut across the shards of 5: each image's bits must not depend on its batch
        ray = explain_dataset(model, x, ["saliency", "grad-cam", "smoothgrad"], out=tmp_path / "ray", engine="ray",
                              workers=2, batch_size=4, **kw)
    assert (local.computed, ray.computed, ray.shards) == (14, 14, 3)
    a, b = load_explanations(tmp_path / "local"), load_explanations(tmp_path / "ray")
    assert a.manifest["model"] == b.manifest["model"] and a.manifest["work"] == b.manifest["work"]
    assert b.ids.tolist() == list(range(14))
    for m in a.maps:
        assert np.array_equal(a.maps[m], b.maps[m]), m
    for s in a.scores:
        assert np.array_equal(a.scores[s], b.scores[s]), s
    assert np.array_equal(a.probabilities, b.probabilities) and np.array_equal(a.targets, b.targets)
    runs = b.manifest["runs"]
    assert runs[-1]["engine"] == "ray" and runs[-1]["workers"] == 2 and runs[-1]["cluster_cpus"] >= 2


# ------------------------------------------------------------------------------- a real two-node cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports() -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--runtime-env-agent-port", "--metrics-export-port")
    return [a for name in names for a in (name, str(_free_port()))]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += tree.get(p, [])
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for(text: str, log: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"ray start did not report {text!r} in {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def two_node_cluster() -> Iterator[tuple[str, subprocess.Popen]]:
    """``ray start --head`` and a second worker node on localhost, 1 CPU and an 80 MB object store each;
    yields (address, the worker node's process). Torn down by process id, every process either started."""
    temp = Path(tempfile.mkdtemp(prefix="/tmp/cl-ray"))  # Unix socket paths must stay short
    env = {**os.environ, **RAY_ENV}
    port = _free_port()
    bounded = ["--num-cpus", "1", "--object-store-memory", str(80 * 2**20), "--disable-usage-stats", "--block"]
    started: list[subprocess.Popen] = []
    pids: set[int] = set()
    ready = "will now block forever"
    try:
        head_log = temp / "head.log"
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port", str(port), "--temp-dir", str(temp),
                                 "--include-dashboard", "false", "--ray-client-server-port", str(_free_port()), *_ports(),
                                 *bounded], env=env, stdout=head_log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append(head)
        _wait_for(ready, head_log, head)
        address = f"{_node_ip(head_log)}:{port}"
        worker_log = temp / "worker.log"
        worker = subprocess.Popen([str(BIN / "ray"), "start", "--address", address, *_ports(), *bounded], env=env,
                                  stdout=worker_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        started.append(worker)
        _wait_for(ready, worker_log, worker)
        yield address, worker
    finally:
        for proc in started:
            pids.update(_descendants(proc.pid))  # raylet, gcs, agents and workers (some in their own groups)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in sorted(pids, reverse=True):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            if sig == signal.SIGTERM:
                time.sleep(2)
        for proc in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def _node_ip(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if "ray start --address=" in line:
            return line.split("--address=")[1].strip().strip("'\"").rsplit(":", 1)[0]
    return "127.0.0.1"


def _explain(run_dir: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "cnnlens"), "explain", str(run_dir), "--split", "train", "--methods", METHODS,
            "-o", "smoothgrad.n_samples=16", "--out", str(out), "--shard-size", "3", *extra]


def test_two_node_cluster_loses_a_worker_then_a_node_mid_job_without_missing_or_duplicated_images(run_dir: Path,
                                                                                      tmp_path: Path) -> None:
    env = {**os.environ, **RAY_ENV, "CNNLENS_DETERMINISTIC": "1", "OMP_NUM_THREADS": "1"}  # 1 thread, as each actor
    subprocess.run(_explain(run_dir, tmp_path / "local", "--engine", "local"), env=env, check=True,
                   capture_output=True, timeout=300)
    reference = load_explanations(tmp_path / "local")
    n_shards = reference.manifest["n_shards"]
    out = tmp_path / "ray"
    with two_node_cluster() as (address, worker_node):
        cmd = _explain(run_dir, out, "--engine", "ray", "--ray-address", address, "--workers", "2")
        job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            killed, done_at_kill, node_killed_at = None, None, None
            end = time.monotonic() + 240
            while node_killed_at is None and job.poll() is None and time.monotonic() < end:
                shards = list((out / SHARDS).glob("part-*.parquet")) if (out / SHARDS).is_dir() else []
                actors = [p for p in _descendants(worker_node.pid) if "MapWorker" in _cmdline(p)]
                if killed is None and shards and actors:  # under way, and the second node runs one of its actors
                    done_at_kill = len(shards)
                    os.kill(actors[0], signal.SIGKILL)  # one worker process: Ray restarts the actor, retries its batch
                    killed = actors[0]
                elif killed is not None and len(shards) >= done_at_kill + 2 and actors and len(shards) < n_shards:
                    node_killed_at = len(shards)  # then the whole node (raylet, agents, the restarted actor)
                    for pid in _descendants(worker_node.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
            output, _ = job.communicate(timeout=300)
        finally:
            if job.poll() is None:
                job.kill()
        assert killed is not None, f"no actor of the job ran on the worker node:\n{output[-3000:]}"
        assert done_at_kill is not None and done_at_kill < n_shards, "the job ended before the kill"
        print(f"killed actor {killed} with {done_at_kill}/{n_shards} shards written, the worker node with "
              f"{node_killed_at}; the job {'finished on its own' if job.returncode == 0 else 'failed and is resumed'}")
        if job.returncode != 0:  # Ray could not recover: the same command resumes from the shards written
            again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
            output += again.stdout
    assert "computed" in output
    got = load_explanations(out)
    assert got.ids.tolist() == list(range(len(reference.ids)))  # none missing, none twice
    assert len(set(got.names)) == len(got.names) and got.names == reference.names
    for m in reference.maps:
        assert np.array_equal(got.maps[m], reference.maps[m]), m
    assert np.array_equal(got.probabilities, reference.probabilities)
    assert sorted(p.name for p in (out / SHARDS).iterdir()) == [f"part-{k:06d}.parquet" for k in range(n_shards)]
