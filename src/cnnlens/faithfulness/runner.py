"""Every faithfulness metric for every method in one call, and the table, figures and arrays it writes.

>>> result = evaluate_faithfulness(run.model, images, None, masks, ["saliency", "grad-cam", "occlusion"])
>>> result.save("runs/fer/faithfulness")
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
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
from cnnlens._checks import check_choice, check_int
from cnnlens._types import PathArg, Target
from cnnlens.explain import core, registry
from cnnlens.explain.runner import check_options, run_methods
from cnnlens.faithfulness import figures
from cnnlens.faithfulness._checks import check_masks
from cnnlens.faithfulness.deletion import (SUBSTRATES, CurveResult, SubstrateCheck, channel_means, deletion, insertion,
                                           random_maps, step_counts, substrate_check)
from cnnlens.faithfulness.localization import METRICS as LOCALIZATION_METRICS
from cnnlens.faithfulness.localization import centre_prior, localization_scores
from cnnlens.faithfulness.randomization import MODES as RANDOMIZATION_MODES
from cnnlens.faithfulness.randomization import Explainer, RandomizationResult, model_randomization
from cnnlens.faithfulness.confidence import confidence_change
from cnnlens.faithfulness.random_logit import random_logit
from cnnlens.faithfulness.randomization import mprt
from cnnlens.faithfulness.road import ORDERS as ROAD_ORDERS
from cnnlens.faithfulness.road import road
from cnnlens.faithfulness.sensitivity import max_sensitivity
from cnnlens.faithfulness.sensitivity import infidelity
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
    "average_drop": ("relative drop of the target probability when the image is multiplied by the map "
                     "(Chattopadhay et al. 2018, torch-cam)", "lower"),
    "increase_in_confidence": ("share of images whose target probability rises when multiplied by the map", "higher"),
    "infidelity": ("squared error of the map predicting the probability change under Gaussian noise, "
                   "best scale (Yeh et al. 2019, Captum)", "lower"),
    "road_morf": ("target probability with 10-90% of the most relevant pixels imputed, mean (ROAD, Rong et al. 2022)",
                  "lower"),
    "road_lerf": ("target probability with 10-90% of the least relevant pixels imputed, mean (ROAD)", "higher"),
    "max_sensitivity": ("largest relative change of the map under small uniform input noise (Yeh et al. 2019, "
                        "Captum)", "lower"),
    "random_logit": ("SSIM of the map to the map of a random other class (Sixt et al. 2020, Quantus)", "lower"),
    "mprt": ("Spearman of |map| to the original as each layer is re-initialised from the top, mean over layers "
             "(Quantus's MPRT)", "lower"),
}
#: The metric groups :func:`evaluate_faithfulness` can compute (``metrics=``), each with its table columns.
#: The last three re-explain images (on the randomisation subset, with the randomisation methods).
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "deletion": ("deletion_auc", "insertion_auc"),
    "localization": ("pointing_game", "relevance_mass", "relevance_rank"),
    "randomization": ("cascading_spearman", "cascading_ssim", "independent_spearman", "independent_ssim"),
    "confidence": ("average_drop", "increase_in_confidence"),
    "infidelity": ("infidelity",),
    "road": ("road_morf", "road_lerf"),
    "sensitivity": ("max_sensitivity",),
    "random-logit": ("random_logit",),
    "mprt": ("mprt",),
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


@dataclass(frozen=True)
class FaithfulnessSettings:
    """Every option of :func:`evaluate_faithfulness` but the data, checked once by :meth:`check`.

    Attributes:
        n_perturbation_images: perturbation methods (``perturbation_methods``; None: the registry's
            ``kind="perturbation"``) run on the first this many images only.
        n_randomization_images: the checks that re-explain images (randomisation, max-sensitivity, random
            logit, MPRT) use the first this many, with ``randomization_methods`` (None: all but the
            perturbation methods) and the randomisation ``randomization_modes``.
        step, deletion_substrate, insertion_substrate: the deletion/insertion curves'.
        method_kwargs: per-method options, checked against each method's signature.
        metrics: the metric groups to compute (:data:`METRIC_GROUPS`; None: all).
        seed, n_boot: seeds every random draw and the bootstrap; its resamples.
        batch_size: the most inputs per forward pass (metrics and perturbation methods);
        explain_batch_size: images per method call.
        skip_unsupported: leave out (with a note) a method that refuses the model.
        progress: a spinner per stage.
    """

    n_perturbation_images: int = 20
    perturbation_methods: Sequence[str] | None = None
    n_randomization_images: int = 16
    randomization_methods: Sequence[str] | None = None
    randomization_modes: Sequence[str] = RANDOMIZATION_MODES
    step: int | float = 0.05
    deletion_substrate: str = "blur"
    insertion_substrate: str = "blur"
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None
    metrics: Sequence[str] | None = None
    seed: int = 0
    n_boot: int = N_BOOT
    batch_size: int | None = None
    explain_batch_size: int = 50
    skip_unsupported: bool = False
    progress: bool = False

    def check(self, image_size: tuple[int, int]) -> None:
        """Raise the clear error of the first bad option, before any work."""
        check_int(self.n_perturbation_images, "n_perturbation_images", 0)
        check_int(self.n_randomization_images, "n_randomization_images", 0)
        check_int(self.explain_batch_size, "explain_batch_size", 1)
        for mode in self.randomization_modes:
            check_choice(mode, RANDOMIZATION_MODES, "randomization_modes entry")
        check_choice(self.deletion_substrate, SUBSTRATES, "deletion_substrate")
        check_choice(self.insertion_substrate, SUBSTRATES, "insertion_substrate")
        for group in self.groups():
            check_choice(group, tuple(METRIC_GROUPS), "metrics entry")
        step_counts(self.step, image_size[0] * image_size[1])  # a bad step fails here

    def groups(self) -> list[str]:
        """The metric groups to compute, in :data:`METRIC_GROUPS`' order."""
        if self.metrics is None:
            return list(METRIC_GROUPS)
        wanted = [self.metrics] if isinstance(self.metrics, str) else list(self.metrics)
        return [g for g in METRIC_GROUPS if g in wanted] + [g for g in wanted if g not in METRIC_GROUPS]


