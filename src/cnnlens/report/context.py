"""What a report is made from (:class:`ReportInputs`), how much work it does (:class:`ReportOptions`),
and the shared state its sections read (:class:`ReportContext`: predictions computed once, maps cached)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens._checks import check_count, is_int, is_number
from cnnlens.data.imageset import ImageSet
from cnnlens.explain import registry
from cnnlens.report.assets import Assets
from cnnlens.train.run import resolve_device
from cnnlens.viz.defaults import MASK_PERCENTILE

def default_methods() -> tuple[str, ...]:
    """The methods a report shows side by side unless told otherwise: those registered with ``in_report``,
    in that order (the seeds' order; "masked" is the saliency's third panel)."""
    chosen = sorted((m for m in registry.registered() if m.in_report is not None), key=lambda m: m.in_report)
    return tuple(m.name for m in chosen)


def default_average_methods() -> tuple[str, ...]:
    """The cheap methods averaged over many images per class (``class_average``: perturbation methods cost
    hundreds of passes each), in the registry's order."""
    return tuple(registry.names(class_average=True))


def method_label(method: str) -> str:
    """A person's name for a method id (``"grad-cam" -> "Grad-CAM"``); an unregistered id as it is."""
    return registry.get(method).label if method in registry.names() else method


@dataclass(frozen=True)
class ReportOptions:
    """How much a report computes. The defaults make the demo's report (small_cnn, 48x48 faces, 2 CPU
    cores) take well under a minute; raise them for a closer look. The method options default to each
    method's registered ``options`` and the mask percentile to :mod:`cnnlens.viz.defaults`, as in ``cnnlens explain``.

    Attributes:
        split: the run's split whose images are shown and scored.
        images_per_class: per class, this many most-confidently-right and most-confidently-wrong images.
        examples_per_class: example thumbnails per class in the Data section.
        methods: explanation methods shown side by side (registered names; default :func:`default_methods`).
        occlusion_stride / occlusion_patch: the occlusion grid, in pixels (the seeds' 5x5 patches).
        occlusion_fill: what a patch hides with (``black``, ``white``, ``mean``, ``black+white``); the image's
            mean by default: on dark faces a black patch hides little (measured on the demo faces).
        lime_samples: perturbed samples per image for LIME (LIME's own default is 1000; 300 keeps the demo fast).
        smoothgrad_samples / ig_steps: noisy copies for SmoothGrad, steps for integrated gradients.
        average_methods / average_images: methods (default :func:`default_average_methods`) and images per
            class for the class-average maps.
        filter_layers: layers whose filters are shown (None: the ReLU after the middle and the last conv layer).
        filters_per_layer / exemplars: filters shown per layer, real image patches shown per filter.
        filter_rule: how the filters are chosen: ``"activation"`` (highest mean activation on the split) or
            ``"contribution:CLASS"`` (highest mean gradient x activation toward that class's logit).
        am_steps / am_lr: Adam steps and rate of the synthetic images (32: on the demo model's neuron images
            the share reaching the best real patch stops rising there and the high-frequency share, closest to
            the real patches' there, only grows after; docs/feature-visualization.md, "Steps"; the library
            default is 128).
        feature_map_layers: layers whose outputs are shown for one image (None: the first and the last conv layer).
        feature_maps: channels shown per feature-map layer.
        mask_percentile: the masked original keeps pixels with saliency at or above this percentile.
        seed: seeds LIME, SmoothGrad and activation maximisation.
        device: where the model runs (``auto``, ``cpu``, ``cuda``).
        batch_size: perturbation batch size (None: cnnlens' default for the device).
        title: page title (default: "cnnlens report: <run name>").
        progress: show a progress bar over the stages.
        explanations: a dataset job's folder (``cnnlens explain RUN --engine ...``, :mod:`cnnlens.jobs`): the maps of
            the images shown are read from it for the methods it holds, instead of computed (same model and images).
    """

    split: str = "val"
    images_per_class: int = 1
    examples_per_class: int = 6
    methods: tuple[str, ...] = field(default_factory=default_methods)
    occlusion_stride: int = registry.get("occlusion").options["stride"]
    occlusion_patch: int = registry.get("occlusion").options["patch"]
    occlusion_fill: str = registry.get("occlusion").options["fill"]
    lime_samples: int = registry.get("lime").options["n_samples"]
    smoothgrad_samples: int = registry.get("smoothgrad").options["n_samples"]
    ig_steps: int = registry.get("integrated-gradients").options["n_steps"]
    average_methods: tuple[str, ...] = field(default_factory=default_average_methods)
    average_images: int = 16
    filter_layers: tuple[str, ...] | None = None
    filters_per_layer: int = 8
    exemplars: int = 6
    filter_rule: str = "activation"
    am_steps: int = 32
    am_lr: float = 0.05
    feature_map_layers: tuple[str, ...] | None = None
    feature_maps: int = 12
    mask_percentile: float = MASK_PERCENTILE
    seed: int = 0
    device: str = "cpu"
    batch_size: int | None = None
    title: str | None = None
    progress: bool = False
    explanations: str | None = None

    def __post_init__(self) -> None:
        for name in ("images_per_class", "examples_per_class", "occlusion_stride", "occlusion_patch",
                     "lime_samples", "smoothgrad_samples", "ig_steps", "average_images",
                     "filters_per_layer", "exemplars", "am_steps", "feature_maps"):
            v = getattr(self, name)
            check_count(v, f"ReportOptions.{name}")
        if self.batch_size is not None and not is_int(self.batch_size, 1):
            raise ValueError(f"ReportOptions.batch_size must be a positive int or None, got {self.batch_size!r}")
        rule = self.filter_rule.partition(":") if isinstance(self.filter_rule, str) else None
        if rule is None or not (rule == ("activation", "", "") or (rule[0] == "contribution" and rule[2])):
            raise ValueError(f"ReportOptions.filter_rule must be 'activation' or 'contribution:CLASS', got {self.filter_rule!r}")
        if not is_number(self.am_lr) or not self.am_lr > 0:
            raise ValueError(f"ReportOptions.am_lr must be a positive number, got {self.am_lr!r}")
        if not is_number(self.mask_percentile) or not 0.0 <= self.mask_percentile <= 100.0:
            raise ValueError(f"ReportOptions.mask_percentile must be in [0, 100], got {self.mask_percentile!r}")
        for name in ("methods", "average_methods"):
            v = getattr(self, name)
            if isinstance(v, str) or not all(isinstance(m, str) for m in v):
                raise TypeError(f"ReportOptions.{name} must be a tuple of method ids, got {v!r}")
            if len(set(v)) != len(v):
                raise ValueError(f"ReportOptions.{name} lists a method twice: {list(v)}")
        for name in ("filter_layers", "feature_map_layers"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, str) or not all(isinstance(m, str) for m in v)):
                raise TypeError(f"ReportOptions.{name} must be a tuple of layer names or None, got {v!r}")


