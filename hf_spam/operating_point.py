"""The operating point baked into a classifier's head, so every consumer of the saved weights (pipeline, Auto classes,
handler.py, ONNX, the native export) decides as tuned with no code of its own."""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import HfSpamError


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature ``T`` minimising the log loss of ``softmax(logits / T)`` on ``labels`` (searched on log T)."""
    from scipy.optimize import minimize_scalar

    z, y = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.long)
    loss = lambda log_t: float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))  # noqa: E731
    return math.exp(minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded").x)


def fold_temperature(model: Any, temperature: float) -> Any:
    """Divide ``model``'s head (weights and bias) by ``temperature``, so its logits become ``logits / T``; recorded as
    ``config.calibration_temperature`` (``temperature`` means sampling to transformers). Fold before the threshold."""
    with torch.no_grad():
        model.gpt.out_head.weight.div_(temperature)
        model.gpt.out_head.bias.div_(temperature)
    model.config.calibration_temperature = float(temperature)
    return model


def fold_threshold(model: Any, threshold: float, positive: int = 1) -> Any:
    """Shift the positive logit of ``model``'s two-label head by the threshold's log-odds (``b_pos -=
    log(t / (1 - t))``): argmax then decides ``positive`` exactly when its unshifted probability is at least
    ``threshold``; recorded as ``config.decision_threshold``. Returns ``model``."""
    if not 0 < threshold < 1:
        raise HfSpamError(f"decision threshold {threshold}: a saturated probability has no finite log-odds to fold "
                          "into the head; choose a looser target or give --decision_threshold below 1")
    with torch.no_grad():
        model.gpt.out_head.bias[positive] -= math.log(threshold / (1 - threshold))
    model.config.decision_threshold = float(threshold)
    return model
