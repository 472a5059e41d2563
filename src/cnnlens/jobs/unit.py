"""The one pure unit of work of a dataset job: ``(image ids, images, labels) -> columns``.

Every engine (``local``, ``ray``) calls :func:`compute` on batches of images and nothing else, so a shard
holds the same numbers wherever and with whichever neighbours it ran:

- each image's random numbers come from its own generator, seeded from ``(seed, image id, purpose)``
  (:func:`image_generator`): SmoothGrad's and LIME's noise, and the tie-breaking of deletion/insertion;
  a method that takes a ``generator`` is called once per image for that reason (its perturbations are
  batched inside the call);
- in deterministic mode (``cnnlens.explain.accel.set_deterministic`` / ``CNNLENS_DETERMINISTIC=1``) every
  image goes through the model alone (batches of one), so its float rounding cannot depend on the other
  images of the batch: an image's map is bit-identical in any shard or batch composition (same machine
  and thread count). Outside it, gradient and CAM methods run ``batch_size`` images per call (faster;
  equal to rounding);
- :func:`prime` runs every method once on the job's fixed probe images (the split's first two), so the
  speed layer's one-time choices (``accel.prepared``'s check of its copy) are made on the same images in
  every worker, never on whichever batch came first.

>>> work = Work(methods=("saliency", "grad-cam"), options={"grad-cam": {"layer": "conv3"}}, scores=("deletion",))
>>> cols = compute(model, work, np.arange(4), images_uint8[:4])
>>> cols["grad-cam:map"].shape, cols["grad-cam:deletion_auc"].shape
((4, 48, 48), (4,))
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens.explain import accel, core, registry
from cnnlens.explain.runner import method_accepts

#: Per-image faithfulness scores a job can compute for each method (area under the curve, per image).
SCORES = ("deletion", "insertion")
#: dtypes maps may be stored in.
MAP_DTYPES = ("float32", "float16")
#: What ``target`` may be: each image's predicted class, or its label.
TARGETS = ("predicted", "labels")


@dataclass(frozen=True)
class Work:
    """What a job computes for every image (picklable: it travels to every worker).

    Attributes:
        methods: registered method names.
        options: method -> keyword options (layer names as strings: resolved by :func:`resolve`).
        seed: with the image id, seeds every random draw of that image (:func:`image_generator`).
        target: ``"predicted"`` (the model's class) or ``"labels"`` (each image's label, >= 0).
        save_maps: keep the maps (``<method>:map`` columns); False keeps only the numbers.
        map_dtype: ``"float32"`` or ``"float16"`` (scores are always computed from the float32 maps).
        scores: per-image faithfulness scores, a subset of :data:`SCORES` (``<method>:deletion_auc``...).
        step: deletion/insertion step (share of pixels, or pixels per step).
        deletion_substrate / insertion_substrate: see ``cnnlens.faithfulness.deletion.SUBSTRATES``.
        channel_mean: the split's per-channel mean (for ``dataset-mean`` and ROAD), fixed for the whole job.
        batch_size: images per method call outside deterministic mode (None: the whole batch given).
        fast: the methods' ``fast`` flag.
        probe: uint8 ``[P,C,H,W]``, the split's first images: what :func:`prime` warms the speed layer on.
    """

    methods: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed: int = 0
    target: str = "predicted"
    save_maps: bool = True
    map_dtype: str = "float32"
    scores: tuple[str, ...] = ()
    step: int | float = 0.05
    deletion_substrate: str = "blur"
    insertion_substrate: str = "blur"
    channel_mean: tuple[float, ...] | None = None
    batch_size: int | None = None
    fast: bool = True
    probe: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.methods, str) or not self.methods:
            raise ValueError(f"methods must be a non-empty list of method names, got {self.methods!r}")
        unknown = [m for m in self.methods if m not in registry.names()]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; available methods: {', '.join(registry.names())}")
        for value, allowed, name in ((self.target, TARGETS, "target"), (self.map_dtype, MAP_DTYPES, "map_dtype")):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        bad = [s for s in self.scores if s not in SCORES]
        if bad:
            raise ValueError(f"scores must be a subset of {', '.join(SCORES)}; got {bad[0]!r}")
        if not self.save_maps and not self.scores:
            raise ValueError("save_maps=False and no scores: the job would compute nothing; keep the maps or ask for scores")

    def columns(self) -> list[str]:
        """The columns :func:`compute` returns, in order."""
        cols = ["id", "label", "target", "prediction", "probabilities"]
        for m in self.methods:
            cols += [f"{m}:map"] if self.save_maps else []
            cols += [f"{m}:{s}_auc" for s in self.scores]
        return cols

    def describe(self) -> dict[str, Any]:
        """The settings as JSON (the manifest's ``work``; the probe is the split's first images)."""
        from cnnlens.explain.runner import used_options

        return {"methods": list(self.methods), "options": {m: used_options(m, self.options.get(m, {})) for m in self.methods},
                "seed": self.seed, "target": self.target, "save_maps": self.save_maps, "map_dtype": self.map_dtype,
                "scores": list(self.scores), "step": self.step, "deletion_substrate": self.deletion_substrate,
                "insertion_substrate": self.insertion_substrate,
                "channel_mean": None if self.channel_mean is None else list(self.channel_mean), "fast": self.fast,
                "seeding": "per image: sha256(seed, image id, purpose)"}


def image_seed(seed: int, image_id: int, purpose: str) -> int:
    """A 63-bit seed for one image and one use of randomness (a method's noise, a score's tie-breaking).

    >>> image_seed(0, 17, "lime") == image_seed(0, 17, "lime") != image_seed(0, 18, "lime")
    True
    """
    digest = hashlib.sha256(f"{int(seed)}:{int(image_id)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_generator(seed: int, image_id: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded with :func:`image_seed`: the same draws for this image wherever it is computed."""
    return torch.Generator().manual_seed(image_seed(seed, image_id, purpose))


