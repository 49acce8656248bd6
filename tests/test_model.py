"""The from-scratch model: shapes, pooling, freezing choices, chapter compatibility, save/load."""

from __future__ import annotations

import pytest
import torch
from chapter_baseline import chapter_classifier

from hf_spam.chapter_checkpoint import load_chapter_classifier
from hf_spam.errors import HfSpamError
from hf_spam.modeling_gpt import (
    MODEL_PRESETS,
    GPTSpamConfig,
    GPTSpamForSequenceClassification,
    resolve_model_size,
)
from hf_spam.starting_model import build_model
from hf_spam.tokenization import PAD_TOKEN_ID, encode_texts, get_encoding, pad_and_truncate
from hf_spam.trainer import set_trainable_layers


def tiny(**kw) -> GPTSpamForSequenceClassification:
    torch.manual_seed(0)
    return GPTSpamForSequenceClassification(GPTSpamConfig.from_preset("tiny", **kw)).eval()


def test_presets_match_the_chapter_sizes():
    assert MODEL_PRESETS["gpt2-small"] == {"emb_dim": 768, "n_layers": 12, "n_heads": 12}
    assert MODEL_PRESETS["gpt2-medium"] == {"emb_dim": 1024, "n_layers": 24, "n_heads": 16}
    assert MODEL_PRESETS["gpt2-large"] == {"emb_dim": 1280, "n_layers": 36, "n_heads": 20}
    assert MODEL_PRESETS["gpt2-xl"] == {"emb_dim": 1600, "n_layers": 48, "n_heads": 25}
    assert resolve_model_size("124M") == "gpt2-small"
    with pytest.raises(ValueError, match="model_size"):
        resolve_model_size("gpt5")


def test_config_defaults_and_validation():
    cfg = GPTSpamConfig()
    assert (cfg.vocab_size, cfg.context_length, cfg.pad_token_id) == (50257, 1024, 50256)
    assert cfg.id2label == {0: "ham", 1: "spam"} and cfg.label2id == {"ham": 0, "spam": 1}
    assert cfg.num_labels == 2 and cfg.pooling == "last"
    with pytest.raises(ValueError, match="pooling"):
        GPTSpamConfig(pooling="max")


def test_module_names_and_shapes():
    model = tiny()
    names = set(dict(model.gpt.named_parameters()))
    for name in ("tok_emb.weight", "pos_emb.weight", "trf_blocks.1.att.W_query.weight", "trf_blocks.1.att.W_key.bias",
                 "trf_blocks.1.att.W_value.weight", "trf_blocks.1.att.out_proj.weight",
                 "trf_blocks.0.ff.layers.0.weight",
                 "trf_blocks.0.ff.layers.2.bias", "trf_blocks.0.norm1.scale", "trf_blocks.0.norm2.shift",
                 "final_norm.scale", "out_head.weight", "out_head.bias"):
        assert name in names, name
    ids = torch.randint(0, 50257, (3, 17))
    out = model(input_ids=ids, labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 2)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert model.gpt(ids).shape == (3, 17, 2)  # the chapter's per-token logits


def test_no_mask_buffer_in_checkpoints():
    assert not any("mask" in k for k in tiny().state_dict())


@pytest.mark.parametrize("pooling", ["last_non_pad", "mean", "first"])
def test_pooling_is_independent_of_padding_length(pooling):
    model = tiny(pooling=pooling)
    enc = get_encoding()
    ids = encode_texts(["Free entry in 2 a wkly comp to win FA Cup final tkts", "Ok lar... Joking wif u oni..."], enc)
    logits = {}
    for length in (40, 120):
        pairs = [pad_and_truncate(x, length) for x in ids]
        batch_ids = torch.tensor([p[0] for p in pairs])
        mask = torch.tensor([p[1] for p in pairs])
        assert batch_ids[0, -1] == PAD_TOKEN_ID
        logits[length] = model(input_ids=batch_ids, attention_mask=mask).logits
    torch.testing.assert_close(logits[40], logits[120], atol=1e-5, rtol=1e-5)


def test_last_pooling_reads_the_padding_position_like_the_chapter():
    model = tiny(pooling="last", padded_length=4)  # the chapter: every text padded to the longest training text
    ids = torch.tensor([[15496, 995, PAD_TOKEN_ID, PAD_TOKEN_ID]])
    mask = torch.tensor([[1, 1, 0, 0]])
    expected = model.gpt(ids)[:, -1, :]  # the chapter: model(input_batch)[:, -1, :]
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)
    torch.testing.assert_close(model(input_ids=ids[:, :2]).logits, expected)  # padded by the model, as trained
    # No trained length: training batches are read at their last position, padding or not, like the chapter ...
    model.config.padded_length = None
    model.train()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)
    assert not torch.allclose(model(input_ids=ids[:, :2]).logits, expected)
    # ... and the model in use reads the last real token, whatever its batch's padding.
    model.eval()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids[:, :2]).logits)