@dataclass
class _Work:
    """What the stages of one :func:`evaluate_faithfulness` call share."""

    model: nn.Module
    images: torch.Tensor
    targets: torch.Tensor
    masks: torch.Tensor | None
    settings: FaithfulnessSettings
    methods: list[str]
    options: dict[str, dict[str, Any]]
    n_for: dict[str, int]
    rand_set: list[str]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    per_image: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def stage(self, description: str, key: str) -> contextlib.AbstractContextManager[None]:
        return _stage(description, self.timings, key, self.settings.progress)

    def explainer(self, name: str) -> Explainer:
        """``name`` as ``(model, images, target) -> [N,H,W]`` through the one runner
        (:func:`cnnlens.explain.runner.run_methods`: a fresh CPU generator seeded with ``seed`` per call, so
        every randomisation stage and perturbation sees the same noise)."""
        s = self.settings

        def explain(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            out = run_methods(model, images, target, [name], options={name: self.options.get(name, {})},
                              batch_size=s.batch_size, images_per_call=s.explain_batch_size, seed=s.seed)
            return out.maps[name].float()

        return explain


@contextlib.contextmanager
def _registered(fns: Mapping[str, Explanation], perturbation: Sequence[str]) -> Iterator[None]:
    """A registry scope in which methods given as name -> function are registered methods too (so the one
    runner runs them; a perturbation method's name keeps its kind), undone afterwards."""
    with registry.scope():
        for name, fn in fns.items():
            registry.register(registry.Method(name, name, fn, "perturbation" if name in perturbation else "gradient"),
                              replace=True)
        yield


def _prepare(model: nn.Module, images: torch.Tensor, targets: Target, masks: torch.Tensor | None,
             fns: Mapping[str, Explanation], perturbation: Sequence[str], settings: FaithfulnessSettings) -> _Work:
    """Check everything and resolve the methods' options, the targets and each method's image count."""
    n, _, h, w = images.shape
    method_kwargs = dict(settings.method_kwargs or {})
    unknown_kw = [m for m in method_kwargs if m not in fns]
    if unknown_kw:
        raise ValueError(f"method_kwargs names method(s) {unknown_kw} that are not in methods {list(fns)}")
    method_kwargs = {m: kw for m, kw in check_options(list(fns), method_kwargs).items() if kw}
    settings.check((h, w))
    if masks is not None:
        masks = check_masks(masks, images[:, 0])
    chosen = settings.perturbation_methods if settings.perturbation_methods is not None else perturbation
    rand_set = list(settings.randomization_methods if settings.randomization_methods is not None
                    else [m for m in fns if m not in perturbation])
    unknown_rand = [m for m in rand_set if m not in fns]
    if unknown_rand:
        raise ValueError(f"randomization_methods names {unknown_rand}, which are not in methods {list(fns)}")
    with core.guarded(model), torch.inference_mode():
        logits = core.predict_logits(model, images, settings.batch_size)
    t = core.resolve_target(targets, n, logits.shape[1], logits=lambda: logits, device=images.device)
    k = settings.n_perturbation_images
    work = _Work(model, images, t, masks, settings, list(fns), method_kwargs,
                 {m: min(n, k) if m in chosen else n for m in fns}, rand_set)
    for m, count in work.n_for.items():
        if count == 0:
            work.notes.append(f"{m}: skipped, n_perturbation_images is 0")
        elif count < n:
            work.notes.append(f"{m}: a perturbation method, evaluated on the first {count} of {n} images "
                              "(n_perturbation_images / --n-perturbation-images); every other method and baseline "
                              f"is also scored on those {count}, for a comparison on the same images")
    return work


def _maps(work: _Work) -> dict[str, torch.Tensor]:
    """Each method's maps of its first ``n_for`` images, through the one runner."""
    maps: dict[str, torch.Tensor] = {}
    s = work.settings
    for m in work.methods:
        k = work.n_for[m]
        with work.stage(f"{m}: maps of {k} images", f"maps/{m}"):
            if k == 0:
                continue
            out = run_methods(work.model, work.images[:k], work.targets[:k], [m], options={m: work.options.get(m, {})},
                              batch_size=s.batch_size, images_per_call=s.explain_batch_size, seed=s.seed,
                              skip_unsupported=s.skip_unsupported)
            if m in out.skipped:
                work.notes.append(f"{m}: skipped, it does not support this model ({out.skipped[m]})")
                continue
            maps[m] = out.maps[m].float().to(work.images.device)
    return maps


def _deletion_stage(work: _Work, maps: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], list[str], dict[str, dict[str, CurveResult]]]:
    """The substrate check and the deletion/insertion curves of every map set and of the random order."""
    s, (n, _, h, w) = work.settings, work.images.shape
    mean = channel_means(work.images)  # the dataset mean of every image, for "dataset-mean" and ROAD on any subset
    with work.stage("substrate check", "substrate_check"):
        checks, warnings = _check_substrates(work.model, work.images, work.targets,
                                             (s.deletion_substrate, s.insertion_substrate), mean,
                                             batch_size=s.batch_size, seed=s.seed)
    baseline = random_maps(n, h, w, torch.Generator().manual_seed(s.seed + 1)).to(work.images.device)
    curves = _curves(work.model, work.images, work.targets, {**maps, RANDOM_ORDER: baseline}, step=s.step,
                     batch_size=s.batch_size, seed=s.seed, substrates=(s.deletion_substrate, s.insertion_substrate),
                     channel_mean=mean, timings=work.timings, progress=s.progress)
    for m, by_mode in curves.items():
        for mode, c in by_mode.items():
            work.per_image[(m, f"{mode}_auc")] = c.auc.double().cpu().numpy()
    return checks, warnings, curves


