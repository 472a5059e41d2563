"""The one output format of a dataset job: a folder of Parquet shards keyed by image id, and its manifest.

::

    OUT/
      .cnnlens-output.json     cnnlens's marker (kind "shards"; see cnnlens._atomic)
      manifest.json            what was computed: methods, options, model hash, dataset, shard layout, version
      shards/part-000000.parquet   images [0, S), one row per image, written atomically
      shards/part-000001.parquet   images [S, 2S) ...

Shard ``k`` holds the images ``k*S .. min((k+1)*S, N) - 1`` of the split (``S`` = ``shard_size``), one row each:
``id`` (the image's position in the split), ``name``, ``label``, ``target``, ``prediction``,
``probabilities`` (a list of K floats), per method ``<method>:map`` (``H*W`` floats, row-major, float32 or
float16) and ``<method>:deletion_auc`` / ``<method>:insertion_auc``. Each shard is written to a temporary
file and renamed into place (:func:`cnnlens._atomic.atomic_path`), so a shard is there whole or not at all;
a re-run with the same settings skips the shards already there, which is how a killed job resumes. A folder
with other settings is refused (``overwrite=True`` starts it over), never a folder cnnlens did not write.

>>> res = load_explanations("runs/fer/test-explained")
>>> res.maps["grad-cam"].shape, res.frame().columns[:4].tolist()
((7178, 48, 48), ['id', 'name', 'label', 'target'])
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlens._atomic import (MARKER, OutputRefused, atomic_path, check_output, claim_dir, foreign_entries, output_kind,
                             remove_stale, remove_stale_in, write_text)
from cnnlens._types import PathArg

FORMAT = "cnnlens.jobs.shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
KIND = "shards"
#: Manifest entries that describe a run of the job, not what it computes (a resume may differ in them).
NOT_COMPARED = ("runs",)
PYARROW_HINT = "pip install pyarrow (or `pip install cnnlens[ray]`, which brings it)"


def require_pyarrow() -> Any:
    """``pyarrow.parquet``, or an ImportError saying how to get it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"dataset jobs write Parquet shards, which needs pyarrow: {PYARROW_HINT}") from None
    return pq


def shard_name(k: int) -> str:
    """The file of shard ``k``: ``part-000017.parquet``."""
    return f"part-{k:06d}.parquet"


def shard_bounds(k: int, shard_size: int, n: int) -> tuple[int, int]:
    """Images ``[start, end)`` of shard ``k``."""
    return k * shard_size, min((k + 1) * shard_size, n)


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for key in keys:
        if not prefix and key in NOT_COMPARED:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def _json_roundtrip(doc: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(doc))


@dataclass
class ShardStore:
    """An open job folder: which shards are done, and writing the others.

    Attributes:
        path: the folder.
        manifest: its manifest (``n_images``, ``shard_size``, ``work`` ...).
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def n_images(self) -> int:
        return int(self.manifest["n_images"])

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    @property
    def n_shards(self) -> int:
        return -(-self.n_images // self.shard_size)

    def bounds(self, k: int) -> tuple[int, int]:
        return shard_bounds(k, self.shard_size, self.n_images)

    def file(self, k: int) -> Path:
        return self.path / SHARDS / shard_name(k)

    def complete(self, k: int) -> bool:
        """Whether shard ``k`` is on disk whole: its file reads and holds exactly its ids, in order."""
        pq = require_pyarrow()
        f = self.file(k)
        if not f.is_file():
            return False
        start, end = self.bounds(k)
        try:
            ids = pq.read_table(f, columns=["id"]).column("id").to_numpy()
        except Exception:  # unreadable: rewritten (an atomic rename never leaves half a file; a disk may)
            return False
        return np.array_equal(ids, np.arange(start, end))

    def pending(self) -> list[int]:
        """The shards still to compute, in order."""
        return [k for k in range(self.n_shards) if not self.complete(k)]

    def write(self, k: int, columns: Mapping[str, np.ndarray], names: Sequence[str]) -> Path:
        """Write shard ``k`` atomically from :func:`cnnlens.jobs.unit.compute`'s columns (rows in id order) and
        the images' ``names``."""
        pq = require_pyarrow()
        start, end = self.bounds(k)
        ids = np.asarray(columns["id"])
        if not np.array_equal(ids, np.arange(start, end)):
            raise ValueError(f"shard {k} must hold the images {start}..{end - 1} in order; got ids {ids[:5].tolist()}...")
        table = to_table(columns, names)
        with atomic_path(self.file(k)) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return self.file(k)