def test_last_non_pad_uses_the_mask_not_the_token_id():
    # A message may contain <|endoftext|> as text only via encode_ordinary, but ids can still hit 50256.
    model = tiny(pooling="last_non_pad")
    ids = torch.tensor([[15496, PAD_TOKEN_ID, 995, PAD_TOKEN_ID]])
    mask = torch.tensor([[1, 1, 1, 0]])
    expected = model(input_ids=ids[:, :3]).logits
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)


def _block(d: int) -> int:
    return 12 * d * d + 13 * d  # 4 attention Linear (with biases) + MLP 8d²+5d + two norms 4d


@pytest.mark.parametrize("choice", ["last_layer", "last_block", "last_two_blocks", "all"])
def test_trainable_parameter_counts(choice):
    model = tiny()
    set_trainable_layers(model, choice)
    d, layers = 128, 2
    head, final_norm = 2 * d + 2, 2 * d
    total = 50257 * d + 1024 * d + layers * _block(d) + final_norm + head
    expected = {
        "last_layer": head,
        "last_block": _block(d) + final_norm + head,
        "last_two_blocks": 2 * _block(d) + final_norm + head,
        "all": total,
    }[choice]
    assert (model.num_parameters(only_trainable=True), model.num_parameters()) == (expected, total)


def test_chapter_state_dict_loads_strictly_and_predicts_identically(tmp_path):
    """The book's own model code (benchmarks/chapter_baseline.py) saves the file; ours loads it and agrees."""
    cfg = {"vocab_size": 50257, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0,
           "qkv_bias": True}
    torch.manual_seed(1)
    chapter = chapter_classifier(cfg, seed=1).eval()
    path = tmp_path / "review_classifier.pth"
    torch.save(chapter.state_dict(), path)  # with the chapter's persistent att.mask buffers

    ours = load_chapter_classifier(path, GPTSpamConfig(**cfg))
    ids = torch.randint(0, 50257, (4, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, chapter(ids)[:, -1, :], atol=1e-5, rtol=1e-4)
    # a chapter-style file with a wrong mask is refused
    bad = torch.load(path, map_location="cpu", weights_only=True)
    bad["trf_blocks.0.att.mask"] = torch.zeros(64, 64)
    torch.save(bad, tmp_path / "bad_mask.pth")
    with pytest.raises(HfSpamError, match=r"bad_mask\.pth: buffer 'trf_blocks\.0\.att\.mask'"):
        load_chapter_classifier(tmp_path / "bad_mask.pth", GPTSpamConfig(**cfg))
    # ... and so is a missing tensor (strict loading)
    missing = torch.load(path, map_location="cpu", weights_only=True)
    del missing["trf_blocks.1.ff.layers.0.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(HfSpamError, match=r"missing tensor 'trf_blocks\.1\.ff\.layers\.0\.weight'"):
        load_chapter_classifier(tmp_path / "missing.pth", GPTSpamConfig(**cfg))

    ours.save_pretrained(tmp_path / "saved")
    again = GPTSpamForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, chapter(ids)[:, -1, :], atol=1e-5, rtol=1e-4)


def test_save_load_round_trip_keeps_every_tensor(tmp_path):
    model = tiny(pooling="mean")
    model.save_pretrained(tmp_path)
    loaded = GPTSpamForSequenceClassification.from_pretrained(tmp_path).eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ids = torch.randint(0, 50257, (2, 9))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                               loaded(input_ids=ids, attention_mask=mask).logits)


def test_no_causal_mask_lets_early_tokens_see_later_ones():
    causal, bidir = tiny(pooling="first"), tiny(pooling="first", causal=False)
    bidir.load_state_dict(causal.state_dict())
    a = torch.tensor([[15496, 995, 11]])
    b = torch.tensor([[15496, 318, 257]])
    torch.testing.assert_close(causal(input_ids=a).logits, causal(input_ids=b).logits)  # first token sees itself only
    assert not torch.allclose(bidir(input_ids=a).logits, bidir(input_ids=b).logits)


def test_new_head_is_created_after_seed_123_like_the_chapter():
    a = build_model(model_size="tiny", weights="random")
    torch.manual_seed(123)
    expected = torch.nn.Linear(128, 2)
    torch.testing.assert_close(a.gpt.out_head.weight, expected.weight)
    torch.testing.assert_close(a.gpt.out_head.bias, expected.bias)
