"""Ranking and calibration scores and the test split's curves (issue 20, item 1), on a real model's probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import scaled_tiny_model
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from hf_spam.evaluation import scores, softmax
from hf_spam.metrics import expected_calibration_error, probability_scores
from hf_spam.model_card import model_card
from hf_spam.plots import plot_operating_curves


def model_probabilities(num_labels: int, n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A scaled random tiny classifier's probabilities on random token ids, and labels that mostly follow them."""
    model = scaled_tiny_model(seed, num_labels=num_labels)
    ids = torch.randint(0, model.config.vocab_size, (n, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        p = softmax(model(input_ids=ids).logits)
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random(n) < 0.7, p.argmax(1), rng.integers(0, num_labels, n))
    truth[:num_labels] = range(num_labels)  # every class present
    return p, truth


def reference_ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE by its definition, one example at a time."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i in range(len(y)) if lo <= p[i].max() < hi or (b == bins - 1 and p[i].max() == 1.0)]
        if inside:
            acc = np.mean([p[i].argmax() == y[i] for i in inside])
            total += len(inside) / len(y) * abs(acc - np.mean([p[i].max() for i in inside]))
    return total


def test_two_label_scores_are_the_positive_class_scores():
    p, y = model_probabilities(2)
    predicted = p.argmax(1)
    got = probability_scores(p, y, predicted, positive=1)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert got["average_precision"] == pytest.approx(average_precision_score(y, p[:, 1]))
    assert got["log_loss"] == pytest.approx(log_loss(y, p))
    assert got["brier_score"] == pytest.approx(brier_score_loss(y, p[:, 1]))
    assert got["ece"] == pytest.approx(reference_ece(p, y))
    negatives = y == 0
    assert got["false_positive_rate"] == pytest.approx((predicted[negatives] == 1).sum() / negatives.sum())
    flipped = probability_scores(p, y, predicted, positive=0)  # the other positive class: its own scores
    assert flipped["roc_auc"] == pytest.approx(roc_auc_score(y == 0, p[:, 0]))
    assert flipped["false_positive_rate"] == pytest.approx((predicted[~negatives] == 0).mean())


def test_multi_class_scores_are_macro_one_vs_rest():
    p, y = model_probabilities(4)
    got = probability_scores(p, y, p.argmax(1))
    assert got["roc_auc"] == pytest.approx(np.mean([roc_auc_score(y == k, p[:, k]) for k in range(4)]))
    assert got["average_precision"] == pytest.approx(np.mean([average_precision_score(y == k, p[:, k])
                                                              for k in range(4)]))
    assert got["brier_score"] == pytest.approx(np.mean(((p - np.eye(4)[y]) ** 2).sum(1)))
    assert got["ece"] == pytest.approx(reference_ece(p, y)) and "false_positive_rate" not in got
    missing = probability_scores(p[y != 3], y[y != 3], p[y != 3].argmax(1))  # a class absent: ranking undefined
    assert missing["roc_auc"] is None and missing["log_loss"] == pytest.approx(log_loss(y[y != 3], p[y != 3],
                                                                                        labels=range(4)))


def test_ece_is_zero_when_confidence_matches_accuracy():
    p = np.array([[0.8, 0.2]] * 10)
    assert expected_calibration_error(p, np.array([0] * 8 + [1] * 2)) == pytest.approx(0.0)
    assert expected_calibration_error(p, np.zeros(10, dtype=int)) == pytest.approx(0.2)


@pytest.mark.parametrize("num_labels", [2, 3])
def test_curves_are_written(tmp_path, num_labels):
    p, y = model_probabilities(num_labels)
    written = plot_operating_curves(p, y, p.argmax(1), [f"c{k}" for k in range(num_labels)], 1, tmp_path, "test")
    assert sorted(path.name for path in written) == ["calibration.png", "precision-recall.png", "roc-curve.png"]
    assert all(path.stat().st_size > 5000 for path in written)


def test_card_shows_the_scores_of_every_split():
    p, y = model_probabilities(2)
    both = {**scores(p.argmax(1), y, ["ham", "spam"]), **probability_scores(p, y, p.argmax(1))}
    metrics = {"positive_label": "spam", **{f"{split}_{key}": value for split in ("validation", "test")
                                            for key, value in both.items()}}
    config = scaled_tiny_model().config
    config.id2label = {0: "ham", 1: "spam"}
    card = str(model_card(config, metrics, {}, {}, "tiny"))
    for split in ("validation", "test"):
        row = [split] + [f"{metrics[f'{split}_{k}']:.4f}" for k in ("roc_auc", "average_precision", "log_loss",
                                                                    "brier_score", "ece", "false_positive_rate")]
        assert "| " + " | ".join(row) + " |" in card
    assert "| train |" not in card.split("Ranking and calibration")[1]  # only the splits scored
