"""LoRA with peft: parameter counts, what trains under a real Trainer, adapter save/load, merged folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import peft_alpha_for_chapter
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

import hf_spam  # noqa: F401 - registers the Auto classes
from hf_spam.arguments import parse_args
from hf_spam.data import load_sms_spam
from hf_spam.errors import HfSpamError, one_line
from hf_spam.lora import apply_lora, save_adapter_and_merge
from hf_spam.modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
from hf_spam.tokenization import build_hf_tokenizer, encode_texts, tokenize_splits

COLLATE = DataCollatorWithPadding(build_hf_tokenizer())
TARGET_SUFFIXES = ("att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2")


def tiny_model(seed: int = 123) -> GPTSpamForSequenceClassification:
    torch.manual_seed(seed)
    return GPTSpamForSequenceClassification(GPTSpamConfig.from_preset("tiny"))


def lora_parameter_count(config, rank: int) -> int:
    """Parameters LoRA adds at ``rank``: r * (in + out) for each of the six Linear layers of every block."""
    d = config.emb_dim
    return config.n_layers * rank * (4 * 2 * d + 2 * 5 * d)


def load_adapter(base_model, adapter_dir, *, is_trainable: bool = False) -> PeftModel:
    """A saved adapter on its base model (a classifier or a saved folder of it): the model the adapter was
    trained on, not the merged folder, which already holds the update."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise HfSpamError(f"{adapter_dir}: no adapter_config.json; expected a folder written by training with LoRA")
    if not isinstance(base_model, GPTSpamForSequenceClassification):
        base_model = GPTSpamForSequenceClassification.from_pretrained(base_model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)
        except RuntimeError as err:  # shape mismatch: an adapter of another model size
            raise HfSpamError(f"{adapter_dir}: adapter does not fit the base model ({one_line(err)})") from None


def lora_targets(peft_model) -> set[str]:
    return {n.removesuffix(".lora_A").split("gpt.", 1)[1] for n, _ in peft_model.named_modules()
            if n.endswith(".lora_A")}


def test_gpt2_small_rank16_adds_2_7m_parameters_on_every_block_linear():
    model = GPTSpamForSequenceClassification(GPTSpamConfig.from_preset("gpt2-small"))
    base_total = sum(p.numel() for p in model.parameters())
    peft_model = apply_lora(model, rank=16, alpha=256, dropout=0.0)
    added = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
    # 12 blocks x 16 x [4 x (768 + 768) + (768 + 3072) + (3072 + 768)]
    assert added == lora_parameter_count(model.config, 16) == 2_654_208
    trainable = peft_model.num_parameters(only_trainable=True)
    assert trainable == added + 768 * 2 + 2  # plus the full 2-way head
    assert lora_targets(peft_model) == {f"trf_blocks.{i}.{s}" for i in range(12) for s in TARGET_SUFFIXES}
    # the frozen base is untouched in size (peft keeps one copy of the head beside the trained one)
    assert sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" not in n) == base_total + 1538


def test_tiny_counts_and_bad_settings():
    peft_model = apply_lora(tiny_model(), rank=4, alpha=8)
    added = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
    assert added == lora_parameter_count(GPTSpamConfig.from_preset("tiny"), 4) == 2 * 4 * (8 * 128 + 5 * 128 * 2)
    assert peft_alpha_for_chapter(16, 16) == 256


@pytest.fixture(scope="module")
def trained(sms_file, tmp_path_factory):
    """A tiny LoRA model after a few real Trainer steps on real messages, plus its weights before."""
    raw = load_sms_spam(sms_file)
    small = {k: raw[k].select(range(64)) for k in ("train", "validation")}
    from datasets import DatasetDict

    tokenized, _ = tokenize_splits(DatasetDict(small), padding="longest_train")
    # keep the text column: Trainer must drop what forward does not take, also through the peft wrapper
    tokenized = tokenized.rename_column("label", "labels")
    peft_model = apply_lora(tiny_model(), rank=8, alpha=128)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    out = tmp_path_factory.mktemp("lora_trainer")
    args = TrainingArguments(output_dir=str(out), max_steps=6, per_device_train_batch_size=8, learning_rate=1e-3,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=1)
    trainer = Trainer(model=peft_model, args=args, train_dataset=tokenized["train"], data_collator=COLLATE)
    assert trainer.label_names == ["labels"]
    trainer.train()
    peft_model.eval()
    return peft_model, before, tokenized, out


