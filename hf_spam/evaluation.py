"""Scores and their reports: the recipe's scores of every split (through ``Trainer``) and ``hf-spam evaluate``'s
scores of a trained model on a split it never trained on (or a labelled file); one set of scores for both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import hf_hub_download

from .data import LABEL_NAMES, read_sms_file
from .errors import HfSpamError
from .files import write_json, write_text
from .metrics import (
    choose_threshold,
    compute_metrics,
    confusion_matrix,
    decide,
    log_odds,
    per_class,
    positive_index,
    positive_log_odds,
    probability,
    probability_scores,
)
from .operating_point import fit_temperature, unfolded_logits
from .plots import plot_confusion_matrix
from .sources import load_data

# How the recipe cut its splits: ``hf-spam evaluate`` takes them from the model's training_args.json, so that the split
# it scores is the one the model never trained on.
SPLIT_SETTINGS = ("split_seed", "validation_split_percentage", "test_split_percentage", "natural_balance", "balance")
Data = tuple[list[str], list[int], list[str], str]  # texts, label ids, label names, which rows they are


def scores(predicted: Any, truth: Any, labels: list[str], positive: int = 1) -> dict[str, Any]:
    """Accuracy, macro and (two labels) ``positive``'s precision/recall/F1, how many were scored, per-class scores
    and the confusion matrix (rows: true label, columns: predicted label)."""
    cm = confusion_matrix(predicted, truth, len(labels))
    return {**compute_metrics(predicted, truth, len(labels), positive), "examples": len(truth),
            "per_class": dict(zip(labels, per_class(cm))), "confusion_matrix": cm.tolist()}


def softmax(logits: Any) -> np.ndarray:
    """Each row's class probabilities, in float64 (a float32 softmax rounds confident rows to exactly 1)."""
    return torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=-1).numpy()


def evaluate_splits(trainer: Any, splits: dict[str, Any], label_names: list[str], positive: int = 1,
                    decision: dict[str, float | None] | None = None,
                    calibrate: str = "none") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``scores`` and the loss of every example of each split, keyed ``SPLIT_...`` (each example exactly once,
    also with several processes: ``Trainer.predict`` gathers with ``gather_for_metrics``), with its ranking and
    calibration scores (``probability_scores``); and the logits per split, in the split's order. ``decision``
    (the ``DECISION_FLAGS`` by name) decides two labels at a threshold, given or chosen on the validation split;
    ``calibrate="temperature"`` first divides every split's logits by a temperature fitted on validation."""
    results = {name: trainer.predict(ds, metric_key_prefix=name) for name, ds in splits.items()}
    logits = {name: r.predictions[0] if isinstance(r.predictions, tuple) else r.predictions
              for name, r in results.items()}
    out = {}
    if calibrate == "temperature":  # scored below with softmax(logits / T); before it, log loss and ECE here
        if "validation" not in logits:
            raise HfSpamError("--calibrate temperature: fitted on the validation split, which is not scored")
        out["temperature"] = fit_temperature(logits["validation"], results["validation"].label_ids)
        for name in logits:
            before = probability_scores(softmax(logits[name]), results[name].label_ids, decide(logits[name]))
            out.update({f"{name}_{key}_uncalibrated": before[key] for key in ("log_loss", "ece")})
            logits[name] = logits[name] / out["temperature"]
    threshold, chosen = decision_threshold(decision or {}, logits, results, label_names, positive)
    out.update(chosen)
    for name, result in results.items():
        probabilities = softmax(logits[name])
        predicted = decide(logits[name], positive, threshold)
        out.update({f"{name}_{key}": value for key, value in
                    {**scores(predicted, result.label_ids, label_names, positive),
                     **probability_scores(probabilities, result.label_ids, predicted, positive)}.items()})
        out[f"{name}_loss"] = float(result.metrics[f"{name}_loss"])
    return out, logits


def check_decision(decision: dict[str, float | None], label_names: list[str]) -> dict[str, float]:
    """The decision flags given (at most one, see ``SpamTrainingArguments``); refused for more than two labels."""
    given = {key: value for key, value in decision.items() if value is not None}
    if given and len(label_names) != 2:
        raise HfSpamError(f"--{next(iter(given))}: a threshold decides between two labels; these are "
                          f"{len(label_names)} ({', '.join(label_names)})")
    return given


