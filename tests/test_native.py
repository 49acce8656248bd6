"""The native export: an hf-spam model as transformers' own GPT2ForSequenceClassification, a folder that loads and
runs in a pipeline without trust_remote_code (and without hf_spam), with the trained model's logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BPE_DIR, run_train, scaled_tiny_model
from huggingface_hub import ModelCard
from test_faithful import HUB_LOADING as REMOTE_CODE_LOADING
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2ForSequenceClassification, pipeline

from hf_spam.cli import SAMPLE_TEXTS
from hf_spam.cli import main as cli_main
from hf_spam.data import load_sms_spam
from hf_spam.errors import HfSpamError, UnavailableError
from hf_spam.hub import check_model_folder, push_folder_to_hub, save_model_folder
from hf_spam.modeling_gpt import MODEL_PRESETS, GPTSpamConfig, GPTSpamForSequenceClassification
from hf_spam.native import export_native, to_gpt2_classifier
from hf_spam.predict import SpamClassifier

FAST = ["--config", "configs/tiny.yaml", "--pooling", "last_non_pad", "--padding", "dynamic", "--disable_tqdm", "true",
        "--do_eval", "false", "--eval_strategy", "no"]


def jittered(model: GPTSpamForSequenceClassification, seed: int = 0) -> GPTSpamForSequenceClassification:
    """``model`` with noise on every parameter: no bias zero, no LayerNorm scale one, so each lands where it must."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def padded_batch(vocab: int, pad: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids right-padded with ``pad`` to the longest length, and their attention mask."""
    ids = torch.randint(0, vocab - 1, (len(lengths), max(lengths)), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("size", [s for s in MODEL_PRESETS if s != "tiny"])
def test_every_gpt2_width_converts_with_the_same_logits(size, qkv_bias):
    # each preset's width and heads, 2 layers; a small vocabulary and context keep it quick
    config = GPTSpamConfig.from_preset(size, n_layers=2, vocab_size=1000, context_length=64, pad_token_id=999,
                                       pooling="last_non_pad", qkv_bias=qkv_bias)
    model = jittered(GPTSpamForSequenceClassification(config))
    native = to_gpt2_classifier(model)
    assert type(native) is GPT2ForSequenceClassification and native.score.bias is None
    assert (native.config.n_embd, native.config.n_head, native.config.n_layer) == (config.emb_dim, config.n_heads, 2)
    ids, mask = padded_batch(1000, 999, [64, 17, 1, 40])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(native(input_ids=ids, attention_mask=mask).logits, ours, atol=1e-4, rtol=0)
        torch.testing.assert_close(native(input_ids=ids).logits, ours, atol=1e-4, rtol=0)  # pooling by pad id
    assert ours.std() > 0.1  # the logits differ between texts and labels: the comparison means something


def test_last_pooling_without_a_trained_length_converts():
    # `last` with dynamic padding reads the last real token at inference, as GPT-2 does
    model = jittered(scaled_tiny_model(pooling="last", padded_length=None))
    ids, mask = padded_batch(50257, 50256, [9, 3, 6])
    with torch.no_grad():
        torch.testing.assert_close(to_gpt2_classifier(model)(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("settings, why", [
    ({"pooling": "first"}, "pooling 'first' reads the first token"),
    ({"pooling": "mean"}, "pooling 'mean' reads the mean of the tokens"),
    ({"pooling": "last_non_pad", "causal": False}, "without the causal mask"),
    ({"pooling": "last", "padded_length": 120}, "pooling 'last' with a trained length reads position 120"),
    ({"pooling": "last_non_pad", "padded_length": 120}, "cuts texts to its trained length of 120 tokens"),
])
def test_models_gpt2_cannot_compute_are_refused_in_one_line(settings, why):
    with pytest.raises(HfSpamError) as info:
        to_gpt2_classifier(scaled_tiny_model(**settings), "runs/x")
    message = str(info.value)
    assert message.startswith("runs/x: cannot be a plain GPT-2 classifier: ") and why in message
    assert message.endswith("train with --pooling last_non_pad --padding dynamic instead (configs/seed_fast.yaml)")
    assert "\n" not in message


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A saved hf-spam folder (last_non_pad, a head with a bias) as training writes one."""
    model = jittered(scaled_tiny_model(pooling="last_non_pad"))
    return save_model_folder(model, tmp_path_factory.mktemp("native") / "model", bpe_dir=BPE_DIR)


def test_export_command_writes_a_plain_transformers_folder(folder, sms_file, tmp_path, capsys):
    out = tmp_path / "native"
    cli_main(["export", "--model", str(folder), "--format", "transformers", "--output", str(out), "--data_file",
              str(sms_file)])
    printed = capsys.readouterr().out
    assert f"Exported {out} (GPT2ForSequenceClassification, no remote code)" in printed
    assert "on 64 test texts: max |logit difference|" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "merges.txt", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["pad_token_id"] == 50256 and "auto_map" not in config
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["label2id"] == {"ham": 0, "spam": 1}
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert "GPT2ForSequenceClassification" in card.text and "`model`" in card.text  # what it is, where from
    assert card.data.widget  # the SMS card's examples: the Hub widget runs it now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]  # nothing staged left beside it

    # the folder pushes as it is (no auto_map asked for): here offline, so the Hub call is what fails
    assert check_model_folder(out) == out
    with pytest.raises(UnavailableError, match="offline"):
        push_folder_to_hub(out, "someone/gpt2-spam-native", token="hf_" + "x" * 30)

    # an earlier export is replaced; the model folder itself, or any other folder, never
    report = export_native(folder, out, SAMPLE_TEXTS)
    assert report == {"folder": str(out), "max_abs_diff": report["max_abs_diff"], "texts": len(SAMPLE_TEXTS) - 1,
                      "empty": 1} and report["max_abs_diff"] <= 1e-4
    assert f"within {report['max_abs_diff']:.2g} on {len(SAMPLE_TEXTS) - 1} texts" in (out / "README.md").read_text()
    for target in (folder, tmp_path):
        before = sorted(p.name for p in target.iterdir())
        with pytest.raises(SystemExit) as info:
            cli_main(["export", "--model", str(folder), "--format", "transformers", "--output", str(target)])
        assert info.value.code == 2 and "is not an earlier GPT-2 export" in capsys.readouterr().err
        assert sorted(p.name for p in target.iterdir()) == before
    with pytest.raises(SystemExit) as info:
        cli_main(["export", "--model", str(folder), "--format", "transformers", "--output", str(out), "--quantize",
                  "int8"])
    assert info.value.code == 2 and "--quantize applies to --format onnx only" in capsys.readouterr().err


def test_refused_or_failed_exports_leave_no_folder(folder, tmp_path, capsys):
    padded = save_model_folder(scaled_tiny_model(pooling="last", padded_length=120), tmp_path / "padded",
                               bpe_dir=BPE_DIR)
    with pytest.raises(SystemExit) as info:
        cli_main(["export", "--model", str(padded), "--format", "transformers", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "pooling 'last' with a trained length" in err[0]
    # logits near 1e5: float rounding alone differs by more than 1e-4, so the check fails after writing
    huge = scaled_tiny_model(pooling="last_non_pad")
    with torch.no_grad():
        huge.gpt.out_head.weight.mul_(1e4)
    source = save_model_folder(huge, tmp_path / "huge", bpe_dir=BPE_DIR)
    with pytest.raises(HfSpamError, match="logits differ from the hf-spam model's by .* the export is not kept"):
        export_native(source, tmp_path / "out", SAMPLE_TEXTS)
    with pytest.raises(HfSpamError, match="check_texts: no text to check the export on"):  # no check, no export
        export_native(folder, tmp_path / "out", ["", ""])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge", "padded"]


def test_a_lora_merged_folder_exports(tmp_path, sms_file):
    out = tmp_path / "lora"
    result = run_train([*FAST, "--trainable_layers", "lora", "--lora_rank", "4", "--lora_alpha", "64",
                        "--learning_rate", "1e-3", "--max_steps", "4", "--data_file", str(sms_file),
                        "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter" / "adapter_config.json").is_file()  # it trained an adapter; the folder is merged
    texts = list(load_sms_spam(sms_file)["test"]["text"])[:48]
    report = export_native(out, tmp_path / "native", texts)
    assert report["texts"] == 48 and report["max_abs_diff"] <= 1e-4
    ours = SpamClassifier.from_pretrained(out, device="cpu").predict(texts)
    theirs = pipeline("text-classification", model=str(tmp_path / "native"), device="cpu")(texts, top_k=None,
                                                                                           batch_size=8)
    for record, scores in zip(ours, theirs):
        assert {d["label"]: d["score"] for d in scores} == pytest.approx(record["probabilities"], abs=1e-4)


# test_faithful's loading script (pipeline one text at a time and batched, a tokenizer padding batches) without
# remote code
HUB_LOADING = REMOTE_CODE_LOADING.replace("trust_remote_code=True", "trust_remote_code=False")


def test_a_seed_fast_run_exported_predicts_like_the_run_without_remote_code(tmp_path, sms_file, capsys):
    run, native = tmp_path / "run", tmp_path / "native"
    result = run_train([*FAST, "--max_steps", "30", "--do_predict", "true", "--data_file",
                        str(sms_file), "--output_dir", str(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    cli_main(["export", "--model", str(run), "--format", "transformers", "--output", str(native), "--data_file",
              str(sms_file)])
    assert "max |logit difference|" in capsys.readouterr().out
    expected = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    texts = [e["text"] for e in expected]
    proc = subprocess.run([sys.executable, "-c", HUB_LOADING, str(native), json.dumps(texts)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hf_spam_imported"] is False and HUB_LOADING.count("trust_remote_code=False") == 3
    spam = [e["probabilities"]["spam"] for e in expected]
    assert max(spam) - min(spam) > 1e-2, "the run's test predictions should differ between texts"
    for name, scores in got.items():
        if name != "hf_spam_imported":
            assert scores == pytest.approx(spam[: len(scores)], abs=1e-4), name
            decided = [(p > 0.5) == (e["predicted"] == "spam") for p, e in zip(scores, expected) if abs(p - 0.5) > 1e-4]
            assert all(decided), name  # the same labels (a tie within the tolerance may go either way)
    model = AutoModelForSequenceClassification.from_pretrained(native, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(native, trust_remote_code=False)
    assert type(model) is GPT2ForSequenceClassification and tokenizer.padding_side == "right"
    assert tokenizer.pad_token_id == 50256 and 50256 not in tokenizer("<|endoftext|>")["input_ids"]  # ordinary text
