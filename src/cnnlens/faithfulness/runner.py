"""Every faithfulness metric for every method in one call, and the table, figures and arrays it writes.

>>> result = evaluate_faithfulness(run.model, images, None, masks, ["saliency", "grad-cam", "occlusion"])
>>> result.save("runs/fer/faithfulness")
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from cnnlens._atomic import output_dir
from cnnlens._checks import check_int
from cnnlens._types import PathArg, Target
from cnnlens.explain import core, registry
from cnnlens.faithfulness import figures
from cnnlens.faithfulness._checks import check_choice, check_masks
from cnnlens.faithfulness.deletion import (SUBSTRATES, CurveResult, SubstrateCheck, channel_means, deletion, insertion,
                                           random_maps, step_counts, substrate_check)
from cnnlens.faithfulness.localization import METRICS as LOCALIZATION_METRICS
from cnnlens.faithfulness.localization import centre_prior, localization_scores
from cnnlens.faithfulness.randomization import MODES as RANDOMIZATION_MODES
from cnnlens.faithfulness.randomization import Explainer, RandomizationResult, model_randomization
from cnnlens.faithfulness.stats import N_BOOT, mean_ci

log = logging.getLogger("cnnlens.faithfulness")

VERSION = 1
# Perturbation methods (``registry.names(kind="perturbation")``: occlusion, LIME) evaluate the model hundreds
# of times per image, so they run on ``n_perturbation_images`` only, and are left out of the randomisation
# check unless asked for: they only read the model's outputs, so their maps follow the weights by
# construction, and each layer would cost them ~2000 forward passes per image (occlusion with stride 1 on
# 48x48, LIME's 1000 samples).
RANDOM_ORDER, CENTRE_PRIOR, RANDOM_MAP = "random-order", "centre-prior", "random-map"
#: metric -> (what it measures, which direction is better).
METRICS: dict[str, tuple[str, str]] = {
    "deletion_auc": ("area under the target probability as the most relevant pixels are removed first", "lower"),
    "insertion_auc": ("area under the target probability as the most relevant pixels are inserted first", "higher"),
    "pointing_game": ("share of images whose map maximum lies inside the ground-truth mask", "higher"),
    "relevance_mass": ("share of the positive attribution inside the mask", "higher"),
    "relevance_rank": ("share of the top-|mask| pixels inside the mask", "higher"),
    "cascading_spearman": ("Spearman of |map| to the original, mean over the cascade stages", "lower"),
    "cascading_ssim": ("SSIM of |map| to the original, mean over the cascade stages", "lower"),
    "independent_spearman": ("Spearman of |map| to the original, mean over single-layer randomisations", "lower"),
    "independent_ssim": ("SSIM of |map| to the original, mean over single-layer randomisations", "lower"),
}
CI_METHOD = "95% percentile bootstrap over images ({n_boot} resamples, seed {seed})"
#: Substrates tried, in this order, when the chosen one leaves the class above chance: the stronger first.
STRONGER_SUBSTRATES = ("road", "dataset-mean", "zero", "mean", "blur")

Explanation = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Row:
    """One cell group of the table: a method (or baseline) x metric over ``n_images`` images."""

    method: str
    metric: str
    kind: str  # "method" or "baseline"
    n_images: int
    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class FaithfulnessResult:
    """Everything :func:`evaluate_faithfulness` measured; :meth:`save` writes it.

    Attributes:
        rows: the table, methods first then baselines, each with its mean and 95% CI over images.
        per_image: ``(method, metric)`` -> float64 ``[n]`` values, one per image (the first n images).
        curves: method (and ``"random-order"``) -> {"deletion", "insertion"} -> :class:`CurveResult`.
        randomization: mode -> :class:`RandomizationResult`.
        names: the images' names; ``targets``: the explained class per image.
        settings: every option used (``settings["sampling"]``: how the images were drawn);
        ``notes``: what was limited or skipped, and why.
        timings: seconds per stage.
        substrate_checks: ``"deletion"``/``"insertion"`` -> :class:`SubstrateCheck` of its substrate on all
            the images, and ``"alternatives"`` -> the other substrates' checks when one was above chance.
        warnings: what makes a number unreliable (a substrate that leaves the class); also logged.
    """

    rows: tuple[Row, ...]
    per_image: dict[tuple[str, str], np.ndarray]
    curves: dict[str, dict[str, CurveResult]]
    randomization: dict[str, RandomizationResult]
    names: tuple[str, ...]
    targets: tuple[int, ...]
    settings: dict[str, Any]
    notes: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)
    example_image: torch.Tensor | None = None
    substrate_checks: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def row(self, method: str, metric: str, n_images: int | None = None) -> Row:
        """The row of ``method`` x ``metric`` (the one over ``n_images`` images, default the largest)."""
        found = [r for r in self.rows if r.method == method and r.metric == metric
                 and (n_images is None or r.n_images == n_images)]
        if not found:
            raise KeyError(f"no row for method {method!r}, metric {metric!r}"
                           + (f", n_images={n_images}" if n_images is not None else ""))
        return max(found, key=lambda r: r.n_images)

    def table(self) -> str:
        """The table as aligned text, one line per method or baseline and metric."""
        lines = [f"{'method':<24} {'metric':<22} {'n':>4}  {'mean':>7}  95% CI"]
        for r in self.rows:
            lines.append(f"{r.method:<24} {r.metric:<22} {r.n_images:>4}  {r.mean:7.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]")
        return "\n".join(lines)

    def figures(self) -> dict[str, tuple[Figure, dict[str, np.ndarray]]]:
        """Figure name -> (figure, the arrays it shows)."""
        seed = int(self.settings.get("seed", 0))
        out: dict[str, tuple[Figure, dict[str, np.ndarray]]] = {}
        if self.curves:
            out["deletion_insertion"] = (figures.curves_figure(self.curves), figures.curves_arrays(self.curves))
        if self.randomization:
            out["randomization"] = (figures.randomization_figure(self.randomization, seed=seed),
                                    figures.randomization_arrays(self.randomization, seed=seed))
            first = self.randomization.get("cascading") or next(iter(self.randomization.values()))
            out["randomization_cascade"] = (figures.cascade_figure(first, self.example_image),
                                            {m: v.cpu().numpy() for m, v in first.example_maps.items()})
        loc_rows = [r.__dict__ for r in self.rows if r.metric in LOCALIZATION_METRICS]
        if loc_rows:
            out["localization"] = (figures.localization_figure(loc_rows, LOCALIZATION_METRICS),
                                   {f"{r['method']}/n={r['n_images']}/{r['metric']}":
                                    np.array([r["mean"], r["ci_low"], r["ci_high"]]) for r in loc_rows})
        return out

    def manifest(self) -> dict[str, Any]:
        """The JSON written as ``faithfulness.json``: settings, notes, the table and the randomisation curves."""
        seed = int(self.settings.get("seed", 0))
        randomization = {
            mode: {"layers": list(r.layers), "example_index": r.example_index,
                   "methods": {m: {sim: dict(zip(("mean", "ci_low", "ci_high"), figures.similarity_curve(v, seed=seed).tolist()))
                                   for sim, v in (("spearman", r.spearman[m]), ("ssim", r.ssim[m]))}
                               for m in r.spearman}}
            for mode, r in self.randomization.items()}
        checks: dict[str, Any] = {}
        for key, value in self.substrate_checks.items():
            if isinstance(value, SubstrateCheck):
                checks[key] = _check_dict(value)
            else:
                checks[key] = {name: _check_dict(c) for name, c in value.items()}
        return {
            "version": VERSION,
            "settings": self.settings,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "substrate_check": checks,
            "confidence_interval": CI_METHOD.format(n_boot=self.settings.get("n_boot", N_BOOT), seed=seed),
            "metrics": {k: {"description": d, "better": b} for k, (d, b) in METRICS.items()},
            "rows": [r.__dict__ for r in self.rows],
            "randomization": randomization,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "images": list(self.names),
            "targets": list(self.targets),
        }

    def save(self, out_dir: PathArg, *, overwrite: bool = False, inputs: Iterable[PathArg | None] = ()) -> Path:
        """Write the table, per-image values, figures (PNG + raw arrays) into ``out_dir``, atomically.

        Files: ``faithfulness.json`` (:meth:`manifest`), ``faithfulness.csv`` (the table),
        ``per_image.csv``, ``randomization.csv``, ``<figure>.png`` + ``<figure>.npz``. The folder is built
        aside and swapped in whole (:func:`cnnlens._atomic.output_dir`): an existing one raises
        :class:`~cnnlens._atomic.OutputRefused` (a FileExistsError) unless ``overwrite`` and it is an
        earlier faithfulness folder holding nothing else; a folder that is or holds one of ``inputs`` (the
        run, its data, the masks) is never replaced.
        """
        out = Path(out_dir)
        with output_dir(out, kind="faithfulness", overwrite=overwrite, inputs=inputs) as tmp:
            (tmp / "faithfulness.json").write_text(json.dumps(self.manifest(), indent=2) + "\n", encoding="utf-8")
            (tmp / "faithfulness.csv").write_text(_csv(["method", "metric", "kind", "n_images", "mean", "ci_low", "ci_high"],
                                                       [list(r.__dict__.values()) for r in self.rows]), encoding="utf-8")
            per_image = [[m, metric, i, self.names[i], float(v)] for (m, metric), values in self.per_image.items()
                         for i, v in enumerate(values)]
            (tmp / "per_image.csv").write_text(_csv(["method", "metric", "image", "name", "value"], per_image), encoding="utf-8")
            (tmp / "randomization.csv").write_text(self._randomization_csv(), encoding="utf-8")
            for name, (fig, arrays) in self.figures().items():
                FigureCanvasAgg(fig)
                fig.savefig(tmp / f"{name}.png", dpi=110)
                with open(tmp / f"{name}.npz", "wb") as fh:
                    np.savez_compressed(fh, **{k.replace("/", "__"): v for k, v in arrays.items()})
        return out

    def _randomization_csv(self) -> str:
        seed = int(self.settings.get("seed", 0))
        rows = []
        for mode, r in self.randomization.items():
            for sim, d in (("spearman", r.spearman), ("ssim", r.ssim)):
                for method, v in d.items():
                    for k, layer in enumerate(r.layers):
                        mean, low, high = mean_ci(v[k].numpy(), seed=seed)
                        rows.append([mode, method, sim, k + 1, layer, v.shape[1], mean, low, high])
        return _csv(["mode", "method", "similarity", "stage", "layer", "n_images", "mean", "ci_low", "ci_high"], rows)


def _check_dict(c: SubstrateCheck) -> dict[str, Any]:
    return {"substrate": c.substrate, "mean_probability": round(c.mean_probability, 6), "ci_low": round(c.ci_low, 6),
            "ci_high": round(c.ci_high, 6), "class_blind": round(c.class_blind, 6), "keeps_class": c.keeps_class,
            "still_predicted": round(c.still_predicted, 6), "chance": round(c.chance, 6), "n_images": c.n_images,
            "above_chance": c.above_chance}


def stratified_order(labels: Sequence[int] | torch.Tensor | np.ndarray, seed: int = 0) -> list[int]:
    """Every index of ``labels`` once, in a seeded random order in which each prefix is stratified by class.

    Each class's images are shuffled, then dealt round by round, one per class per round, the classes in
    a fresh random order each round; so the first ``k`` hold ``k / K`` of each class, give or take one,
    as long as a class has images left. Unknown labels (-1) are one more stratum. A run's faithfulness
    uses the first ``n_images`` of this order, and its perturbation and randomisation subsets are the
    first few of those: every subset is a stratified random sample of the split.

    >>> stratified_order([0, 0, 0, 1, 1, 1], seed=0)[:2]   # one of each class first
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    strata = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    order: list[int] = []
    for r in range(max((len(s) for s in strata), default=0)):
        left = [s for s in strata if len(s) > r]
        order += [int(left[j][r]) for j in rng.permutation(len(left))]
    return order


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows])
    return buf.getvalue()