def decision_threshold(decision: dict[str, float | None], logits: dict[str, np.ndarray], results: dict[str, Any],
                       label_names: list[str], positive: int) -> tuple[float | None, dict[str, Any]]:
    """The threshold ``decision`` asks for, as the positive class's log-odds (``None``: argmax), and how it was set,
    as ``metrics.json`` keys: ``decision_threshold`` (its probability), ``decision_log_odds`` and the target."""
    if not check_decision(decision, label_names):
        return None, {}
    (flag, value), = check_decision(decision, label_names).items()
    if flag == "decision_threshold":
        return log_odds(value), {"decision_threshold": value, "decision_log_odds": log_odds(value)}
    if "validation" not in logits:
        raise HfSpamError(f"--{flag}: chosen on the validation split, which is not scored (keep --do_eval true)")
    threshold = choose_threshold(positive_log_odds(logits["validation"], positive),
                                 results["validation"].label_ids == positive, **{flag: value})
    return threshold, {"decision_threshold": probability(threshold), "decision_log_odds": threshold,
                       f"threshold_{flag}": value}


def write_predictions(path: Path, texts: list[str], labels: list[int], logits: np.ndarray,
                      id2label: dict[int, str], positive: int = 1, threshold: float | None = None) -> Path:
    """``predictions.jsonl``: per example its text, true and predicted label (at ``threshold``, a log-odds, see
    ``decide``) and each label's probability (the model's softmax before any threshold is applied)."""
    probabilities = softmax(logits)
    names = [id2label[i] for i in range(len(id2label))]
    lines = [json.dumps({"text": text, "label": names[label], "predicted": names[int(k)],
                         "probabilities": dict(zip(names, p))}, ensure_ascii=False)
             for text, label, p, k in zip(texts, labels, probabilities.tolist(), decide(logits, positive, threshold))]
    return write_text(path, "".join(line + "\n" for line in lines))


def format_accuracy_table(metrics: dict[str, Any], label_names: list[str], positive: int = 1) -> str:
    """The chapter's final printout of accuracies, as a small table: with the positive class's F1 for two
    labels, the macro F1 for more."""
    two = len(label_names) == 2
    f1, header = ("f1", f"F1 ({label_names[positive]})") if two else ("macro_f1", "macro F1")
    lines = [f"| split | accuracy | {header} | examples |", "|---|---|---|---|"]
    for s in (s for s in ("train", "validation", "test") if f"{s}_accuracy" in metrics):
        lines.append(f"| {s} | {metrics[f'{s}_accuracy'] * 100:.2f}% | {metrics[f'{s}_{f1}']:.4f} | "
                     f"{int(metrics[f'{s}_examples'])} |")
    return "\n".join(lines)


