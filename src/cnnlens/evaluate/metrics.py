"""Classification metrics of a model on an ImageSet, as one immutable result that can save itself."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from cnnlens._atomic import output_dir
from cnnlens._checks import check_count
from cnnlens._types import PathArg
from cnnlens.data.imageset import ImageSet

#: Version of metrics.json; bump when its fields change meaning.
METRICS_VERSION = 1
#: Files :meth:`Evaluation.save` writes.
FILES = ("metrics.json", "per_class.csv", "confusion.csv", "confusion_normalized.csv", "predictions.csv",
         "confusion.png", "class_distribution.png")


@dataclass(frozen=True)
class ConfusedPair:
    """Images of class ``true`` predicted as ``predicted``: ``count`` of them, ``share`` of all ``true`` images."""

    true: int
    predicted: int
    count: int
    share: float


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)  # eq=False: array fields have no single truth value
class Evaluation:
    """Predictions of a classifier on labelled images and every metric derived from them.

    Arrays are read-only. Build one with :func:`evaluate` (from a model) or
    :meth:`Evaluation.from_probabilities` (from predictions made elsewhere).

    Attributes:
        classes: class names, index = label.
        names: one identifier per image (``ImageSet.names``).
        labels: true labels, int64 ``[N]``.
        predictions: predicted labels, int64 ``[N]``.
        probabilities: softmax probabilities, float32 ``[N,K]``.
        accuracy: share of images predicted right.
        precision, recall, f1: per class, float64 ``[K]`` (0 where undefined: no image predicted / present).
        support: images per true class, int64 ``[K]`` (the class distribution).
        confusion: counts, int64 ``[K,K]``, rows = true class, columns = predicted class.
        confusion_normalized: ``confusion`` divided by its row sums (rows of absent classes stay 0).
        confused_pairs: every off-diagonal cell with a count, most frequent first.
    """

    classes: tuple[str, ...]
    names: tuple[str, ...]
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray
    confusion_normalized: np.ndarray
    confused_pairs: tuple[ConfusedPair, ...]

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Sequence[int],
                           classes: Sequence[str], names: Sequence[str] | None = None, *,
                           predictions: np.ndarray | torch.Tensor | Sequence[int] | None = None) -> Evaluation:
        """Metrics of class probabilities ``[N,K]`` against true ``labels`` ``[N]``.

        ``predictions`` defaults to the argmax of ``probabilities``; pass them when they came from logits.

        >>> e = Evaluation.from_probabilities([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]], [0, 1, 1], ["cat", "dog"])
        >>> e.accuracy, e.recall.tolist()
        (0.6666666666666666, [1.0, 0.5])
        """
        classes = tuple(str(c) for c in classes)
        k = len(classes)
        if k < 1:
            raise ValueError("classes must name at least one class")
        # a copy: the result's arrays are made read-only, the caller's must not be
        probs = np.array(probabilities.detach().cpu().numpy() if isinstance(probabilities, torch.Tensor) else probabilities,
                         dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != k or probs.shape[0] < 1:
            raise ValueError(f"probabilities must have shape [N>=1, {k}] (one column per class), got {probs.shape}")
        n = probs.shape[0]
        y = _as_labels(labels, "labels", n, k)
        pred = probs.argmax(axis=1) if predictions is None else _as_labels(predictions, "predictions", n, k)
        names = tuple(str(i) for i in range(n)) if names is None else tuple(names)
        if len(names) != n:
            raise ValueError(f"names has {len(names)} entries for {n} images")

        every = list(range(k))
        precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=every, zero_division=0)
        confusion = confusion_matrix(y, pred, labels=every).astype(np.int64)
        rows = confusion.sum(axis=1, keepdims=True)
        normalized = np.divide(confusion, rows, out=np.zeros((k, k)), where=rows > 0)
        off = [(i, j) for i, j in zip(*np.nonzero(confusion)) if i != j]
        pairs = sorted((ConfusedPair(int(i), int(j), int(confusion[i, j]), float(normalized[i, j])) for i, j in off),
                       key=lambda p: (-p.count, -p.share, p.true, p.predicted))
        return cls(classes=classes, names=names, labels=_frozen(y), predictions=_frozen(pred.astype(np.int64)),
                   probabilities=_frozen(probs), accuracy=float((y == pred).mean()),
                   precision=_frozen(precision.astype(np.float64)), recall=_frozen(recall.astype(np.float64)),
                   f1=_frozen(f1.astype(np.float64)), support=_frozen(support.astype(np.int64)),
                   confusion=_frozen(confusion), confusion_normalized=_frozen(normalized), confused_pairs=tuple(pairs))

    @property
    def num_images(self) -> int:
        """N."""
        return int(self.labels.shape[0])

    @property
    def predicted_counts(self) -> np.ndarray:
        """Images predicted as each class, int64 ``[K]`` (column sums of the confusion matrix)."""
        return self.confusion.sum(axis=0)

    def macro(self) -> dict[str, float]:
        """Unweighted mean precision/recall/F1 over the classes present in ``labels``."""
        present = self.support > 0
        return {m: float(getattr(self, m)[present].mean()) for m in ("precision", "recall", "f1")}

    def weighted(self) -> dict[str, float]:
        """Precision/recall/F1 averaged with the class supports as weights."""
        w = self.support / self.support.sum()
        return {m: float((getattr(self, m) * w).sum()) for m in ("precision", "recall", "f1")}

    def most_confused(self, k: int = 5) -> tuple[ConfusedPair, ...]:
        """The ``k`` most frequent mistakes (true class, predicted class, count, share of the true class)."""
        return self.confused_pairs[:k]

    def to_dict(self, source: Mapping[str, object] | None = None) -> dict:
        """Everything but the per-image arrays, as JSON-ready plain data (the content of metrics.json).

        ``source`` (e.g. ``{"run": "runs/fer", "split": "val"}``) says what was evaluated.
        """
        return {
            "version": METRICS_VERSION,
            "source": dict(source or {}),
            "num_images": self.num_images,
            "classes": list(self.classes),
            "accuracy": self.accuracy,
            "macro": self.macro(),
            "weighted": self.weighted(),
            "per_class": [
                {"class": c, "precision": float(self.precision[i]), "recall": float(self.recall[i]),
                 "f1": float(self.f1[i]), "support": int(self.support[i]), "predicted": int(self.predicted_counts[i])}
                for i, c in enumerate(self.classes)
            ],
            "confusion": self.confusion.tolist(),
            "confusion_normalized": self.confusion_normalized.tolist(),
            "most_confused": [
                {"true": self.classes[p.true], "predicted": self.classes[p.predicted], "count": p.count, "share": p.share}
                for p in self.confused_pairs
            ],
            "class_distribution": {"true": self.support.tolist(), "predicted": self.predicted_counts.tolist()},
            "summary": describe(self),
        }

    def save(self, out_dir: PathArg, *, source: Mapping[str, object] | None = None, overwrite: bool = False,
             inputs: Iterable[PathArg | None] = ()) -> Path:
        """Write metrics.json, per_class.csv, confusion(.csv|_normalized.csv|.png), predictions.csv and
        class_distribution.png into ``out_dir``; return ``out_dir``.

        ``source`` is stored in metrics.json to say what was evaluated (run folder, split, data spec).
        The folder is written whole (:func:`cnnlens._atomic.output_dir`): every file is rendered in memory,
        written into a temporary sibling and swapped in at once, so a failure or a kill leaves the earlier
        evaluation exactly as it was, never a mix. An existing ``out_dir`` is replaced only with
        ``overwrite`` and only if it is an earlier evaluation holding nothing else; never a folder that is or
        holds one of ``inputs`` (the run, its data).
        """
        from cnnlens.evaluate.figures import class_distribution_figure, confusion_figure, png_bytes

        out = Path(out_dir)
        per_class = _csv([["class", "precision", "recall", "f1", "support", "predicted"]] + [
            [c, _num(self.precision[i]), _num(self.recall[i]), _num(self.f1[i]), int(self.support[i]),
             int(self.predicted_counts[i])] for i, c in enumerate(self.classes)])
        head = ["true \\ predicted", *self.classes]
        confusion = _csv([head] + [[c, *map(int, self.confusion[i])] for i, c in enumerate(self.classes)])
        normalized = _csv([head] + [[c, *map(_num, self.confusion_normalized[i])] for i, c in enumerate(self.classes)])
        picked = self.probabilities[np.arange(self.num_images), self.predictions]
        predictions = _csv(
            [["index", "name", "label", "label_name", "predicted", "predicted_name", "probability",
              *(f"p_{c}" for c in self.classes)]]
            + [[i, self.names[i], int(t), self.classes[t], int(p), self.classes[p], _num(picked[i]),
                *map(_num, self.probabilities[i])]
               for i, (t, p) in enumerate(zip(self.labels.tolist(), self.predictions.tolist()))])
        files: dict[str, str | bytes] = {
            "metrics.json": json.dumps(self.to_dict(source), indent=2) + "\n",
            "per_class.csv": per_class,
            "confusion.csv": confusion,
            "confusion_normalized.csv": normalized,
            "predictions.csv": predictions,
            "confusion.png": png_bytes(confusion_figure(self)),
            "class_distribution.png": png_bytes(class_distribution_figure(self)),
        }
        with output_dir(out, kind="evaluation", overwrite=overwrite, inputs=inputs) as tmp:
            for name, content in files.items():
                if isinstance(content, bytes):
                    (tmp / name).write_bytes(content)
                else:
                    (tmp / name).write_text(content, encoding="utf-8")
        return out

    @classmethod
    def load(cls, out_dir: PathArg) -> Evaluation:
        """Read back an evaluation written by :meth:`save` (from metrics.json and predictions.csv)."""
        out = Path(out_dir)
        meta_path, pred_path = out / "metrics.json", out / "predictions.csv"
        for p in (meta_path, pred_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found; write it with `cnnlens evaluate RUN_DIR`")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != METRICS_VERSION:
            raise ValueError(f"{meta_path}: metrics version {meta.get('version')!r}, this cnnlens reads {METRICS_VERSION}")
        classes = meta["classes"]
        with open(pred_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        expected = ["index", "name", "label", "label_name", "predicted", "predicted_name", "probability",
                    *(f"p_{c}" for c in classes)]
        if not rows or rows[0] != expected:
            raise ValueError(f"{pred_path}: line 1 must be the header {','.join(expected)}")
        body = rows[1:]
        for line, r in enumerate(body, start=2):
            if len(r) != len(expected):
                raise ValueError(f"{pred_path}: line {line} has {len(r)} fields, expected {len(expected)}")
        return cls.from_probabilities(
            np.array([[float(v) for v in r[7:]] for r in body], dtype=np.float32).reshape(len(body), len(classes)),
            [int(r[2]) for r in body], classes, [r[1] for r in body], predictions=[int(r[4]) for r in body])


def _as_labels(values: object, name: str, n: int, k: int) -> np.ndarray:
    array = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one class index per image; got {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got {array.dtype}")
    if n and (array.min() < 0 or array.max() >= k):
        bad = int(np.flatnonzero((array < 0) | (array >= k))[0])
        hint = " (-1 marks an unlabelled image: evaluate needs a labelled split)" if array[bad] == -1 else ""
        raise ValueError(f"{name} must be class indices in [0, {k - 1}]; image {bad} has {int(array[bad])}{hint}")
    return array.astype(np.int64)


def _num(x: float) -> str:
    """Shortest text that reads back as the same float32 (9 significant digits)."""
    return f"{float(x):.9g}"


def _csv(rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def evaluate(model: nn.Module, images: ImageSet, *, batch_size: int = 256,
             device: torch.device | str | None = None) -> Evaluation:
    """Predict every image of ``images`` with ``model`` and measure the predictions against the labels.

    Runs under ``torch.inference_mode`` in batches of ``batch_size``, in eval mode; every module's mode
    is restored afterwards. ``device`` (default: the model's) must be where the model's parameters are.

    >>> result = evaluate(run.model, run.dataset("val"))
    >>> result.accuracy, result.most_confused(3)
    """
    if not isinstance(images, ImageSet):
        raise TypeError(f"images must be a cnnlens.data.ImageSet, got {type(images).__name__}")
    check_count(batch_size, "batch_size")
    if len(images) == 0:
        raise ValueError("images is empty; nothing to evaluate")
    k = len(images.classes)
    _as_labels(images.labels, "images.labels", len(images), k)  # fail before any inference
    first = next(iter(model.parameters()), None)
    model_device = first.device if first is not None else torch.device("cpu")
    device = model_device if device is None else torch.device(device)
    if first is not None and device != model_device and not (device.type == model_device.type and device.index is None):
        raise ValueError(f"device={device} but the model is on {model_device}; move it first with model.to({str(device)!r})")

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    logits: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = images.float_images(slice(start, start + batch_size)).to(device, non_blocking=True)
                out = model(batch)
                if out.dim() != 2 or out.shape[1] != k:
                    raise ValueError(f"the model returns shape {tuple(out.shape)} but the images have {k} classes "
                                     f"({', '.join(images.classes)}); expected [N, {k}] logits")
                logits.append(out.float().cpu())
    finally:
        for m, mode in modes:
            m.training = mode
    all_logits = torch.cat(logits)
    return Evaluation.from_probabilities(torch.softmax(all_logits, dim=1), images.labels, images.classes, images.names,
                                         predictions=all_logits.argmax(dim=1))


def _pct(x: float, digits: int = 0) -> str:
    """A share as a percentage that never rounds a mistake away (0.997 -> ">99%", 0.004 -> "<1%")."""
    text = f"{x:.{digits}%}"
    step = 10.0 ** -digits
    if x > 0 and float(text[:-1]) == 0:
        return f"<{step:.{digits}f}%"
    if x < 1 and float(text[:-1]) >= 100:
        return f">{100 - step:.{digits}f}%"
    return text


def describe(evaluation: Evaluation) -> list[str]:
    """Plain sentences about ``evaluation``, written from its numbers only: an overall line, the most
    common mistake, then one line per class.

    >>> describe(e)
    ['Accuracy 91.4% on 1,400 images (7 classes); macro F1 0.91.',
     'Most common mistake: Fear taken for Surprise (37 images, 18% of Fear).',
     'Angry: 88% recall (200 images), most often confused with Disgust (7%).', ...]
    """
    e = evaluation
    lines = [f"Accuracy {_pct(e.accuracy, 1)} on {e.num_images:,} images ({len(e.classes)} classes); "
             f"macro F1 {e.macro()['f1']:.2f}."]
    if e.confused_pairs:
        p = e.confused_pairs[0]
        t, q = e.classes[p.true], e.classes[p.predicted]
        lines.append(f"Most common mistake: {t} taken for {q} ({p.count:,} image{'s' * (p.count != 1)}, {_pct(p.share)} of {t}).")
    else:
        lines.append("No image was misclassified.")
    for i, name in enumerate(e.classes):
        n = int(e.support[i])
        if n == 0:
            predicted = int(e.predicted_counts[i])
            lines.append(f"{name}: no images of this class; predicted for {predicted:,} image{'s' * (predicted != 1)}.")
            continue
        row = e.confusion[i].copy()
        row[i] = 0
        head = f"{name}: {_pct(float(e.recall[i]))} recall ({n:,} image{'s' * (n != 1)})"
        if row.max() == 0:
            lines.append(f"{head}, never confused with another class.")
        else:
            j = int(row.argmax())
            lines.append(f"{head}, most often confused with {e.classes[j]} ({_pct(float(e.confusion_normalized[i, j]))}).")
    return lines
