"""Faithful everywhere: a saved model predicts the same however it is loaded, the advertised flags do what they
say (or are refused), and adapters load with plain peft. Real training runs of the tiny model on the real data."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_train
from safetensors.torch import load_file
from test_speed import raw, train_once  # noqa: F401 - `raw` is a fixture used below

from hf_spam.arguments import parse_args
from hf_spam.cli import main as cli_main
from hf_spam.errors import HfSpamError
from hf_spam.predict import SpamClassifier
from hf_spam.starting_model import build_model

FEW = ["--max_steps", "30", "--eval_steps", "15", "--disable_tqdm", "true"]
HUB_LOADING = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    clf = pipeline("text-classification", model=folder, trust_remote_code=True, device="cpu")
    spam = lambda results: [{d["label"]: d["score"] for d in r}["spam"] for r in results]
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    usual = []
    with torch.no_grad():
        for i in range(0, len(texts), 16):
            batch = tokenizer(texts[i:i + 16], padding=True, return_tensors="pt")
            usual += model(**batch).logits.softmax(-1)[:, 1].tolist()
    single, batched = clf(texts[:40], top_k=None), clf(texts, top_k=None, batch_size=8)
    print(json.dumps({"single": spam(single), "batched": spam(batched), "usual": usual,
                      "hf_spam_imported": "hf_spam" in sys.modules}))
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sms_file) -> dict[str, Path]:
    """The chapter's `last` pooling at the longest training text (120), and `last_non_pad` with dynamic
    padding, each trained briefly with --do_predict (the training run's own test-split predictions)."""
    base = tmp_path_factory.mktemp("faithful")
    variants = {"last_120": [], "last_non_pad_dynamic": ["--pooling", "last_non_pad", "--padding", "dynamic"]}
    out = {}
    for name, flags in variants.items():
        out[name] = base / name
        result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir",
                            str(out[name]), "--do_predict", "true", *FEW, *flags])
        assert result.returncode == 0, result.stderr[-3000:]
    return out


def predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["last_120", "last_non_pad_dynamic"])
def test_same_predictions_however_the_model_is_loaded(runs, name, tmp_path, capsys):
    folder, expected = runs[name], predictions(runs[name])
    assert len(expected) == 300 and set(expected[0]) == {"text", "label", "predicted", "probabilities"}
    texts = [r["text"] for r in expected]
    spam = [r["probabilities"]["spam"] for r in expected]
    assert max(spam) - min(spam) > 0.05  # the texts get different scores: the comparison means something
    # Without hf_spam, the usual calls with default arguments (the model shapes its inputs as in training).
    proc = subprocess.run([sys.executable, "-c", HUB_LOADING, str(folder), json.dumps(texts)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hf_spam_imported"] is False
    assert got["single"] == pytest.approx(spam[:40], abs=1e-5)
    assert got["batched"] == pytest.approx(spam, abs=1e-5)
    assert got["usual"] == pytest.approx(spam, abs=1e-5)
    # The package's classifier and the command.
    ours = SpamClassifier.from_pretrained(folder, device="cpu").predict(texts)
    assert [r["spam_probability"] for r in ours] == pytest.approx(spam, abs=1e-5)
    assert [r["label"] for r in ours] == [r["predicted"] for r in expected]
    cli_main(["predict", "--model", str(folder), *texts[:30]])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["spam_probability"] for r in lines] == pytest.approx(spam[:30], abs=1e-5)


def test_scoring_a_trained_folder_without_training(runs, tmp_path, sms_file):
    out = tmp_path / "scored"
    result = run_train(["--data_file", str(sms_file), "--model_name_or_path", str(runs["last_120"]), "--output_dir",
                        str(out), "--do_train", "false", "--do_eval", "true", "--do_predict", "true",
                        "--disable_tqdm", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["calibration.png", "confusion-matrix.png", "metrics.json",
                                                     "precision-recall.png", "predictions.jsonl", "roc-curve.png",
                                                     "train.log"]
    before, after = (json.loads((f / "metrics.json").read_text()) for f in (runs["last_120"], out))
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "test_f1", "test_examples"):
        assert after[key] == pytest.approx(before[key], abs=1e-6), key
    assert predictions(out) == predictions(runs["last_120"])


@pytest.mark.parametrize("cache", ["true", "false"])
def test_early_stopping_keeps_the_best_full_model(tmp_path, sms_file, cache):
    out = tmp_path / "run"
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir", str(out),
                        "--trainable_layers", "last_block", "--pooling", "last_non_pad", "--padding", "dynamic",
                        "--cache_features", cache, "--max_steps", "120", "--eval_steps", "10", "--save_steps", "10",
                        "--save_strategy", "steps", "--load_best_model_at_end", "true", "--metric_for_best_model",
                        "accuracy", "--early_stopping_patience", "2", "--learning_rate", "1e-3", "--do_eval", "false",
                        "--data_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(max(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert state["global_step"] < 120  # stopped early
    best = Path(state["best_model_checkpoint"]).name
    saved, best_weights = load_file(out / "model.safetensors"), load_file(out / best / "model.safetensors")
    assert saved.keys() >= best_weights.keys() and "gpt.tok_emb.weight" in saved  # the whole model was saved ...
    for key, value in best_weights.items():  # ... with the best checkpoint's weights, not the last step's
        assert torch.equal(saved[key], value), key
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert last.name != best and not torch.equal(load_file(last / "model.safetensors")["gpt.out_head.weight"],
                                                 saved["gpt.out_head.weight"])


@pytest.mark.parametrize("trainable, cache", [("all", False), ("last_block", True)])
def test_activation_checkpointing_gives_the_same_losses(raw, tmp_path, trainable, cache):  # noqa: F811
    plain, _, _, _ = train_once(raw, tmp_path / "a", trainable=trainable, pooling="last_non_pad", padding="dynamic",
                                cache=cache, max_steps=8)
    checked, _, model, _ = train_once(raw, tmp_path / "b", trainable=trainable, pooling="last_non_pad",
                                      padding="dynamic", cache=cache, max_steps=8, activation_checkpointing=True)
    assert model.gpt.gradient_checkpointing is True  # it really ran with checkpointing
    assert checked == pytest.approx(plain, abs=1e-5)


def test_lora_adapter_loads_with_plain_peft(tmp_path, sms_file):
    out = tmp_path / "lora"
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir", str(out),
                        "--trainable_layers", "lora", "--lora_rank", "4", "--lora_alpha", "64", "--learning_rate",
                        "1e-3", *FEW])
    assert result.returncode == 0, result.stderr[-3000:]
    script = textwrap.dedent(
        """
        import json, sys, torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        adapter = sys.argv[1]
        base = AutoModelForSequenceClassification.from_pretrained(adapter + "/base", trust_remote_code=True)
        model = PeftModel.from_pretrained(base, adapter).eval()
        ids = torch.tensor(json.loads(sys.argv[2]))
        with torch.no_grad():
            print(json.dumps({"logits": model(input_ids=ids).logits.tolist(), "hf_spam": "hf_spam" in sys.modules}))
        """
    )
    ids = [[464, 3290, 318, 257, 1332, 286, 2420, 13], [33, 1268, 25474, 0, 0, 0, 0, 0]]
    proc = subprocess.run([sys.executable, "-c", script, str(out / "adapter"), json.dumps(ids)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        expected = merged(input_ids=torch.tensor(ids)).logits
    assert got["hf_spam"] is False
    torch.testing.assert_close(torch.tensor(got["logits"]), expected, atol=1e-5, rtol=0)


def test_seed_seeds_the_new_head_and_split_seed_the_data(sms_file):
    for seed in (123, 7):
        model = build_model(model_size="tiny", weights="random", seed=seed)
        torch.manual_seed(seed)
        torch.testing.assert_close(model.gpt.out_head.weight, torch.nn.Linear(128, 2).weight)
    from hf_spam.data import load_sms_spam

    assert load_sms_spam(sms_file, seed=5)["test"]["text"] != load_sms_spam(sms_file)["test"]["text"]


# Every flag the README's recipe section names, and how a run shows that it acted (or that it is refused).
README_FLAGS = {
    "--config": "the config's values are used", "--model_size": "config.json sizes",
    "--weights": "random init vs pretrained", "--model_name_or_path": "weights or a trained folder",
    "--trainable_layers": "trainable parameter count", "--pooling": "config.json", "--padding": "padded length",
    "--max_length": "padded length", "--data_file": "the data read", "--data_cache_dir": "where the cache is",
    "--natural_balance": "split sizes", "--write_csv": "CSV files", "--disable_causal_mask": "config.json",
    "--drop_rate": "config.json", "--lora_rank": "LoRA", "--lora_alpha": "LoRA", "--lora_dropout": "LoRA",
    "--bpe_dir": "tokenizer files", "--cache_features": "train.log", "--plot_train_batches": "epoch accuracy",
    "--cpu_threads": "metrics.json", "--overwrite_output_dir": "used folder", "--do_train": "no model saved",
    "--do_eval": "metrics", "--do_predict": "predictions.jsonl", "--split_seed": "the split",
    "--early_stopping_patience": "stops early", "--load_best_model_at_end": "best weights",
    "--metric_for_best_model": "best weights", "--gradient_checkpointing": "checkpointing on",
    "--activation_checkpointing": "the same flag, transformers' new name",
    "--output_dir": "where it all goes", "--num_train_epochs": "steps", "--seed": "the head",
    "--bf16": "autocast", "--fp16": "refused on a CPU", "--resume_from_checkpoint": "resumes",
    "--save_steps": "checkpoints", "--save_strategy": "checkpoints", "--save_total_limit": "checkpoints",
    "--push_to_hub": "pushes or fails in a line", "--hub_model_id": "push", "--hub_private_repo": "push",
    "--hub_revision": "push", "--hub_strategy": "only `end`", "--hub_token": "push", "--report_to": "or refused",
    "--help": "help", "--quiet": "accelerate's",
    # your own data: tested in test_any_data.py
    "--dataset_name": "Hub id or folder", "--train_file": "files", "--text_column": "columns",
    "--label_column": "columns", "--label_names": "label names", "--max_train_samples": "quick runs",
    "--positive_label": "two labels", "--feature_dtype": "half the disk", "--feature_cache_dir": "cache list",
    # the operating point: tested in test_operating_point.py
    "--decision_threshold": "decisions", "--max_false_positive_rate": "threshold", "--min_precision": "threshold",
    "--calibrate": "temperature",
    # class weights: tested in test_class_weights.py
    "--class_weight": "weighted loss, recorded",
    # FSDP on CPU processes: tested in test_multi_machine.py
    "--fsdp": "shards the parameters", "--fsdp_config": "configs/fsdp.json",
}


def readme_recipe_flags() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The recipe: `scripts/train.py`", 1)[1].split("\n## Data", 1)[0]
    launcher_flags = {"--nproc_per_node", "--num_processes", "--multi_gpu", "--cpu", "--config_file", "--nnodes",
                      "--node_rank", "--master_addr", "--master_port", "--machine_rank", "--mixed_precision"}
    return set(re.findall(r"(--[a-z][a-z0-9_]+)", section)) - launcher_flags


def test_every_flag_the_readme_names_is_known_here():
    assert readme_recipe_flags() <= set(README_FLAGS), readme_recipe_flags() - set(README_FLAGS)


def test_flags_act_on_a_run(tmp_path, sms_file, bpe_dir):
    out = tmp_path / "many"
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir", str(out),
                        "--pooling", "mean", "--padding", "max_context", "--max_length", "64", "--drop_rate", "0.1",
                        "--disable_causal_mask", "true", "--write_csv", "true", "--cpu_threads", "1", "--seed", "7",
                        "--split_seed", "5", "--natural_balance", "true", "--bpe_dir", str(bpe_dir),
                        "--trainable_layers", "last_two_blocks", "--cache_features", "true", "--num_train_epochs",
                        "1", "--max_steps", "4", "--eval_strategy", "no", "--do_predict", "true",
                        "--data_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["pooling"], config["padded_length"], config["drop_rate"], config["causal"]) == ("mean", 64, 0.1,
                                                                                                  False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cpu_threads"] == 1 and metrics["test_examples"] == 1117  # natural balance: all 5,572 messages
    assert metrics["trainable_parameters"] < metrics["total_parameters"]
    assert (out / "train.csv").is_file() and len((out / "predictions.jsonl").read_text().splitlines()) == 1117
    assert "Frozen-trunk feature cache not used: --drop_rate 0.1" in (out / "train.log").read_text()
    settings = json.loads((out / "training_args.json").read_text())
    assert settings["seed"] == 7 and settings["trainable_layers"] == "last_two_blocks"


@pytest.mark.parametrize("flags, message", [
    (["--hub_strategy", "every_save", "--push_to_hub", "true", "--hub_model_id", "me/x"], "--hub_strategy every_save"),
    (["--report_to", "tensorboard"], "pip install tensorboard"),
    (["--early_stopping_patience", "2"], "with --load_best_model_at_end true"),
    (["--padding", "dynamic", "--max_length", "64"], "--max_length: sets the padded length"),
    (["--load_best_model_at_end", "true", "--save_strategy", "no"], "load_best_model_at_end"),
])
def test_flags_that_cannot_act_are_refused_in_one_line(flags, message):
    if "tensorboard" in flags and importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here: --report_to tensorboard works")
    with pytest.raises(HfSpamError, match=re.escape(message)) as info:
        parse_args(["--config", "configs/tiny.yaml", "--output_dir", "/tmp/never-written", *flags])
    assert "\n" not in str(info.value)


def test_card_names_no_hub_split_and_has_examples(runs):
    card = (runs["last_120"] / "README.md").read_text()
    meta = card.split("---\n", 2)[1]
    assert "ucirvine/sms_spam" not in meta and "datasets:" not in meta
    assert "uci-sms-spam-collection" in meta and "widget:" in meta
    assert 'padding="max_length"' not in card  # default calls are right: no padding arguments to pass