def resolve_methods(methods: Sequence[str] | Mapping[str, Explanation]) -> dict[str, Explanation]:
    """Method names -> their registered functions (a mapping is taken as given)."""
    if isinstance(methods, Mapping):
        bad = [k for k, v in methods.items() if not callable(v)]
        if bad:
            raise TypeError(f"methods[{bad[0]!r}] must be callable fn(model, images, target=...) -> [N,H,W]")
        resolved = dict(methods)
    else:
        if isinstance(methods, str):
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        known = registry.names()
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; "
                             f"available methods: {', '.join(known) or '(none registered)'}")
        resolved = {m: registry.get(m).fn for m in dict.fromkeys(methods)}
    if not resolved:
        raise ValueError("methods is empty; name at least one explanation method, e.g. ['saliency', 'grad-cam']")
    clash = [m for m in resolved if m in (RANDOM_ORDER, CENTRE_PRIOR, RANDOM_MAP)]
    if clash:
        raise ValueError(f"method name {clash[0]!r} is reserved for a baseline; give the method another name")
    return resolved


def _takes_generator(name: str, fn: Explanation, registered: bool) -> bool:
    """Whether ``fn`` accepts ``generator=`` (registered methods that forward ``**options``, like LIME,
    are asked through ``cnnlens.explain.runner``)."""
    if registered:
        from cnnlens.explain.runner import method_accepts

        return method_accepts(name, "generator")
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _explainer(fn: Explanation, kwargs: Mapping[str, Any], seed: int, chunk: int, takes_generator: bool) -> Explainer:
    """``fn`` as ``(model, images, target) -> [N,H,W]``, in chunks of ``chunk`` images, with a fresh seeded
    generator per call when ``fn`` takes one, so that every randomisation stage sees the same noise."""

    def explain(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kw = dict(kwargs)
        if takes_generator and "generator" not in kw:
            kw["generator"] = torch.Generator(device=images.device).manual_seed(seed)
        out = [fn(model, images[i:i + chunk], target=target[i:i + chunk], **kw).detach()
               for i in range(0, images.shape[0], chunk)]
        return torch.cat(out).float()

    return explain


def evaluate_faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    targets: Target = None,
    masks: torch.Tensor | None = None,
    methods: Sequence[str] | Mapping[str, Explanation] = ("saliency", "grad-cam"),
    *,
    n_perturbation_images: int = 20,
    perturbation_methods: Sequence[str] | None = None,
    n_randomization_images: int = 16,
    randomization_methods: Sequence[str] | None = None,
    randomization_modes: Sequence[str] = RANDOMIZATION_MODES,
    step: int | float = 0.05,
    deletion_substrate: str = "blur",
    insertion_substrate: str = "blur",
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = N_BOOT,
    batch_size: int | None = None,
    explain_batch_size: int = 50,
    skip_unsupported: bool = False,
    progress: bool = False,
    sampling: Mapping[str, Any] | None = None,
) -> FaithfulnessResult:
    """Deletion/insertion, randomisation sanity checks and localisation for each method, with baselines.

    ``images`` float ``[N,C,H,W]`` in [0,1]; ``targets`` as in ``cnnlens.explain`` (None = the predicted
    class, resolved once and used by every method and metric); ``masks`` bool ``[N,H,W]`` ground truth
    (None: no localisation). ``methods``: registered method names or name -> function.
    Methods in ``perturbation_methods`` (None: the registered perturbation methods, occlusion and LIME)
    run on the first ``n_perturbation_images`` images only; the randomisation check runs on the first
    ``n_randomization_images`` with ``randomization_methods`` (default: all but the perturbation methods). Deletion/insertion: ``step`` pixels (int) or share (float) per
    step, random-order baseline. Localisation baselines: a centred Gaussian and a random map. Every mean
    comes with a 95% percentile-bootstrap interval over images (``n_boot`` resamples, ``seed``).
    ``skip_unsupported``: leave out (with a note) a method that refuses the model with a ValueError or
    TypeError (CAM without a global-average-pooling head), instead of failing; for "all methods" runs.
    Subsets are always the first images, so pass them in a stratified random order
    (:func:`stratified_order`, as :func:`evaluate_run_faithfulness` does) and say how in ``sampling``
    (recorded in ``settings``). Every method and baseline is also scored on each smaller subset, so that
    any two can be compared on the same images. The substrates are checked on all images
    (:func:`~cnnlens.faithfulness.deletion.substrate_check`): one whose fully deleted image still gets the
    target class above chance gives a warning, with the stronger substrates that do not.

    >>> r = evaluate_faithfulness(model, x, None, masks, ["saliency", "grad-cam", "occlusion"])
    >>> r.row("grad-cam", "deletion_auc").mean < r.row("random-order", "deletion_auc").mean
    """
    core.check_images(images)
    n, _, h, w = images.shape
    fns = resolve_methods(methods)
    method_kwargs = dict(method_kwargs or {})
    if not isinstance(methods, Mapping):  # options checked against each method's signature before any work
        from cnnlens.explain.runner import check_options

        method_kwargs = {m: kw for m, kw in check_options(list(fns), method_kwargs).items() if kw}
    unknown_kw = [m for m in method_kwargs if m not in fns]
    if unknown_kw:
        raise ValueError(f"method_kwargs names method(s) {unknown_kw} that are not in methods {list(fns)}")
    for name, value in (("n_perturbation_images", n_perturbation_images), ("n_randomization_images", n_randomization_images),
                        ("explain_batch_size", explain_batch_size)):
        check_int(value, name, 1 if name == "explain_batch_size" else 0)
    for mode in randomization_modes:
        check_choice(mode, RANDOMIZATION_MODES, "randomization_modes entry")
    check_choice(deletion_substrate, SUBSTRATES, "deletion_substrate")
    check_choice(insertion_substrate, SUBSTRATES, "insertion_substrate")
    step_counts(step, h * w)  # a bad step fails here, before any work
    if names is not None and len(names) != n:
        raise ValueError(f"names has {len(names)} entries but images has N={n}")
    names = tuple(names) if names is not None else tuple(str(i) for i in range(n))
    images = images.detach()
    device = images.device
    if masks is not None:
        masks = check_masks(masks, images[:, 0])
    perturbation = registry.names(kind="perturbation")
    if perturbation_methods is None:
        perturbation_methods = perturbation
    rand_set = [m for m in (randomization_methods if randomization_methods is not None
                            else [m for m in fns if m not in perturbation])]
    unknown_rand = [m for m in rand_set if m not in fns]
    if unknown_rand:
        raise ValueError(f"randomization_methods names {unknown_rand}, which are not in methods {list(fns)}")

    timings: dict[str, float] = {}
    notes: list[str] = []
    with core.guarded(model), torch.inference_mode():
        logits = core.predict_logits(model, images, batch_size)
    t = core.resolve_target(targets, n, logits.shape[1], logits=lambda: logits, device=device)
    n_for = {m: min(n, n_perturbation_images) if m in perturbation_methods else n for m in fns}
    for m, k in n_for.items():
        if k == 0:
            notes.append(f"{m}: skipped, n_perturbation_images is 0")
        elif k < n:
            notes.append(f"{m}: a perturbation method, evaluated on the first {k} of {n} images "
                         "(n_perturbation_images / --n-perturbation-images); every other method and baseline "
                         f"is also scored on those {k}, for a comparison on the same images")
    registered = not isinstance(methods, Mapping)
    explainers = {m: _explainer(fn, method_kwargs.get(m, {}), seed, explain_batch_size, _takes_generator(m, fn, registered))
                  for m, fn in fns.items()}

    maps: dict[str, torch.Tensor] = {}
    for m, explain in explainers.items():
        with _stage(f"{m}: maps of {n_for[m]} images", timings, f"maps/{m}", progress):
            if n_for[m] == 0:
                continue
            try:
                out = explain(model, images[:n_for[m]], t[:n_for[m]])
            except (ValueError, TypeError) as exc:
                if not skip_unsupported:
                    raise
                notes.append(f"{m}: skipped, it does not support this model ({exc})")
                continue
            if tuple(out.shape) != (n_for[m], h, w):
                raise ValueError(f"method {m!r} returned maps of shape {tuple(out.shape)}, expected {(n_for[m], h, w)}")
            maps[m] = out.to(device)

    per_image: dict[tuple[str, str], np.ndarray] = {}
    mean = channel_means(images)  # the dataset mean of every image, for "dataset-mean" and ROAD on any subset
    with _stage("substrate check", timings, "substrate_check", progress):
        checks, warnings = _check_substrates(model, images, t, (deletion_substrate, insertion_substrate), mean,
                                             batch_size=batch_size, seed=seed)
    baseline = random_maps(n, h, w, torch.Generator().manual_seed(seed + 1)).to(device)
    curves = _curves(model, images, t, {**maps, RANDOM_ORDER: baseline}, step=step, batch_size=batch_size, seed=seed,
                     substrates=(deletion_substrate, insertion_substrate), channel_mean=mean, timings=timings,
                     progress=progress)
    for m, by_mode in curves.items():
        for mode, c in by_mode.items():
            per_image[(m, f"{mode}_auc")] = c.auc.double().cpu().numpy()

    if masks is not None:
        with _stage("localisation", timings, "localization", progress):
            loc_maps = {**maps, CENTRE_PRIOR: centre_prior(h, w).to(device).expand(n, h, w),
                        RANDOM_MAP: random_maps(n, h, w, torch.Generator().manual_seed(seed + 2)).to(device)}
            for m, mp in loc_maps.items():
                for metric, v in localization_scores(mp, masks[:mp.shape[0]]).items():
                    per_image[(m, metric)] = v.cpu().numpy()
    else:
        notes.append("localisation: skipped, no ground-truth masks (synthetic faces carry them; "
                     "for other data give a folder of PNG masks)")

    left_out = [m for m in maps if m not in rand_set]
    if left_out and n_randomization_images > 0:
        notes.append(f"randomisation check: left out {', '.join(left_out)} (perturbation methods read only the "
                     "model's outputs and would re-run on every image for every layer; name them in "
                     "randomization_methods / --randomization-methods to include them)")
    groups: dict[int, list[str]] = {}  # image count -> the methods randomised on that many images
    for m in rand_set:
        if m in maps and min(n_randomization_images, n_for[m]) > 0:
            groups.setdefault(min(n_randomization_images, n_for[m]), []).append(m)
    if groups:
        notes.append(f"randomisation check: first {max(groups)} of {n} images"
                     + ("" if len(groups) < 2 else f" ({', '.join(groups[min(groups)])}: first {min(groups)})"))
    elif n_randomization_images == 0:
        notes.append("randomisation check: skipped (n_randomization_images=0)")
    randomization = {mode: _randomize(model, images, t, maps, explainers, groups, mode=mode, seed=seed,
                                      timings=timings, progress=progress)
                     for mode in randomization_modes if groups}
    for mode, r in randomization.items():
        for m in r.spearman:
            per_image[(m, f"{mode}_spearman")] = r.spearman[m].mean(0).numpy()
            per_image[(m, f"{mode}_ssim")] = r.ssim[m].mean(0).numpy()

    rows = _rows(per_image, list(fns), seed=seed, n_boot=n_boot)
    settings = {
        "methods": list(maps), "n_images": n, "image_size": [h, w], "n_perturbation_images": n_perturbation_images,
        "perturbation_methods": list(perturbation_methods), "n_randomization_images": n_randomization_images,
        "randomization_methods": rand_set, "randomization_modes": list(randomization_modes),
        "step": step, "deletion_substrate": deletion_substrate, "insertion_substrate": insertion_substrate,
        "method_kwargs": {m: {k: repr(v) for k, v in kw.items()} for m, kw in method_kwargs.items()},
        "targets": "given" if targets is not None else "predicted class", "seed": seed, "n_boot": n_boot,
        "device": str(device),
        "sampling": dict(sampling) if sampling is not None else
        {"method": "as given: the images passed in, in their order", "n_images": n},
    }
    return FaithfulnessResult(rows=rows, per_image=per_image, curves=curves, randomization=randomization,
                              names=names, targets=tuple(t.tolist()), settings=settings, notes=tuple(notes),
                              timings=timings, example_image=images[0].cpu(), substrate_checks=checks,
                              warnings=tuple(warnings))


