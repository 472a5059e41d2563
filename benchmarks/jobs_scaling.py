"""Dataset jobs (cnnlens.jobs): images/s of the local engine and of Ray with 1 and 2 workers, Ray's overhead,
and memory per worker against the number of images.

Each configuration runs in its own process (so that its memory is its own): small_cnn (benchmarks/models.py,
calibrated random weights) on synthetic 48x48 faces, written as Parquet shards to a temporary folder.
Reported per run: wall time (including, for Ray, starting a local cluster and its actors), the driver's peak resident memory (VmHWM) and, for Ray, the largest resident memory any actor process reached
and CPU seconds (sampled every 0.2 s), and the driver's CPU seconds. Ray's fixed cost (cluster, actors,
their model and probe pass) is the wall time of a run of a few images (``--images 16``); the shards' write
times are no rate for Ray, which delivers finished rows in bursts. Writes JSON lines to --out and prints a Markdown table.

    python benchmarks/jobs_scaling.py                     # ~5 minutes on 2 cores
    python benchmarks/jobs_scaling.py --images 128 --memory-images 256,1024   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _vmhwm_mib(pid: str = "self") -> float:
    for key in ("VmHWM:", "VmRSS:"):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        except OSError:
            return 0.0
    return 0.0


def _descendants(root: int) -> list[int]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out += tree.get(p, [])
        todo += tree.get(p, [])
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ActorMemory(threading.Thread):
    """Samples the resident memory of this process's Ray actor processes (``MapWorker`` in their command line)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for pid in _descendants(os.getpid()):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"MapWorker" in cmd:
                    self.peak[pid] = max(self.peak.get(pid, 0.0), _vmhwm_mib(str(pid)))
                    self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_seconds(pid))


def child(config: dict) -> dict:
    import torch

    from models import faces_uint8, make_model

    from cnnlens.jobs import explain_dataset

    torch.set_num_threads(1)  # one core per worker, the local engine too
    model = make_model("small_cnn", 1, 48)
    x = torch.from_numpy(faces_uint8(config["images"], 1, 48, seed=3))
    methods = config["methods"].split(",")
    options = {"smoothgrad": {"n_samples": config["smoothgrad_samples"]}}
    mem = ActorMemory()
    mem.start()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = explain_dataset(model, x, methods, out=Path(tmp) / "job", options=options, shard_size=config["shard_size"],
                              batch_size=config["batch_size"], engine=config["engine"], workers=config["workers"])
        wall = time.perf_counter() - t0
    mem.stop.set()
    mem.join()
    return {**config, "wall_s": round(wall, 2), "images_per_s_wall": round(res.n_images / wall, 2),
            "driver_peak_mib": round(_vmhwm_mib(), 1),
            "actor_peak_mib": round(max(mem.peak.values()), 1) if mem.peak else None, "actors_seen": len(mem.peak),
            "actor_cpu_s": [round(v, 1) for v in mem.cpu.values()], "driver_cpu_s": round(_cpu_seconds(os.getpid()), 1),
            "load_before": config.get("load_before"), "load_after": round(os.getloadavg()[0], 2)}


def run(config: dict) -> dict:
    config = {**config, "load_before": round(os.getloadavg()[0], 2)}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)], capture_output=True, text=True,
                         env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=192, help="images of the scaling runs")
    parser.add_argument("--repeats", type=int, default=2, help="times each scaling configuration runs")
    parser.add_argument("--methods", default="grad-cam,smoothgrad")
    parser.add_argument("--smoothgrad-samples", type=int, default=4)
    parser.add_argument("--memory-images", default="256,2048", help="image counts of the memory runs (grad-cam only)")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "jobs-scaling.jsonl")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    base = {"methods": args.methods, "smoothgrad_samples": args.smoothgrad_samples, "shard_size": args.shard_size,
            "batch_size": args.batch_size}
    configs = [{**base, "engine": engine, "workers": workers, "images": args.images, "kind": "scaling", "repeat": r}
               for r in range(args.repeats) for engine, workers in (("local", 1), ("ray", 1), ("ray", 2))]
    for n in (int(v) for v in args.memory_images.split(",") if v.strip()):
        for engine in ("local", "ray"):
            configs.append({**base, "methods": "grad-cam", "images": n, "engine": engine, "workers": 1, "kind": "memory"})
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        for config in configs:
            row = run(config)
            row["date"] = time.strftime("%Y-%m-%d %H:%M")
            rows.append(row)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            print(json.dumps(row), file=sys.stderr)
    print("| kind | engine | workers | methods | images | wall s | images/s | driver CPU s | actor CPU s | "
          "driver peak MiB | actor peak MiB | load avg before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['engine']} | {r['workers']} | {r['methods']} | {r['images']} | {r['wall_s']} | "
              f"{r['images_per_s_wall']} | {r['driver_cpu_s']} | {' + '.join(map(str, r['actor_cpu_s'])) or '-'} | "
              f"{r['driver_peak_mib']} | {r['actor_peak_mib'] or '-'} | {r['load_before']} / {r['load_after']} |")


if __name__ == "__main__":
    main()
