"""Classification metrics as an ``evaluate`` metric defined here, so they work offline, for any number of labels.

``evaluate.load("accuracy")`` fetches a metric script from the Hub (and fails offline; the evaluate
wheel ships no scripts). ``ClassificationMetrics`` is an ``evaluate.Metric`` like any other (``add_batch``,
``compute``, typed features): accuracy and macro precision/recall/F1, and for two classes the positive
class's precision/recall/F1 under the plain names (``precision``, ``recall``, ``f1``), as the SMS recipe
has always reported them with spam positive. ``per_class`` and ``confusion_matrix`` give the rest.
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import evaluate
import numpy as np

from .errors import HfSpamError


def confusion_matrix(predictions: Any, references: Any, num_labels: int = 2) -> np.ndarray:
    """``[true, predicted]`` counts."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(references, dtype=int), np.asarray(predictions, dtype=int)), 1)
    return cm


def per_class(cm: np.ndarray) -> list[dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (0 where undefined)."""
    out = []
    for k in range(len(cm)):
        tp, predicted, actual = cm[k, k], cm[:, k].sum(), cm[k, :].sum()
        precision, recall = tp / max(predicted, 1), tp / max(actual, 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append({"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(actual)})
    return out


class ClassificationMetrics(evaluate.Metric):
    """Accuracy, macro precision/recall/F1, and with two labels the ``positive`` class's precision/recall/F1."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy, macro precision/recall/F1 and, for two labels, the positive class's.",
            citation="",
            inputs_description="predictions and references: integer class ids; num_labels, positive: ints",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions: Any, references: Any, num_labels: int = 2, positive: int = 1) -> dict[str, float]:
        cm = confusion_matrix(predictions, references, num_labels)
        classes = per_class(cm)
        out = {"accuracy": float(np.trace(cm) / max(cm.sum(), 1))}
        out.update({f"macro_{key}": float(np.mean([c[key] for c in classes])) for key in ("precision", "recall", "f1")})
        if num_labels == 2:
            out.update({key: classes[positive][key] for key in ("precision", "recall", "f1")})
        return out


def compute_metrics(predictions: Any, references: Any, num_labels: int = 2, positive: int = 1) -> dict[str, float]:
    """Metrics of integer predictions against references (spam, label 1, is the SMS recipe's positive class)."""
    return ClassificationMetrics(keep_in_memory=True).compute(
        predictions=[int(p) for p in predictions], references=[int(r) for r in references], num_labels=num_labels,
        positive=positive)


def positive_index(names: list[str], chosen: str | None = None) -> int:
    """The positive class of two labels: ``chosen`` (``--positive_label``), else ``spam`` when present, else the
    second label. More than two labels have none (macro averages are reported); ``chosen`` is then an error."""
    if chosen is not None and (len(names) != 2 or chosen not in names):
        why = "not a label" if chosen not in names else f"{len(names)} labels report macro averages, not one class's"
        raise HfSpamError(f"--positive_label {chosen}: {why}; the labels are {', '.join(names)}")
    if chosen is not None:
        return names.index(chosen)
    return names.index("spam") if "spam" in names else 1


