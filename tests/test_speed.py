"""Speed features keep results: the frozen-trunk feature cache (same trajectory, reused, invalidated,
resumable) and bf16 mixed precision (same accuracy within noise). Real Trainer runs on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import concatenate_datasets
from safetensors.torch import load_file
from train import main as train_main
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from hf_spam.data import load_sms_spam
from hf_spam.feature_cache import FrozenTrunkSuffix, caching_blocker, dataset_content_hash, prepare_cached_training
from hf_spam.modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
from hf_spam.starting_model import build_model
from hf_spam.tokenization import build_hf_tokenizer, tokenize_splits
from hf_spam.trainer import classification_metrics, set_trainable_layers

SIZES = {"train": 96, "validation": 24, "test": 24}
COLLATE = DataCollatorWithPadding(build_hf_tokenizer())


@pytest.fixture(scope="module")
def raw(sms_file):
    """The chapter's balanced splits of the real collection, cut to a few dozen texts each."""
    data = load_sms_spam(sms_file)
    return type(data)({split: data[split].select(range(n)) for split, n in SIZES.items()})


def tokenized_splits(raw, padding: str):
    tok, length = tokenize_splits(raw, padding=padding)
    return tok.rename_column("label", "labels").remove_columns(["text"]), length


def tiny_model(trainable: str, pooling: str, length: int | None, **config) -> GPTSpamForSequenceClassification:
    model = build_model(model_size="tiny", weights="random", pooling=pooling, **config)
    model.config.padded_length = length
    set_trainable_layers(model, trainable)
    return model


