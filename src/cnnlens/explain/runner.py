"""The one runner: several explanation methods on a batch of images, with one seeding rule.

One place that the CLI (``cnnlens explain``), the report, faithfulness and dataset jobs call, so that all
explain the same images toward the same classes with the same options. Which images to explain is
:mod:`cnnlens.explain.selection` (re-exported here):

>>> maps = explain_images(model, x, None, ["saliency", "grad-cam"], options={"grad-cam": {"layer": "conv3"}})
>>> maps["grad-cam"].shape      # [N,H,W]
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlens._checks import check_count, is_int
from cnnlens._progress import progress_bar
from cnnlens._types import Target
from cnnlens.explain import core, registry
from cnnlens.explain.selection import by_index, misclassified, per_class, probabilities


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """The method names to run (None = every registered method, in the registry's order); an unknown name
    lists the valid ones."""
    known = registry.names()
    if methods is None:
        return known
    if isinstance(methods, str):
        raise TypeError(f"methods must be a list of names such as ['saliency', 'grad-cam'], got the string {methods!r}")
    names = list(methods)
    if not names:
        raise ValueError(f"methods is empty; choose from: {', '.join(known) or '(none registered)'}")
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; available methods: {', '.join(known) or '(none registered)'}")
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise ValueError(f"method {dupes[0]!r} is listed twice")
    return names


def _accepted(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Keyword names ``fn`` accepts, and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"model", "images", "target"}, any(p.kind is p.VAR_KEYWORD for p in params)


def result_function(method: str) -> Callable[..., Any] | None:
    """The richer result function of ``method`` (``lime`` -> ``lime_explain``: :attr:`registry.Method.result`), or None."""
    return registry.get(method).result


def _signature_source(method: str) -> Callable[..., Any]:
    fn = registry.get(method).fn
    rich = result_function(method)
    return rich if rich is not None and _accepted(fn)[1] else fn


def method_accepts(method: str, option: str) -> bool:
    """Whether ``method`` takes the keyword ``option`` (e.g. Grad-CAM's ``layer``)."""
    return option in _accepted(_signature_source(method))[0]


def check_options(methods: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Per-method options, checked against each method's signature before any work starts.

    Options for a known method that is not being run are ignored (the CLI's ``--layer`` applies to
    both Grad-CAM variants whether or not both are asked for).
    """
    known = registry.names()
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for name, opts in (options or {}).items():
        if name not in known:
            raise ValueError(f"options given for unknown method {name!r}; available methods: {', '.join(known)}")
        if not isinstance(opts, Mapping):
            raise TypeError(f"options[{name!r}] must be a dict of keyword arguments, got {type(opts).__name__}")
        if name not in out:
            continue
        accepted, var_kw = _accepted(_signature_source(name))
        bad = [k for k in opts if k not in accepted and not var_kw]
        if bad:
            raise ValueError(f"method {name!r} has no option {bad[0]!r}; its options: {', '.join(sorted(accepted)) or '(none)'}")
        out[name] = dict(opts)
    return out


@dataclass
class Explanations:
    """What :func:`run_methods` computed for ``N`` images.

    Attributes:
        maps: method -> ``[N,H,W]`` float tensor on the images' device.
        targets: the class each map explains, int64 ``[N]``.
        details: method -> the method's richer per-chunk results (``registry.Method.result``: LIME's
            ``LimeResult`` with segments and weights), as ``(first image, result)`` pairs in image order.
        skipped: method -> why it was left out (only with ``skip_unsupported``).
        options: method -> every keyword option it ran with, its own defaults included (:func:`used_options`),
            as JSON values: what ``cnnlens explain`` records in ``index.json``.
    """

    maps: dict[str, torch.Tensor]
    targets: torch.Tensor
    details: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


#: Arguments that are not options of the map: how it is computed, not what it is.
NOT_OPTIONS = ("progress",)


def json_value(value: Any) -> Any:
    """An option value as JSON: numbers, strings, None and lists as they are; a function by its name; a
    tensor as a list (or its shape when large); a generator as ``"torch.Generator"``; a ``functools.partial`` as
    ``"module.function(abs=False)"``; anything else ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 16 else f"tensor of shape {list(value.shape)}"
    if isinstance(value, torch.Generator):
        return "torch.Generator"
    if isinstance(value, functools.partial):  # its repr holds a memory address: never the same twice
        bound = ", ".join([*(repr(a) for a in value.args), *(f"{k}={v!r}" for k, v in value.keywords.items())])
        return f"{json_value(value.func)}({bound})"
    if callable(value) and hasattr(value, "__name__"):
        return f"{getattr(value, '__module__', '')}.{value.__name__}".lstrip(".")
    return repr(value)


def used_options(method: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every keyword option of ``method`` with the value it runs with: ``given`` over its signature's
    defaults (``progress`` left out), as JSON values.

    >>> used_options("occlusion", {"stride": 2})["stride"], used_options("occlusion", {})["patch"]
    (2, 5)
    """
    params = inspect.signature(_signature_source(method)).parameters.values()
    out = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
           and p.default is not p.empty and p.name not in ("model", "images", "target", *NOT_OPTIONS)}
    out.update({k: v for k, v in given.items() if k not in NOT_OPTIONS})
    return {k: json_value(v) for k, v in out.items()}


def run_methods(model: nn.Module, images: torch.Tensor, targets: Target = None, methods: Sequence[str] | None = None, *,
                options: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int | None = None,
                images_per_call: int | None = None, seed: int = 0, progress: bool | Any = False,
                details: bool = False, skip_unsupported: bool = False) -> Explanations:
    """Run each method on ``images`` ``[N,C,H,W]``, ``images_per_call`` images at a time; see :func:`explain_images`.

    ``batch_size`` has one meaning: the most inputs the model sees in one forward pass (a gradient method's
    images; a perturbation method's perturbed copies, passed on as its ``batch_size``). ``images_per_call``
    (default ``batch_size``, or the device's default) only bounds how many images' maps and intermediate
    results are held at once; each method gets the images in order, with one generator seeded with ``seed``
    drawn across its calls, so the maps depend on ``seed`` and ``images_per_call``, never on which other
    methods ran.

    ``details=True`` also keeps LIME's full result (segments and per-segment weights) for its figures.
    ``skip_unsupported=True`` leaves out a method that refuses this model on its first call (a
    ValueError/TypeError, e.g. CAM on a model without a global-average-pooling head) and records why
    in ``skipped``, instead of failing: for "every method" requests.
    """
    names = check_methods(methods)
    opts = check_options(names, options)
    core.check_images(images)
    chunk = core.check_batch_size(batch_size, images.device)
    if images_per_call is not None:
        chunk = check_count(images_per_call, "images_per_call", hint=" or None (as many as batch_size)")
    n = images.shape[0]
    with core.guarded(model):
        target = core.resolve_target(targets, n, logits=lambda: core.predict_logits(model, images, chunk),
                                      device=images.device)
    starts = list(range(0, n, chunk))
    bar, task = _progress(progress, total=len(names) * len(starts))
    maps: dict[str, torch.Tensor] = {}
    kept: dict[str, list[tuple[int, Any]]] = {}
    skipped: dict[str, str] = {}
    used: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            fn, rich = registry.get(name).fn, (result_function(name) if details else None)
            accepted, _ = _accepted(_signature_source(name))
            kw = dict(opts[name])
            if "batch_size" in accepted and batch_size is not None:
                kw.setdefault("batch_size", batch_size)
            if "generator" in accepted:
                # one seeded generator per method: a method's noise does not depend on which others ran
                kw.setdefault("generator", torch.Generator().manual_seed(seed))
            used[name] = used_options(name, kw)
            if "generator" in accepted and "generator" not in opts[name]:
                used[name]["generator"] = f"torch.Generator seeded with {seed}"
            if "batch_size" in accepted and used[name].get("batch_size") is None:
                used[name]["batch_size"] = f"auto: the method's default on {images.device.type}"
            if used[name].get("layer", "") is None:  # record the layer a CAM method resolves None to
                try:
                    with core.guarded(model), torch.no_grad():  # eval mode: BatchNorm statistics untouched
                        used[name]["layer"] = core.default_cam_layer(model, images[:1])
                except (ValueError, TypeError):
                    pass
            used[name]["images_per_call"] = chunk
            parts = []
            for s in starts:
                if bar is not None:
                    bar.update(task, description=f"{name} [{s}/{n}]")
                x, t = images[s:s + chunk], target[s:s + chunk]
                try:
                    if rich is not None:
                        result = rich(model, x, t, **kw)
                        kept.setdefault(name, []).append((s, result))
                        out = result.map()
                    else:
                        out = fn(model, x, t, **kw)
                except (ValueError, TypeError) as exc:
                    if not (skip_unsupported and s == 0):
                        raise
                    skipped[name] = str(exc)
                    break
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], *x.shape[2:]):
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise RuntimeError(f"method {name!r} returned {got}, expected maps [N,H,W] = {(x.shape[0], *x.shape[2:])}")
                parts.append(out.detach())
                if bar is not None:
                    bar.advance(task)
            if name in skipped:
                if bar is not None:
                    bar.advance(task, len(starts))
                continue
            maps[name] = torch.cat(parts)
    finally:
        if bar is not None and progress is True:
            bar.stop()
    return Explanations(maps=maps, targets=target, details=kept, skipped=skipped,
                        options={m: o for m, o in used.items() if m in maps})


def explain_images(model: nn.Module, images: torch.Tensor, targets: Target = None, methods: Sequence[str] | None = None, *,
                   options: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int | None = None,
                   seed: int = 0, progress: bool | Any = False) -> dict[str, torch.Tensor]:
    """Maps ``[N,H,W]`` of several methods for the same images and the same target classes.

    ``targets``: None (each image's predicted class, computed once for all methods), an int, or one
    per image. ``methods``: registered method names (``cnnlens.explain.registry.names()``; None = all); an unknown name is
    an error listing the valid ones, raised before any work. ``options``: per-method keyword arguments,
    ``{"grad-cam": {"layer": "features.6"}, "occlusion": {"stride": 2}}``, checked against each
    method's signature. ``batch_size``: the most inputs in one forward pass (default: the device's
    perturbation batch size): the images of one gradient-method call, and the perturbed copies of a
    perturbation method's pass (its own ``batch_size``).
    ``seed`` seeds the ``generator`` of stochastic methods (SmoothGrad, LIME): the same seed and batch
    size give the same maps. ``progress``: True for a rich progress bar, or a running
    ``rich.progress.Progress`` to add a task to.

    >>> maps = explain_images(model, x, None, ["saliency", "occlusion"], options={"occlusion": {"stride": 4}})
    """
    return run_methods(model, images, targets, methods, options=options, batch_size=batch_size, seed=seed,
                       progress=progress).maps


def _progress(progress: bool | Any, total: int) -> tuple[Any, Any]:
    if progress is False or progress is None:
        return None, None
    from rich.progress import Progress

    if progress is True:
        bar = progress_bar(transient=True)
        bar.start()
    elif isinstance(progress, Progress):
        bar = progress
    else:
        raise TypeError(f"progress must be a bool or a rich.progress.Progress, got {type(progress).__name__}")
    return bar, bar.add_task("explaining", total=total)


__all__ = ["Explanations", "by_index", "check_methods", "check_options", "explain_images", "method_accepts",
           "misclassified", "per_class", "probabilities", "result_function", "run_methods", "used_options"]
