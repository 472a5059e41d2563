"""cnnlens's speed against the peers users would otherwise use (Captum, lime, torchcam), in one run.

    make bench                          # = python benchmarks/run.py: writes docs/benchmarks.md + benchmarks/results/
    python benchmarks/run.py --smoke    # tiny version (CI, < 60 s) into a temporary folder (or --out DIR)
    python benchmarks/run.py --threads 1 # on a shared machine: one thread, process CPU time
    python benchmarks/run.py --device cuda              # on a GPU: results/cuda.json, docs/benchmarks-cuda.md
    python benchmarks/run.py --models fer_mlp --methods occlusion,lime   # partial: results/cpu-fer_mlp-occlusion-lime.*

For every (model, method): each contestant is timed over interleaved repeats (so machine noise hits
every side alike) and its median time per image reported; ratios are peer / cnnlens within this run;
the outputs are compared (a faster wrong answer cannot count); the floor is the passes the method
needs times the measured time of one pass of the model at its best layout and batch size.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before any import of tqdm (lime draws a bar over its samples)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases as C  # noqa: E402
from models import faces, faces_uint8, make_model  # noqa: E402

from cnnlens._atomic import write_text  # noqa: E402
from cnnlens.explain import accel  # noqa: E402
from cnnlens.explain.core import input_gradient, to_channels_last  # noqa: E402
from cnnlens.explain.lime import lime_explain  # noqa: E402
from cnnlens.explain.occlusion import occlusion  # noqa: E402

ROOT = HERE.parent


# ---------------------------------------------------------------- configuration


def config(smoke: bool) -> dict:
    """What each model is measured on. Full: the issue's settings; smoke: a tiny model, everything small."""
    if smoke:
        return {
            "models": {"small_cnn": {"channels": 1, "side": 16, "small": True, "grad_images": 2, "multi_images": 1,
                                     "pert_images": 1, "grad_repeats": 1, "multi_repeats": 1, "pert_repeats": 1,
                                     "occlusion_stride": 1}},
            "sizes": C.Sizes(smoothgrad_samples=4, ig_steps=4, patch=3, lime_samples=40),
            "stream": {"counts": (48, 192), "batch_size": 16},
            "bf16": ["small_cnn"],
        }
    return {
        "models": {
            "small_cnn": {"channels": 1, "side": 48, "grad_images": 8, "multi_images": 2, "pert_images": 1,
                          "grad_repeats": 5, "multi_repeats": 3, "pert_repeats": 2, "occlusion_stride": 1},
            "vgg_fer": {"channels": 1, "side": 48, "grad_images": 8, "multi_images": 2, "pert_images": 1,
                        "grad_repeats": 3, "multi_repeats": 2, "pert_repeats": 2, "occlusion_stride": 1},
            # 128x128 at stride 1 is 15,376 windows (minutes per side): stride 4 (1,024 windows) keeps it short.
            "resnet18": {"channels": 3, "side": 128, "grad_images": 4, "multi_images": 1, "pert_images": 1,
                         "grad_repeats": 3, "multi_repeats": 1, "pert_repeats": 2, "occlusion_stride": 4},
            # Not a cnnlens architecture: conv-pool blocks, x.view(x.size(0), -1), a Linear head (models.FerMLP).
            "fer_mlp": {"channels": 1, "side": 48, "grad_images": 8, "multi_images": 2, "pert_images": 1,
                        "grad_repeats": 3, "multi_repeats": 2, "pert_repeats": 3, "occlusion_stride": 1},
        },
        "sizes": C.Sizes(),
        "stream": {"counts": (1795, 7178), "batch_size": 128},  # the FER2013 test split, and about a quarter
        "bf16": ["small_cnn", "vgg_fer", "resnet18"],
    }


# ---------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


#: Which clock the tables use: "cpu" (process CPU time: robust to other jobs on a shared machine, valid
#: with one thread) or "wall". Set in main().
CLOCK = {"kind": "wall"}


def clock(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds of ``fn()`` on the selected clock (wall and CPU both kept in ``LAST``) and its result."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    LAST["wall"], LAST["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    return LAST[CLOCK["kind"]], out


LAST: dict[str, float] = {}


def forward_gflop(model: torch.nn.Module, channels: int, side: int, device: torch.device) -> float:
    """Floating-point operations (2 x multiply-adds) of one image's forward pass in its convolutions and
    linear layers, in GFLOP: what the arithmetic peak bounds."""
    macs = [0]

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs[0] += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, torch.nn.Linear):
            macs[0] += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model(faces(1, channels, side).to(device))
    finally:
        for h in handles:
            h.remove()
    return 2 * macs[0] / 1e9