class StepLosses(TrainerCallback):
    """The loss of every optimizer step (logging_steps=1)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer's signature
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def trainer_args(out: Path, **overrides) -> TrainingArguments:
    # A high learning rate (20x the chapter's) makes a wrong gradient or data order show up in the losses.
    kwargs = dict(
        output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=1e-3,
        weight_decay=0.1, lr_scheduler_type="constant", max_steps=24, logging_steps=1, save_strategy="no",
        report_to="none", seed=123, use_cpu=True, disable_tqdm=True, dataloader_drop_last=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def train_once(raw, tmp_path: Path, *, trainable: str, pooling: str, padding: str, cache: bool, **overrides):
    """One real Trainer run; returns (per-step losses, validation metrics, full model, cache info)."""
    tok, length = tokenized_splits(raw, padding)
    full = tiny_model(trainable, pooling, length)
    args = trainer_args(tmp_path / ("cached" if cache else "plain"), **overrides)
    model, data, collator, info = full, tok, COLLATE, None
    if cache:
        info = prepare_cached_training(
            full, tok, trainable_layers=trainable, padding=padding, training_args=args, cache_dir=tmp_path / "cache"
        )
        assert info is not None
        model, data, collator = info.model, info.datasets, info.collator
    losses = StepLosses()
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=collator, compute_metrics=classification_metrics(), callbacks=[losses])
    trainer.train()
    metrics = trainer.evaluate()
    return losses.losses, metrics, full, info


@pytest.mark.parametrize(
    "trainable, pooling, padding",
    [
        ("last_block", "last_non_pad", "dynamic"),  # configs/seed_fast.yaml
        ("last_two_blocks", "last", "longest_train"),  # the chapter's padding and pooling, two blocks trained
        ("last_block", "mean", "longest_train"),  # fixed padding, real tokens cached, every position read
        ("last_layer", "first", "longest_train"),  # whole trunk cached, pooled
    ],
)
def test_cached_training_follows_the_uncached_trajectory(raw, tmp_path, trainable, pooling, padding):
    plain_losses, plain_eval, plain_model, _ = train_once(
        raw, tmp_path, trainable=trainable, pooling=pooling, padding=padding, cache=False)
    cached_losses, cached_eval, cached_model, info = train_once(
        raw, tmp_path, trainable=trainable, pooling=pooling, padding=padding, cache=True)
    assert len(plain_losses) == len(cached_losses) == 24
    # The loss moves by far more than the tolerance over these steps: the comparison is not vacuous.
    assert max(plain_losses) - min(plain_losses) > 0.05
    for step, (a, b) in enumerate(zip(plain_losses, cached_losses), start=1):
        assert abs(a - b) <= 1e-5, f"step {step}: uncached loss {a} vs cached {b}"
    assert abs(plain_eval["eval_loss"] - cached_eval["eval_loss"]) <= 1e-5
    assert plain_eval["eval_accuracy"] == cached_eval["eval_accuracy"]
    # The cached run trained the full model's own parameters (what run() saves) to the same weights:
    # frozen ones untouched, trained ones moved by the same update. Compared per tensor relative to
    # the update: where a gradient is (almost) zero, Adam turns float rounding into lr-sized steps
    # (the key bias's gradient is exactly zero: softmax ignores a shift shared by all keys).
    initial = tiny_model(trainable, pooling, None).state_dict()  # the same seeded weights both runs began with
    trained = {name for name, param in plain_model.named_parameters() if param.requires_grad}
    plain_state, cached_state = plain_model.state_dict(), cached_model.state_dict()
    for name, start in initial.items():
        a, b = plain_state[name], cached_state[name]
        if name not in trained:
            assert torch.equal(a, start) and torch.equal(b, start), f"{name}: frozen but changed"
        elif not name.endswith("att.W_key.bias"):
            assert not torch.equal(a, start), f"{name}: trainable but not trained"
            assert (a - b).norm() <= 1e-3 * (a - start).norm(), name
    n_blocks = len(cached_model.gpt.trf_blocks)
    assert info.k == {"last_block": n_blocks - 1, "last_two_blocks": n_blocks - 2, "last_layer": n_blocks}[trainable]
    # Only the trainable top is the Trainer's model (and so in its checkpoints).
    suffix_params = {id(p) for p in info.model.parameters()}
    assert all(id(p) in suffix_params for p in cached_model.parameters() if p.requires_grad)
    assert id(cached_model.gpt.tok_emb.weight) not in suffix_params


def test_cache_is_reused_and_invalidated_by_weights_data_and_padding(raw, tmp_path):
    args = trainer_args(tmp_path / "out")
    cache_dir = tmp_path / "cache"

    def prepare(model, tok, padding="dynamic"):
        info = prepare_cached_training(
            model, tok, trainable_layers="last_block", padding=padding, training_args=args, cache_dir=cache_dir
        )
        assert info is not None
        return info

    tok, _ = tokenized_splits(raw, "dynamic")
    model = tiny_model("last_block", "last_non_pad", None)
    first = prepare(model, tok)
    assert set(first.cache_files) == {"train", "validation", "test"}
    stamps = {split: path.stat().st_mtime_ns for split, path in first.cache_files.items()}
    # Only real tokens are stored with dynamic padding: one row of emb_dim floats per token.
    assert first.states("train", 0).shape == (len(tok["train"][0]["input_ids"]), model.config.emb_dim)

    # Same weights and data (a new model object): the same files, read back, not rewritten.
    again = prepare(tiny_model("last_block", "last_non_pad", None), tok)
    assert again.cache_files == first.cache_files
    assert {s: p.stat().st_mtime_ns for s, p in again.cache_files.items()} == stamps
    assert torch.equal(again.states("train", 3), first.states("train", 3))

    # Training the trainable block does not touch the frozen prefix: still the same cache.
    with torch.no_grad():
        model.gpt.trf_blocks[-1].att.W_query.weight.add_(0.5)
    assert prepare(model, tok).cache_files == first.cache_files

    # Different frozen weights: new files, different states.
    with torch.no_grad():
        model.gpt.trf_blocks[0].ff.layers[0].bias.add_(0.1)
    changed = prepare(model, tok)
    assert changed.cache_files["train"] != first.cache_files["train"]
    assert not torch.allclose(changed.states("train", 3), first.states("train", 3))

    # Different data (one text dropped) and different padding: new files for the affected splits.
    fresh = tiny_model("last_block", "last_non_pad", None)
    fewer = prepare(fresh, type(tok)({**tok, "train": tok["train"].select(range(1, len(tok["train"])))}))
    assert fewer.cache_files["train"] != first.cache_files["train"]
    assert fewer.cache_files["test"] == first.cache_files["test"]
    padded, length = tokenized_splits(raw, "longest_train")
    longest = prepare(fresh, padded, padding="longest_train")
    assert all(longest.cache_files[s] != first.cache_files[s] for s in SIZES)
    # last_non_pad reads real tokens only: the padding is not stored ...
    real = sum(padded["validation"][0]["attention_mask"])
    assert real < length and longest.states("validation", 0).shape == (real, fresh.config.emb_dim)
    # ... but the chapter's `last` pooling reads a padded position: every position is kept (another file).
    chapter = prepare(tiny_model("last_block", "last", length), padded, padding="longest_train")
    assert chapter.cache_files["validation"] != longest.cache_files["validation"]
    assert chapter.states("validation", 0).shape == (length, fresh.config.emb_dim)


def test_cache_key_changes_with_one_token_or_label():
    import datasets

    def key(ids, labels):
        ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                                         "labels": labels})
        return dataset_content_hash(ds)

    base = key([[1, 2, 3], [4, 5]], [0, 1])
    assert base == key([[1, 2, 3], [4, 5]], [0, 1])
    assert len({base, key([[1, 2, 3], [4, 6]], [0, 1]), key([[1, 2, 3], [4, 5]], [0, 0]),
                key([[1, 2], [3, 4, 5]], [0, 1])}) == 4



def test_caching_applies_only_where_the_trunk_is_frozen_and_deterministic():
    def model(trainable="last_block", **config):
        m = GPTSpamForSequenceClassification(GPTSpamConfig.from_preset("tiny", **config))
        set_trainable_layers(m, trainable)
        return m

    assert caching_blocker(model(pooling="last_non_pad"), "last_block", "dynamic") is None
    assert caching_blocker(model(pooling="last"), "last_block", "longest_train") is None
    assert caching_blocker(model("last_layer", pooling="mean"), "last_layer", "dynamic") is None
    assert "whole trunk" in caching_blocker(model("all"), "all", "dynamic")
    assert "whole trunk" in caching_blocker(model("all"), "lora", "dynamic")
    # A block below the cut that is trainable after all (edited by hand): never cached.
    unfrozen = model(pooling="last_non_pad")
    unfrozen.gpt.trf_blocks[0].ff.layers[0].weight.requires_grad = True
    assert "trainable" in caching_blocker(unfrozen, "last_block", "dynamic")
    assert "drop_rate" in caching_blocker(model(drop_rate=0.1, pooling="mean"), "last_block", "dynamic")
    assert "padding" in caching_blocker(model(pooling="last"), "last_block", "dynamic")


def small_sms_file(sms_file: Path, tmp_path: Path, lines: int = 600) -> Path:
    """The first lines of the real collection (88 spam among 600): a real file, small splits."""
    path = tmp_path / "SMSSpamCollection"
    with open(sms_file, encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")
    return path


def run_job(tmp_path: Path, data_file: Path, name: str, *extra: str) -> tuple[dict, list[dict], Path]:
    out = tmp_path / name
    argv = ["--config", "configs/tiny.yaml", "--data_file", str(data_file), "--output_dir", str(out),
            "--trainable_layers", "last_block", "--padding", "dynamic", "--pooling", "last_non_pad",
            "--learning_rate", "2e-3", "--num_train_epochs", "3", "--eval_steps", "10", "--logging_steps", "1",
            "--data_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true", *extra]
    root = Path(__file__).resolve().parents[1]
    import os

    cwd = os.getcwd()
    os.chdir(root)  # the config path is relative to the repository
    try:
        metrics = train_main(argv)
    finally:
        os.chdir(cwd)
    history = json.loads((out / "log_history.json").read_text())
    return metrics, history, out


def assert_same_trained_weights(a: dict, b: dict, initial: dict) -> None:
    """Two state dicts trained from ``initial`` along the same trajectory: frozen tensors untouched,
    trained ones equal relative to their update (see the trajectory test for the key bias)."""
    assert a.keys() == b.keys() == initial.keys()
    for key, start in initial.items():
        if torch.equal(a[key], start):
            assert torch.equal(b[key], start), key
        elif not key.endswith("att.W_key.bias"):
            assert (a[key] - b[key]).norm() <= 1e-3 * (a[key] - start).norm(), key


def test_training_job_uses_the_cache_end_to_end_and_resumes_to_the_same_model(sms_file, tmp_path):
    data_file = small_sms_file(sms_file, tmp_path)
    ckpt_args = ("--save_strategy", "steps", "--save_steps", "10")
    cached, cached_hist, cached_dir = run_job(tmp_path, data_file, "cached", *ckpt_args)
    plain, plain_hist, plain_dir = run_job(tmp_path, data_file, "plain", "--cache_features", "false", *ckpt_args)
    assert "Frozen-trunk feature cache" in (cached_dir / "train.log").read_text()
    assert "Frozen-trunk feature cache" not in (plain_dir / "train.log").read_text()
    losses = [[h["loss"] for h in hist if "loss" in h] for hist in (cached_hist, plain_hist)]
    assert len(losses[0]) == len(losses[1]) > 10
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(*losses))
    # Every split (epoch accuracy, evaluation, full-set metrics) was scored on the cached states.
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "test_loss"):
        assert math.isclose(cached[key], plain[key], abs_tol=1e-5), key
    assert [h["epoch_validation_accuracy"] for h in cached_hist if "epoch_validation_accuracy" in h] == [
        h["epoch_validation_accuracy"] for h in plain_hist if "epoch_validation_accuracy" in h]
    # The saved folder holds the whole model, equal to the uncached run's.
    saved, saved_plain = load_file(cached_dir / "model.safetensors"), load_file(plain_dir / "model.safetensors")
    assert any(".trf_blocks.0." in k for k in saved)
    initial = tiny_model("last_block", "last_non_pad", None).state_dict()
    assert_same_trained_weights(saved_plain, saved, initial)

    # A cached run's Trainer checkpoints hold only the trainable top, under the full model's names ...
    def first_checkpoint(folder: Path) -> Path:
        return min(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))

    ckpt = load_file(first_checkpoint(cached_dir) / "model.safetensors")
    assert not any("tok_emb" in k for k in ckpt) and any(k.startswith("gpt.out_head.") for k in ckpt)
    # ... and resuming from one ends with the same full model,
    _, _, resumed_dir = run_job(tmp_path, data_file, "cached", *ckpt_args,
                                "--resume_from_checkpoint", str(first_checkpoint(cached_dir)))
    resumed = load_file(resumed_dir / "model.safetensors")
    for key in saved:
        assert torch.allclose(resumed[key], saved[key], atol=1e-6), key
    # as does a cached run resumed from an uncached run's checkpoint (the whole model's weights).
    _, _, crossed_dir = run_job(tmp_path, data_file, "crossed", *ckpt_args,
                                "--resume_from_checkpoint", str(first_checkpoint(plain_dir)))
    assert "Frozen-trunk feature cache" in (crossed_dir / "train.log").read_text()
    assert_same_trained_weights(saved_plain, load_file(crossed_dir / "model.safetensors"), initial)


@pytest.mark.parametrize("cache", [False, True])
def test_bf16_autocast_matches_float32_accuracy(sms_file, tmp_path, cache):
    """--bf16 through the whole model, and (cache) for the frozen trunk's cached features and the top."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("bf16 autocast on CPU needs oneDNN")
    data = load_sms_spam(sms_file)  # the whole splits: an accuracy comparison needs examples
    # Scored on validation + test together (449 texts): the accuracy's noise is about 0.012 per model.
    data = type(data)({"train": data["train"], "validation": concatenate_datasets([data["validation"], data["test"]]),
                       "test": data["test"].select(range(8))})
    results = {}
    for bf16 in (False, True):
        # Without the cache both blocks, final norm and head train and bf16 autocast runs through the whole model;
        # with it the first block's cached output is computed under bf16 autocast and the top trains on it.
        results[bf16] = train_once(data, tmp_path / str(bf16), trainable="last_block" if cache else "last_two_blocks",
                                   pooling="last_non_pad", padding="dynamic", cache=cache, bf16=bf16, max_steps=80,
                                   logging_steps=10)
    (f_losses, f_metrics, _, _), (b_losses, b_metrics, _, _) = results[False], results[True]
    accuracies = (f_metrics["eval_accuracy"], b_metrics["eval_accuracy"])
    assert accuracies[0] >= 0.8, accuracies  # it learned (chance is 0.5), so the comparison means something
    assert abs(accuracies[0] - accuracies[1]) <= 0.04, accuracies
    assert abs(f_metrics["eval_loss"] - b_metrics["eval_loss"]) <= 0.1
    assert all(abs(a - b) <= 0.1 for a, b in zip(f_losses, b_losses))
    assert f_losses != b_losses  # ... and bf16 did change the arithmetic: it really ran