def expected_calibration_error(probabilities: Any, references: Any, bins: int = 15) -> float:
    """Top-label ECE: over ``bins`` equal-width confidence bins, the example-weighted gap of accuracy and confidence."""
    p, y = np.asarray(probabilities, dtype=float), np.asarray(references, dtype=int)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def probability_scores(probabilities: Any, references: Any, predictions: Any, positive: int = 1) -> dict[str, Any]:
    """Ranking and calibration scores of class probabilities: ROC AUC and average precision (two labels: of
    ``positive``; more: macro one-vs-rest; ``None`` when a class is absent), log loss, Brier score (two labels: of
    ``positive``; more: mean over examples of the squared error summed over the one-hot classes), ECE (15 bins);
    for two labels also the false-positive rate (negatives decided positive) of ``predictions``."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    p, y = np.asarray(probabilities, dtype=float), np.asarray(references, dtype=int)
    p = p / p.sum(axis=1, keepdims=True)  # float32 softmax rows, summing to one in float64
    classes = list(range(p.shape[1]))
    two, onehot = len(classes) == 2, np.eye(len(classes))[y]
    ranked = len(np.unique(y)) == len(classes)  # every class present: ranking scores are defined
    out = {"roc_auc": (float(roc_auc_score(y == positive, p[:, positive]) if two else
                             roc_auc_score(y, p, multi_class="ovr", average="macro", labels=classes))
                       if ranked else None),
           "average_precision": (float(average_precision_score(y == positive, p[:, positive]) if two else
                                       average_precision_score(onehot, p, average="macro")) if ranked else None),
           "log_loss": float(log_loss(y, p, labels=classes)),
           "brier_score": float(brier_score_loss(y == positive, p[:, positive]) if two else
                                np.mean(np.sum((p - onehot) ** 2, axis=1))),
           "ece": expected_calibration_error(p, y)}
    if two:
        negative = y != positive
        out["false_positive_rate"] = float((np.asarray(predictions)[negative] == positive).mean()) \
            if negative.any() else 0.0
    return out


def positive_log_odds(logits: Any, positive: int = 1) -> np.ndarray:
    """Two labels: the log-odds of ``positive`` (its logit minus the other's, in float64). Thresholds are set and
    applied on it: unlike a float32 probability it never saturates at 1, and it is what the head's bias shifts."""
    z = np.asarray(logits, dtype=np.float64)
    return z[:, positive] - z[:, 1 - positive]


def log_odds(probability: float) -> float:
    """``log(p / (1 - p))``: the log-odds at which the positive class's probability is ``probability``."""
    return math.log(probability / (1 - probability))


def probability(log_odds_value: float) -> float:
    """The positive class's probability at ``log_odds_value`` (float64 logistic)."""
    return 1 / (1 + math.exp(-log_odds_value)) if log_odds_value > -700 else 0.0


def decide(logits: Any, positive: int = 1, threshold: float | None = None) -> np.ndarray:
    """Each row's label: the most probable, or (two labels, ``threshold`` a log-odds) ``positive`` when its
    log-odds is at least ``threshold`` (its probability at least ``probability(threshold)``)."""
    z = np.asarray(logits)
    return z.argmax(axis=1) if threshold is None else \
        np.where(positive_log_odds(z, positive) >= threshold, positive, 1 - positive)


def choose_threshold(score: Any, is_positive: Any, *, max_false_positive_rate: float | None = None,
                     min_precision: float | None = None) -> float:
    """The threshold on ``score`` (decide positive at ``score >= t``; any score that ranks like the positive
    probability) with the largest recall whose false-positive rate is at most ``max_false_positive_rate`` (or whose
    precision is at least ``min_precision``), ties to the higher threshold. It is placed halfway between the lowest
    score it decides positive and the next lower score, so no example sits on the boundary, where float rounding in
    another runtime could flip it. An ``HfSpamError`` when no threshold catches a positive within the target."""
    from sklearn.metrics import roc_curve

    s, y = np.asarray(score, dtype=np.float64), np.asarray(is_positive, dtype=bool)
    fpr, recall, thresholds = roc_curve(y, s, drop_intermediate=False)  # every distinct score, falling
    decided = np.array([(s >= t).sum() for t in thresholds])
    precision = np.divide(recall * y.sum(), decided, out=np.ones_like(recall), where=decided > 0)
    flag, target = (("max_false_positive_rate", max_false_positive_rate) if max_false_positive_rate is not None
                    else ("min_precision", min_precision))
    meets = (fpr <= target if flag == "max_false_positive_rate" else precision >= target) & (recall > 0)
    if not meets.any():
        raise HfSpamError(f"--{flag} {target}: no threshold meets it on the validation split ({len(y)} rows, "
                          f"{int(y.sum())} positive); loosen the target")
    best = np.flatnonzero(meets & (recall == recall[meets].max()))[0]  # thresholds fall: the first is the highest
    lowest, below = thresholds[best], thresholds[best + 1] if best + 1 < len(thresholds) else None
    return float((lowest + below) / 2 if below is not None else lowest - 1.0)
