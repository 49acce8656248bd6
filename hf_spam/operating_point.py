"""The operating point baked into a classifier's head, so every consumer of the saved weights (pipeline, Auto classes,
handler.py, ONNX, the native export) decides as tuned with no code of its own."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .errors import HfSpamError
from .metrics import probability


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature ``T`` minimising the log loss of ``softmax(logits / T)`` on ``labels`` (searched on log T)."""
    from scipy.optimize import minimize_scalar

    z, y = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.long)
    loss = lambda log_t: float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))  # noqa: E731
    return math.exp(minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded").x)


def classifier_head(model: Any) -> torch.nn.Linear:
    """The ``out_head`` that computes ``model``'s logits: its own, or with peft the adapter's trained copy of it
    (``modules_to_save``), so a fold reaches the adapter folder and the merged model alike."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = model.gpt.out_head
    return head.modules_to_save[head.active_adapters[0]] if hasattr(head, "modules_to_save") else head


def fold_temperature(model: Any, temperature: float) -> Any:
    """Divide ``model``'s head (weights and bias) by ``temperature``, so its logits become ``logits / T``; recorded as
    ``config.calibration_temperature`` (``temperature`` means sampling to transformers). Fold before the threshold."""
    head = classifier_head(model)
    with torch.no_grad():
        head.weight.div_(temperature)
        head.bias.div_(temperature)
    model.config.calibration_temperature = float(temperature)
    return model


def fold_threshold(model: Any, threshold: float, positive: int = 1) -> Any:
    """Shift the positive logit of ``model``'s two-label head by ``threshold``, a log-odds (``b_pos -= threshold``):
    argmax then decides ``positive`` when its unshifted log-odds is above ``threshold``, and the shifted
    positive score crosses 0.5 there. Recorded as ``config.decision_log_odds`` and, as the positive class's
    probability, ``config.decision_threshold``, with the class it is of as ``config.decision_label``. Returns
    ``model``."""
    if not math.isfinite(threshold):
        raise HfSpamError(f"decision threshold log-odds {threshold}: expected a finite number to fold into the head")
    with torch.no_grad():
        classifier_head(model).bias[positive] -= threshold
    model.config.decision_log_odds = float(threshold)
    model.config.decision_threshold = probability(threshold)
    model.config.decision_label = model.config.id2label[positive]
    return model


def unfolded_logits(logits: Any, config: Any) -> np.ndarray:
    """A saved model's logits (float64) as before its folded threshold shift: the (calibrated) model's own, whose
    softmax is its probability; unchanged when no threshold was folded (``config.decision_log_odds``)."""
    z = np.array(logits, dtype=np.float64)
    if getattr(config, "decision_log_odds", None) is not None:
        z[:, config.label2id[config.decision_label]] += config.decision_log_odds
    return z