def test_suffix_model_is_only_the_trainable_top():
    model = GPTSpamForSequenceClassification(GPTSpamConfig.from_preset("tiny", pooling="last_non_pad"))
    set_trainable_layers(model, "last_block")
    suffix = FrozenTrunkSuffix(model, 1)
    names = set(suffix.state_dict())
    # The full model's own names (checkpoints resume in either path), for the trainable top only.
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    hidden = model.gpt.run_blocks(model.gpt.embed(torch.randint(0, 50257, (3, 7))), None, 0, 1)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    assert torch.allclose(suffix(hidden, mask).logits, model.classify(model.gpt.run_blocks(hidden, None, 1), mask),
                          atol=1e-6)


def test_suffix_gets_the_same_weight_decay_groups_as_the_full_model(tmp_path):
    """Trainer decides weight decay by parameter name: the suffix's names must lead to the same choice."""
    model = tiny_model("last_two_blocks", "last_non_pad", None)
    suffix = FrozenTrunkSuffix(model, 0)
    args = trainer_args(tmp_path)
    full_decay = set(Trainer(model=model, args=args).get_decay_parameter_names(model))
    suffix_decay = set(Trainer(model=suffix, args=args).get_decay_parameter_names(suffix))
    full_names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    suffix_names = {id(p): n for n, p in suffix.named_parameters() if p.requires_grad}
    assert set(full_names) == set(suffix_names)
    decided = {(n in full_decay, suffix_names[i] in suffix_decay) for i, n in full_names.items()}
    assert decided == {(True, True), (False, False)}  # some decayed, some not (biases, final norm), same choice


