"""Ranking and calibration scores, the test split's curves, and the decision threshold (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_train, scaled_tiny_model
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from hf_spam.arguments import parse_args
from hf_spam.errors import HfSpamError
from hf_spam.evaluation import check_decision, scores, softmax
from hf_spam.metrics import (
    choose_threshold,
    decide,
    expected_calibration_error,
    log_odds,
    positive_log_odds,
    probability_scores,
)
from hf_spam.model_card import model_card
from hf_spam.operating_point import fit_temperature, fold_temperature, fold_threshold, unfolded_logits
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


def validation_with_known_threshold() -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and labels where each target's threshold can be read off: 20 negatives below
    0.5 plus negatives at 0.62 and 0.81; 10 positives from 0.55 to 0.95 (0.6, 0.7, 0.8 and 0.9 among them)."""
    negatives = np.r_[np.linspace(0.05, 0.45, 20), 0.62, 0.81]
    positives = np.array([0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95])
    return np.r_[negatives, positives], np.r_[np.zeros(22, bool), np.ones(10, bool)]


def test_threshold_is_the_largest_recall_within_the_target():
    p, y = validation_with_known_threshold()
    # Each threshold lies halfway between the lowest score decided positive and the next score below it.
    # No false positive allowed: above the negative at 0.81, the lowest positive is 0.85.
    assert choose_threshold(p, y, max_false_positive_rate=0.0) == pytest.approx((0.81 + 0.85) / 2)
    # One false positive (1/22) allowed: above 0.62, down to the positive at 0.65.
    assert choose_threshold(p, y, max_false_positive_rate=1 / 22) == pytest.approx((0.62 + 0.65) / 2)
    # Both negatives allowed: every positive, from 0.55 (the negative below it at 0.45).
    assert choose_threshold(p, y, max_false_positive_rate=0.1) == pytest.approx((0.45 + 0.55) / 2)
    # Precision 1: as with no false positive; 0.9 allows the negative at 0.81 (9 decided, 8 right: 0.889 < 0.9
    # for t = 0.8; t = 0.85 has precision 1), 0.8 reaches 0.55 (12 decided, 10 right: 0.833).
    assert choose_threshold(p, y, min_precision=1.0) == pytest.approx((0.81 + 0.85) / 2)
    assert choose_threshold(p, y, min_precision=0.8) == pytest.approx((0.45 + 0.55) / 2)
    # The lowest score of all decided positive: one below it.
    assert choose_threshold(np.array([0.1, 0.5, 0.9]), np.array([True, False, True]), max_false_positive_rate=1.0) == \
        pytest.approx(0.1 - 1)
    # Applied as a log-odds to logits: positive exactly for the rows at or above it.
    logits = np.c_[np.zeros_like(p), np.log(p / (1 - p))]
    for target, lowest in ((0.0, 0.85), (1 / 22, 0.65), (0.1, 0.55)):
        t = choose_threshold(positive_log_odds(logits), y, max_false_positive_rate=target)
        assert ((decide(logits, 1, t) == 1) == (p >= lowest)).all()
        assert ((decide(logits[:, ::-1], 0, t) == 0) == (p >= lowest)).all()  # the positive class first


def test_no_threshold_meeting_the_target_is_one_line():
    p = np.array([0.9, 0.8, 0.1])  # the most probable row is a negative: any positive caught costs FPR 1/2
    with pytest.raises(HfSpamError, match=r"^--max_false_positive_rate 0.1: no threshold meets it"):
        choose_threshold(p, np.array([False, True, False]), max_false_positive_rate=0.1)
    with pytest.raises(HfSpamError, match=r"^--min_precision 0.9: no threshold"):
        choose_threshold(p, np.array([False, True, False]), min_precision=0.9)