def matmul_gflops(device: torch.device) -> float:
    """Measured float32 GFLOP/s of a 1024^3 matrix product: the arithmetic peak a pass can approach."""
    a, b = torch.rand(1024, 1024, device=device), torch.rand(1024, 1024, device=device)
    best = min(clock(lambda: a @ b, device)[0] for _ in range(5))
    return 2 * 1024**3 / best / 1e9


def pass_time(model: torch.nn.Module, channels: int, side: int, device: torch.device, backward: bool,
              smoke: bool) -> dict:
    """Seconds per image of one forward (or forward + input-gradient) pass at the best layout and batch size.

    Also keeps the best of each layout: the contiguous one sets the peers' batching knobs.
    """
    sizes = (1, 4, 16) if smoke else ((1, 4, 16, 64) if device.type == "cpu" else (16, 64, 256, 1024))
    x1 = faces(1, channels, side).to(device)
    best: dict = {"seconds": float("inf")}
    for layout in ("contiguous", "channels_last"):
        m = accel.prepare(model, fold_bn=False, channels_last=layout == "channels_last")
        best[layout] = {"seconds": float("inf")}
        for bs in sizes:
            x = x1.expand(bs, -1, -1, -1).contiguous()
            if layout == "channels_last":
                x = to_channels_last(x)
            target = torch.zeros(bs, dtype=torch.long, device=device)
            if backward:
                def run() -> object:
                    return input_gradient(m, x, target)
            else:
                def run() -> object:
                    with torch.inference_mode():
                        return m(x)
            try:
                run()
            except RuntimeError as err:  # x.view(x.size(0), -1) on a channels-last map: the layout does not run
                best[layout] = {"seconds": float("inf"), "error": str(err).splitlines()[0]}
                break
            took = min(clock(run, device)[0] for _ in range(2 if smoke else 3)) / bs
            if took < best[layout]["seconds"]:
                best[layout] = {"seconds": took, "batch_size": bs}
            if took < best["seconds"]:
                best.update(seconds=took, layout=layout, batch_size=bs)
    return best


#: A case whose rounds are quick keeps going past its repeats until its rounds have taken this many seconds
#: (at most :data:`MAX_ROUNDS`): on these shared machines a slow streak of a second or two (4x slower calls,
#: no steal time shown) landed on one contestant of a three-round case of 20 ms calls and decided its ratio.
MIN_CASE_SECONDS = 4.0
MAX_ROUNDS = 31


def run_case(case: C.Case, repeats: int, device: torch.device, log: Callable[[str], None],
             min_seconds: float = MIN_CASE_SECONDS) -> dict:
    """Warm up every contestant, then time ``repeats`` interleaved rounds, more until they have taken
    ``min_seconds`` (:data:`MIN_CASE_SECONDS`; the smoke run: 0); compare outputs."""
    outputs: dict[int, torch.Tensor] = {}
    times: dict[int, list[float]] = {i: [] for i in range(len(case.contestants))}
    walls: dict[int, list[float]] = {i: [] for i in range(len(case.contestants))}
    for c in case.contestants:
        took, _ = clock(c.warmup or c.run, device)  # caches, measured batch sizes, allocator
        log(f"    warm-up {c.name} [{c.config}]: {took:.2f} s")
    r, spent = 0, 0.0
    while r < repeats or (spent < min_seconds and r < MAX_ROUNDS):
        order = list(range(len(case.contestants)))
        order = order[r % len(order):] + order[: r % len(order)]  # rotate: nobody always goes first
        for i in order:
            took, out = clock(case.contestants[i].run, device)
            spent += LAST["wall"]
            times[i].append(took)
            walls[i].append(LAST["wall"])
            outputs.setdefault(i, out)
        log(f"    round {r + 1}: " + ", ".join(f"{case.contestants[i].name} {times[i][-1]:.2f} s" for i in order))
        r += 1
    rows = []
    ours_default = next(i for i, c in enumerate(case.contestants) if c.side == "cnnlens" and c.default)
    for i, c in enumerate(case.contestants):
        row = {"name": c.name, "side": c.side, "config": c.config, "default": c.default,
               "seconds": times[i], "wall_seconds": walls[i], "per_image": statistics.median(times[i]) / case.images}
        if c.side == "peer":
            row["vs_cnnlens_default"] = C.max_diff(outputs[ours_default], outputs[i])
            fast = [j for j, d in enumerate(case.contestants) if d.side == "cnnlens" and not d.default]
            if fast:
                row["vs_cnnlens_fast"] = C.max_diff(outputs[fast[0]], outputs[i])
        rows.append(row)
    result = {"model": case.model, "method": case.method, "settings": case.settings, "images": case.images,
              "repeats": r, "passes": case.passes, "pass_kind": case.pass_kind, "contestants": rows,
              "notes": case.notes}
    if case.agreement is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result["agreement"] = case.agreement()
    if case.reference is not None:
        reference = case.reference()
        result["vs_float64"] = {f"{c.name} [{c.config}]": C.error_vs(outputs[i], reference)
                                for i, c in enumerate(case.contestants)}
    return result