def batch_length_spread(trainer: Trainer) -> float:
    """Mean (longest - shortest) real length within the training batches Trainer builds."""
    spreads = []
    for batch in trainer.get_train_dataloader():
        lengths = batch["attention_mask"].sum(dim=1)
        spreads.append(float(lengths.max() - lengths.min()))
    return sum(spreads) / len(spreads)


def test_length_grouping_works_on_cached_and_plain_datasets(raw, tmp_path):
    """--train_sampling_strategy group_by_length (opt-in: it changes which texts share a batch) finds
    the lengths both in token datasets and in cached-feature datasets (their `length` column)."""
    tok, _ = tokenized_splits(raw, "dynamic")
    full = tiny_model("last_block", "last_non_pad", None)
    spreads = {}
    for strategy in ("random", "group_by_length"):
        args = trainer_args(tmp_path / strategy, train_sampling_strategy=strategy)
        info = prepare_cached_training(full, tok, trainable_layers="last_block", padding="dynamic",
                                       training_args=args, cache_dir=tmp_path / "cache")
        cached = Trainer(model=info.model, args=args, train_dataset=info.datasets["train"],
                         data_collator=info.collator)
        plain = Trainer(model=full, args=args, train_dataset=tok["train"], data_collator=COLLATE)
        spreads[strategy] = (batch_length_spread(cached), batch_length_spread(plain))
    assert spreads["group_by_length"][0] < spreads["random"][0] / 2
    assert spreads["group_by_length"][1] < spreads["random"][1] / 2