def test_decision_flags_one_at_a_time_and_two_labels_only(tmp_path):
    with pytest.raises(HfSpamError, match=r"^--min_precision: one of --decision_threshold"):
        parse_args(["--output_dir", str(tmp_path), "--max_false_positive_rate", "0.1", "--min_precision", "0.9"])
    with pytest.raises(HfSpamError, match=r"^--decision_threshold: expected a probability"):
        parse_args(["--output_dir", str(tmp_path), "--decision_threshold", "1.5"])
    with pytest.raises(HfSpamError, match=r"^--min_precision: a threshold decides between two labels; these are 3"):
        check_decision({"min_precision": 0.9, "decision_threshold": None}, ["a", "b", "c"])
    assert check_decision({"decision_threshold": None}, ["a", "b", "c"]) == {}


@pytest.mark.parametrize("positive", [1, 0])
def test_folded_threshold_makes_argmax_the_thresholded_decision(positive):
    model = scaled_tiny_model(3)
    ids = torch.randint(0, model.config.vocab_size, (200, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.numpy()
        before = softmax(logits)
        t = float(np.quantile(before[:, positive], 0.7))  # a threshold inside the scores, not 0.5
        fold_threshold(model, log_odds(t), positive)
        shifted = model(input_ids=ids).logits.numpy()
    after = softmax(shifted)
    assert model.config.decision_threshold == pytest.approx(t) and model.config.decision_log_odds == log_odds(t)
    assert model.config.decision_label == model.config.id2label[positive]
    near = np.abs(before[:, positive] - t) < 1e-6  # float32 ties at the threshold itself may go either way
    assert (after.argmax(1) == decide(logits, positive, log_odds(t)))[~near].all()
    assert (after.argmax(1) == np.where(before[:, positive] >= t, positive, 1 - positive))[~near].all()
    assert 0 < (after.argmax(1) == positive).mean() < 1
    # The shifted positive score crosses 0.5 exactly at t: it is the unshifted odds divided by t's odds.
    odds = lambda q: q / (1 - q)  # noqa: E731
    assert np.allclose(odds(after[:, positive]), odds(before[:, positive]) / odds(t), rtol=1e-3)
    assert np.allclose(softmax(unfolded_logits(shifted, model.config)), before, atol=1e-5)  # the shift undone
    with pytest.raises(HfSpamError, match="expected a finite number"):
        fold_threshold(model, float("inf"), positive)


PIPELINE_LABELS = textwrap.dedent("""
    import json, sys
    from transformers import pipeline
    clf = pipeline("text-classification", model=sys.argv[1], trust_remote_code=True, device="cpu")
    print(json.dumps({"labels": [r["label"] for r in clf(json.loads(sys.argv[2]), batch_size=16)],
                      "hf_spam_imported": "hf_spam" in sys.modules}))
""")


def test_calibration_and_threshold_are_baked_into_the_saved_model(tmp_path, sms_file):
    out = tmp_path / "run"
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--natural_balance", "true",
                        "--max_false_positive_rate", "0.2", "--calibrate", "temperature", "--max_train_samples", "200",
                        "--max_eval_samples", "300",
                        "--max_test_samples", "300", "--num_train_epochs", "1", "--do_predict", "true",
                        "--disable_tqdm", "true", "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    t, d = metrics["decision_threshold"], metrics["decision_log_odds"]
    assert metrics["threshold_max_false_positive_rate"] == 0.2 and metrics["validation_false_positive_rate"] <= 0.2
    config = json.loads((out / "config.json").read_text())
    assert config["decision_threshold"] == t and config["decision_log_odds"] == d
    assert t == pytest.approx(1 / (1 + np.exp(-d)))
    assert config["calibration_temperature"] == metrics["temperature"] and config["decision_label"] == "spam"
    assert metrics["validation_log_loss"] <= metrics["validation_log_loss_uncalibrated"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    p = np.array([r["probabilities"]["spam"] for r in rows])  # calibrated, without the threshold shift
    spam, decided = np.array([r["label"] == "spam" for r in rows]), p >= t
    assert [r["predicted"] == "spam" for r in rows] == decided.tolist()
    assert metrics["test_precision"] == pytest.approx(spam[decided].mean())
    assert metrics["test_recall"] == pytest.approx(decided[spam].mean())
    assert metrics["test_false_positive_rate"] == pytest.approx(decided[~spam].mean())
    proc = subprocess.run([sys.executable, "-c", PIPELINE_LABELS, str(out), json.dumps([r["text"] for r in rows])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hf_spam_imported"] is False
    clear = np.abs(np.log(p / (1 - p)) - d) > 1e-4  # a float32 tie at the threshold itself may go either way
    assert (np.array(got["labels"]) == np.where(decided, "spam", "ham"))[clear].all()
    assert (out / "roc-curve.png").is_file() and (out / "calibration.png").is_file()


def test_temperature_lowers_the_log_loss_of_an_over_confident_model():
    model = scaled_tiny_model(5, num_labels=3)  # head scaled by 10: confident, and its labels only partly right
    ids = torch.randint(0, model.config.vocab_size, (300, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.numpy()
    rng = np.random.default_rng(5)
    labels = np.where(rng.random(300) < 0.6, logits.argmax(1), rng.integers(0, 3, 300))
    t = fit_temperature(logits, labels)
    assert t > 1  # over-confident: softened
    before, after = log_loss(labels, softmax(logits), labels=range(3)), log_loss(labels, softmax(logits / t),
                                                                                  labels=range(3))
    assert after < before
    for other in (t * 0.8, t * 1.25):  # a minimum, not just lower
        assert log_loss(labels, softmax(logits / other), labels=range(3)) > after
    with torch.no_grad():
        folded = fold_temperature(model, t)(input_ids=ids).logits.numpy()
    assert model.config.calibration_temperature == t and np.allclose(softmax(folded), softmax(logits / t), atol=1e-5)


HANDLER_LABELS = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from handler import EndpointHandler
    answers = EndpointHandler(sys.argv[1])({"inputs": json.loads(sys.argv[2])})
    print(json.dumps({"labels": [a["label"] for a in answers], "hf_spam_imported": "hf_spam" in sys.modules}))
""")


@pytest.fixture(scope="module")
def tuned_lora_run(tmp_path_factory, sms_file) -> Path:
    """A LoRA run (so an adapter folder is written too) whose calibration and chosen threshold are folded in, with
    the last real token read, so that the native GPT-2 export can hold it."""
    out = tmp_path_factory.mktemp("tuned") / "run"
    result = run_train(["--config", "configs/tiny.yaml", "--pooling", "last_non_pad", "--padding", "dynamic",
                        "--trainable_layers", "lora", "--lora_rank", "4", "--lora_alpha", "64", "--learning_rate",
                        "1e-3", "--max_steps", "40", "--eval_strategy", "no", "--data_file", str(sms_file),
                        "--max_false_positive_rate", "0.05", "--calibrate", "temperature", "--do_predict", "true",
                        "--disable_tqdm", "true", "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_every_loader_decides_at_the_folded_threshold(tuned_lora_run, tmp_path, capsys):
    from peft import PeftModel

    from hf_spam.export import export_onnx, onnx_classifier
    from hf_spam.modeling_gpt import GPTSpamForSequenceClassification
    from hf_spam.native import export_native
    from hf_spam.predict import SpamClassifier

    out = tuned_lora_run
    metrics, config = json.loads((out / "metrics.json").read_text()), json.loads((out / "config.json").read_text())
    d, t = metrics["decision_log_odds"], metrics["decision_threshold"]
    assert config["decision_log_odds"] == d and abs(t - 0.5) > 0.05  # not argmax's threshold
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    texts, p = [r["text"] for r in rows], np.array([r["probabilities"]["spam"] for r in rows])
    expected = np.where(p >= t, "spam", "ham")
    assert expected.tolist() == [r["predicted"] for r in rows] and (expected != np.where(p >= 0.5, "spam", "ham")).any()
    clear = np.abs(np.log(p / (1 - p)) - d) > 1e-4  # a float32 tie at the threshold may go either way
    ours = SpamClassifier.from_pretrained(out, device="cpu")
    answers = {"SpamClassifier (hf-spam predict/serve)": [r["label"] for r in ours.predict_labels(texts)]}
    onnx = export_onnx(out, tmp_path / "model.onnx", texts[:16])["file"]
    answers["ONNX"] = [r["label"] for r in onnx_classifier(onnx, out).predict_labels(texts)]
    export_native(out, tmp_path / "native", texts[:16])
    assert json.loads((tmp_path / "native" / "config.json").read_text())["decision_log_odds"] == d
    native = SpamClassifier.from_pretrained(tmp_path / "native", device="cpu")
    answers["native GPT-2"] = [r["label"] for r in native.predict_labels(texts)]
    proc = subprocess.run([sys.executable, "-c", HANDLER_LABELS, str(out), json.dumps(texts)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hf_spam_imported"] is False
    answers["handler.py"] = got["labels"]
    for name, labels in answers.items():
        assert (np.array(labels) == expected)[clear].all(), name
    # The adapter folder holds the folded head too: peft's pair gives the merged folder's logits.
    base = GPTSpamForSequenceClassification.from_pretrained(out / "adapter" / "base")
    pair = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = GPTSpamForSequenceClassification.from_pretrained(out).eval()
    ids = torch.tensor([ours.encode(texts[:8])[0]])
    with torch.no_grad():
        assert torch.allclose(pair(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


def test_evaluate_reports_the_operating_point_and_re_scores(tuned_lora_run, sms_file, tmp_path, capsys):
    from hf_spam.cli import main as cli_main

    out = tuned_lora_run
    metrics = json.loads((out / "metrics.json").read_text())
    cli_main(["evaluate", "--model", str(out), "--data_file", str(sms_file), "--output_dir", str(tmp_path / "own")])
    printed = capsys.readouterr().out
    assert f"{metrics['decision_threshold']:.6g} (the model's own, folded into its head)" in printed
    own = json.loads((tmp_path / "own" / "eval_metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "false_positive_rate", "roc_auc", "average_precision", "log_loss",
                "brier_score", "ece"):  # the same test split, decided and scored as training reported; near ties of
        # the float32 logits (batched otherwise) may swap places, which moves average precision a little
        assert own[key] == pytest.approx(metrics[f"test_{key}"], abs=1e-3), key
    cli_main(["evaluate", "--model", str(out), "--data_file", str(sms_file), "--decision_threshold", "0.5",
              "--output_dir", str(tmp_path / "half")])
    assert "0.5 (re-scored with --decision_threshold)" in capsys.readouterr().out
    half = json.loads((tmp_path / "half" / "eval_metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    p, spam = np.array([r["probabilities"]["spam"] for r in rows]), np.array([r["label"] == "spam" for r in rows])
    assert half["recall"] == pytest.approx((p[spam] >= 0.5).mean()) and half["roc_auc"] == own["roc_auc"]
    assert half["false_positive_rate"] == pytest.approx((p[~spam] >= 0.5).mean())
    assert half["confusion_matrix"] != own["confusion_matrix"]  # another threshold, other decisions
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["evaluate", "--model", str(out), "--data_file", str(sms_file), "--decision_threshold", "1"])
    assert exit_info.value.code == 2 and "strictly between 0 and 1" in capsys.readouterr().err


def test_the_natural_mix_recipe_is_the_chapter_fast_recipe_with_the_operating_point(root, tmp_path):
    natural = parse_args(["--config", str(root / "configs" / "natural.yaml"), "--output_dir", str(tmp_path)])
    fast = parse_args(["--config", str(root / "configs" / "seed_fast.yaml"), "--output_dir", str(tmp_path)])
    assert natural[1].natural_balance and not fast[1].natural_balance
    args = natural[2]
    assert (args.class_weight, args.max_false_positive_rate, args.calibrate) == ("balanced", 0.005, "temperature")
    assert vars(natural[0]) == vars(fast[0])  # the same model, pooling and trained layers as seed_fast.yaml
