"""``explain_dataset``: a whole split explained (and scored) by an engine into a resumable folder of shards."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens._checks import check_int
from cnnlens._progress import progress_bar
from cnnlens._types import PathArg
from cnnlens.explain import accel, core, registry
from cnnlens.explain.runner import check_methods, check_options
from cnnlens.jobs.local import run_local
from cnnlens.jobs.shards import open_store, record_run, require_pyarrow
from cnnlens.jobs.source import Source, images_of
from cnnlens.jobs.unit import Work, resolve

ENGINES = ("local", "ray")
#: Images per shard by default: a few MB of float32 48x48 maps per method, seconds of work for cheap methods.
DEFAULT_SHARD_SIZE = 256
#: Images per probe (the speed layer's fixed check images, see cnnlens.jobs.unit.prime).
PROBE_IMAGES = 2


def model_hash(model: nn.Module) -> str:
    """sha256 of the model's state (every parameter and buffer: name, dtype, shape, bytes), so a job's
    manifest names the exact weights it explained."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class JobResult:
    """What a job did.

    Attributes:
        path: the job folder (read it with :func:`cnnlens.jobs.load_explanations`).
        n_images: images in the split; computed: images computed by this run (the rest were already there).
        shards: shards in all; skipped: shards found complete and not recomputed.
        seconds: wall time of the computing part; engine: ``local`` or ``ray``.
    """

    path: Path
    n_images: int
    computed: int
    shards: int
    skipped: int
    seconds: float
    engine: str

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("inf")