@dataclass
class ReportInputs:
    """Everything a report reads: a model, the images it is judged on, and (optionally) its run folder.

    Attributes:
        model: the classifier (``[N,C,H,W]`` float in [0,1] -> logits ``[N,K]``).
        dataset: the split shown in the report, labelled.
        name: the run's name as shown in the page.
        run_dir: the run folder (history.csv, curves.png, tensorboard/, eval/, faithfulness/), or None.
        config: the run's config.json as a dict (empty when there is none).
        data: the dataset's spec when it is not the run's own split (``cnnlens report --data SPEC``), so the
            page names it instead of "the val split"; None for the run's own.
    """

    model: nn.Module
    dataset: ImageSet
    name: str
    run_dir: Path | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    data: str | None = None


class ReportContext:
    """Shared state for the sections: the model's predictions on the split, computed once in batches."""

    def __init__(self, inputs: ReportInputs, options: ReportOptions, assets: Assets) -> None:
        self.inputs = inputs
        self.options = options
        self.assets = assets
        self.device = resolve_device(options.device)
        self._maps: dict[tuple[str, tuple[int, ...], tuple[int, ...]], np.ndarray | str] = {}

    @property
    def model(self) -> nn.Module:
        """The model under study."""
        return self.inputs.model

    @property
    def dataset(self) -> ImageSet:
        """The split shown in the report."""
        return self.inputs.dataset

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, index = label."""
        return tuple(self.inputs.dataset.classes)

    @property
    def split_name(self) -> str:
        """How the page names the images it shows: ``"the val split"``, or ``"folder:photos (all)"`` for a
        dataset given with ``--data``."""
        split = self.options.split
        if self.inputs.data is None:
            return f"the {split} split"
        return f"{self.inputs.data}" + ("" if split in (None, "", "all") else f" ({split} split)")

    @property
    def run_dir(self) -> Path | None:
        """The run folder, if the report is made from one."""
        return self.inputs.run_dir

    def float_images(self, index: Sequence[int] | None = None) -> torch.Tensor:
        """Images of the split as float32 in [0,1] on the report's device."""
        idx = None if index is None else list(index)
        return self.dataset.float_images(idx).to(self.device)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """Softmax probabilities ``[N,K]`` of the model on the whole split (one batched pass, eval mode)."""
        from cnnlens.explain.runner import probabilities

        n, bs = len(self.dataset), 512  # convert to float a chunk at a time: a whole split may not fit
        parts = [probabilities(self.model, self.float_images(range(i, min(i + bs, n)))).cpu() for i in range(0, n, bs)]
        probs = torch.cat(parts).numpy() if parts else np.zeros((0, len(self.classes)), dtype=np.float32)
        if probs.shape[1] != len(self.classes):
            raise ValueError(f"the model returns {probs.shape[1]} scores but the dataset has "
                             f"{len(self.classes)} classes {list(self.classes)}")
        return probs

    @cached_property
    def predictions(self) -> np.ndarray:
        """Predicted class per image ``[N]``."""
        return self.probabilities.argmax(1) if len(self.probabilities) else np.zeros(0, dtype=np.int64)

    @cached_property
    def labels(self) -> np.ndarray:
        """True labels ``[N]`` (-1 where unknown)."""
        return self.dataset.labels.cpu().numpy().astype(np.int64)

    def method_options(self, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per-method options: each method's registered defaults, under the ones the report's own options
        control (occlusion grid, LIME samples, SmoothGrad copies, IG steps)."""
        o = self.options
        flags = {
            "smoothgrad": {"n_samples": o.smoothgrad_samples},
            "integrated-gradients": {"n_steps": o.ig_steps},
            "occlusion": {"stride": o.occlusion_stride, "patch": o.occlusion_patch, "fill": o.occlusion_fill},
            "lime": {"n_samples": o.lime_samples},
        }
        defaults = registry.default_options(m for m in methods if m in registry.names())
        return {m: {**defaults.get(m, {}), **flags.get(m, {})} for m in methods if m in defaults or m in flags}

    def explain(self, methods: Sequence[str], index: Sequence[int], target: Sequence[int]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Maps ``[N,H,W]`` (numpy) of each method for the split's images at ``index`` toward ``target``.

        Runs :func:`cnnlens.explain.runner.run_methods` once per method and caches the result, so the
        sections that show the same images share the work. A method that refuses this model (the
        runner's ``skip_unsupported``: e.g. CAM without a global-average-pooling head) is left out; the
        second dict maps it to the reason, for the page to say so.
        """
        from cnnlens.explain.runner import run_methods

        idx, tgt = tuple(int(i) for i in index), tuple(int(t) for t in target)
        maps: dict[str, np.ndarray] = {}
        skipped: dict[str, str] = {}
        todo = [m for m in methods if (m, idx, tgt) not in self._maps]
        if todo and idx and self.options.explanations is not None:  # read from a dataset job where it has them
            from cnnlens.jobs.job import maps_from_job

            for m, arr in maps_from_job(self.options.explanations, self.model, self.dataset, idx, tgt, todo).items():
                self._maps[(m, idx, tgt)] = arr
            todo = [m for m in todo if (m, idx, tgt) not in self._maps]
        if todo and idx:
            x = self.float_images(idx)
            t = torch.tensor(tgt, dtype=torch.long, device=self.device)
            options = self.method_options(todo)
            for m in todo:  # one method at a time: each result is cached on its own
                out = run_methods(self.model, x, t, [m], options={m: options[m]} if m in options else None,
                                  batch_size=self.options.batch_size, seed=self.options.seed, skip_unsupported=True)
                self._maps[(m, idx, tgt)] = out.skipped[m] if m in out.skipped else out.maps[m].detach().float().cpu().numpy()
        for m in methods:
            if not idx:
                maps[m] = np.zeros((0, *self.dataset.input_shape[1:]), dtype=np.float32)
                continue
            value = self._maps[(m, idx, tgt)]
            if isinstance(value, str):
                skipped[m] = value
            else:
                maps[m] = value
        return maps, skipped
