"""Class weights (issue 20, item 5): ``--class_weight balanced | none | w0,w1,...``, a weighted cross-entropy in
``compute_loss``, with and without the frozen-trunk feature cache, recorded in metrics.json, training_args.json
and the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_train
from sklearn.utils.class_weight import compute_class_weight
from test_speed import StepLosses
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from hf_spam import GPTSpamConfig, GPTSpamForSequenceClassification
from hf_spam.arguments import parse_args, parse_class_weight
from hf_spam.data import load_sms_spam
from hf_spam.errors import HfSpamError
from hf_spam.feature_cache import prepare_cached_training
from hf_spam.sources import load_data
from hf_spam.starting_model import build_model
from hf_spam.tokenization import build_hf_tokenizer, tokenize_splits
from hf_spam.trainer import class_weights, set_trainable_layers

QUICK = ["--config", "configs/tiny.yaml", "--natural_balance", "true", "--max_train_samples", "200",
         "--max_eval_samples", "100", "--max_test_samples", "100", "--num_train_epochs", "1", "--disable_tqdm", "true"]


# --------------------------------------------------------------------------------------------
# The weights
# --------------------------------------------------------------------------------------------


def test_balanced_weights_are_the_inverse_class_frequency():
    train = [0] * 6 + [1] * 2 + [2] * 4  # 12 examples, 3 classes
    weights = class_weights("balanced", train, ["a", "b", "c"])
    assert list(weights) == ["a", "b", "c"]
    assert weights == pytest.approx({"a": 12 / (3 * 6), "b": 12 / (3 * 2), "c": 12 / (3 * 4)})
    reference = compute_class_weight("balanced", classes=np.arange(3), y=np.array(train))
    assert list(weights.values()) == pytest.approx(reference.tolist())
    assert class_weights("none", train, ["a", "b", "c"]) is None
    assert class_weights(" 1, 4,0.5", train, ["a", "b", "c"]) == {"a": 1.0, "b": 4.0, "c": 0.5}


@pytest.mark.parametrize("value", ["foo", "1,-2", "0,1", "1,nan", "1,inf", "", "1,,2", "Balanced"])
def test_bad_values_are_refused_at_parse(value):
    with pytest.raises(HfSpamError, match=r"^--class_weight .*expected balanced, none, or one positive number"):
        parse_class_weight(value)
    with pytest.raises(HfSpamError, match=r"^--class_weight"):
        parse_args(["--output_dir", "x", "--class_weight", value])


def test_wrong_count_and_missing_class_are_one_clear_line():
    with pytest.raises(HfSpamError, match=r"^--class_weight 1,2,3: 3 weight\(s\) for 2 labels \(ham, spam\); "
                                          r"expected one per label"):
        class_weights("1,2,3", [0, 1], ["ham", "spam"])
    with pytest.raises(HfSpamError, match=r"^--class_weight balanced: no training examples of spam"):
        class_weights("balanced", [0, 0, 0], ["ham", "spam"])


def test_refused_with_label_smoothing_or_without_training():
    with pytest.raises(HfSpamError, match=r"^--class_weight with --label_smoothing_factor"):
        parse_args(["--output_dir", "x", "--class_weight", "balanced", "--label_smoothing_factor", "0.1"])
    with pytest.raises(HfSpamError, match=r"^--class_weight: weights the training loss, and --do_train is false"):
        parse_args(["--output_dir", "x", "--class_weight", "1,2", "--do_train", "false"])
    assert parse_args(["--output_dir", "x"])[2].class_weight == "none"


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def test_compute_loss_is_the_weighted_cross_entropy_and_is_never_saved(tmp_path):
    torch.manual_seed(0)
    model = GPTSpamForSequenceClassification(GPTSpamConfig.from_preset("tiny")).eval()
    ids = torch.randint(0, 1000, (10, 9))
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])  # imbalanced
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        plain = model(input_ids=ids, labels=labels).loss
        model.class_weights = torch.tensor([0.625, 2.5])
        weighted = model(input_ids=ids, labels=labels).loss
    w = model.class_weights[labels]
    nll = -torch.log_softmax(logits.float(), dim=-1)[torch.arange(10), labels]
    assert weighted == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-5)
    assert weighted == pytest.approx(float(F.cross_entropy(logits, labels, weight=model.class_weights)), rel=1e-6)
    assert plain == pytest.approx(float(nll.mean()), rel=1e-5)
    assert abs(float(weighted) - float(plain)) > 1e-3
    # a training setting: not in the weights, not in config.json, not in a loaded model
    assert "class_weights" not in model.state_dict()
    model.save_pretrained(tmp_path)
    assert "class_weights" not in (tmp_path / "config.json").read_text()
    loaded = GPTSpamForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.class_weights is None


@pytest.fixture(scope="module")
def tokenized(sms_file):
    """The chapter's balanced splits cut to a few dozen texts, train made imbalanced (spam 1 in 4)."""
    data = load_sms_spam(sms_file)
    train = data["train"]
    ham = [i for i, y in enumerate(train["label"]) if y == 0][:36]
    spam = [i for i, y in enumerate(train["label"]) if y == 1][:12]
    raw = type(data)({"train": train.select(sorted(ham + spam)), "validation": data["validation"].select(range(16)),
                      "test": data["test"].select(range(16))})
    tok, length = tokenize_splits(raw, padding="longest_train")
    return tok.rename_column("label", "labels").remove_columns(["text"]), length


