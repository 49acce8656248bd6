"""The chapter's plots (loss and accuracy over epochs, examples seen on the top axis), a confusion matrix, and the
ROC, precision-recall and reliability curves of the test split."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from .files import atomic_path  # noqa: E402


def save_figure(fig: Any, stem: Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """``fig`` as ``STEM.png``, ``STEM.pdf`` ... (each written atomically), then closed."""
    written = []
    for ext in formats:
        with atomic_path(stem.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=120)
        written.append(stem.with_suffix(f".{ext}"))
    plt.close(fig)
    return written


def plot_values(epochs_seen: list[float], examples_seen: list[float], train_values: list[float],
                val_values: list[float], label: str, out_stem: Path,
                val_epochs: list[float] | None = None) -> list[Path]:
    """The chapter's ``plot_values``: training and validation curves over epochs, examples seen on top;
    saved as PNG and PDF."""
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, label=f"Training {label}")
    ax1.plot(val_epochs or epochs_seen, val_values, linestyle="-.", label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()  # examples seen, on the same scale as the epochs below
    ax2.plot(examples_seen, train_values, alpha=0)
    ax2.set_xlabel("Examples seen")
    fig.tight_layout()
    return save_figure(fig, out_stem)


def plot_history(log_history: list[dict], examples_per_step: int, steps_per_epoch: float, out_dir: Path) -> list[Path]:
    """``loss-plot`` (logged training loss and evaluation loss) and ``accuracy-plot`` (per epoch) from
    Trainer's log history."""
    written: list[Path] = []
    train = [h for h in log_history if "loss" in h and "epoch" in h]
    evals = [h for h in log_history if "eval_loss" in h]
    if train and evals:
        written += plot_values([h["epoch"] for h in train], [h["step"] * examples_per_step for h in train],
                               [h["loss"] for h in train], [h["eval_loss"] for h in evals], "loss",
                               out_dir / "loss-plot", val_epochs=[h["epoch"] for h in evals])
    acc = [h for h in log_history if "epoch_train_accuracy" in h]
    if acc:
        epochs = [round(h["epoch"]) for h in acc]
        written += plot_values(epochs, [e * steps_per_epoch * examples_per_step for e in epochs],
                               [h["epoch_train_accuracy"] for h in acc], [h["epoch_validation_accuracy"] for h in acc],
                               "accuracy", out_dir / "accuracy-plot")
    return written


def plot_confusion_matrix(cm: Any, labels: list[str], path: Path, title: str) -> Path:
    """A ``[true, predicted]`` count matrix (any number of labels) as a PNG heat map with the counts written in."""
    cm = np.asarray(cm)
    side = max(4.4, 0.45 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(side, side * 0.95))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if max(map(len, labels)) > 6 else 0, ha="right"
                  if max(map(len, labels)) > 6 else "center")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(textwrap.fill(title, 48), fontsize=8)
    for (i, j), value in np.ndenumerate(cm):
        ax.text(j, i, str(int(value)), ha="center", va="center", color="white" if value > cm.max() / 2 else "black")
    fig.tight_layout()
    return save_figure(fig, path.with_suffix(""), ("png",))[0]


def plot_operating_curves(probabilities: Any, truth: Any, predicted: Any, labels: list[str], positive: int,
                          out_dir: Path, title: str, threshold: float = 0.5) -> list[Path]:
    """``roc-curve.png``, ``precision-recall.png`` and ``calibration.png`` (reliability diagram, 15 bins) of
    class probabilities: the positive class's for two labels, each class one-vs-rest for more; the decisions
    ``predicted`` marked on each curve (and, for two labels, the positive ``threshold`` on the diagram)."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    p, y, decided = np.asarray(probabilities, dtype=float), np.asarray(truth, dtype=int), np.asarray(predicted)
    classes = [positive] if len(labels) == 2 else range(len(labels))
    figures = {name: plt.subplots(figsize=(4.6, 4.2)) for name in ("roc-curve", "precision-recall", "calibration")}
    for k in (k for k in classes if 0 < (y == k).sum() < len(y)):  # a curve needs both sides
        actual, chosen = y == k, decided == k
        fpr, tpr, _ = roc_curve(actual, p[:, k])
        precision, recall, _ = precision_recall_curve(actual, p[:, k])
        frequency, mean_p = calibration_curve(actual, p[:, k], n_bins=15)
        line = figures["roc-curve"][1].plot(fpr, tpr, label=labels[k])[0]
        figures["roc-curve"][1].plot(chosen[~actual].mean(), chosen[actual].mean(), "o", color=line.get_color())
        figures["precision-recall"][1].plot(recall, precision, label=labels[k], color=line.get_color())
        figures["precision-recall"][1].plot(chosen[actual].mean(), actual[chosen].mean() if chosen.any() else 1.0,
                                            "o", color=line.get_color())
        figures["calibration"][1].plot(mean_p, frequency, "s-", label=labels[k], color=line.get_color())
    if len(labels) == 2:
        figures["calibration"][1].axvline(threshold, linestyle=":", color="grey", label=f"threshold {threshold:g}")
    axes = {"roc-curve": ("false-positive rate", "true-positive rate (recall)"),
            "precision-recall": ("recall", "precision"), "calibration": ("mean predicted probability", "fraction true")}
    written = []
    for name, (fig, ax) in figures.items():
        if name != "precision-recall":  # chance (ROC) and perfect calibration
            ax.plot([0, 1], [0, 1], "--", color="lightgrey")
        ax.set(xlabel=axes[name][0], ylabel=axes[name][1], xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(textwrap.fill(f"{title}; dots: the decisions", 48), fontsize=8)
        ax.legend(fontsize=7, loc="lower right" if name != "precision-recall" else "lower left")
        fig.tight_layout()
        written += save_figure(fig, out_dir / name, ("png",))
    return written
