"""HiResCAM, Ablation-CAM, Eigen-CAM, FullGrad (and Grad-CAM++, XGrad-CAM, Layer-CAM) against pytorch-grad-cam,
in the peers' venv.

pytorch-grad-cam needs torchvision, which must never enter ``.venv``; ``make peers`` builds ``.venv-peers``
(torch 2.14.1, torchvision 0.29.1, grad-cam), where cnnlens's source runs as it is:

    PYTHONPATH=src .venv-peers/bin/python benchmarks/peers_cams.py --threads 1
    PYTHONPATH=src .venv-peers/bin/python benchmarks/peers_cams.py --models small_cnn --methods eigen-cam --threads 1

Both sides therefore run on torch 2.14.1 here (the main benchmark's .venv has 2.13.0). Same method as
``benchmarks/run.py`` (whose measuring functions this imports): the same models, weights and images, every
contestant warmed up, then interleaved rounds, process CPU time with one thread, ratios within the run.
pytorch-grad-cam always returns each map ReLU'd, upsampled to the input (cv2 bilinear, half-pixel centres) and
scaled to [0,1] (``(m - min) / (max + 1e-7)``): cnnlens's timed call returns the same (its map, upsampled,
then that scaling), so that both produce what the user looks at and the timed outputs are compared directly.
Writes ``benchmarks/results/peers-cams-cpu-<models>.json`` and ``.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before any import of tqdm (AblationCAM draws a bar per image)

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases as C  # noqa: E402
import run as R  # noqa: E402
from models import faces, make_model  # noqa: E402
from report import ms as _ms  # noqa: E402  (milliseconds, as the main doc writes them)

from cnnlens._atomic import write_text  # noqa: E402
from cnnlens.explain import METHODS, accel  # noqa: E402
from cnnlens.explain.core import default_cam_layer  # noqa: E402
from cnnlens.explain.feature_maps import feature_maps  # noqa: E402
from cnnlens.explain.full_grad import full_gradients  # noqa: E402

METHOD_NAMES = ("hires-cam", "ablation-cam", "eigen-cam", "full-grad", "grad-cam-pp", "xgrad-cam", "layer-cam")
LABELS = {"hires-cam": "HiResCAM", "ablation-cam": "Ablation-CAM", "eigen-cam": "Eigen-CAM", "full-grad": "FullGrad",
          "grad-cam-pp": "Grad-CAM++", "xgrad-cam": "XGrad-CAM", "layer-cam": "Layer-CAM"}
#: The one-pass gradient CAMs: cnnlens method -> pytorch-grad-cam class name.
GRADIENT_CAMS = {"hires-cam": "HiResCAM", "grad-cam-pp": "GradCAMPlusPlus", "xgrad-cam": "XGradCAM",
                 "layer-cam": "LayerCAM"}


def scaled(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's scaling of each map: ReLU, minus its minimum, over its maximum + 1e-7."""
    maps = maps.clamp(min=0)
    maps = maps - maps.flatten(1).amin(1).view(-1, 1, 1)
    return maps / (maps.flatten(1).amax(1).view(-1, 1, 1) + 1e-7)


def pgc_run(cls: type, model: torch.nn.Module, layer: torch.nn.Module | None, x: torch.Tensor, t: torch.Tensor,
            **attrs: object) -> torch.Tensor:
    """pytorch-grad-cam's documented use: hooks live for the ``with`` block (construction is timed too)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in t]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with cls(model=model, target_layers=[] if layer is None else [layer]) as cam:
            for key, value in attrs.items():
                setattr(cam, key, value)
            return torch.from_numpy(cam(input_tensor=x, targets=targets))


def pgc_full_grad_from_parts(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's FullGrad map rebuilt from cnnlens's parts (:func:`full_gradients`): every channel of
    every part scaled to [0,1] on its own, resized with align_corners=False (what its ``FullGrad`` does; the
    paper's code and cnnlens scale each part as a whole), summed, then scaled."""
    parts = full_gradients(model, x, t, fast=False)

    def per_channel(part: torch.Tensor) -> torch.Tensor:
        n, k = part.shape[:2]
        maps = torch.nn.functional.interpolate(scaled(part.abs().flatten(0, 1))[:, None], size=x.shape[2:],
                                               mode="bilinear", align_corners=False)[:, 0]
        return maps.reshape(n, k, *x.shape[2:]).sum(1)

    total = per_channel(parts.input) + sum(per_channel(p) for p in parts.biases if p.dim() == 4)
    return scaled(total)