def to_table(columns: Mapping[str, np.ndarray], names: Sequence[str]) -> Any:
    """The columns as a pyarrow Table: 1-D columns as they are, others as fixed-size lists of their flattened rows."""
    import pyarrow as pa

    arrays: dict[str, Any] = {}
    for key, value in columns.items():
        v = np.asarray(value)
        arrays[key] = pa.array(v) if v.ndim == 1 else \
            pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(v).reshape(-1)), int(np.prod(v.shape[1:])))
        if key == "id":
            arrays["name"] = pa.array(list(names), type=pa.string())
    return pa.table(arrays)


def open_store(path: PathArg, manifest: Mapping[str, Any], *, overwrite: bool = False,
               inputs: Iterable[PathArg | None] = ()) -> ShardStore:
    """The job folder ``path`` for ``manifest``: created, or resumed when it holds the same job.

    A folder holding a job with other settings is refused (:class:`~cnnlens._atomic.OutputRefused`, naming
    what differs) unless ``overwrite``, which deletes its shards first; a folder cnnlens did not write, one
    holding other cnnlens outputs or anything else, or one that is or holds an input, is always refused.
    Temporary files of killed writers are removed.
    """
    path = Path(path)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **_json_roundtrip(manifest)}
    remove_stale(path)
    old = read_manifest(path) if output_kind(path) == KIND else None
    if old is not None:
        check_output(path, kind=KIND, overwrite=True, inputs=inputs)  # nothing foreign inside, not an input
        diff = _differences(old, doc)
        if not diff:
            remove_stale_in(path / SHARDS)
            return ShardStore(path, {**doc, "runs": old.get("runs", [])})
        if not overwrite:
            raise OutputRefused(f"--out {path} holds a dataset job with other settings (they differ in: {', '.join(diff)}); "
                                "run it with the same settings to resume it, pass --overwrite to start it over "
                                "(overwrite=True in Python), or choose another --out")
        shutil.rmtree(path / SHARDS, ignore_errors=True)
        (path / MANIFEST).unlink(missing_ok=True)
    claim_dir(path, kind=KIND, overwrite=overwrite, inputs=inputs, files=[MANIFEST, SHARDS])
    (path / SHARDS).mkdir(exist_ok=True)
    doc["runs"] = []
    write_text(path / MANIFEST, json.dumps(doc, indent=2) + "\n")
    return ShardStore(path, doc)


