"""tiktoken GPT-2 tokenization offline, the three padding modes, and batches padded by transformers'
DataCollatorWithPadding with our Hugging Face copy of the tokenizer."""

from __future__ import annotations

import sys

import datasets
import pytest
import tiktoken
import torch
from transformers import DataCollatorWithPadding

from hf_spam.data import load_sms_spam
from hf_spam.errors import HfSpamError
from hf_spam.tokenization import (
    PAD_TOKEN_ID,
    build_hf_tokenizer,
    encode_texts,
    get_encoding,
    gpt2_bpe_files,
    tokenize_splits,
)


@pytest.fixture(scope="module")
def sms(sms_file):
    return load_sms_spam(sms_file)


def test_local_bpe_files_equal_tiktoken_gpt2_through_its_own_cache(bpe_dir, tmp_path, monkeypatch):
    # tiktoken's own loader, offline, from a cache folder laid out the way tiktoken names it
    import hashlib

    from hf_spam.tokenization import BPE_URLS

    for name, url in BPE_URLS.items():
        (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes((bpe_dir / name).read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # force a fresh load from that cache
    reference = tiktoken.get_encoding("gpt2")
    ours = get_encoding(bpe_dir)
    text = "Hello world! Free entry in 2 a wkly comp 08452810075over18's £1.50 ü 😀 <|endoftext|>"
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
    assert ours.n_vocab == reference.n_vocab == 50257
    assert ours.encode("<|endoftext|>", allowed_special="all") == [PAD_TOKEN_ID]


def test_endoftext_in_a_message_is_ordinary_text():
    ids = encode_texts(["win <|endoftext|> now"], get_encoding())[0]
    assert PAD_TOKEN_ID not in ids and get_encoding().decode(ids) == "win <|endoftext|> now"


def test_bad_bpe_folder_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(HfSpamError, match="encoder.json"):
        gpt2_bpe_files(tmp_path)
    (tmp_path / "encoder.json").write_text("{}")
    (tmp_path / "vocab.bpe").write_text("#version 0.2\n")
    with pytest.raises(HfSpamError, match="sha256"):
        gpt2_bpe_files(tmp_path)
    # Offline, no local folder and nothing in tiktoken's cache: one line saying what to pass instead.
    monkeypatch.delenv("HF_SPAM_BPE_DIR")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(sys.modules, "requests", None)  # tiktoken's download then fails at once, as offline
    with pytest.raises(HfSpamError, match="offline, point HF_SPAM_BPE_DIR"):
        gpt2_bpe_files(None)


def test_longest_train_padding_is_the_chapters_120(sms):
    tok, length = tokenize_splits(sms, padding="longest_train")
    assert length == 120
    for split in ("train", "validation", "test"):
        ids, mask = tok[split]["input_ids"], tok[split]["attention_mask"]
        assert {len(x) for x in ids} == {120}
        row = ids[0]
        n = sum(mask[0])
        assert row[n:] == [PAD_TOKEN_ID] * (120 - n) and all(mask[0][:n])
    # longer validation/test texts are cut to the longest training text, like the chapter's SpamDataset
    long_text = "Call now to claim your prize " * 10
    mixed = datasets.DatasetDict({
        "train": sms["train"].select(range(5)),
        "test": datasets.Dataset.from_dict({"text": [long_text], "label": [1]}, features=sms["train"].features),
    })
    cut, length = tokenize_splits(mixed, padding="longest_train")
    full = encode_texts([long_text], get_encoding())[0]
    assert len(full) > length and list(cut["test"]["input_ids"][0]) == full[:length]
    assert sum(cut["test"]["attention_mask"][0]) == length


def test_max_context_and_dynamic_padding(sms):
    small = datasets.DatasetDict({k: v.select(range(20)) for k, v in sms.items()})
    ctx, length = tokenize_splits(small, padding="max_context")
    assert length == 1024 and {len(x) for x in ctx["train"]["input_ids"]} == {1024}
    dyn, length = tokenize_splits(small, padding="dynamic")
    assert length is None
    expected = encode_texts(list(small["train"]["text"]), get_encoding())
    assert [list(x) for x in dyn["train"]["input_ids"]] == expected
    assert all(sum(m) == len(m) for m in dyn["train"]["attention_mask"])


def test_messages_longer_than_the_context_are_cut():
    text = "spam " * 1500
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [text], "label": [1]})})
    for padding in ("dynamic", "max_context"):
        tok, _ = tokenize_splits(ds, padding=padding)
        assert len(tok["train"]["input_ids"][0]) == 1024


def test_unknown_padding_mode_is_refused(sms):
    with pytest.raises(ValueError, match="padding"):
        tokenize_splits(sms, padding="left")


def test_tokenization_is_cached_by_fingerprint(sms):
    small = datasets.DatasetDict({"train": sms["train"].select(range(10))})
    a, _ = tokenize_splits(small, padding="longest_train")
    b, _ = tokenize_splits(small, padding="longest_train")
    c, _ = tokenize_splits(small, padding="dynamic")
    assert a["train"]._fingerprint == b["train"]._fingerprint != c["train"]._fingerprint


def test_batches_are_padded_on_the_right_by_the_library_collator(bpe_dir):
    collate = DataCollatorWithPadding(build_hf_tokenizer(bpe_dir))
    batch = collate([
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1},
        {"input_ids": [8], "attention_mask": [1], "labels": 0},
    ])
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, PAD_TOKEN_ID, PAD_TOKEN_ID]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([1, 0]))
    padded = DataCollatorWithPadding(build_hf_tokenizer(bpe_dir), pad_to_multiple_of=8)
    assert padded([{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]}])["input_ids"].shape == (1, 8)


def test_tiktoken_is_the_library_used():
    assert isinstance(get_encoding(), tiktoken.Encoding)
