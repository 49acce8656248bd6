"""Classification metrics as an ``evaluate`` metric defined here, so they work offline.

``evaluate.load("accuracy")`` fetches a metric script from the Hub (and fails offline; the evaluate
wheel ships no scripts). ``SpamMetrics`` is an ``evaluate.Metric`` like any other (``add_batch``,
``compute``, typed features), with spam (label 1) as the positive class.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

POSITIVE_LABEL = 1  # spam


class SpamMetrics(evaluate.Metric):
    """Accuracy, and precision, recall and F1 of the spam class."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy, precision, recall and F1 for ham (0) / spam (1), spam positive.",
            citation="",
            inputs_description="predictions and references: integer class ids (0 = ham, 1 = spam)",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        pred, ref = np.asarray(predictions), np.asarray(references)
        tp = int(np.sum((pred == POSITIVE_LABEL) & (ref == POSITIVE_LABEL)))
        precision = tp / max(int(np.sum(pred == POSITIVE_LABEL)), 1)
        recall = tp / max(int(np.sum(ref == POSITIVE_LABEL)), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"accuracy": float(np.mean(pred == ref)) if len(ref) else 0.0, "precision": precision,
                "recall": recall, "f1": f1}


def compute_spam_metrics(predictions: Any, references: Any) -> dict[str, float]:
    """Metrics of integer predictions against references."""
    return SpamMetrics(keep_in_memory=True).compute(predictions=[int(p) for p in predictions],
                                                    references=[int(r) for r in references])


def confusion_matrix(predictions: Any, references: Any, num_labels: int = 2) -> np.ndarray:
    """``[true, predicted]`` counts."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(references, dtype=int), np.asarray(predictions, dtype=int)), 1)
    return cm
