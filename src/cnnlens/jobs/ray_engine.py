"""The ``ray`` engine: the job's pending images as a Ray Dataset, explained by a pool of actors with
``map_batches``, written as the same shards as the ``local`` engine.

- The driver reads the split (the dataset spec, as every command does) and makes a Ray Dataset of the pending
  shards' rows ``{id, image (uint8), label}``, one block per shard.
- ``map_batches(Explainer, compute=ActorPoolStrategy(size=workers), batch_size=..., num_cpus=..., num_gpus=...)``:
  each actor loads the model once (from the run folder, or the pickled module), sets its torch threads to its
  CPUs, primes the speed layer on the job's probe images (:func:`cnnlens.jobs.unit.prime`), then runs
  :func:`cnnlens.jobs.unit.compute` on each batch. ``num_gpus=1`` per actor when the job runs on CUDA.
- The driver gathers the rows, keeps the first copy of each id (a retried task may deliver an id again:
  identical, since each image is seeded by its id) and writes each shard atomically as soon as it is whole.
  A shard never completed (a task that failed for good) stays missing: the error says so, and the same
  command resumes from the shards written.

Ray restarts a killed actor and retries its tasks (Ray Data's defaults for actor pools), so a worker
killed mid-job costs its batch, not the job. ``address``: an existing cluster (``ray start --head``); None
starts a local one for this job (and stops it after).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlens.jobs.shards import ShardStore
from cnnlens.jobs.source import Images
from cnnlens.jobs.unit import Work

RAY_HINT = ("--engine ray needs Ray Data, an optional extra: pip install 'cnnlens[ray]' (or pip install 'ray[data]' "
            "into this environment); --engine local needs nothing more")


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or an ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError(RAY_HINT) from None
    return ray


def load_model(model: nn.Module | str | Path, device: str) -> nn.Module:
    """The model an actor explains: ``model`` itself, or the run folder ``model`` loaded with ``cnnlens.train.load_run``."""
    if isinstance(model, nn.Module):
        return model.to(device).eval()
    from cnnlens.train import load_run

    return load_run(model, device=device).model


class Explainer:
    """The actor: one model, loaded once; ``__call__`` explains one batch of rows (a Ray Data numpy batch)."""

    def __init__(self, model: nn.Module | str, work: Work, device: str = "cpu", threads: int = 1,
                 deterministic: bool = False) -> None:
        from cnnlens.explain import accel
        from cnnlens.jobs.unit import prime

        accel.retain_freed_memory()  # a worker process cnnlens owns, as the cnnlens command's own
        torch.set_num_threads(max(1, int(threads)))
        accel.set_deterministic(deterministic)  # the driver's mode, whatever the worker's environment says
        self.model = load_model(model, device)
        self.work = work
        prime(self.model, work)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cnnlens.jobs.unit import compute

        return compute(self.model, self.work, batch["id"], torch.from_numpy(np.ascontiguousarray(batch["image"])),
                       batch["label"])


def _actor_pool(ray: Any, workers: int) -> dict[str, Any]:
    """The ``map_batches`` keyword that asks for ``workers`` actors, per the installed Ray's API."""
    strategy = ray.data.ActorPoolStrategy
    params = inspect.signature(strategy).parameters
    pool = strategy(size=workers) if "size" in params else strategy(workers, workers)
    return {"compute": pool}


def run_ray(store: ShardStore, model: nn.Module | str | Path, work: Work, images: Images, pending: Sequence[int], *,
            address: str | None = None, workers: int = 1, cpus_per_worker: float = 1, num_gpus: float = 0,
            batch_size: int = 32, device: str = "cpu", deterministic: bool = False,
            object_store_memory: int | None = None, advance: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Compute and write the ``pending`` shards of ``store`` on a Ray cluster; see the module doc.

    Returns facts for the manifest's ``runs``: the cluster's CPUs/GPUs, the duplicates dropped.
    """
    ray = require_ray()
    if not pending:
        return {"duplicates_dropped": 0}
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:  # a local cluster sized for the pool
            kwargs["num_cpus"] = max(1, int(np.ceil(workers * cpus_per_worker)))
            kwargs["num_gpus"] = int(np.ceil(workers * num_gpus))
            if object_store_memory is not None:
                kwargs["object_store_memory"] = object_store_memory
        ray.init(address=address or "local", **kwargs)  # "local": a new cluster, never one found in /tmp/ray
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        for flag in ("enable_progress_bars", "enable_operator_progress_bars"):
            if hasattr(ctx, flag):
                setattr(ctx, flag, False)  # cnnlens's own bar shows images/s across the cluster
        rows = []
        for k in pending:
            start, end = store.bounds(k)
            x, labels = images.read(start, end)
            x = x.cpu().numpy()
            rows += [{"id": np.int64(i), "image": x[i - start], "label": np.int64(labels[i - start])}
                     for i in range(start, end)]
        ds = ray.data.from_items(rows, override_num_blocks=len(pending))
        del rows
        model_arg = str(model) if isinstance(model, (str, Path)) else model
        explained = ds.map_batches(
            Explainer, batch_size=batch_size, batch_format="numpy", num_cpus=cpus_per_worker, num_gpus=num_gpus,
            fn_constructor_kwargs={"model": model_arg, "work": work, "device": device,
                                   "threads": max(1, int(cpus_per_worker)), "deterministic": deterministic},
            **_actor_pool(ray, workers))
        buffers: dict[int, dict[int, dict[str, np.ndarray]]] = {k: {} for k in pending}
        written: set[int] = set()
        duplicates = 0
        for batch in explained.iter_batches(batch_size=None, batch_format="numpy"):
            ids = np.asarray(batch["id"], dtype=np.int64)
            for r, i in enumerate(ids.tolist()):
                k = i // store.shard_size
                if k in written or k not in buffers or i in buffers[k]:
                    duplicates += 1  # a retried task's second copy (identical: seeded by id)
                    continue
                buffers[k][i] = {c: v[r] for c, v in batch.items()}
                start, end = store.bounds(k)
                if len(buffers[k]) == end - start:
                    rows_k = buffers.pop(k)
                    columns = {c: np.stack([rows_k[j][c] for j in range(start, end)]) for c in work.columns()}
                    store.write(k, columns, images.names[start:end])
                    written.add(k)
                    advance(end - start)
        missing = [k for k in pending if k not in written]
        if missing:
            raise RuntimeError(f"the Ray job ended with {len(missing)} shard(s) incomplete (first: {missing[0]}); run the "
                               "same command again to resume from the shards written")
        resources = ray.cluster_resources()
        return {"duplicates_dropped": duplicates, "cluster_cpus": resources.get("CPU", 0),
                "cluster_gpus": resources.get("GPU", 0), "cluster_nodes": len([n for n in ray.nodes() if n.get("Alive")])}
    finally:
        if started:
            ray.shutdown()