def summarise(result: dict, floor_pass: float) -> dict:
    """Best times per side, ratios, floor, targets."""
    rows = result["contestants"]
    ours = {("fast" if not r["default"] else "default"): r["per_image"] for r in rows if r["side"] == "cnnlens"}
    peers = [r for r in rows if r["side"] == "peer"]
    s = {"cnnlens": ours.get("default"), "cnnlens_fast": ours.get("fast"),
         "cnnlens_best": min(ours.values()), "floor": result["passes"] * floor_pass}
    if peers:
        best = min(peers, key=lambda r: r["per_image"])
        default = min((r for r in peers if r["default"]), key=lambda r: r["per_image"])
        s.update({"peer_best": best["per_image"], "peer_best_name": f"{best['name']} [{best['config']}]",
                  "peer_default": default["per_image"], "peer_default_name": f"{default['name']} [{default['config']}]",
                  "speedup_vs_best_peer": best["per_image"] / s["cnnlens_best"],
                  "speedup_vs_peer_default": default["per_image"] / s["cnnlens_best"]})
        for key, label in (("vs_cnnlens_default", "max_rel_diff"), ("vs_cnnlens_fast", "max_rel_diff_fast")):
            diffs = [r[key]["max_rel_diff"] for r in peers if key in r]
            if diffs:
                s[label] = max(diffs)
        s["compared"] = "timed outputs"
        if "agreement" in result:  # the timed outputs differ by sampling: compare on equal samples instead
            s["max_rel_diff"] = result["agreement"]["max_rel_diff"]
            s.pop("max_rel_diff_fast", None)
            s["compared"] = result["agreement"]["compared"]
    s["vs_floor"] = s["cnnlens_best"] / s["floor"]
    return s


def targets_met(summary: dict, method: str, model: str, occlusion_incremental: bool) -> list[str]:
    """The issue's targets for this case, each as 'met' / 'MISSED' with the numbers."""
    out = []
    if "speedup_vs_best_peer" not in summary:
        return out
    sp = summary["speedup_vs_best_peer"]
    out.append(f"{'met' if sp >= 1 else 'MISSED'}: >= best peer ({sp:.2f}x)")
    if method in ("occlusion", "LIME"):
        d = summary["speedup_vs_peer_default"]
        out.append(f"{'met' if d >= 2 else 'MISSED'}: >= 2x peer default ({d:.2f}x)")
        f = summary["vs_floor"]
        out.append(f"{'met' if f <= 1.2 else 'MISSED'}: within 1.2x of floor ({f:.2f}x)")
    if method == "occlusion" and model == "small_cnn" and occlusion_incremental:
        out.append(f"{'met' if sp >= 5 else 'MISSED'}: >= 5x Captum's best via incremental occlusion ({sp:.2f}x)")
    if method in ("Score-CAM", "SS-CAM") and model == "small_cnn":  # forward-only: folded, channels-last, Winograd
        out.append(f"{'met' if sp >= 2 else 'MISSED'}: >= 2x torchcam's best batching ({sp:.2f}x)")
    if method == "RISE" and model == "small_cnn":  # forward-only: folded, channels-last, inference mode
        out.append(f"{'met' if sp >= 2 else 'MISSED'}: >= 2x the reference's best batching ({sp:.2f}x)")
    if method in ("occlusion", "LIME") and model == "fer_mlp":  # a flatten + Linear head (issue 12)
        out.append(f"{'met' if sp >= 3 else 'MISSED'}: >= 3x the best peer through the flatten head ({sp:.2f}x)")
    return out


# ---------------------------------------------------------------- bfloat16 and streaming


