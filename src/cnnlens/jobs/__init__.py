"""Dataset jobs: a whole split explained and scored, on one process or a Ray cluster, resumable.

- :mod:`.unit`: the one pure unit of work, ``(image ids, images, labels) -> maps + per-image numbers``,
  seeded per image id (:func:`compute`, :class:`Work`).
- :mod:`.shards`: the one output format, a folder of Parquet shards keyed by image id with a manifest,
  written atomically shard by shard; :func:`load_explanations` reads it back.
- engines: :mod:`.local` (this process, shard after shard) and :mod:`.ray_engine` (Ray Data ``map_batches``
  with an actor pool; the optional extra ``cnnlens[ray]``).

>>> res = explain_dataset("runs/fer", split="test", methods=["grad-cam"], out="out/test", engine="local")
>>> load_explanations(res.path).maps["grad-cam"].shape
"""

from cnnlens.jobs.job import ENGINES, JobResult, explain_dataset, model_hash
from cnnlens.jobs.shards import DatasetExplanations, is_job_folder, load_explanations
from cnnlens.jobs.unit import SCORES, Work, compute, image_generator, image_seed

__all__ = ["ENGINES", "SCORES", "DatasetExplanations", "JobResult", "Work", "compute", "explain_dataset",
           "image_generator", "image_seed", "is_job_folder", "load_explanations", "model_hash"]