def _localization_stage(work: _Work, maps: Mapping[str, torch.Tensor]) -> None:
    """Pointing game, relevance mass and rank against the masks, beside a centre prior and a random map."""
    n, _, h, w = work.images.shape
    if work.masks is None:
        work.notes.append("localisation: skipped, no ground-truth masks (synthetic faces carry them; "
                          "for other data give a folder of PNG masks)")
        return
    device = work.images.device
    with work.stage("localisation", "localization"):
        loc_maps = {**maps, CENTRE_PRIOR: centre_prior(h, w).to(device).expand(n, h, w),
                    RANDOM_MAP: random_maps(n, h, w, torch.Generator().manual_seed(work.settings.seed + 2)).to(device)}
        for m, mp in loc_maps.items():
            for metric, v in localization_scores(mp, work.masks[:mp.shape[0]]).items():
                work.per_image[(m, metric)] = v.cpu().numpy()


def _map_metrics_stage(work: _Work, maps: Mapping[str, torch.Tensor], groups: Sequence[str]) -> None:
    """The peers' metrics of given maps (Average Drop / Increase in Confidence, infidelity, ROAD MoRF and LeRF),
    for every method and for random maps (the random-order baseline's), each on the method's images."""
    s, (n, _, h, w) = work.settings, work.images.shape
    baseline = random_maps(n, h, w, torch.Generator().manual_seed(s.seed + 1)).to(work.images.device)
    for m, mp in {**maps, RANDOM_ORDER: baseline}.items():
        k = mp.shape[0]
        x, t = work.images[:k], work.targets[:k]
        if "confidence" in groups:
            with work.stage(f"{m}: average drop, increase in confidence", f"confidence/{m}"):
                r = confidence_change(work.model, x, mp, t, batch_size=s.batch_size)
                work.per_image[(m, "average_drop")] = r.drop.double().cpu().numpy()
                work.per_image[(m, "increase_in_confidence")] = r.increase.double().cpu().numpy()
        if "infidelity" in groups:
            with work.stage(f"{m}: infidelity", f"infidelity/{m}"):
                work.per_image[(m, "infidelity")] = infidelity(
                    work.model, x, mp, t, generator=torch.Generator().manual_seed(s.seed),
                    batch_size=s.batch_size).cpu().numpy()
        if "road" in groups:
            with work.stage(f"{m}: ROAD MoRF and LeRF", f"road/{m}"):
                for order in ROAD_ORDERS:  # the same seed for every method: ties and noise drawn alike
                    r = road(work.model, x, mp, t, order=order, channel_mean=channel_means(work.images),
                             generator=torch.Generator().manual_seed(s.seed), batch_size=s.batch_size)
                    work.per_image[(m, f"road_{order}")] = r.score.cpu().numpy()