def bf16_report(name: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, sizes: C.Sizes, stride: int,
                device: torch.device) -> list[dict]:
    """Fast occlusion and LIME in float32 and bfloat16: time and agreement."""
    rows = []
    runs = {
        "occlusion": lambda p: occlusion(model, x, t, patch=sizes.patch, stride=stride, fast=True, precision=p),
    }
    if C._supports(lime_explain, "precision"):
        seg = C.segment_images(x, "slic")
        runs["LIME"] = lambda p: lime_explain(model, x, t, segmentation=seg, n_samples=sizes.lime_samples, fast=True,
                                              precision=p, generator=torch.Generator().manual_seed(0)).map()
    fwd32, fwd16 = accel.fast_forward(model), accel.fast_forward(model, precision="bfloat16")
    probe = faces(64, x.shape[1], x.shape[2], seed=9).to(device)
    logits32, logits16 = fwd32(probe), fwd16(probe)
    for method, run in runs.items():
        run("float32"), run("bfloat16")  # warm-up
        t32, m32 = clock(lambda: run("float32"), device)
        t16, m16 = clock(lambda: run("bfloat16"), device)
        agree = accel.precision_agreement(m32, m16, logits32, logits16)
        rows.append({"model": name, "method": method, "float32_s": t32 / len(x), "bfloat16_s": t16 / len(x),
                     "speedup": t32 / t16, **agree})
    return rows


