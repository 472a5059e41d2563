"""Feature visualisation benchmark (issue 14): are the synthetic images readable?

1. Planted filters: a model whose only conv holds hand-set 7x7 filters (edges at 0/45/90 degrees, a
   centre-surround blob, a checkerboard); how well the image that maximises each filter's mean activation
   shows that filter's pattern: the normalised cross-correlation of every 7x7 patch of the image with the
   planted filter, its maximum and 90th percentile (a pattern that tiles the image scores high at many
   places; one lucky patch of noise does not), for naive pixel ascent and the readable default; and the
   same numbers after 16 ... 512 steps, to choose the default number of steps.
2. Deep layers of the demo model (a trained run): the share of spectral energy in the upper half of the
   frequencies (radius > 1/4 cycle per pixel, the mean removed), data vs naive vs readable images.
3. Strength and cost: the share of chosen filters whose synthetic neuron image reaches the peak
   activation of the best dataset exemplar, and seconds per layer for 8 filters (one thread).

    .venv/bin/python benchmarks/feature_vis.py --run /tmp/demo-run/run --out benchmarks/results/feature_vis.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.explain.activation_max import activation_maximization
from cnnlens.explain.exemplars import choose_filters, dataset_exemplars

SIZE = 48


def planted_kernels(k: int = 7) -> dict[str, torch.Tensor]:
    """Zero-mean, unit-norm k x k filters: step edges at 0, 45 and 90 degrees, a difference of Gaussians,
    a one-pixel checkerboard."""
    r = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    dist2 = yy**2 + xx**2
    kernels = {
        "edge 0": torch.tanh(2 * yy),
        "edge 45": torch.tanh(2 * (yy + xx) / math.sqrt(2)),
        "edge 90": torch.tanh(2 * xx),
        "centre-surround": torch.exp(-dist2 / 2) - 0.5 * torch.exp(-dist2 / 8),
        "checkerboard": (-1.0) ** (yy + xx + k - 1),
    }
    out = {}
    for name, w in kernels.items():
        w = w - w.mean()
        out[name] = (w / w.norm()).float()
    return out


def planted_model() -> nn.Sequential:
    """conv(1 -> 5, 7x7, padding 3) with the planted filters, ReLU, global average pool, linear head."""
    kernels = planted_kernels()
    conv = nn.Conv2d(1, len(kernels), 7, padding=3)
    with torch.no_grad():
        conv.weight.copy_(torch.stack(list(kernels.values()))[:, None])
        conv.bias.zero_()
    torch.manual_seed(0)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(len(kernels), 2)).eval()


def pattern_correlation(image: torch.Tensor, kernel: torch.Tensor) -> tuple[float, float]:
    """Max and 90th percentile over positions of the Pearson correlation between the image's k x k patches
    and ``kernel`` (patches of a constant region count as 0)."""
    k = kernel.shape[-1]
    patches = F.unfold(image[None, None].double(), k)[0].T  # [P, k*k]
    patches = patches - patches.mean(1, keepdim=True)
    norm = patches.norm(dim=1)
    w = kernel.flatten().double()
    ncc = torch.where(norm > 1e-6, patches @ (w / w.norm()) / norm.clamp_min(1e-12), torch.zeros_like(norm))
    return float(ncc.max()), float(torch.quantile(ncc, 0.9))


def high_frequency_share(images: torch.Tensor) -> float:
    """Mean over images of the share of spectral energy (mean removed, all channels) at radius > 1/4 cycle/pixel."""
    x = images.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(1)  # [N,H,W]
    fy = torch.fft.fftfreq(x.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)[None, :]
    high = torch.sqrt(fy**2 + fx**2) > 0.25
    total = power.sum((1, 2)).clamp_min(1e-30)
    return float(((power * high).sum((1, 2)) / total).mean())


NAIVE = {"parameterization": "pixel", "transforms": None}
READABLE: dict = {}


def planted(steps_list: list[int]) -> dict:
    model = planted_model()
    kernels = planted_kernels()
    units = list(range(len(kernels)))
    rows = {}
    for label, options in (("naive", NAIVE), ("readable", READABLE)):
        for steps in steps_list:
            res = activation_maximization(model, "1", units, input_shape=(1, SIZE, SIZE), steps=steps,
                                          generator=torch.Generator().manual_seed(0), **options)
            scores = {name: pattern_correlation(res.images[i, 0], w) for i, (name, w) in enumerate(kernels.items())}
            rows[f"{label} {steps}"] = {"max": {n: round(s[0], 3) for n, s in scores.items()},
                                        "p90": {n: round(s[1], 3) for n, s in scores.items()},
                                        "activation": [round(float(a), 3) for a in res.activation]}
    return rows


#: The naive setting of the report before issue 14: 32 pixel steps at lr 0.1 with a one-pixel roll.
OLD_REPORT = {"parameterization": "pixel", "transforms": None, "steps": 32, "lr": 0.1, "jitter": 1}


def planted_neuron(steps_list: list[int]) -> dict:
    """The neuron objective on the planted filters: the centre neuron of each filter's map sees one 7x7 patch,
    and under the [0,1] box its maximiser is the filter's sign pattern (1 where w > 0, 0 where w < 0) at
    exactly that place, a direct test. Per method: the Pearson correlation of the image's 7x7 receptive-field
    crop with the planted filter (the sign pattern's own correlation with it is the ceiling), and the share
    of the highest reachable activation ``sum(max(w, 0))`` that the image reaches."""
    model = planted_model()
    kernels = planted_kernels()
    units = list(range(len(kernels)))
    w = torch.stack(list(kernels.values())).double()  # [5,7,7]
    best = w.clamp_min(0).flatten(1).sum(1)
    sign = (w > 0).double()
    ceiling = {n: round(float(torch.corrcoef(torch.stack([sign[i].flatten(), w[i].flatten()]))[0, 1]), 3) for i, n in enumerate(kernels)}
    out: dict = {"ceiling (sign pattern)": ceiling}
    settings = [("naive, old report (32 steps, lr 0.1, roll 1)", OLD_REPORT)]
    settings += [(f"naive {n} steps (lr 0.05)", {**NAIVE, "steps": n}) for n in steps_list]
    settings += [(f"readable {n} steps", {**READABLE, "steps": n}) for n in steps_list]
    for label, options in settings:
        res = activation_maximization(model, "1", units, objective="neuron", input_shape=(1, SIZE, SIZE),
                                      generator=torch.Generator().manual_seed(0), **options)
        r, c = res.position
        crops = res.images[:, 0, r - 3 : r + 4, c - 3 : c + 4].double()  # the 7x7 field of the centre neuron (padding 3)
        corr = {n: round(float(torch.corrcoef(torch.stack([crops[i].flatten(), w[i].flatten()]))[0, 1]), 3) for i, n in enumerate(kernels)}
        share = {n: round(float(res.activation[i]) / float(best[i]), 3) for i, n in enumerate(kernels)}
        out[label] = {"correlation": corr, "activation share of the maximum": share}
    return out


def deep(run_dir: str, steps: int, layers: list[str], sweep_steps: list[int]) -> dict:
    from cnnlens.train import load_run

    run = load_run(run_dir, device="cpu")
    model, data = run.model, run.dataset("val")
    images = data.float_images(range(min(len(data), 512)))
    out = {"data high-frequency share": round(high_frequency_share(images), 4)}
    for layer in layers:
        t0 = time.perf_counter()
        ex = dataset_exemplars(model, layer, (data.float_images(range(i, min(i + 128, len(data)))) for i in range(0, len(data), 128)))
        exemplar_s = time.perf_counter() - t0
        choice = choose_filters(ex, 8)
        units = list(choice.units)
        row = {"filters": units, "rule": choice.reason, "exemplar pass s": round(exemplar_s, 2),
               "best exemplar peak": [round(float(v), 3) for v in ex.values[units, 0]],
               "exemplar crop high-frequency share": round(high_frequency_share(ex.crops[units, 0]), 4)}
        for label, options in (("naive", NAIVE), ("readable", READABLE)):
            for objective in ("channel", "neuron"):
                t0 = time.perf_counter()
                res = activation_maximization(model, layer, units, objective=objective, input_shape=tuple(data.input_shape),
                                              steps=steps, generator=torch.Generator().manual_seed(0), **options)
                seconds = time.perf_counter() - t0
                r, c = (s // 2 for s in ex.field.output)
                crops = torch.stack([ex.field.crop(im, r, c) for im in res.images])
                row[f"{label} {objective}"] = {
                    "seconds": round(seconds, 2),
                    "high-frequency share (whole image)": round(high_frequency_share(res.images), 4),
                    "high-frequency share (field crop)": round(high_frequency_share(crops), 4),
                    "activation": [round(float(a), 3) for a in res.activation],
                    "peak": [round(float(a), 3) for a in res.peak],
                    "share reaching best exemplar": sum(float(a) >= float(v) for a, v in zip(res.peak if objective == "channel" else res.activation, ex.values[units, 0])) / len(units),
                }
        sweep = {}
        for n in sweep_steps:  # where the readable neuron images stop improving
            t0 = time.perf_counter()
            res = activation_maximization(model, layer, units, objective="neuron", input_shape=tuple(data.input_shape),
                                          steps=n, generator=torch.Generator().manual_seed(0))
            seconds = time.perf_counter() - t0
            r, c = (s // 2 for s in ex.field.output)
            crops = torch.stack([ex.field.crop(im, r, c) for im in res.images])
            sweep[n] = {"seconds": round(seconds, 2), "mean activation": round(float(res.activation.mean()), 3),
                        "high-frequency share (field crop)": round(high_frequency_share(crops), 4),
                        "share reaching best exemplar": sum(float(a) >= float(v) for a, v in zip(res.activation, ex.values[units, 0])) / len(units)}
        row["readable neuron by steps"] = sweep
        out[layer] = row
    # what the report showed before issue 14: filters 0-7 of the conv layers, 32 pixel steps at lr 0.1, jitter 1
    for layer in [name.replace(".relu", ".conv") for name in layers]:
        t0 = time.perf_counter()
        res = activation_maximization(model, layer, list(range(8)), input_shape=tuple(data.input_shape), steps=32, lr=0.1,
                                      parameterization="pixel", transforms=None, jitter=1,
                                      generator=torch.Generator().manual_seed(0))
        out[f"old report {layer}"] = {"seconds": round(time.perf_counter() - t0, 2),
                                      "high-frequency share (whole image)": round(high_frequency_share(res.images), 4),
                                      "activation": [round(float(a), 3) for a in res.activation]}
    return out


def smoothness(run_dir: str, layers: list[str], decays: list[float | str], steps_list: list[int],
               figure_path: str | None = None) -> dict:
    """The report's neuron images (its call: exemplar colours for RGB, transforms sized to the field) at
    several spectrum decays (``decay_power``: the Fourier amplitudes scale as 1/f**decay) and step counts:
    the high-frequency share of the synthetic field crops against the filters' own real patches, how many
    reach the best patch, and the mean ratio of the synthetic activation to the best patch's. The decay
    ``"fitted"`` is each filter's own, fitted to its real patches (``spectrum_decay``). ``figure_path``: a PNG,
    per filter (4 per layer), the field crop at each decay (the first step count), then 4 real patches."""
    from cnnlens.explain.activation_max import spectrum_decay
    from cnnlens.explain.exemplars import layer_exemplars
    from cnnlens.explain.robustness import Transforms
    from cnnlens.report.sections.filters import exemplar_colors
    from cnnlens.train import load_run

    run = load_run(run_dir, device="cpu")
    model, data = run.model, run.dataset("val")
    batches = (data.float_images(range(i, min(i + 128, len(data)))) for i in range(0, len(data), 128))
    exs = layer_exemplars(model, layers, batches)
    out: dict = {}
    sheet_rows = []
    for layer in layers:
        ex = exs[layer]
        units = list(choose_filters(ex, 8).units)
        patches = torch.cat([ex.crops[u][ex.index[u] >= 0] for u in units])
        fitted = torch.tensor([spectrum_decay(ex.crops[u][ex.index[u] >= 0]) for u in units])
        row = {"filters": units, "real patches high-frequency share": round(high_frequency_share(patches), 4),
               "fitted decays": [round(float(d), 2) for d in fitted]}
        centre = (ex.field.output[0] // 2, ex.field.output[1] // 2)
        shown: list[torch.Tensor] = []
        for decay in decays:
            for steps in steps_list:
                res = activation_maximization(model, layer, units, objective="neuron", position=centre,
                                              input_shape=tuple(data.input_shape), steps=steps,
                                              decay_power=fitted if decay == "fitted" else float(decay),
                                              transforms=Transforms.for_size(*ex.field.size), field=ex.field,
                                              generator=torch.Generator().manual_seed(0), **exemplar_colors(ex, units))
                crops = torch.stack([ex.field.crop(im, *centre) for im in res.images])
                if steps == steps_list[0]:
                    shown.append(crops[:4])
                best = ex.values[units, 0]
                own = [torch.cdist(crops[j].flatten(1).T[None].double(),
                                   ex.crops[u][ex.index[u] >= 0].transpose(0, 1).flatten(1).T[None].double())[0].amin(1)
                       for j, u in enumerate(units)] if crops.shape[1] == 3 else []
                row[f"decay {decay}, {steps} steps"] = {
                    "high-frequency share (field crop)": round(high_frequency_share(crops), 4),
                    **({"mean RGB distance to own patches' nearest pixel": round(float(torch.cat(own).mean()), 3)}
                       if own else {}),
                    "reach best patch": int(sum(float(a) >= float(b) for a, b in zip(res.activation, best))),
                    "activation / best patch": round(float((res.activation / best.clamp_min(1e-6)).mean()), 2)}
        out[layer] = row
        sheet_rows += [[crops[j] for crops in shown] + [ex.crops[u, q] for q in range(min(4, ex.crops.shape[1]))]
                       for j, u in enumerate(units[:4])]
    if figure_path:
        import numpy as np
        from PIL import Image

        def cell(a: torch.Tensor) -> np.ndarray:
            a = a.detach().float().clamp(0, 1)
            a = (a.permute(1, 2, 0) if a.shape[0] == 3 else a[0, :, :, None].expand(-1, -1, 3)).numpy()
            img = Image.fromarray((a * 255).astype(np.uint8)).resize((64, 64), Image.NEAREST)
            return np.pad(np.asarray(img), ((2, 2), (2, 2), (0, 0)), constant_values=255)

        rows = [np.concatenate([cell(a) for a in r], 1) for r in sheet_rows]
        width = max(r.shape[1] for r in rows)
        Image.fromarray(np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                                        for r in rows], 0)).save(figure_path)
    return out


def cost(run_dir: str, layers: list[str], repeat: int = 2) -> dict:
    """Process CPU seconds (one thread) of the report's Filters section on a trained run and of its parts at
    the report's settings (8 filters per layer, ``ReportOptions.am_steps``): the exemplar pass of each layer
    alone, the neuron images of each layer, the class-model images; the best of ``repeat`` runs. Uses only
    what the section itself calls, so the same function times an older checkout (PYTHONPATH=its src)."""
    import tempfile

    from cnnlens.explain import exemplars as ex_mod
    from cnnlens.report.assets import Assets
    from cnnlens.report.context import ReportContext, ReportInputs, ReportOptions
    from cnnlens.report.sections.filters import filters_section
    from cnnlens.train import load_run

    run = load_run(run_dir, device="cpu")
    model, data = run.model, run.dataset("val")
    options = ReportOptions(device="cpu")

    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return round(min(times), 2)

    def batches():
        return (data.float_images(range(i, min(i + 128, len(data)))) for i in range(0, len(data), 128))

    out = {"images": len(data), "am_steps": options.am_steps, "filters per layer": options.filters_per_layer}
    inputs = ReportInputs(model=model, dataset=data, name="run", run_dir=Path(run_dir))
    with tempfile.TemporaryDirectory() as tmp:
        probs = ReportContext(inputs, options, Assets(Path(tmp) / "p")).probabilities  # computed before the section in a report
        times = []
        for i in range(repeat):
            ctx = ReportContext(inputs, options, Assets(Path(tmp) / str(i)))
            ctx.__dict__["probabilities"] = probs  # the cached property, as the report's earlier sections leave it
            t0 = time.process_time()
            filters_section(ctx)
            times.append(time.process_time() - t0)
        out["filters section"] = round(min(times), 2)
    for layer in layers:
        exs = ex_mod.dataset_exemplars(model, layer, batches())
        units = list(choose_filters(exs, options.filters_per_layer).units)
        out[f"{layer} exemplar pass"] = best(lambda: ex_mod.dataset_exemplars(model, layer, batches(), field=exs.field))
        centre = (exs.field.output[0] // 2, exs.field.output[1] // 2)
        from cnnlens.explain.robustness import Transforms

        warp = Transforms.for_size(*exs.field.size)
        out[f"{layer} neuron images"] = best(lambda: activation_maximization(
            model, layer, units, objective="neuron", position=centre, input_shape=tuple(data.input_shape),
            steps=options.am_steps, transforms=warp, generator=torch.Generator().manual_seed(0)))
    if hasattr(ex_mod, "layer_exemplars"):
        out["exemplar pass, all layers at once"] = best(lambda: ex_mod.layer_exemplars(model, layers, batches()))
    from cnnlens.explain.activation_max import class_model_images

    out["class-model images"] = best(lambda: class_model_images(model, list(range(len(data.classes))),
                                                                input_shape=tuple(data.input_shape), steps=options.am_steps,
                                                                generator=torch.Generator().manual_seed(0)))
    return out


def figure(run_dir: str | None, layers: list[str], steps: int, path: str, deep_steps: int | None = None) -> None:
    """A PNG for the doc: the planted filters (kernel | naive | readable channel images | naive | readable neuron
    images, the 7x7 field), and per chosen filter of each deep layer (``deep_steps``, default ``steps``): the naive
    neuron image | the readable one | its 6 best real patches (receptive-field crops)."""
    import numpy as np
    from PIL import Image

    def tile(a: torch.Tensor, size: int) -> np.ndarray:
        a = a.detach().float().clamp(0, 1)
        a = a.mean(0) if a.dim() == 3 and a.shape[0] != 3 else a
        if a.dim() == 3:
            a = a.permute(1, 2, 0)
        img = Image.fromarray((a.numpy() * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
        arr = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.pad(arr, 2, constant_values=255)

    rows = []
    model, kernels = planted_model(), planted_kernels()
    units = list(range(len(kernels)))
    naive = activation_maximization(model, "1", units, input_shape=(1, SIZE, SIZE), steps=steps, generator=torch.Generator().manual_seed(0), **NAIVE)
    readable = activation_maximization(model, "1", units, input_shape=(1, SIZE, SIZE), steps=steps, generator=torch.Generator().manual_seed(0))
    neurons = [activation_maximization(model, "1", units, objective="neuron", input_shape=(1, SIZE, SIZE), steps=steps,
                                       generator=torch.Generator().manual_seed(0), **o) for o in (NAIVE, READABLE)]
    r, c = neurons[0].position
    for i, w in enumerate(kernels.values()):
        k = (w - w.min()) / (w.max() - w.min())
        rows.append(np.concatenate([tile(k[None], 96), tile(naive.images[i], 96), tile(readable.images[i], 96)]
                                   + [tile(n.images[i, :, r - 3 : r + 4, c - 3 : c + 4], 96) for n in neurons], 1))
    steps = deep_steps or steps
    if run_dir:
        from cnnlens.train import load_run

        run = load_run(run_dir, device="cpu")
        data = run.dataset("val")
        for layer in layers:
            ex = dataset_exemplars(run.model, layer, (data.float_images(range(i, min(i + 128, len(data)))) for i in range(0, len(data), 128)))
            units = list(choose_filters(ex, 8).units)
            r, c = (s // 2 for s in ex.field.output)
            got = [activation_maximization(run.model, layer, units, objective="neuron", input_shape=tuple(data.input_shape), steps=steps,
                                           generator=torch.Generator().manual_seed(0), **o) for o in (NAIVE, READABLE)]
            for j, u in enumerate(units):
                cells = [tile(ex.field.crop(g.images[j], r, c), 64) for g in got] + [tile(ex.crops[u, q], 64) for q in range(ex.crops.shape[1])]
                rows.append(np.concatenate(cells, 1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1])), constant_values=255) for r in rows], 0)
    Image.fromarray(sheet).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="a trained run folder (the demo's run/) for the deep-layer part")
    parser.add_argument("--layers", default="block2.relu,block3.relu")
    parser.add_argument("--steps", default="16,32,64,128,256,512", help="step counts for the planted part")
    parser.add_argument("--deep-steps", type=int, default=None, help="steps for the deep part (default: the library's)")
    parser.add_argument("--sweep", default="32,64,128,256", help="step counts for the deep layers' neuron images")
    parser.add_argument("--cost", action="store_true", help="only time the report's Filters section and its parts (needs --run)")
    parser.add_argument("--smoothness", default=None, metavar="DECAYS",
                        help="only the report's neuron images at these spectrum decays, e.g. 1,fitted,1.5,2 (fitted: each filter's own, from its patches; needs --run)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--figure", default=None, help="also write the doc's picture sheet (PNG) here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the timings are per thread: the shared machines run several jobs at once
    from cnnlens.explain.activation_max import DEFAULT_STEPS

    if args.cost or args.smoothness:
        result = ({"cost": cost(args.run, args.layers.split(","))} if args.cost else
                  {"smoothness": smoothness(args.run, args.layers.split(","), [d if d == "fitted" else float(d) for d in args.smoothness.split(",")],
                                            [int(n) for n in args.sweep.split(",")], args.figure)})
        print(json.dumps(result, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return
    result = {"planted": planted([int(s) for s in args.steps.split(",")]),
              "planted neuron": planted_neuron([int(s) for s in args.steps.split(",")])}
    if args.run:
        result["deep"] = deep(args.run, args.deep_steps or DEFAULT_STEPS, args.layers.split(","),
                              [int(n) for n in args.sweep.split(",")])
    if args.figure:
        figure(args.run, args.layers.split(","), args.deep_steps or DEFAULT_STEPS, args.figure)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