def resolve(model: nn.Module, work: Work, probe: torch.Tensor) -> Work:
    """``work`` with every CAM method's layer named (its default found on ``probe`` when not given), so the
    manifest records it and every worker uses the same one."""
    options = {m: dict(work.options.get(m, {})) for m in work.methods}
    for m in work.methods:
        if registry.get(m).layer:
            layer = options[m].get("layer")
            if layer is None:
                with core.guarded(model), torch.no_grad():
                    layer = core.default_cam_layer(model, probe[:1])
            options[m]["layer"] = core.layer_name(model, layer)
    return dataclasses.replace(work, options=options)


def _float(images: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif not x.is_floating_point():
        raise TypeError(f"images must be uint8 (0-255) or floating point (0-1), got {x.dtype}")
    return x.float().to(device)


def _device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _kwargs(work: Work, method: str) -> dict[str, Any]:
    kw = dict(work.options.get(method, {}))
    if method_accepts(method, "fast"):
        kw.setdefault("fast", work.fast)
    return kw


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def prime(model: nn.Module, work: Work) -> None:
    """Run every method (and score) once on ``work.probe``, discarding the result: the speed layer's one-time
    choices for this model are then made on the job's fixed images in every process (see the module doc)."""
    if work.probe is None:
        return
    ids = np.arange(-len(work.probe), 0, dtype=np.int64)  # ids no image has: draws unlike any real image's
    compute(model, dataclasses.replace(work, target="predicted"), ids, work.probe, None)  # the probe has no labels


def compute(model: nn.Module, work: Work, ids: Sequence[int] | np.ndarray, images: torch.Tensor | np.ndarray,
            labels: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The columns of ``work`` for these images: ``id``, ``label``, ``target``, ``prediction``,
    ``probabilities`` ``[B,K]``, and per method ``<m>:map`` ``[B,H,W]`` (``work.map_dtype``) and
    ``<m>:<score>_auc`` ``[B]`` float32. ``images``: ``[B,C,H,W]`` uint8 (0-255) or float (0-1); ``labels``:
    ``[B]`` (-1 unknown; needed for ``target="labels"``). Pure: depends on nothing but its arguments
    (and the model's weights), see the module doc.
    """
    device = _device(model)
    x = _float(images, device)
    core.check_images(x)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = x.shape[0]
    if ids.shape != (n,):
        raise ValueError(f"ids must hold one id per image ({n}), got shape {ids.shape}")
    lab = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if lab.shape != (n,):
        raise ValueError(f"labels must hold one label per image ({n}), got shape {lab.shape}")
    alone = accel.is_deterministic()  # one image per model call: rounding independent of the neighbours
    step = 1 if alone else (work.batch_size or n)
    with core.guarded(model), torch.no_grad():
        logits = torch.cat([model(x[s]) for s in _chunks(n, step)]).float()
    probs = logits.softmax(dim=1)
    pred = logits.argmax(dim=1)
    if work.target == "labels":
        if (lab < 0).any():
            raise ValueError(f"target='labels' but image {int(ids[np.argmax(lab < 0)])} has no label (-1); use target='predicted'")
        target = torch.from_numpy(lab).to(device)
    else:
        target = pred
    out: dict[str, np.ndarray] = {"id": ids, "label": lab, "target": target.cpu().numpy().astype(np.int64),
                                  "prediction": pred.cpu().numpy().astype(np.int64),
                                  "probabilities": probs.cpu().numpy().astype(np.float32)}
    for m in work.methods:
        fn, kw = registry.get(m).fn, _kwargs(work, m)
        if method_accepts(m, "generator"):  # its noise per image: one call per image, its own generator
            parts = [fn(model, x[i:i + 1], target[i:i + 1], generator=image_generator(work.seed, ids[i], m), **kw)
                     for i in range(n)]
        else:
            parts = [fn(model, x[s], target[s], **kw) for s in _chunks(n, step)]
        maps = torch.cat([p.detach() for p in parts]).float()
        if tuple(maps.shape) != (n, *x.shape[2:]):
            raise RuntimeError(f"method {m!r} returned maps of shape {tuple(maps.shape)}, expected {(n, *x.shape[2:])}")
        if work.save_maps:
            out[f"{m}:map"] = maps.cpu().numpy().astype(work.map_dtype)
        if work.scores:
            from cnnlens.faithfulness.deletion import perturbation_curve
        for score in work.scores:
            substrate = work.deletion_substrate if score == "deletion" else work.insertion_substrate
            auc = [perturbation_curve(model, x[i:i + 1], maps[i:i + 1], target[i:i + 1], mode=score, step=work.step,
                                      substrate=substrate, channel_mean=work.channel_mean,
                                      generator=image_generator(work.seed, ids[i], f"{m}:{score}")).auc
                   for i in range(n)]  # tie-breaking (and ROAD's noise) per image
            out[f"{m}:{score}_auc"] = torch.cat(auc).cpu().numpy().astype(np.float32)
    return out