def stream_report(cfg: dict, workdir: Path, device: str, smoke: bool, threads: int | None,
                  log: Callable[[str], None]) -> list[dict]:
    """Saliency then Grad-CAM over N and over ~4N images, each N in its own process (its peak RSS), fast path."""
    rows = []
    c, side = (1, 16) if smoke else (1, 48)
    for count in cfg["counts"]:
        path = workdir / f"images_{count}.npy"
        np.save(path, faces_uint8(count, c, side, seed=3))
        cmd = [sys.executable, str(HERE / "stream_probe.py"), "--images", str(path), "--methods", "saliency,grad-cam",
               "--out-dir", str(workdir), "--batch-size", str(cfg["batch_size"]), "--fast", "--device", device]
        cmd += (["--small"] if smoke else []) + (["--threads", str(threads)] if threads else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"stream probe failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        for line in proc.stdout.strip().splitlines():
            row = json.loads(line)
            log(f"  stream {row['method']} N={count}: {row['seconds']:.1f} s, {row['rate']:.0f} img/s, "
                f"peak RSS so far {row['peak_rss_mib']:.0f} MiB")
            rows.append(row)
        path.unlink()
    return rows


# ---------------------------------------------------------------- the run


def machine(device: torch.device) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(sorted({f for f in text.split() if f.startswith(("amx", "avx512_bf16"))}))
    except OSError:
        pass
    versions = {"torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("captum", "lime", "torchcam"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            try:
                from importlib.metadata import version
                versions[mod] = version(mod)
            except Exception:
                versions[mod] = "not installed"
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu_flags": flags,
            "platform": platform.platform(), "versions": versions, "device": str(device),
            "load_average_start": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build_cases(name: str, spec: dict, sizes: C.Sizes, device: torch.device, smoke: bool,
                methods: set[str] | None) -> tuple[list[tuple[str, Callable[[], tuple[C.Case, int]]]], dict]:
    """Per method, a maker of its case (built just before it runs), and the model's measured passes."""
    model = make_model(name, spec["channels"], spec["side"], small=spec.get("small", False), device=device)
    floors = {"fwd": pass_time(model, spec["channels"], spec["side"], device, False, smoke),
              "fwd+bwd": pass_time(model, spec["channels"], spec["side"], device, True, smoke)}
    peer_fwd = floors["fwd"]["contiguous"]["batch_size"]  # the peers' best batching: the model's own best
    peer_fb = floors["fwd+bwd"]["contiguous"]["batch_size"]
    xg = faces(spec["grad_images"], spec["channels"], spec["side"], seed=11).to(device)
    fast = accel.prepared(model, example=xg)  # the library's checked copy (its own layout where x.view needs it)
    xm, xp = xg[: spec["multi_images"]], xg[: spec["pert_images"]]
    with torch.no_grad():
        tg = model(xg).argmax(1)
    tm, tp = tg[: spec["multi_images"]], tg[: spec["pert_images"]]
    fb_batch = accel.tuned_batch_size(lambda b: input_gradient(fast, b, torch.zeros(len(b), dtype=torch.long,
                                                                                      device=device)),
                                      xg[:1], key=("fwd+bwd", *accel.architecture_key(model)))
    gr, mr, pr = spec["grad_repeats"], spec["multi_repeats"], spec["pert_repeats"]
    makers = {
        "saliency": lambda: (C.saliency_case(name, model, fast, xg, tg, sizes), gr),
        "smoothgrad": lambda: (C.smoothgrad_case(name, model, fast, xm, tm, sizes, fb_batch, peer_fb), mr),
        "guided-backprop": lambda: (C.guided_backprop_case(name, model, fast, xg, tg, sizes), gr),
        "integrated-gradients": lambda: (C.integrated_gradients_case(name, model, fast, xm, tm, sizes, fb_batch,
                                                                     peer_fb), mr),
        "input-x-gradient": lambda: (C.input_x_gradient_case(name, model, fast, xg, tg, sizes), gr),
        "deconvnet": lambda: (C.deconvnet_case(name, model, fast, xg, tg, sizes), gr),
        "deeplift": lambda: (C.deeplift_case(name, model, fast, xg, tg, sizes), gr),
        "lrp": lambda: (C.lrp_case(name, model, fast, xg, tg, sizes), gr),
        "deeplift-shap": lambda: (C.deeplift_shap_case(name, model, fast, xm, tm, sizes, fb_batch), mr),
        "gradient-shap": lambda: (C.gradient_shap_case(name, model, fast, xm, tm, sizes, fb_batch), mr),
        "blur-ig": lambda: (C.blur_ig_case(name, model, fast, xm, tm, sizes, fb_batch), mr),
        "guided-ig": lambda: (C.guided_ig_case(name, model, fast, xm, tm, sizes), mr),
        "xrai": lambda: (C.xrai_case(name, model, fast, xp, tp, sizes, fb_batch, peer_fb), pr),
        "vargrad": lambda: (C.noise_tunnel_case(name, model, fast, xm, tm, sizes, fb_batch, "vargrad"), mr),
        "smoothgrad-squared": lambda: (C.noise_tunnel_case(name, model, fast, xm, tm, sizes, fb_batch,
                                                           "smoothgrad_sq"), mr),
        "grad-cam": lambda: (C.grad_cam_case(name, model, xg, tg, sizes), gr),
        **{m: (lambda m=m: (C.cam_family_case(name, model, xg, tg, sizes, m, peer_fb), gr))
           for m in ("grad-cam-pp", "xgrad-cam", "layer-cam")},
        **{m: (lambda m=m: (C.cam_family_case(name, model, xp, tp, sizes, m, peer_fwd), pr))
           for m in ("score-cam", "ss-cam", "is-cam")},
        "occlusion": lambda: (C.occlusion_case(name, model, xp, tp, sizes, spec["occlusion_stride"], peer_fwd), pr),
        "lime": lambda: (C.lime_case(name, model, xp, tp, sizes, peer_fwd), pr),
        "rise": lambda: (C.rise_case(name, model, xp, tp, sizes, peer_fwd), pr),
        "kernel-shap": lambda: (C.kernel_shap_case(name, model, xp, tp, sizes, peer_fwd), pr),
        "feature-ablation": lambda: (C.feature_ablation_case(name, model, xp, tp, peer_fwd), pr),
    }
    cases = [(m, makers[m]) for m in makers if methods is None or m in methods]
    return cases, {"model": model, **floors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny version for CI (< 60 s), written to --out or a temporary folder")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for benchmarks.md and results/*.json (default: docs/ and benchmarks/results/)")
    parser.add_argument("--models", default=None, help="comma-separated subset of small_cnn,vgg_fer,resnet18,fer_mlp")
    parser.add_argument("--methods", default=None, help="comma-separated subset, e.g. occlusion,lime")
    parser.add_argument("--no-stream", action="store_true", help="skip the whole-dataset streaming measurement")
    parser.add_argument("--note", default="", help="a line of context written under the machine description")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="time measure (default: process CPU time with one thread on CPU, else wall time)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; --smoke: 1, so it is robust to a busy machine)")
    args = parser.parse_args(argv)
    # as the cnnlens command does (cnnlens._allocator): freed heap memory is kept for every contestant alike
    retained = accel.retain_freed_memory()
    threads = args.threads or (1 if args.smoke else None)
    if threads:
        torch.set_num_threads(threads)
        from threadpoolctl import threadpool_limits  # numpy/scipy BLAS (lime's ridge) on as many threads

        threadpool_limits(threads)
    if args.smoke and args.out is None:  # the smoke run never overwrites docs/benchmarks.md
        args.out = Path(tempfile.mkdtemp(prefix="cnnlens-bench-smoke-"))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    CLOCK["kind"] = args.clock or ("cpu" if torch.get_num_threads() == 1 and device.type == "cpu" else "wall")

    cfg = config(args.smoke)
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - set(cfg["models"]))
        if unknown:
            parser.error(f"unknown model(s) {unknown}; choose from {', '.join(cfg['models'])}")
        cfg["models"] = {k: v for k, v in cfg["models"].items() if k in wanted}
    methods = set(args.methods.split(",")) if args.methods else None
    tag = "smoke" if args.smoke else device.type
    doc_path = (args.out / "benchmarks.md") if args.out else ROOT / "docs" / (
        "benchmarks.md" if device.type == "cpu" else f"benchmarks-{device.type}.md")
    json_path = (args.out / "results" / f"{tag}.json") if args.out else HERE / "results" / f"{tag}.json"
    if (args.models or args.methods) and args.out is None:  # a partial run never replaces the full run's files
        tag = "-".join([device.type, *(args.models or "all").split(","), *(args.methods or "all").split(",")])
        doc_path, json_path = HERE / "results" / f"{tag}.md", HERE / "results" / f"{tag}.json"

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    info = machine(device)
    info["clock"] = CLOCK["kind"]
    info["retain_freed_memory"] = retained
    info["note"] = args.note
    info["matmul_gflops"] = matmul_gflops(device)
    info["cnnlens_source"] = str(Path(sys.modules["cnnlens"].__file__).parent)
    log(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['versions']['torch']}, load {info['load_average_start']}")
    results, floors = [], {}
    bf16_rows: list[dict] = []
    for name, spec in cfg["models"].items():
        log(f"{name}: building cases")
        model_cases, measured = build_cases(name, spec, cfg["sizes"], device, args.smoke, methods)
        model = measured.pop("model")
        floors[name] = measured
        floors[name]["gflop"] = forward_gflop(model, spec["channels"], spec["side"], device)
        log(f"{name}: one pass = {floors[name]['fwd']['seconds'] * 1e3:.2f} ms fwd, "
            f"{floors[name]['fwd+bwd']['seconds'] * 1e3:.2f} ms fwd+bwd per image")
        incremental = C.plan_reason(model, faces(1, spec["channels"], spec["side"]).to(device)) is None
        for method, make_case in model_cases:
            case, repeats = make_case()
            log(f"{name} / {case.method}: {len(case.contestants)} contestants x {repeats} repeats")
            res = run_case(case, repeats, device, log, 0.0 if args.smoke else MIN_CASE_SECONDS)
            s = summarise(res, floors[name][case.pass_kind]["seconds"])
            s["targets"] = targets_met(s, case.method, name, incremental)
            res["summary"] = s
            results.append(res)
            log(f"  cnnlens {s['cnnlens_best'] * 1e3:.1f} ms/img; best peer "
                f"{s.get('peer_best', float('nan')) * 1e3:.1f} ms/img; floor {s['floor'] * 1e3:.1f}; {s['targets']}")
        if name in cfg["bf16"] and (methods is None or {"occlusion", "lime"} & methods):
            xp = faces(1, spec["channels"], spec["side"], seed=11).to(device)
            with torch.no_grad():
                tp = model(xp).argmax(1)
            bf16_rows += bf16_report(name, model, xp, tp, cfg["sizes"], spec["occlusion_stride"], device)
            log(f"{name}: bfloat16 {bf16_rows[-1]}")
    stream_rows: list[dict] = []
    if not args.no_stream:
        with tempfile.TemporaryDirectory() as tmp:
            stream_rows = stream_report(cfg["stream"], Path(tmp), args.device, args.smoke, threads, log)
    info["load_average_end"] = os.getloadavg()
    info["seconds"] = time.perf_counter() - started
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command.strip(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": info, "floors": floors, "results": results, "bfloat16": bf16_rows,
               "stream": stream_rows, "smoke": args.smoke, "stream_side": 16 if args.smoke else 48,
               "titles": {name: f"{name} ({'narrow, ' if spec.get('small') else ''}{spec['channels']}x{spec['side']}"
                                f"x{spec['side']})" for name, spec in cfg["models"].items()}}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(json_path, json.dumps(payload, indent=1, default=str))
    from report import render

    write_text(doc_path, render(payload, json_path))
    log(f"wrote {doc_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
