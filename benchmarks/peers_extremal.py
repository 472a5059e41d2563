"""Extremal perturbations against TorchRay's ``extremal_perturbation``, in the peers' venv.

TorchRay (the paper's authors' code) imports torchvision, which must never enter ``.venv``; it runs in
``.venv-peers`` (``make peers``), where cnnlens's source runs as it is:

    PYTHONPATH=src .venv-peers/bin/python benchmarks/peers_extremal.py --threads 1

Both sides run on that venv's torch. Same method as ``benchmarks/run.py`` (whose measuring functions this
imports): the same models, weights and images, warm-ups, interleaved rounds, process CPU time with one
thread, ratios within the run. Both get the same settings: one area (0.1), ``--steps`` optimisation steps
(TorchRay's default is 800: the cost per step is what is compared), the mirror jitter, cnnlens's
parameter step and kernel scaled to the image, TorchRay's fixed blur of 20 pixels. TorchRay explains one
image per call (its interface); cnnlens every image at once. The masks cannot agree to rounding: the two
place the parameter grid differently (cell centres against cell corners) and TorchRay's area term also
counts a margin around the image; they are compared by rank correlation and the overlap of what each keeps.
Writes ``benchmarks/results/peers-extremal-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases as C  # noqa: E402
import run as R  # noqa: E402
from models import faces, make_model  # noqa: E402
from report import ms as _ms  # noqa: E402  (milliseconds, as the main doc writes them)

from cnnlens._atomic import write_text  # noqa: E402
from cnnlens._ranks import rank_correlation  # noqa: E402
from cnnlens.explain import accel, extremal_perturbation  # noqa: E402
from cnnlens.explain.extremal import REFERENCE_SIDE, REFERENCE_SIGMA, REFERENCE_STEP  # noqa: E402

AREA = 0.1
TORCHRAY_BLUR = 20.0  # fixed inside TorchRay's extremal_perturbation (its Perturbation's default)


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of the pixels each mask keeps (> 0.5), averaged over images."""
    ka, kb = a > 0.5, b > 0.5
    return float(((ka & kb).flatten(1).sum(1) / (ka | kb).flatten(1).sum(1).clamp(min=1)).mean())


def extremal_case(name: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, steps: int) -> C.Case:
    from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_ep

    side = min(x.shape[2:])
    step = max(1, round(REFERENCE_STEP * side / REFERENCE_SIDE))
    sigma = REFERENCE_SIGMA * side / REFERENCE_SIDE
    kw = dict(areas=AREA, steps=steps, step=step, sigma=sigma, max_blur=TORCHRAY_BLUR)

    def ours(fast: bool = True) -> torch.Tensor:
        return extremal_perturbation(model, x, t, fast=fast, **kw)

    def theirs() -> torch.Tensor:
        masks = [torchray_ep(model, x[i:i + 1], int(t[i]), areas=[AREA], max_iter=steps, step=step, sigma=sigma)[0]
                 for i in range(len(x))]
        for p in model.parameters():  # TorchRay switches them off and leaves them so
            p.requires_grad_(True)
        return torch.cat(masks)[:, 0]

    def agreement() -> dict[str, float | str]:
        a, b = ours(), theirs()
        rho = float(rank_correlation(a.flatten(1).double(), b.flatten(1).double()).mean())
        return {"max_rel_diff": float("nan"),
                "compared": f"Spearman {rho:.2f}, kept-pixel IoU {overlap(a, b):.2f} (grids placed differently)"}

    cs = [C.Contestant("cnnlens", "cnnlens", ours, "default (all images at once)", default=True),
          C.Contestant("cnnlens", "cnnlens", lambda: ours(False), "fast=False (the model itself)"),
          C.Contestant("TorchRay extremal_perturbation", "peer", theirs, "one image per call", default=True)]
    notes = [f"area {AREA}, {steps} steps, parameter step {step} px, kernel sigma {sigma:.1f} px, blur {TORCHRAY_BLUR} "
             "px, jitter on both sides"]
    return C.Case(name, "extremal perturbation", f"{steps} steps", len(x), cs, steps, "fwd+bwd", agreement, notes)


def render(payload: dict) -> str:
    info = payload["machine"]
    lines = [f"Command: `{payload['command']}` ({payload['date']}); {info['cpu']}, torch {info['versions']['torch']}, "
             f"{info['torch_threads']} thread(s), clock {info['clock']}, load "
             f"{tuple(round(v, 1) for v in info['load_average_start'])} -> "
             f"{tuple(round(v, 1) for v in info['load_average_end'])}.", "",
             "| model | settings | images | cnnlens | cnnlens fast=False | TorchRay | speedup | floor | masks compared |",
             "|" + "---|" * 9]
    for r in payload["results"]:
        s, rows = r["summary"], r["contestants"]
        other = next(x for x in rows if x["side"] == "cnnlens" and not x["default"])
        lines.append(f"| {r['model']} | {r['settings']} | {r['images']} | {_ms(s['cnnlens'])} | "
                     f"{_ms(other['per_image'])} | {_ms(s.get('peer_best'))} | "
                     f"{s.get('speedup_vs_best_peer', float('nan')):.2f}x | {_ms(s['floor'])} | {s.get('compared')} |")
    lines += ["", "Milliseconds per image; speedup = TorchRay's time / cnnlens's best, in the same run; floor = the "
              "steps times one forward + backward pass at the model's best batch."]
    for r in payload["results"]:
        lines += [f"- {r['model']}: {note}" for note in r["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small_cnn,vgg_fer,fer_mlp")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    accel.retain_freed_memory()  # as benchmarks/run.py and the cnnlens command: for every contestant alike
    torch.set_num_threads(args.threads)
    R.CLOCK["kind"] = "cpu" if args.threads == 1 else "wall"
    device = torch.device("cpu")
    all_models = R.config(False)["models"]
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    info = R.machine(device)
    info["clock"] = R.CLOCK["kind"]
    results, floors = [], {}
    for name in args.models.split(","):
        spec = all_models[name]
        model = make_model(name, spec["channels"], spec["side"], device=device)
        floors[name] = R.pass_time(model, spec["channels"], spec["side"], device, True, False)
        x = faces(args.images, spec["channels"], spec["side"], seed=11)
        with torch.no_grad():
            t = model(x).argmax(1)
        case = extremal_case(name, model, x, t, args.steps)
        res = R.run_case(case, args.repeats, device, log)
        res["summary"] = s = R.summarise(res, floors[name]["seconds"])
        results.append(res)
        log(f"{name}: cnnlens {s['cnnlens_best'] * 1e3:.0f} ms/img, TorchRay {s['peer_best'] * 1e3:.0f} ms/img "
            f"({s['speedup_vs_best_peer']:.2f}x); {s['compared']}")
        accel.clear_caches()
    info["load_average_end"] = os.getloadavg()
    info["seconds"] = time.perf_counter() - started
    payload = {"command": "PYTHONPATH=src .venv-peers/bin/python benchmarks/peers_extremal.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": info, "floors": floors, "results": results}
    out = HERE / "results" / "peers-extremal-cpu"
    write_text(out.with_suffix(".json"), json.dumps(payload, indent=1, default=str))
    write_text(out.with_suffix(".md"), render(payload))
    log(f"wrote {out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
