"""Sentences written from numbers: every claim in the report's prose is a value computed from the run.

Each function takes plain numbers and names and returns a list of sentences; nothing here invents a
judgement that the numbers do not carry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pct(x: float, digits: int = 0) -> str:
    """``0.934 -> "93%"``; ``digits`` decimals."""
    return f"{100.0 * float(x):.{digits}f}%"


def num(n: float) -> str:
    """Thousands separators for counts: ``2400 -> "2,400"``."""
    return f"{int(n):,}"


def count(n: int, word: str, plural: str | None = None) -> str:
    """``count(1, "image") -> "1 image"``, ``count(2400, "image") -> "2,400 images"``."""
    return f"{num(n)} {word if int(n) == 1 else (plural or word + 's')}"


def data_sentences(counts: Sequence[int], classes: Sequence[str], split: str, *, data: str | None = None) -> list[str]:
    """Size of the split, largest and smallest class with their shares (or that it is balanced), and the
    imbalance ratio. ``data``: the spec of a dataset given with ``--data``, named instead of the split.

    >>> data_sentences([30, 10], ["a", "b"], "val")[0]
    'The val split holds 40 images in 2 classes.'
    >>> data_sentences([5, 5], ["a", "b"], "val", data="folder:photos")
    ['folder:photos holds 10 images in 2 classes.', 'Balanced: 5 images per class.']
    """
    c = np.asarray(counts, dtype=np.int64)
    total = int(c.sum())
    where, here = (f"The {split} split", "this split") if data is None else (data, data)
    out = [f"{where} holds {count(total, 'image')} in {count(len(classes), 'class', 'classes')}."]
    if total == 0:
        return out
    hi, lo = int(c.argmax()), int(c.argmin())
    if c[hi] == c[lo]:
        out.append(f"Balanced: {count(int(c[hi]), 'image')} per class.")
        return out
    out.append(f"Largest class: {classes[hi]} ({num(c[hi])}, {pct(c[hi] / total)}); "
               f"smallest: {classes[lo]} ({num(c[lo])}, {pct(c[lo] / total)}).")
    if c[lo] > 0 and c[hi] / c[lo] >= 2:
        out.append(f"The largest class has {c[hi] / c[lo]:.1f}x the images of the smallest.")
    elif c[lo] == 0:
        empty = [classes[i] for i in np.flatnonzero(c == 0)]
        names = empty[0] if len(empty) == 1 else ", ".join(empty[:-1]) + " and " + empty[-1]
        out.append(f"{names} {'has' if len(empty) == 1 else 'have'} no images in {here}, so "
                   f"{'it cannot' if len(empty) == 1 else 'they cannot'} be evaluated here.")
    return out


def model_sentences(name: str, total: int, trainable: int, n_layers: int, input_shape: Sequence[int]) -> list[str]:
    """Architecture name, parameter counts and input shape."""
    shape = "x".join(str(int(s)) for s in input_shape)
    out = [f"{name}: {num(total)} parameters ({num(trainable)} trainable) in {n_layers} layers, input {shape}."]
    return out


def training_sentences(rows: Sequence[dict[str, float]]) -> list[str]:
    """Best validation accuracy and its epoch, last losses, and the train/validation gap at the best epoch."""
    if not rows:
        return ["The training history is empty."]
    best = max(rows, key=lambda r: r.get("val_acc", float("-inf")))
    last = rows[-1]
    out = [f"{len(rows)} epochs; best validation accuracy {pct(best['val_acc'], 1)} at epoch {int(best['epoch'])}."]
    if "train_loss" in last and "val_loss" in last:
        out.append(f"Last epoch: train loss {last['train_loss']:.3f}, validation loss {last['val_loss']:.3f}.")
    if "train_acc" in best:
        gap = best["train_acc"] - best["val_acc"]
        out.append(f"At the best epoch train accuracy is {pct(best['train_acc'], 1)}, "
                   f"{abs(gap) * 100:.1f} points {'above' if gap >= 0 else 'below'} validation.")
    if "seconds" in rows[0]:
        total = sum(r.get("seconds", 0.0) for r in rows)
        out.append(f"Training took {total:.0f} s in all.")
    return out


def class_sentences(confusion: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Per true class: recall and the class it is most often mistaken for, from a count matrix.

    >>> class_sentences(np.array([[9, 1], [0, 5]]), ["Happy", "Sad"])[0]
    'Happy: 90% recall, most often confused with Sad (10%).'
    """
    cm = np.asarray(confusion, dtype=np.int64)
    out = []
    for i, name in enumerate(classes):
        row = cm[i]
        n = int(row.sum())
        if n == 0:
            out.append(f"{name}: no images in this split.")
            continue
        recall = row[i] / n
        off = row.copy()
        off[i] = -1
        j = int(off.argmax())
        if off[j] <= 0:
            out.append(f"{name}: {pct(recall)} recall, never confused.")
        else:
            out.append(f"{name}: {pct(recall)} recall, most often confused with {classes[j]} ({pct(row[j] / n)}).")
    return out


def explanation_sentence(name: str, n_right: int, n_total: int, right_conf: float | None,
                         wrong_conf: float | None, wrong_pred: str | None, where: str = "the split") -> str:
    """One class in the explanations section: its score and the confidence of the images shown
    (``where``: how the page names the images, e.g. "the val split")."""
    if n_total == 0:
        return f"{name}: no images of this class in {where}."
    s = f"{name}: {num(n_right)} of {num(n_total)} right ({pct(n_right / n_total)})"
    if right_conf is not None:
        s += f"; most confident right image p={right_conf:.2f}"
    if wrong_conf is not None and wrong_pred is not None:
        s += f"; most confident mistake: predicted {wrong_pred} with p={wrong_conf:.2f}"
    elif n_right == n_total:
        s += "; no mistakes to show"
    return s + "."


def map_location_sentence(method: str, cls: str, attribution: np.ndarray, *, inside: float | None = None,
                          cover: float | None = None) -> str:
    """Where a class-average map puts its positive mass: upper vs lower half, its peak, and (for data with
    known deciding parts) the share ``inside`` them, which cover ``cover`` of the image.

    >>> a = np.zeros((4, 4)); a[3, 1] = 1.0
    >>> map_location_sentence("Grad-CAM", "Happy", a)
    'Happy, Grad-CAM: 100% of the positive mass in the lower half; peak at row 4, column 2 of 4x4.'
    """
    a = np.clip(np.asarray(attribution, dtype=np.float64), 0, None)
    total = a.sum()
    h, w = a.shape
    if total <= 0:
        return f"{cls}, {method}: the average map is zero (no positive attribution)."
    lower = a[h // 2:].sum() / total
    half = "lower" if lower >= 0.5 else "upper"
    share = lower if lower >= 0.5 else 1 - lower
    r, c = np.unravel_index(int(a.argmax()), a.shape)
    s = f"{cls}, {method}: {pct(share)} of the positive mass in the {half} half; peak at row {r + 1}, column {c + 1} of {h}x{w}"
    if inside is not None and cover is not None:
        s += f"; {pct(inside)} inside the deciding parts, which cover {pct(cover)} of the image"
    return s + "."