def as_trained(model: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` data settings with the split settings of ``model``'s training run (its ``training_args.json``, in
    a local folder or Hub repo), so that the data is cut as it was; a given setting that differs is an error."""
    try:
        path = Path(model) / "training_args.json" if Path(model).is_dir() else \
            Path(hf_hub_download(model, "training_args.json"))
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # no such file, offline, not JSON: nothing recorded
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    user = bool(given.get("dataset_name") or given.get("train_file"))
    for key in SPLIT_SETTINGS:
        if key not in recorded or key == "natural_balance" and user or key == "balance" and not user:
            continue
        if key in given and given[key] != recorded[key]:
            raise HfSpamError(f"--{key} {given[key]}: the model was trained with {key} {recorded[key]}; another cut "
                              "would score rows it trained on (leave the flag out, or use --labelled_file)")
        given[key] = recorded[key]
    return given


def labelled_file_data(path: str, given: dict[str, Any]) -> Data:
    """Every row of a labelled SMS-format file (``ham|spam<TAB>text``); ``given`` data settings do not apply."""
    extra = [key for key in given if key != "positive_label"]
    if extra:
        raise HfSpamError(f"--labelled_file: scores every row of that file; --{extra[0]} does not apply")
    frame = read_sms_file(path)
    return (frame["Text"].tolist(), [LABEL_NAMES.index(x) for x in frame["Label"]], LABEL_NAMES,
            f"all {len(frame)} messages of {Path(path).name}")


def split_data(settings: dict[str, Any], split: str) -> Data:
    """One split (never train) of the data ``hf_spam.sources.load_data(**settings)`` cuts."""
    splits, info = load_data(**settings)
    part = splits[split]
    name = (Path(settings["data_file"]).name if settings.get("data_file") else "the SMS Spam Collection") \
        if info["source"] == "sms" else info.get("dataset_id") or "your files"
    return (list(part["text"]), list(part["label"]), info["labels"],
            f"the {split} split ({len(part)} rows) of {name}, cut as in training (split_seed {settings['split_seed']})")


def format_report(record: dict[str, Any], positive: int = 1) -> str:
    """``hf-spam evaluate``'s printout of ``evaluate_classifier``'s record: the decision, metrics, ranking and
    calibration scores, per class, confusion matrix."""
    labels, cm = record["confusion_matrix"]["labels"], record["confusion_matrix"]["rows_true_columns_predicted"]
    width, two, scored = max(8, *(len(name) + 2 for name in labels)), len(labels) == 2, ("precision", "recall", "f1")
    lines = [f"Model {record['model']} on {record['data']}", *([f"Positive class: {labels[positive]}"] * two)]
    if record.get("decision_threshold") is not None:
        lines.append(f"Decision: {labels[positive]} when its probability is at least "
                     f"{record['decision_threshold']:.6g} ({record['decision']})")
    keys = ("accuracy", *(("" if two else "macro_") + k for k in scored))  # two labels: the positive class's
    lines += [f"  {key:<20} {record[key] * 100:6.2f}%" for key in keys]
    if two:
        lines.append(f"  {'false_positive_rate':<20} {record['false_positive_rate'] * 100:6.2f}%")
    lines += [f"  {key:<20} " + ("n/a" if record[key] is None else f"{record[key]:.4f}")
              for key in ("roc_auc", "average_precision", "log_loss", "brier_score", "ece")]
    lines.append("Per class" + " " * (width - 9) + "".join(f"{k:>11}" for k in (*scored, "examples")))
    lines += [f"{label:<{width}}" + "".join(f"{row[k] * 100:10.2f}%" for k in scored) + f"{row['support']:>11}"
              for label, row in record["per_class"].items()]
    lines += ["Confusion matrix (rows: true label, columns: predicted label)",
              " " * width + "".join(f"{label:>{width}}" for label in labels)]
    lines += [f"{label:<{width}}" + "".join(f"{int(v):>{width}}" for v in row) for label, row in zip(labels, cm)]
    return "\n".join(lines)


def model_decision(config: Any, labels: list[str], positive_label: str | None,
                   decision_threshold: float | None) -> tuple[int, float | None, str]:
    """How ``hf-spam evaluate`` decides: the positive class, the threshold as a log-odds (``None``: argmax) and
    where it comes from: ``--decision_threshold`` (re-scoring without retraining), else the threshold folded into
    the saved head, else argmax."""
    folded = getattr(config, "decision_log_odds", None)
    if decision_threshold is not None:
        check_decision({"decision_threshold": decision_threshold}, labels)
        if not 0 < decision_threshold < 1:
            raise HfSpamError(f"--decision_threshold {decision_threshold}: expected a probability strictly between "
                              "0 and 1")
        return positive_index(labels, positive_label), log_odds(decision_threshold), "re-scored with " \
            "--decision_threshold"
    if folded is None:
        return positive_index(labels, positive_label), None, "argmax"
    if positive_label not in (None, config.decision_label):
        raise HfSpamError(f"--positive_label {positive_label}: the model's folded threshold is of "
                          f"{config.decision_label}; leave the flag out, or re-score with --decision_threshold")
    return labels.index(config.decision_label), folded, "the model's own, folded into its head"


def evaluate_classifier(classifier: Any, data: Data, model: str, *, positive_label: str | None = None,
                        batch_size: int = 64, output_dir: str | None = None,
                        decision_threshold: float | None = None) -> dict[str, Any]:
    """``hf-spam evaluate``: score ``classifier`` (a ``SpamClassifier`` of ``model``) on ``data``, with the ranking
    and calibration scores of its probabilities (those before any folded threshold shift) and its decisions (at
    ``model_decision``'s threshold), print the report and, with ``output_dir``, write ``eval_metrics.json`` and
    ``confusion-matrix.png`` there; returns what ``eval_metrics.json`` holds."""
    texts, truth, labels, source = data
    if classifier.names != labels:
        raise HfSpamError(f"--model {model}: its labels {', '.join(classifier.names)} differ from the data's "
                          f"{', '.join(labels)} (name integer labels with --label_names)")
    positive, threshold, how = model_decision(classifier.config, labels, positive_label, decision_threshold)
    logits = unfolded_logits(classifier.logits_of(classifier.encode(texts), batch_size).numpy(), classifier.config)
    predicted = decide(logits, positive, threshold)
    result = {**scores(predicted, truth, labels, positive),
              **probability_scores(softmax(logits), truth, predicted, positive)}
    if threshold is not None:
        result.update(decision_threshold=probability(threshold), decision_log_odds=threshold, decision=how)
    cm, classes = result.pop("confusion_matrix"), result.pop("per_class")
    model_name = Path(model).name if Path(model).is_dir() else model
    record = {**result, "model": model_name, "data": source, "per_class": classes,
              "confusion_matrix": {"labels": labels, "rows_true_columns_predicted": cm}}
    print(format_report(record, positive))
    if output_dir:
        out = Path(output_dir)
        write_json(out / "eval_metrics.json", record)
        plot_confusion_matrix(cm, labels, out / "confusion-matrix.png", f"{model_name}: {source}")
        print(f"Wrote {out / 'eval_metrics.json'} and {out / 'confusion-matrix.png'}")
    return record


def compare_arithmetic(reference: Any, classifier: Any, data: Data, *, positive_label: str | None = None,
                       batch_size: int = 64, output_dir: str | None = None) -> dict[str, Any]:
    """``hf-spam evaluate --dtype``: ``data`` scored by ``reference`` (float32) and by ``classifier`` (the same model
    in another arithmetic): each one's accuracy and F1, how often their labels agree and the largest change in a
    probability; printed, written to ``arithmetic.json`` with ``output_dir``, and returned."""
    texts, truth, labels, source = data
    positive, two = positive_index(labels, positive_label), len(labels) == 2
    names = [reference.arithmetic.dtype, classifier.arithmetic.dtype]
    probabilities = [np.asarray(clf.probabilities(clf.encode(texts), batch_size)) for clf in (reference, classifier)]
    predicted = [p.argmax(-1) for p in probabilities]
    f1 = "f1" if two else "macro_f1"
    rows = {name: {key: scores(p, truth, labels, positive)[key] for key in ("accuracy", f1)}
            for name, p in zip(names, predicted)}
    same = int((predicted[0] == predicted[1]).sum())
    change = float(np.abs(probabilities[0] - probabilities[1]).max()) if len(texts) else 0.0
    record = {"data": source, "reference": names[0], "dtype": names[1], "dtype_requested":
              classifier.arithmetic.requested, "dtype_reason": classifier.arithmetic.reason, "scores": rows,
              "same_label": same, "examples": len(texts), "agreement": same / max(len(texts), 1),
              "max_probability_change": change}
    header = f"F1 ({labels[positive]})" if two else "macro F1"
    lines = [f"Arithmetic on {source}:", f"  {'arithmetic':<12}{'accuracy':>10}{header:>14}"]
    lines += [f"  {name:<12}{row['accuracy'] * 100:9.2f}%{row[f1]:>14.4f}" for name, row in rows.items()]
    lines.append(f"  {names[1]} vs {names[0]}: the same label for {same} of {len(texts)} texts "
                 f"({record['agreement'] * 100:.2f}%); largest change in a probability {change:.4f}")
    print("\n".join(lines))
    if output_dir:
        write_json(Path(output_dir) / "arithmetic.json", record)
        print(f"Wrote {Path(output_dir) / 'arithmetic.json'}")
    return record
