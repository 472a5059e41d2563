"""The ``local`` engine: the job's shards one after another in this process, memory flat in the number of images.

Each pending shard's images are read (a slice of the split, or of a ``.npy`` mapped only while read), run
through :func:`cnnlens.jobs.unit.compute` and written atomically before the next is read, so peak memory is
one shard's whatever N, and a killed run loses at most the shard it was computing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cnnlens.jobs.shards import ShardStore
from cnnlens.jobs.source import Images
from cnnlens.jobs.unit import Work, compute, prime


def run_local(store: ShardStore, model: nn.Module, work: Work, images: Images, pending: Sequence[int], *,
              advance: Callable[[int], None] = lambda n: None) -> int:
    """Compute and write the ``pending`` shards of ``store``; ``advance(n)`` after each (the progress bar).
    Returns the number of images computed."""
    if not pending:
        return 0
    prime(model, work)
    done = 0
    for k in pending:
        start, end = store.bounds(k)
        x, labels = images.read(start, end)
        columns = compute(model, work, range(start, end), x, labels)
        store.write(k, columns, images.names[start:end])
        done += end - start
        advance(end - start)
    return done
