"""Training: a config dataclass, one training loop, and run folders that everything after training reads
(also made from a model trained elsewhere, by :func:`import_model`).

>>> from cnnlens.train import TrainConfig, train, load_run
>>> run = train(TrainConfig(data="synth:demo/data", epochs=10), "demo/run")   # doctest: +SKIP
>>> run = load_run("demo/run")                                               # doctest: +SKIP
"""

from __future__ import annotations

from cnnlens.train.augment import Augment
from cnnlens.train.config import TrainConfig
from cnnlens.train.importing import import_model
from cnnlens.train.loop import train
from cnnlens.train.run import Run, load_checkpoint, load_run, load_weights, resolve_device

__all__ = ["Augment", "Run", "TrainConfig", "import_model", "load_checkpoint", "load_run", "load_weights", "resolve_device",
           "train"]