def evaluate_run_faithfulness(run: Any, *, split: str | None = "val", n_images: int = 200,
                              masks: torch.Tensor | None = None, methods: Sequence[str] = ("saliency", "grad-cam"),
                              data: str | None = None, mask_dir: PathArg | None = None,
                              **options: Any) -> FaithfulnessResult:
    """:func:`evaluate_faithfulness` on ``n_images`` of a run's ``split`` (a :class:`cnnlens.train.Run`)
    drawn at random, stratified by class (:func:`stratified_order`, seeded with ``options["seed"]``, default
    0), against ground-truth masks: ``masks`` (bool ``[N,H,W]``, one per image of the whole split), else
    PNG files in ``mask_dir`` matched by image name, else the dataset's own (the synthetic faces'),
    explaining the predicted class. ``data``: another dataset's spec (see ``Run.dataset``; labels are not
    needed). The draw (seed, class counts, indices) is recorded in ``settings["sampling"]``. ``options``
    go to :func:`evaluate_faithfulness`.

    >>> evaluate_run_faithfulness(load_run("runs/faces"), methods=["grad-cam"]).save("runs/faces/faithfulness")
    """
    spec = data
    data = run.dataset(split, data=spec) if spec is not None else run.dataset(split)
    if len(data) == 0:
        raise ValueError(f"the run's {split} split has no images" if spec is None else f"{spec} has no images")
    if masks is not None and (not isinstance(masks, torch.Tensor) or masks.shape[:1] != (len(data),)):
        got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must hold one mask per image of the split ({len(data)}), got {got}; "
                         "or give mask_dir, a folder of PNG masks named after the images")
    seed = int(options.get("seed", 0))
    index = stratified_order(data.labels, seed)[:n_images]
    source = data
    data = data.subset(index)
    if masks is not None:
        masks = masks[torch.as_tensor(index, dtype=torch.long)]
    elif mask_dir is not None:
        from cnnlens.faithfulness.masks import load_mask_folder

        masks = load_mask_folder(mask_dir, data.names, tuple(data.images.shape[2:]))
    else:
        masks = data.masks
    labels = data.labels.tolist()
    classes = list(source.classes)
    counts = {(classes[c] if 0 <= c < len(classes) else "unlabelled"): labels.count(c) for c in sorted(set(labels))}
    sampling = {"method": "stratified by class, at random; each first-k subset is stratified too",
                "seed": seed, "split": split, "data": spec, "n_available": len(source), "n_images": len(index),
                "class_counts": counts, "indices": [int(i) for i in index]}
    images = data.float_images().to(run.device)
    return evaluate_faithfulness(run.model, images, None, None if masks is None else masks.to(run.device), methods,
                                 names=data.names, sampling=sampling, **options)