def test_trainer_changes_only_the_adapter_and_the_head(trained):
    peft_model, before, _, _ = trained
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    expected = {n for n in before if ".lora_" in n or ".out_head.modules_to_save." in n}
    assert changed == expected
    assert any(".out_head.modules_to_save." in n for n in changed)


def test_merged_model_and_reloaded_adapter_predict_like_the_adapter(trained, tmp_path):
    peft_model, _, tokenized, _ = trained
    batch = COLLATE([{k: ex[k] for k in ("input_ids", "attention_mask")} for ex in tokenized["validation"]])
    with torch.no_grad():
        reference = peft_model(**batch).logits
    merged = save_adapter_and_merge(peft_model, tmp_path / "adapter")
    assert type(merged) is GPTSpamForSequenceClassification
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, reference, atol=1e-5, rtol=0)
        # the peft model is still the adapter model (merging worked on a copy)
        torch.testing.assert_close(peft_model(**batch).logits, reference, atol=0, rtol=0)

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS" and config["r"] == 8
    assert "out_head" in config["modules_to_save"]
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).keys()
    assert any("out_head" in k for k in keys)
    assert all("lora_" in k or "out_head" in k for k in keys)  # no frozen base weight in the adapter

    reloaded = load_adapter(tiny_model(), tmp_path / "adapter")  # the same seeded base model
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, reference, atol=1e-5, rtol=0)
    with pytest.raises(HfSpamError, match="adapter_config.json"):
        load_adapter(tiny_model(), tmp_path)


def test_merged_folder_loads_with_the_auto_classes(trained, tmp_path, bpe_dir):
    from hf_spam.hub import save_model_folder

    peft_model, _, tokenized, _ = trained
    merged = save_adapter_and_merge(peft_model, tmp_path / "adapter")
    folder = save_model_folder(merged, tmp_path / "model", bpe_dir=bpe_dir)
    config = json.loads((folder / "config.json").read_text())
    assert not any("peft" in k or "lora" in k for k in config), config.keys()
    assert "auto_map" in config and (folder / "modeling_gpt.py").is_file()  # a normal remote-code folder
    assert not (folder / "adapter_config.json").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(folder)
    assert type(loaded) is GPTSpamForSequenceClassification
    batch = COLLATE([{k: ex[k] for k in ("input_ids", "attention_mask")} for ex in tokenized["validation"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, merged(**batch).logits, atol=1e-6, rtol=0)
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(folder), device="cpu")
    texts = ["WINNER!! Claim your free prize now", "See you at dinner tonight"]
    scores = [{d["label"]: d["score"] for d in r} for r in clf(texts, top_k=None)]
    for text, score in zip(texts, scores):  # one text at a time: no padding, the same ids as tiktoken's
        with torch.no_grad():
            probs = merged(input_ids=torch.tensor([encode_texts([text])[0]])).logits.softmax(-1)[0]
        assert score["ham"] == pytest.approx(float(probs[0]), abs=1e-5)
        assert score["spam"] == pytest.approx(float(probs[1]), abs=1e-5)
    # the adapter loads onto a base saved as a folder too
    base_dir = tmp_path / "base"
    tiny_model().save_pretrained(base_dir)
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(base_dir, tmp_path / "adapter")(**batch).logits,
                                   merged(**batch).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flags, message", [
    (["--lora_rank", "0"], "--lora_rank: expected a positive integer"),
    (["--lora_alpha", "-1"], "--lora_alpha: expected a positive number"),
    (["--lora_dropout", "1.5"], r"--lora_dropout: expected a value in \[0, 1\)"),
])
def test_bad_lora_flags_fail_before_any_data_is_read(flags, message):
    with pytest.raises(HfSpamError, match=message):
        parse_args(["--trainable_layers", "lora", *flags, "--data_file", "/no/such/file", "--output_dir", "x"])