def train_losses(tokenized, tmp_path: Path, *, cache: bool, weights: list[float] | None):
    """Per-step training losses of a short real Trainer run (last block trained), and the (suffix) model."""
    tok, length = tokenized
    full = build_model(model_size="tiny", weights="random", pooling="last", seed=123)
    full.config.padded_length = length
    set_trainable_layers(full, "last_block")
    if weights is not None:
        full.class_weights = torch.tensor(weights)
    args = TrainingArguments(output_dir=str(tmp_path / f"run-{cache}-{weights}"), per_device_train_batch_size=8,
                             learning_rate=1e-3, lr_scheduler_type="constant", max_steps=5, logging_steps=1,
                             save_strategy="no", report_to="none", seed=123, use_cpu=True, disable_tqdm=True,
                             dataloader_drop_last=True)
    model, data, collator = full, tok, DataCollatorWithPadding(build_hf_tokenizer())
    if cache:
        info = prepare_cached_training(full, tok, trainable_layers="last_block", padding="longest_train",
                                       training_args=args, cache_dir=tmp_path / "cache")
        assert info is not None
        model, data, collator = info.model, info.datasets, info.collator
    losses = StepLosses()
    Trainer(model=model, args=args, train_dataset=data["train"], data_collator=collator, callbacks=[losses]).train()
    return losses.losses, model, data, collator


def test_the_cached_suffix_trains_on_the_weighted_loss(tokenized, tmp_path):
    weights = class_weights("balanced", tokenized[0]["train"]["labels"], ["ham", "spam"])
    assert weights == pytest.approx({"ham": 48 / 72, "spam": 48 / 24})
    w = list(weights.values())
    plain_weighted, _, _, _ = train_losses(tokenized, tmp_path, cache=False, weights=w)
    cached_weighted, suffix, data, collator = train_losses(tokenized, tmp_path, cache=True, weights=w)
    cached_plain, _, _, _ = train_losses(tokenized, tmp_path, cache=True, weights=None)
    plain_unweighted, _, _, _ = train_losses(tokenized, tmp_path, cache=False, weights=None)
    assert len(plain_weighted) == len(cached_weighted) == 5
    # the cache changes nothing, weighted or not; the weights change the loss, cached or not
    assert cached_weighted == pytest.approx(plain_weighted, rel=1e-4, abs=1e-5)
    assert cached_plain == pytest.approx(plain_unweighted, rel=1e-4, abs=1e-5)
    assert abs(cached_weighted[0] - cached_plain[0]) > 1e-4 and abs(plain_weighted[0] - plain_unweighted[0]) > 1e-4
    # directly: the suffix model's loss on a cached batch is the weighted cross-entropy of its logits
    batch = collator([data["train"][i] for i in range(16)])
    assert 0 < int(batch["labels"].sum()) < 16
    suffix.eval()
    with torch.no_grad():
        out = suffix(**batch)
    expected = F.cross_entropy(out.logits.float(), batch["labels"], weight=torch.tensor(w))
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)
    assert abs(float(out.loss) - float(F.cross_entropy(out.logits.float(), batch["labels"]))) > 1e-4


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def expected_balanced(sms_file: Path) -> dict[str, float]:
    """The balanced weights of the quick run's 200 training rows, by the formula."""
    raw, _ = load_data(data_file=str(sms_file), natural_balance=True, max_train_samples=200)
    train = list(raw["train"]["label"])
    return {name: len(train) / (2 * train.count(i)) for i, name in enumerate(["ham", "spam"])}


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_a_run_records_the_weights(tmp_path, sms_file, cached):
    out = tmp_path / "run"
    extra = ["--trainable_layers", "last_block", "--cache_features", str(cached).lower(),
             *(["--data_cache_dir", str(tmp_path / "cache")] if cached else [])]
    result = run_train([*QUICK, "--data_file", str(sms_file), "--class_weight", "balanced", *extra,
                        "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert ("Frozen-trunk feature cache: embeddings + 1 blocks" in log) == cached, log[-2000:]
    expected = expected_balanced(sms_file)
    assert expected["spam"] > 2 > 1 > expected["ham"]  # natural balance: spam is rare
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_weights"] == pytest.approx(expected) and list(metrics["class_weights"]) == ["ham", "spam"]
    assert f"Class weights (balanced): ham {expected['ham']:.4g}, spam {expected['spam']:.4g}" in log
    assert json.loads((out / "training_args.json").read_text())["class_weight"] == "balanced"
    card = (out / "README.md").read_text()
    assert (f"Loss: cross-entropy weighted per class (`ham` {expected['ham']:.4g}, `spam` {expected['spam']:.4g}), "
            "the `balanced` weights") in card
    assert "| `class_weight` | balanced |" in card
    assert "class_weights" not in (out / "config.json").read_text()  # the saved model predicts as any other


@pytest.mark.parametrize("value, needle", [
    ("foo", "--class_weight foo: expected balanced, none, or one positive number per label, comma-separated in "
            "label order (e.g. 1,4)"),
    ("1,-2", "--class_weight 1,-2: expected balanced, none, or one positive number per label, comma-separated in "
             "label order (e.g. 1,4)"),
    ("1,2,3", "--class_weight 1,2,3: 3 weight(s) for 2 labels (ham, spam); expected one per label, in that order"),
])
def test_bad_values_end_in_one_line(tmp_path, sms_file, value, needle):
    out = tmp_path / "bad"
    result = run_train([*QUICK, "--data_file", str(sms_file), "--class_weight", value, "--output_dir", str(out)])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and [x for x in lines if x.startswith("error:")] == [f"error: {needle}"], lines
    assert "Traceback" not in result.stderr and not (out / "model.safetensors").exists()