def record_run(store: ShardStore, entry: Mapping[str, Any]) -> None:
    """Append one run's facts (engine, workers, images/s) to the manifest's ``runs`` (not compared on resume)."""
    store.manifest = {**store.manifest, "runs": [*store.manifest.get("runs", []), _json_roundtrip(entry)]}
    write_text(store.path / MANIFEST, json.dumps(store.manifest, indent=2) + "\n")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the job folder ``path``, or None where it has none of this format."""
    try:
        doc = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


# ------------------------------------------------------------------------------------------- reading


@dataclass
class DatasetExplanations:
    """A dataset job read back (:func:`load_explanations`), rows in image-id order.

    Attributes:
        path: the folder.
        manifest: its manifest (methods, options, model hash, dataset, version).
        ids: int64 ``[N]``; names: the images' names; labels / targets / predictions: int64 ``[N]``.
        probabilities: float32 ``[N,K]``.
        maps: method -> ``[N,H,W]`` (float32 or float16, as stored); empty when not stored or not asked for.
        scores: ``"<method>:deletion_auc"`` ... -> float32 ``[N]``.
    """

    path: Path
    manifest: dict[str, Any]
    ids: np.ndarray
    names: list[str]
    labels: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def frame(self, maps: bool = False) -> Any:
        """A pandas DataFrame, one row per image (``id``, ``name``, ``label``, ``target``, ``prediction``,
        ``probability`` of the target, the scores; with ``maps`` also one column of ``[H,W]`` arrays per method).
        Needs pandas (``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("DatasetExplanations.frame() needs pandas: pip install pandas (the arrays need nothing)") from None
        data: dict[str, Any] = {"id": self.ids, "name": self.names, "label": self.labels, "target": self.targets,
                                "prediction": self.predictions,
                                "probability": self.probabilities[np.arange(len(self.ids)), self.targets]}
        data.update(self.scores)
        if maps:
            data.update({f"{m}:map": list(v) for m, v in self.maps.items()})
        return pd.DataFrame(data)


def load_explanations(path: PathArg, *, methods: Sequence[str] | None = None, maps: bool = True,
                      partial: bool = False) -> DatasetExplanations:
    """Read a dataset job's folder (``cnnlens explain ... --engine``, :func:`cnnlens.jobs.explain_dataset`).

    ``methods``: the methods whose maps and scores to read (default all); ``maps=False`` reads only the
    numbers. A job not finished (a shard missing) is an error naming the shards and how to resume, unless
    ``partial=True``, which reads the shards that are there.

    >>> res = load_explanations("out/test-explained", maps=False)
    >>> res.frame().groupby("prediction")["grad-cam:deletion_auc"].mean()
    """
    pq = require_pyarrow()
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None:
        raise ValueError(f"{path} is not a dataset job folder: no {MANIFEST} of format {FORMAT} "
                         "(written by `cnnlens explain/faithfulness ... --engine local|ray`)")
    store = ShardStore(path, manifest)
    work = manifest["work"]
    chosen = list(work["methods"]) if methods is None else list(methods)
    unknown = [m for m in chosen if m not in work["methods"]]
    if unknown:
        raise ValueError(f"method {unknown[0]!r} is not in {path}; it holds {', '.join(work['methods'])}")
    missing = [k for k in range(store.n_shards) if not store.file(k).is_file()]
    if missing and not partial:
        shown = ", ".join(shard_name(k) for k in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(f"{path} is an unfinished job: {len(missing)} of {store.n_shards} shards missing ({shown}); run the "
                         "same command again to resume it, or pass partial=True to read what is there")
    h, w = manifest["map_shape"]
    k_classes = len(manifest["data"]["classes"])
    wanted = ["id", "name", "label", "target", "prediction", "probabilities"]
    wanted += [f"{m}:{s}_auc" for m in chosen for s in work["scores"]]
    wanted += [f"{m}:map" for m in chosen] if maps and work["save_maps"] else []
    tables = [pq.read_table(store.file(k), columns=wanted) for k in range(store.n_shards) if k not in missing]
    if not tables:
        raise ValueError(f"{path} holds no shard yet")
    import pyarrow as pa

    table = pa.concat_tables(tables)

    def flat(name: str, shape: tuple[int, ...]) -> np.ndarray:
        col = table.column(name).combine_chunks()
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(table), *shape)

    return DatasetExplanations(
        path=path, manifest=manifest, ids=table.column("id").to_numpy(), names=table.column("name").to_pylist(),
        labels=table.column("label").to_numpy(), targets=table.column("target").to_numpy(),
        predictions=table.column("prediction").to_numpy(), probabilities=flat("probabilities", (k_classes,)),
        maps={m: flat(f"{m}:map", (h, w)) for m in chosen if f"{m}:map" in wanted},
        scores={c: table.column(c).to_numpy() for c in wanted if c.endswith("_auc")})


def read_rows(path: PathArg, ids: Sequence[int], methods: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The maps of ``methods`` (float32 ``[len(ids),H,W]``) and the explained classes of the images ``ids``, in
    that order, reading only the shards that hold them (what the report takes from a job folder)."""
    pq = require_pyarrow()
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None:
        raise ValueError(f"{path} is not a dataset job folder (written by `cnnlens explain ... --engine`)")
    store = ShardStore(path, manifest)
    if not manifest["work"]["save_maps"]:
        raise ValueError(f"{path} holds no maps (a faithfulness job without --save-maps)")
    h, w = manifest["map_shape"]
    wanted = [int(i) for i in ids]
    bad = [i for i in wanted if not 0 <= i < store.n_images]
    if bad:
        raise ValueError(f"image {bad[0]} is not in {path} (it holds images 0..{store.n_images - 1})")
    rows: dict[int, tuple[dict[str, np.ndarray], int]] = {}
    for k in sorted({i // store.shard_size for i in wanted}):
        if not store.file(k).is_file():
            raise ValueError(f"{path} is an unfinished job ({shard_name(k)} is missing); run its command again to resume it")
        table = pq.read_table(store.file(k), columns=["id", "target", *(f"{m}:map" for m in methods)])
        start = k * store.shard_size
        for i in (i for i in wanted if i // store.shard_size == k):
            r = i - start
            maps = {m: np.asarray(table.column(f"{m}:map")[r].values.to_numpy(zero_copy_only=False), dtype=np.float32)
                    .reshape(h, w) for m in methods}
            rows[i] = (maps, int(table.column("target")[r].as_py()))
    maps = {m: np.stack([rows[i][0][m] for i in wanted]) if wanted else np.zeros((0, h, w), np.float32) for m in methods}
    return maps, np.asarray([rows[i][1] for i in wanted], dtype=np.int64)


def is_job_folder(path: PathArg) -> bool:
    """Whether ``path`` is a dataset job's folder (for the report and the CLI)."""
    path = Path(path)
    return (path / MARKER).is_file() and read_manifest(path) is not None and not foreign_entries(path)