def _reexplain_groups(work: _Work, maps: Mapping[str, torch.Tensor]) -> dict[int, list[str]]:
    """Image count -> the methods that the re-explaining checks run on that many images (with notes)."""
    n, k = work.images.shape[0], work.settings.n_randomization_images
    left_out = [m for m in maps if m not in work.rand_set]
    if left_out and k > 0:
        work.notes.append(f"randomisation check: left out {', '.join(left_out)} (perturbation methods read only the "
                          "model's outputs and would re-run on every image for every layer; name them in "
                          "randomization_methods / --randomization-methods to include them)")
    groups: dict[int, list[str]] = {}
    for m in work.rand_set:
        if m in maps and min(k, work.n_for[m]) > 0:
            groups.setdefault(min(k, work.n_for[m]), []).append(m)
    if groups:
        work.notes.append(f"randomisation check: first {max(groups)} of {n} images"
                          + ("" if len(groups) < 2 else f" ({', '.join(groups[min(groups)])}: first {min(groups)})"))
    elif k == 0:
        work.notes.append("randomisation check: skipped (n_randomization_images=0)")
    return groups


def _randomization_stage(work: _Work, maps: Mapping[str, torch.Tensor],
                         groups: Mapping[int, list[str]]) -> dict[str, RandomizationResult]:
    """Cascading and independent model randomisation (Adebayo et al. 2018) of each group of methods."""
    s = work.settings
    explainers = {m: work.explainer(m) for ms in groups.values() for m in ms}
    randomization = {mode: _randomize(work.model, work.images, work.targets, maps, explainers, groups, mode=mode,
                                      seed=s.seed, timings=work.timings, progress=s.progress)
                     for mode in s.randomization_modes if groups}
    for mode, r in randomization.items():
        for m in r.spearman:
            work.per_image[(m, f"{mode}_spearman")] = r.spearman[m].mean(0).numpy()
            work.per_image[(m, f"{mode}_ssim")] = r.ssim[m].mean(0).numpy()
    return randomization


def _reexplain_stage(work: _Work, maps: Mapping[str, torch.Tensor], groups: Mapping[int, list[str]],
                     wanted: Sequence[str]) -> None:
    """Max-sensitivity, random logit and Quantus's MPRT: each re-explains the images of its group."""
    s = work.settings
    for k, ms in sorted(groups.items(), reverse=True):
        x, t = work.images[:k], work.targets[:k]
        for m in ms:
            explain = work.explainer(m)
            if "sensitivity" in wanted:
                with work.stage(f"{m}: max-sensitivity", f"sensitivity/{m}"):
                    work.per_image[(m, "max_sensitivity")] = max_sensitivity(
                        work.model, x, explain, t, maps=maps[m][:k],
                        generator=torch.Generator().manual_seed(s.seed)).cpu().numpy()
            if "random-logit" in wanted:
                with work.stage(f"{m}: random logit", f"random_logit/{m}"):
                    work.per_image[(m, "random_logit")] = random_logit(
                        work.model, x, explain, t, maps=maps[m][:k],
                        generator=torch.Generator().manual_seed(s.seed)).score.cpu().numpy()
            if "mprt" in wanted:
                with work.stage(f"{m}: MPRT", f"mprt/{m}"):
                    work.per_image[(m, "mprt")] = mprt(work.model, x, explain, t, maps=maps[m][:k],
                                                       seed=s.seed).score.numpy()