def _curves(model: nn.Module, images: torch.Tensor, t: torch.Tensor, maps: Mapping[str, torch.Tensor], *,
            step: int | float, substrates: tuple[str, str], batch_size: int | None, seed: int,
            channel_mean: torch.Tensor, timings: dict[str, float], progress: bool) -> dict[str, dict[str, CurveResult]]:
    """Deletion and insertion curves of each map set (on its first ``len(map)`` images)."""
    curves: dict[str, dict[str, CurveResult]] = {}
    for m, mp in maps.items():
        k = mp.shape[0]
        with _stage(f"{m}: deletion and insertion", timings, f"curves/{m}", progress):
            # the same seed for every method: ties are broken the same way for all of them
            curves[m] = {mode: fn(model, images[:k], mp, t[:k], substrate=sub, step=step, batch_size=batch_size,
                                  generator=torch.Generator().manual_seed(seed), channel_mean=channel_mean)
                         for mode, fn, sub in (("deletion", deletion, substrates[0]), ("insertion", insertion, substrates[1]))}
    return curves


def _check_substrates(model: nn.Module, images: torch.Tensor, t: torch.Tensor, substrates: tuple[str, str],
                      mean: torch.Tensor, *, batch_size: int | None, seed: int) -> tuple[dict[str, Any], list[str]]:
    """Each substrate in use checked on every image; for one above chance, the others too, and a warning
    (logged, and returned for the manifest and the report) naming those that bring the class to chance."""
    cache: dict[str, SubstrateCheck] = {}

    def check(sub: str) -> SubstrateCheck:
        if sub not in cache:
            cache[sub] = substrate_check(model, images, t, substrate=sub, channel_mean=mean, batch_size=batch_size,
                                         generator=torch.Generator().manual_seed(seed), seed=seed)
        return cache[sub]

    checks: dict[str, Any] = {mode: check(sub) for mode, sub in zip(("deletion", "insertion"), substrates)}
    warnings = []
    for mode in ("deletion", "insertion"):
        c = checks[mode]
        if not c.above_chance or (mode == "insertion" and substrates[1] == substrates[0]):
            continue
        others = {s: check(s) for s in STRONGER_SUBSTRATES if s != c.substrate}
        checks["alternatives"] = {**checks.get("alternatives", {}), **others}
        better = [s for s, o in others.items() if not o.above_chance]
        what = "deletion AUCs measure what the substrate leaves as much as the maps' order" if mode == "deletion" \
            else "insertion starts from an image that already shows the class, so its AUCs start high"
        scores = ", ".join(f"{s} p = {o.mean_probability:.2f}" for s, o in others.items())
        offer = (f"try --{mode}-substrate {better[0]}" + (f" (or {', '.join(better[1:])})" if better[1:] else "")
                 + f" ({scores})") if better else f"no other substrate brings it to chance either ({scores})"
        warnings.append(f"{mode} substrate {c.sentence()}: {c.why()}, so {what}; {offer}.")
    for w in warnings:
        log.warning(w)
    return checks, warnings


