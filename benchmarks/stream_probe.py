"""Child process of the benchmark: stream methods over a .npy of images, print time and peak memory.

Run in its own process so that its peak resident memory measures these streams alone. Prints one JSON
line per method; ``peak_rss_mib`` is the peak so far.

    python benchmarks/stream_probe.py --images faces.npy --methods saliency,grad-cam --out-dir /tmp/maps
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import make_model  # noqa: E402

from cnnlens.explain.stream import stream_explain  # noqa: E402


def peak_rss_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` on Linux. Not ``ru_maxrss``: Linux carries the parent's
    peak into a forked child's, so a probe started from a 3 GB benchmark process would read 3 GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", required=True, help=".npy of uint8 [N,C,H,W] images")
    parser.add_argument("--methods", default="saliency,grad-cam")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="the smoke benchmark's tiny model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, c, h, w = np.load(args.images, mmap_mode="r").shape
    model = make_model(args.model, c, h, small=args.small, device=args.device)
    before = peak_rss_mib()
    for method in args.methods.split(","):
        out = Path(args.out_dir) / f"maps_{method}_{n}.npy"
        result = stream_explain(model, args.images, method, out=out, batch_size=args.batch_size, fast=args.fast,
                                device=args.device)
        peak = peak_rss_mib()
        maps = np.load(out, mmap_mode="r")
        ok = maps.shape == (n, h, w) and bool(np.isfinite(maps[-1]).all())
        print(json.dumps({"n": int(n), "method": method, "seconds": result.seconds, "rate": result.images_per_second,
                          "peak_rss_mib": peak, "rss_before_streams_mib": before, "ok": ok,
                          "threads": torch.get_num_threads()}), flush=True)
        del maps
        out.unlink()
        result.targets.unlink()


if __name__ == "__main__":
    main()