def explain_dataset(model: nn.Module | PathArg, images: Source | None = None, methods: Sequence[str] = ("saliency",), *,
                    out: PathArg, split: str | None = None, data: str | None = None,
                    options: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0, target: str = "predicted",
                    save_maps: bool = True, map_dtype: str = "float32", scores: Sequence[str] = (),
                    step: int | float = 0.05, deletion_substrate: str = "blur", insertion_substrate: str = "blur",
                    shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int | None = None, fast: bool = True,
                    engine: str = "local", workers: int = 1, cpus_per_worker: float = 1,
                    ray_address: str | None = None, device: str | torch.device = "cpu", overwrite: bool = False,
                    progress: bool = False, description: Mapping[str, Any] | None = None,
                    inputs: Sequence[PathArg | None] = (), skip_unsupported: bool = False) -> JobResult:
    """Explain every image of a split with ``methods`` (and score each map), into a folder of Parquet shards.

    ``model``: a module, or a run folder (``cnnlens train``/``import``: the model, its classes, its
    preprocessing; with ``images`` None its ``split`` of its own data, or of ``data``, a dataset spec).
    ``images``: an ImageSet, a ``[N,C,H,W]`` tensor/array (uint8 0-255 or float 0-1) or a ``.npy`` of one.
    ``scores``: per-image faithfulness numbers (``"deletion"``, ``"insertion"``: AUC, with ``step`` and the
    substrates of ``cnnlens.faithfulness.deletion``). ``map_dtype="float16"`` halves the maps on disk;
    ``save_maps=False`` keeps only the numbers. Every random draw is seeded from ``(seed, image id)``; in
    deterministic mode (``accel.set_deterministic(True)``) both engines write bit-identical shards.

    ``engine``: ``"local"`` (this process, shard after shard) or ``"ray"`` (Ray Data actors, ``workers`` of
    them with ``cpus_per_worker`` CPUs each and one GPU each on CUDA; ``ray_address`` an existing cluster,
    None a local one). ``out``: created, or resumed when it holds the same job (complete shards are skipped),
    refused when it holds another one unless ``overwrite``; see :mod:`cnnlens.jobs.shards`.
    ``skip_unsupported``: leave out a method that refuses this model on the first image (a ValueError/TypeError,
    e.g. CAM without a global-average-pooling head; the manifest's ``skipped`` says why) instead of failing.

    >>> res = explain_dataset("runs/fer", split="test", methods=["grad-cam"], scores=["deletion"],
    ...                       out="runs/fer/test-explained", engine="ray", workers=4)
    >>> load_explanations(res.path).frame()["grad-cam:deletion_auc"].mean()
    """
    require_pyarrow()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "ray":
        from cnnlens.jobs.ray_engine import require_ray

        require_ray()  # before any work: the error says how to install it
    check_int(shard_size, "shard_size", 1)
    check_int(workers, "workers", 1)
    names = check_methods(list(methods))
    opts = check_options(names, options)
    dev = torch.device(device)
    run_dir: Path | None = None
    classes: tuple[str, ...] | None = None
    if not isinstance(model, nn.Module):
        from cnnlens.train import load_run

        run_dir = Path(model)
        run = load_run(run_dir, device=dev)
        module = run.model
        classes = tuple(run.classes)
        if images is None:
            images = run.dataset(split, data=data) if data is not None else run.dataset(split or "test")
    else:
        module = model.to(dev)
        if images is None:
            raise ValueError("images is None: pass the images to explain (an ImageSet, a tensor, a .npy), or a run folder as model")
    source = images_of(images)
    classes = classes or source.classes
    probe_u8, _ = source.read(0, min(PROBE_IMAGES, source.n))
    probe = probe_u8.float().div(255.0) if probe_u8.dtype == torch.uint8 else probe_u8.float()
    with core.guarded(module), torch.no_grad():  # eval mode: BatchNorm statistics stay as they were
        n_classes = int(module(probe.to(dev)).shape[1])
    needs_mean = {deletion_substrate, insertion_substrate} & {"dataset-mean", "road"} and scores
    work = Work(methods=tuple(names), options=opts, seed=seed, target=target, save_maps=save_maps, map_dtype=map_dtype,
                scores=tuple(scores), step=step, deletion_substrate=deletion_substrate,
                insertion_substrate=insertion_substrate, channel_mean=source.channel_mean() if needs_mean else None,
                batch_size=batch_size, fast=fast, probe=probe_u8.cpu().numpy())
    skipped: dict[str, str] = {}
    if skip_unsupported:
        kept = []
        for m in names:
            try:
                resolve(module, dataclasses.replace(work, methods=(m,)), probe.to(dev))
                registry.get(m).fn(module, probe[:1].to(dev), **{k: v for k, v in opts.get(m, {}).items()
                                                                 if k not in ("generator",)})
                kept.append(m)
            except (ValueError, TypeError) as exc:
                skipped[m] = str(exc)
        if not kept:
            raise ValueError("no method applies to this model: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()))
        work = dataclasses.replace(work, methods=tuple(kept))
    work = resolve(module, work, probe.to(dev))
    from cnnlens import __version__

    manifest = {
        "cnnlens": __version__,
        "work": work.describe(),
        "model": {"sha256": model_hash(module), "class": type(module).__name__,
                  "run": None if run_dir is None else str(run_dir.resolve())},
        "data": {**dict(description or {}), "n_images": source.n, "image_shape": list(source.shape),
                 "classes": list(classes) if classes else [str(i) for i in range(n_classes)],
                 "sha256": source.digest()},
        "n_images": source.n, "shard_size": shard_size, "n_shards": -(-source.n // shard_size),
        "map_shape": list(source.shape[1:]), "columns": ["name", *work.columns()],
        "deterministic": accel.is_deterministic(), "skipped": skipped,
    }
    store = open_store(out, manifest, overwrite=overwrite, inputs=[run_dir, *inputs])
    pending = store.pending()
    skipped = store.n_shards - len(pending)
    todo = sum(store.bounds(k)[1] - store.bounds(k)[0] for k in pending)
    bar = progress_bar(f"{engine}: {','.join(names)}", rate="img/s", remaining=True) if progress and todo else None
    task = bar.add_task("explaining", total=todo) if bar is not None else None
    if bar is not None:
        bar.start()

    def advance(count: int) -> None:
        if bar is not None:
            bar.update(task, advance=count)

    t0 = time.perf_counter()
    facts: dict[str, Any] = {}
    try:
        if engine == "local":
            run_local(store, module, work, source, pending, advance=advance)
            facts = {"threads": torch.get_num_threads()}
        else:
            from cnnlens.jobs.ray_engine import run_ray

            cuda = dev.type == "cuda"
            facts = run_ray(store, run_dir if run_dir is not None else module, work, source, pending,
                            address=ray_address, workers=workers, cpus_per_worker=cpus_per_worker,
                            num_gpus=1 if cuda else 0, batch_size=batch_size or min(shard_size, 32),
                            device="cuda" if cuda else "cpu", deterministic=accel.is_deterministic(), advance=advance)
    finally:
        if bar is not None:
            bar.stop()
    seconds = time.perf_counter() - t0
    if pending:
        record_run(store, {"engine": engine, "workers": workers if engine == "ray" else 1, "images": todo,
                           "shards": len(pending), "seconds": round(seconds, 3),
                           "images_per_second": round(todo / seconds, 3) if seconds > 0 else None,
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts})
    return JobResult(Path(out), source.n, todo, store.n_shards, skipped, seconds, engine)


def maps_from_job(path: PathArg, model: nn.Module, images: Source, ids: Sequence[int], targets: Sequence[int],
                  methods: Sequence[str]) -> dict[str, np.ndarray]:
    """The maps of ``methods`` for the images ``ids`` of ``images`` toward ``targets``, read from the dataset job
    at ``path``: only the methods it holds, and only where it explained the same classes. The job must have run
    on this model (same weights) and these images (same bytes), else a ValueError says which differs. What the
    report's explanations section takes instead of computing the maps again.

    >>> maps_from_job("fer-test-maps", run.model, run.dataset("test"), [3, 17], [0, 4], ["grad-cam"])["grad-cam"].shape
    (2, 48, 48)
    """
    from cnnlens.jobs.shards import read_manifest, read_rows

    manifest = read_manifest(Path(path))
    if manifest is None:
        raise ValueError(f"{path} is not a dataset job folder (written by `cnnlens explain ... --engine`)")
    if manifest["model"]["sha256"] != model_hash(model):
        raise ValueError(f"{path} was computed with other model weights than this run's; explain this run with --engine, "
                         "or leave --explanations out")
    if manifest["data"]["sha256"] != images_of(images).digest():
        raise ValueError(f"{path} was computed on other images ({manifest['data'].get('split', 'another split')}, "
                         f"{manifest['n_images']} images) than the report's; give a job of the same split")
    held = [m for m in methods if m in manifest["work"]["methods"]] if manifest["work"]["save_maps"] else []
    if not held:
        return {}
    maps, explained = read_rows(path, ids, held)
    return maps if np.array_equal(explained, np.asarray(targets, dtype=np.int64)) else {}