def evaluate_faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    targets: Target = None,
    masks: torch.Tensor | None = None,
    methods: Sequence[str] | Mapping[str, Explanation] = ("saliency", "grad-cam"),
    *,
    names: Sequence[str] | None = None,
    sampling: Mapping[str, Any] | None = None,
    settings: FaithfulnessSettings | None = None,
    **options: Any,
) -> FaithfulnessResult:
    """Deletion/insertion, localisation, the randomisation sanity checks and the peers' metrics (Average
    Drop, Increase in Confidence, infidelity, ROAD MoRF/LeRF, max-sensitivity, random logit, MPRT) for each
    method, with baselines and a 95% bootstrap interval over images.

    ``images`` float ``[N,C,H,W]`` in [0,1]; ``targets`` as in ``cnnlens.explain`` (None = the predicted
    class, resolved once and used by every method and metric); ``masks`` bool ``[N,H,W]`` ground truth
    (None: no localisation). ``methods``: registered method names or name -> function (run through the
    one runner, :func:`cnnlens.explain.runner.run_methods`, either way). ``options`` (or ``settings``) are
    :class:`FaithfulnessSettings`' fields: perturbation methods run on the first ``n_perturbation_images``
    images only, the checks that re-explain images on the first ``n_randomization_images`` with
    ``randomization_methods`` (default: all but the perturbation methods); ``metrics`` picks the metric
    groups (:data:`METRIC_GROUPS`, default all). Baselines: the random order (random maps) for the
    map metrics, a centred Gaussian and a random map for localisation. Subsets are always the first
    images, so pass them in a stratified random order (:func:`stratified_order`, as
    :func:`evaluate_run_faithfulness` does) and say how in ``sampling`` (recorded in ``settings``). Every
    method and baseline is also scored on each smaller subset, so that any two compare on the same images.
    The substrates are checked on all images (:func:`~cnnlens.faithfulness.deletion.substrate_check`).

    >>> r = evaluate_faithfulness(model, x, None, masks, ["saliency", "grad-cam", "occlusion"])
    >>> r.row("grad-cam", "deletion_auc").mean < r.row("random-order", "deletion_auc").mean
    """
    fields = FaithfulnessSettings.__dataclass_fields__
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise TypeError(f"evaluate_faithfulness got an unknown option {unknown[0]!r}; options: {', '.join(fields)}")
    s = dataclasses.replace(settings or FaithfulnessSettings(), **options)
    core.check_images(images)
    if names is not None and len(names) != images.shape[0]:
        raise ValueError(f"names has {len(names)} entries but images has N={images.shape[0]}")
    images = images.detach()
    fns = resolve_methods(methods)
    perturbation = registry.names(kind="perturbation")
    with _registered(fns if isinstance(methods, Mapping) else {}, perturbation):
        work = _prepare(model, images, targets, masks, fns, perturbation, s)
        groups_wanted = s.groups()
        maps = _maps(work)
        checks, warnings, curves = _deletion_stage(work, maps) if "deletion" in groups_wanted else ({}, [], {})
        if "localization" in groups_wanted:
            _localization_stage(work, maps)
        _map_metrics_stage(work, maps, groups_wanted)
        groups = _reexplain_groups(work, maps)
        randomization = _randomization_stage(work, maps, groups) if "randomization" in groups_wanted else {}
        _reexplain_stage(work, maps, groups, groups_wanted)
    n, _, h, w = images.shape
    rows = _rows(work.per_image, work.methods, seed=s.seed, n_boot=s.n_boot)
    record = {
        "methods": list(maps), "n_images": n, "image_size": [h, w], "n_perturbation_images": s.n_perturbation_images,
        "perturbation_methods": list(s.perturbation_methods if s.perturbation_methods is not None
                                     else registry.names(kind="perturbation")),
        "n_randomization_images": s.n_randomization_images, "randomization_methods": work.rand_set,
        "randomization_modes": list(s.randomization_modes), "metrics": groups_wanted,
        "step": s.step, "deletion_substrate": s.deletion_substrate, "insertion_substrate": s.insertion_substrate,
        "method_kwargs": {m: {k: repr(v) for k, v in kw.items()} for m, kw in work.options.items()},
        "targets": "given" if targets is not None else "predicted class", "seed": s.seed, "n_boot": s.n_boot,
        "device": str(images.device),
        "sampling": dict(sampling) if sampling is not None else
        {"method": "as given: the images passed in, in their order", "n_images": n},
    }
    return FaithfulnessResult(rows=rows, per_image=work.per_image, curves=curves, randomization=randomization,
                              names=tuple(names) if names is not None else tuple(str(i) for i in range(n)),
                              targets=tuple(work.targets.tolist()), settings=record, notes=tuple(work.notes),
                              timings=work.timings, example_image=images[0].cpu(), substrate_checks=checks,
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