def _randomize(model: nn.Module, images: torch.Tensor, t: torch.Tensor, maps: Mapping[str, torch.Tensor],
               explainers: Mapping[str, Explainer],
               groups: Mapping[int, list[str]], *, mode: str, seed: int, timings: dict[str, float],
               progress: bool) -> RandomizationResult:
    """One randomisation mode for every group of methods (image count -> methods), merged into one result."""
    merged: RandomizationResult | None = None
    for k, ms in sorted(groups.items(), reverse=True):
        with _stage(f"{mode} randomisation of {', '.join(ms)}", timings, f"randomization/{mode}/{'+'.join(ms)}", progress):
            r = model_randomization(model, images[:k], {m: explainers[m] for m in ms}, t[:k], mode=mode,
                                    original_maps={m: maps[m][:k] for m in ms}, seed=seed)
        merged = r if merged is None else RandomizationResult(
            mode=mode, layers=merged.layers, spearman={**merged.spearman, **r.spearman}, ssim={**merged.ssim, **r.ssim},
            example_maps={**merged.example_maps, **r.example_maps}, example_index=0)
    assert merged is not None  # groups is never empty here (internal invariant, not user input)
    return merged


def _rows(per_image: Mapping[tuple[str, str], np.ndarray], methods: list[str], *, seed: int, n_boot: int) -> tuple[Row, ...]:
    """Mean and CI for every (method, metric), methods first; each method and baseline also over every
    smaller image count another method of that metric was evaluated on (the perturbation methods'), so
    that all of them are compared on the same (first) images."""
    baselines = (RANDOM_ORDER, CENTRE_PRIOR, RANDOM_MAP)
    order = [*methods, *baselines]
    metric_order = list(METRICS)
    rows: list[Row] = []
    for (method, metric), v in sorted(per_image.items(), key=lambda kv: (order.index(kv[0][0]), metric_order.index(kv[0][1]))):
        kind = "baseline" if method in baselines else "method"
        sizes = {len(v)} | {len(u) for (m, mt), u in per_image.items() if mt == metric and m in methods and len(u) < len(v)}
        for k in sorted(sizes, reverse=True):
            mean, low, high = mean_ci(v[:k], seed=seed, n_boot=n_boot)
            rows.append(Row(method, metric, kind, k, mean, low, high))
    return tuple(rows)


@contextlib.contextmanager
def _stage(description: str, timings: dict[str, float], key: str, progress: bool) -> Iterator[None]:
    """Time a stage into ``timings[key]``; with ``progress`` show a spinner naming it, then its duration."""
    start = time.perf_counter()
    if progress:
        from rich.console import Console

        console = Console(stderr=True)
        with console.status(description):
            yield
        console.print(f"  {description}: {time.perf_counter() - start:.1f} s")
    else:
        yield
    timings[key] = time.perf_counter() - start
