"""Classification metrics through the ``evaluate`` library, without any download.

``evaluate.load("accuracy")`` fetches a metric script from the Hub and fails offline, and the
evaluate wheel ships no scripts. ``SpamMetrics`` is an ``evaluate.Metric`` defined here instead,
so it behaves like any evaluate metric (``add_batch``/``compute``, features checked) and works
on machines without network access.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

POSITIVE_LABEL = 1  # spam


class SpamMetrics(evaluate.Metric):
    """Accuracy, precision, recall and F1 with spam (label 1) as the positive class."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy, precision, recall and F1 for ham (0) / spam (1), spam positive.",
            citation="",
            inputs_description="predictions and references: integer class ids (0 = ham, 1 = spam)",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        pred = np.asarray(predictions)
        ref = np.asarray(references)
        tp = int(np.sum((pred == POSITIVE_LABEL) & (ref == POSITIVE_LABEL)))
        fp = int(np.sum((pred == POSITIVE_LABEL) & (ref != POSITIVE_LABEL)))
        fn = int(np.sum((pred != POSITIVE_LABEL) & (ref == POSITIVE_LABEL)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        accuracy = float(np.mean(pred == ref)) if len(ref) else 0.0
        return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def compute_spam_metrics(predictions: Any, references: Any) -> dict[str, float]:
    """One-shot helper: metrics for integer predictions vs references."""
    metric = SpamMetrics(keep_in_memory=True)
    return metric.compute(predictions=[int(p) for p in predictions], references=[int(r) for r in references])


def confusion_matrix(predictions: Any, references: Any, num_labels: int = 2) -> np.ndarray:
    """``[true, predicted]`` counts."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    for t, p in zip(np.asarray(references).tolist(), np.asarray(predictions).tolist()):
        cm[int(t), int(p)] += 1
    return cm


def trainer_compute_metrics(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for ``transformers.Trainer``: argmax of the logits, then ``SpamMetrics``."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return compute_spam_metrics(np.argmax(logits, axis=-1), labels)
