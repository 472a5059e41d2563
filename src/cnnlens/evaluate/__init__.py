"""Classification metrics of a model on an ImageSet: accuracy, per-class precision/recall/F1, the
confusion matrix (counts and row-normalised), the most-confused class pairs and the class distribution,
saved as JSON, CSV and PNG figures, and described in plain sentences.

>>> result = evaluate(model, dataset)
>>> result.save("runs/fer/eval")
>>> describe(result)[0]
'Accuracy 91.4% on 1,400 images (7 classes); macro F1 0.91.'
"""

from __future__ import annotations

from cnnlens.evaluate.figures import class_distribution_figure, confusion_figure
from cnnlens.evaluate.metrics import FILES, METRICS_VERSION, ConfusedPair, Evaluation, describe, evaluate

__all__ = ["FILES", "METRICS_VERSION", "ConfusedPair", "Evaluation", "class_distribution_figure",
           "confusion_figure", "describe", "evaluate"]