def pgc_case(name: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, method: str,
             peer_batch: int) -> C.Case:
    """One method against pytorch-grad-cam's class on cnnlens's default CAM layer (FullGrad: every bias)."""
    from pytorch_grad_cam import AblationCAM, EigenCAM, FullGrad

    fn = METHODS[method]
    layer = default_cam_layer(model, x)
    module = dict(model.named_modules())[layer]
    notes = [f"layer {layer!r} (cnnlens's default CAM layer), maps upsampled to the input and scaled to [0,1] on "
             "both sides (pytorch-grad-cam's output)"] if method != "full-grad" else \
        ["every Conv2d / BatchNorm2d bias on both sides; maps at the input's resolution"]
    cam_kw = {"layer": layer} if method != "full-grad" else {}
    agreement = None

    def ours(fast: bool = True, **kw: object) -> torch.Tensor:
        return scaled(fn(model, x, t, fast=fast, **cam_kw, **kw))

    if method == "eigen-cam":
        def ours_centred(fast: bool = True) -> torch.Tensor:
            return scaled(fn(model, x, t, fast=fast, center=True, **cam_kw))

        cs = [C.Contestant("cnnlens", "cnnlens", ours, "default (the paper's uncentred SVD)", default=True),
              C.Contestant("cnnlens", "cnnlens", ours_centred, "center=True (pytorch-grad-cam's centring)")]
    else:
        cs = [C.Contestant("cnnlens", "cnnlens", ours, "default", default=True),
              C.Contestant("cnnlens", "cnnlens", lambda: ours(False), "fast=False (the model itself)")]
    if method in GRADIENT_CAMS:
        import pytorch_grad_cam

        cls = getattr(pytorch_grad_cam, GRADIENT_CAMS[method])
        cs.append(C.Contestant(f"pytorch-grad-cam {GRADIENT_CAMS[method]}", "peer",
                               lambda: pgc_run(cls, model, module, x, t), "default", default=True))
        passes, kind = 1, "fwd+bwd"
        if method == "grad-cam-pp":
            def agreement() -> dict[str, float | str]:
                # its alpha adds 1e-6 to the denominator 2 g^2 + sum(A) g^3: with the logits scaled by 1000
                # (gradients of order 1, as in tests/test_explain_cams_peers.py) that changes nothing
                big = copy.deepcopy(model)
                with torch.no_grad():
                    big.fc.weight.mul_(1000)
                    big.fc.bias.mul_(1000)
                mine = scaled(fn(big, x, t, layer=layer, fast=False))
                return {**C.max_diff(mine, pgc_run(cls, big, dict(big.named_modules())[layer], x, t)),
                        "compared": "logits x 1000 (its eps 1e-6 beside g^2 then negligible)"}
            notes.append("pytorch-grad-cam adds 1e-6 to alpha's denominator, comparable to g^2 on these logits: the "
                         "timed maps differ by that; the agreement scales the logits by 1000")
    elif method == "ablation-cam":
        cs.append(C.Contestant("pytorch-grad-cam AblationCAM", "peer",
                               lambda: pgc_run(AblationCAM, model, module, x, t), "default (batch_size=32)",
                               default=True))
        if peer_batch != 32:
            cs.append(C.Contestant("pytorch-grad-cam AblationCAM", "peer",
                                   lambda: pgc_run(AblationCAM, model, module, x, t, batch_size=peer_batch),
                                   f"batch_size={peer_batch}"))
        k = feature_maps(model, x[:1], [layer])[layer].shape[1]
        passes, kind = k + 1, "fwd"

        def agreement() -> dict[str, float | str]:
            # the paper's ablation on the peer's side too: its AblationLayer puts min - 1e7 where the layer's
            # minimum is not 0 (a convolution's signed output), this one zeroes always
            from pytorch_grad_cam.ablation_layer import AblationLayer

            class Zeroing(AblationLayer):
                def __call__(self, _x: torch.Tensor) -> torch.Tensor:
                    for i in range(self.activations.size(0)):
                        self.activations[i, self.indices[i], :] = 0
                    return self.activations

            theirs = pgc_run(AblationCAM, model, module, x, t, ablation_layer=Zeroing())
            return {**C.max_diff(ours(), theirs), "compared": "pytorch-grad-cam with an AblationLayer that zeroes"}
        notes.append(f"{k} channels: one ablated pass each per image; pytorch-grad-cam ablates with 0 where the "
                     "layer's minimum is 0, else with min - 1e7 (cnnlens: 0, the paper's)")
    elif method == "eigen-cam":
        cs.append(C.Contestant("pytorch-grad-cam EigenCAM", "peer", lambda: pgc_run(EigenCAM, model, module, x, t),
                               "default", default=True))
        passes, kind = 1, "fwd"

        def agreement() -> dict[str, float | str]:
            # pytorch-grad-cam centres and keeps whichever sign the SVD gives: cnnlens centred, each image's
            # better sign; the ReLU at the layer's resolution, then upsampled (as both sides do)
            from cnnlens.explain.core import upsample

            raw = fn(model, x, layer=layer, center=True, relu=False, upsample=False, fast=False)
            theirs = pgc_run(EigenCAM, model, module, x, t)
            best = torch.stack([min((scaled(upsample((s * raw[i:i + 1]).clamp(min=0), tuple(x.shape[2:])))
                                     for s in (1, -1)),
                                    key=lambda m, i=i: float((m - theirs[i:i + 1]).abs().max()))[0]
                                for i in range(len(x))])
            return {**C.max_diff(best, theirs), "compared": "center=True, the SVD's sign per image"}
        notes.append("pytorch-grad-cam centres the activations (cnnlens's center=True) and keeps the SVD's sign")
    else:
        passes, kind = 1, "fwd+bwd"
        try:
            pgc_run(FullGrad, model, None, x[:1], t[:1])
        except ValueError as err:  # it pairs the biases in registration order with the gradients in call order
            notes.append(f"pytorch-grad-cam's FullGrad fails on this model ({str(err).splitlines()[0]}): it takes "
                         "the biases in the order the layers are registered, the gradients in the order they run")
            return C.Case(name, LABELS[method], "all biases", len(x), cs, passes, kind, None, notes)
        cs.append(C.Contestant("pytorch-grad-cam FullGrad", "peer", lambda: pgc_run(FullGrad, model, None, x, t),
                               "default", default=True))

        def agreement() -> dict[str, float | str]:
            return {**C.max_diff(pgc_full_grad_from_parts(model, x, t), pgc_run(FullGrad, model, None, x, t)),
                    "compared": "pytorch-grad-cam's map rebuilt from cnnlens's parts (it scales each channel "
                                "of each part apart)"}
        notes.append("pytorch-grad-cam scales each channel of each part to [0,1] on its own, the paper's code "
                     "and cnnlens each part as a whole: the timed maps differ by that; the agreement rebuilds "
                     "its map from cnnlens's parts")
    return C.Case(name, LABELS[method], f"layer {layer}" if method != "full-grad" else "all biases", len(x), cs,
                  passes, kind, agreement, notes)


def render(payload: dict) -> str:
    info = payload["machine"]
    lines = [f"Command: `{payload['command']}` ({payload['date']}); {info['cpu']}, torch {info['versions']['torch']}, "
             f"grad-cam {payload['grad_cam']}, {info['torch_threads']} thread(s), clock {info['clock']}, load "
             f"{tuple(round(v, 1) for v in info['load_average_start'])} -> "
             f"{tuple(round(v, 1) for v in info['load_average_end'])}.", "",
             "| model | method | settings | cnnlens | cnnlens (other) | pytorch-grad-cam default | best | speedup vs "
             "best | floor | max rel diff | compared |", "|" + "---|" * 11]
    for r in payload["results"]:
        s, rows = r["summary"], r["contestants"]
        other = next((x for x in rows if x["side"] == "cnnlens" and not x["default"]), None)
        lines.append(
            f"| {r['model']} | {r['method']} | {r['settings']} | {_ms(s['cnnlens'])} | "
            f"{_ms(other['per_image']) + ' (' + other['config'] + ')' if other else '-'} | "
            f"{_ms(s.get('peer_default'))} | {_ms(s.get('peer_best'))} ({s.get('peer_best_name', '-')}) | "
            f"{s.get('speedup_vs_best_peer', float('nan')):.2f}x | {_ms(s['floor'])} | "
            f"{s.get('max_rel_diff', float('nan')):.1e} | {s.get('compared', '-')} |")
    lines.append("")
    lines.append("Milliseconds per image; speedup = pytorch-grad-cam's best / cnnlens's best, in the same run.")
    for r in payload["results"]:
        for note in r["notes"]:
            lines.append(f"- {r['model']} / {r['method']}: {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small_cnn,vgg_fer,fer_mlp")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    accel.retain_freed_memory()  # as benchmarks/run.py and the cnnlens command: for every contestant alike
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits  # numpy's SVD (pytorch-grad-cam's Eigen-CAM) on as many threads

    threadpool_limits(args.threads)
    R.CLOCK["kind"] = "cpu" if args.threads == 1 else "wall"
    device = torch.device("cpu")
    all_models = R.config(False)["models"]
    models = args.models.split(",")
    methods = args.methods.split(",")
    bad = sorted(set(models) - set(all_models)) + sorted(set(methods) - set(METHOD_NAMES))
    if bad:
        parser.error(f"unknown {bad}; models {list(all_models)}, methods {list(METHOD_NAMES)}")
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    from importlib.metadata import version

    info = R.machine(device)
    info["clock"] = R.CLOCK["kind"]
    log(f"machine: {info['cpu']}, torch {torch.__version__}, grad-cam {version('grad-cam')}, load {info['load_average_start']}")
    results, floors = [], {}
    for name in models:
        spec = all_models[name]
        model = make_model(name, spec["channels"], spec["side"], device=device)
        floors[name] = {k: R.pass_time(model, spec["channels"], spec["side"], device, k == "fwd+bwd", False)
                        for k in ("fwd", "fwd+bwd")}
        peer_fwd = floors[name]["fwd"]["contiguous"]["batch_size"]
        xg = faces(spec["grad_images"], spec["channels"], spec["side"], seed=11).to(device)
        with torch.no_grad():
            tg = model(xg).argmax(1)
        xp, tp = xg[: spec["pert_images"]], tg[: spec["pert_images"]]
        log(f"{name}: one pass {floors[name]['fwd']['seconds'] * 1e3:.2f} ms fwd, "
            f"{floors[name]['fwd+bwd']['seconds'] * 1e3:.2f} ms fwd+bwd per image")
        for method in methods:
            x, t, repeats = (xp, tp, spec["pert_repeats"]) if method == "ablation-cam" else \
                (xg, tg, spec["grad_repeats"])
            case = pgc_case(name, model, x, t, method, peer_fwd)
            log(f"{name} / {case.method}: {len(case.contestants)} contestants x {repeats} repeats")
            res = R.run_case(case, repeats, device, log)
            res["summary"] = s = R.summarise(res, floors[name][case.pass_kind]["seconds"])
            results.append(res)
            log(f"  cnnlens {s['cnnlens_best'] * 1e3:.2f} ms/img; best peer {s.get('peer_best', float('nan')) * 1e3:.2f}"
                f" ms/img ({s.get('speedup_vs_best_peer', float('nan')):.2f}x); max rel diff {s.get('max_rel_diff')}")
        accel.clear_caches()
    info["load_average_end"] = os.getloadavg()
    info["seconds"] = time.perf_counter() - started
    payload = {"command": "PYTHONPATH=src .venv-peers/bin/python benchmarks/peers_cams.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": info, "grad_cam": version("grad-cam"), "floors": floors, "results": results}
    tag = "-".join(["peers-cams-cpu", *models, *(methods if tuple(methods) != METHOD_NAMES else [])])
    out = HERE / "results" / tag
    write_text(out.with_suffix(".json"), json.dumps(payload, indent=1, default=str))
    write_text(out.with_suffix(".md"), render(payload))
    log(f"wrote {out}.json and .md")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
