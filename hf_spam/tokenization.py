"""GPT-2 tokenization with tiktoken, padding modes and a padding collator.

tiktoken's ``gpt2`` encoding normally downloads OpenAI's two BPE files on first use. Offline it
works from its own cache (``TIKTOKEN_CACHE_DIR``) or from a local folder that holds
``encoder.json`` + ``vocab.bpe`` (``bpe_dir=`` or the ``HF_SPAM_BPE_DIR`` environment variable).
Messages are encoded with ``encode_ordinary``: a message that contains the text
``<|endoftext|>`` is tokenized as ordinary text, never as the special token and never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken
import torch

PAD_TOKEN_ID = 50256
END_OF_TEXT = "<|endoftext|>"
BPE_DIR_ENV = "HF_SPAM_BPE_DIR"
PADDING_CHOICES = ("longest_train", "max_context", "dynamic")

# OpenAI's download locations and the sha256 values tiktoken itself checks.
BPE_URLS = {
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}
BPE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's regex for pre-splitting text (tiktoken's r50k/gpt2 pattern).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (used in encoder.json)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def resolve_bpe_dir(bpe_dir: str | os.PathLike | None = None) -> Path | None:
    """The local BPE folder to use: the argument, else ``$HF_SPAM_BPE_DIR``, else ``None`` (tiktoken)."""
    chosen = bpe_dir if bpe_dir is not None else os.environ.get(BPE_DIR_ENV) or None
    return Path(chosen) if chosen is not None else None


def _read_checked(path: Path, name: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GPT-2 BPE file {name} not found (expected encoder.json and vocab.bpe)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != BPE_SHA256[name]:
        raise ValueError(f"{path}: sha256 does not match OpenAI's GPT-2 {name} ({BPE_SHA256[name]})")
    return data


def gpt2_bpe_files(bpe_dir: str | os.PathLike | None = None) -> dict[str, bytes]:
    """The raw bytes of ``encoder.json`` and ``vocab.bpe``, checked against their sha256.

    From ``bpe_dir``/``$HF_SPAM_BPE_DIR`` when given, otherwise through tiktoken's own cache
    (which downloads once when online). Used to build the Hugging Face tokenizer files too.
    """
    local = resolve_bpe_dir(bpe_dir)
    if local is not None:
        return {name: _read_checked(local / name, name) for name in BPE_URLS}
    from tiktoken.load import read_file_cached

    try:
        return {name: read_file_cached(url, BPE_SHA256[name]) for name, url in BPE_URLS.items()}
    except Exception as err:  # network errors come in many types (requests, OSError ...)
        raise RuntimeError(
            "could not get GPT-2's BPE files (encoder.json, vocab.bpe) from OpenAI or tiktoken's cache: "
            f"{type(err).__name__}; offline, pass bpe_dir=/--bpe_dir or set {BPE_DIR_ENV} to a folder holding them"
        ) from None


@lru_cache(maxsize=4)
def _encoding_from_dir(bpe_dir: str) -> tiktoken.Encoding:
    files = gpt2_bpe_files(bpe_dir)
    byte_decoder = {ch: b for b, ch in _bytes_to_unicode().items()}
    encoder = json.loads(files["encoder.json"])
    # tiktoken's gpt2 loader checks that vocab.bpe's merge order equals encoder.json's ranks, so the
    # ranks can be read from encoder.json directly.
    ranks = {bytes(byte_decoder[ch] for ch in token): rank for token, rank in encoder.items() if token != END_OF_TEXT}
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: PAD_TOKEN_ID},
        explicit_n_vocab=50257,
    )


def get_encoding(bpe_dir: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding, from a local BPE folder when one is given or configured."""
    local = resolve_bpe_dir(bpe_dir)
    if local is not None:
        return _encoding_from_dir(str(local.resolve()))
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:
        raise RuntimeError(
            f"could not load tiktoken's gpt2 encoding ({type(err).__name__}); offline, pass --bpe_dir or set "
            f"{BPE_DIR_ENV} to a folder holding encoder.json and vocab.bpe"
        ) from None


def encode_texts(texts: list[str], encoding: tiktoken.Encoding | None = None) -> list[list[int]]:
    """Token ids per text; ``<|endoftext|>`` inside a text is encoded as ordinary text."""
    enc = encoding or get_encoding()
    return enc.encode_ordinary_batch(list(texts), num_threads=1)


def pad_and_truncate(ids: list[int], length: int, pad_id: int = PAD_TOKEN_ID) -> tuple[list[int], list[int]]:
    """Right-pad (or cut) ``ids`` to ``length``; returns ``(input_ids, attention_mask)``."""
    ids = ids[:length]
    n = len(ids)
    return ids + [pad_id] * (length - n), [1] * n + [0] * (length - n)


def tokenize_splits(
    dataset: Any,
    padding: str = "longest_train",
    context_length: int = 1024,
    bpe_dir: str | os.PathLike | None = None,
    text_column: str = "text",
    max_length: int | None = None,
) -> tuple[Any, int | None]:
    """Add ``input_ids``/``attention_mask`` to every split of a ``DatasetDict``.

    ``longest_train`` pads every split to the longest training text and cuts longer
    validation/test texts to it (the chapter); ``max_context`` pads to ``context_length``;
    ``dynamic`` leaves texts unpadded (cut to ``context_length``) for a padding collator.
    ``max_length`` overrides the padded length of the first two modes. Returns the tokenized
    ``DatasetDict`` and the padded length (``None`` for ``dynamic``).
    """
    if padding not in PADDING_CHOICES:
        raise ValueError(f"padding: unknown value {padding!r}; expected one of {', '.join(PADDING_CHOICES)}")
    enc = get_encoding(bpe_dir)

    def encode_batch(batch: dict[str, list]) -> dict[str, list]:
        return {"input_ids": enc.encode_ordinary_batch(batch[text_column], num_threads=1)}

    # Fingerprints are set explicitly: the map function closes over a tiktoken object that
    # datasets cannot hash, which would otherwise give a random fingerprint and no caching.
    encoded = {}
    for split, ds in dataset.items():
        fp = hashlib.sha256(f"{ds._fingerprint}|gpt2-encode-ordinary|{text_column}".encode()).hexdigest()[:16]
        encoded[split] = ds.map(encode_batch, batched=True, new_fingerprint=fp, desc=f"Tokenizing {split}")

    if padding == "dynamic":
        length = None
    elif max_length is not None:
        length = max_length
    elif padding == "longest_train":
        length = max(len(ids) for ids in encoded["train"]["input_ids"])
    else:
        length = context_length
    limit = min(length, context_length) if length is not None else context_length

    def pad_batch(batch: dict[str, list]) -> dict[str, list]:
        if length is None:
            ids = [x[:limit] for x in batch["input_ids"]]
            return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}
        pairs = [pad_and_truncate(x, limit) for x in batch["input_ids"]]
        return {"input_ids": [p[0] for p in pairs], "attention_mask": [p[1] for p in pairs]}

    out = {}
    for split, ds in encoded.items():
        fp = hashlib.sha256(f"{ds._fingerprint}|pad|{padding}|{limit}|{length}".encode()).hexdigest()[:16]
        out[split] = ds.map(pad_batch, batched=True, new_fingerprint=fp, desc=f"Padding {split}")
    return type(dataset)(out), (limit if length is not None else None)


@dataclass
class PaddingCollator:
    """Stack examples into a batch, right-padding ``input_ids`` (with ``pad_token_id``) and
    ``attention_mask`` (with 0) to the longest example; already padded batches pass unchanged."""

    pad_token_id: int = PAD_TOKEN_ID
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            if "attention_mask" in f:
                mask[i, :n] = torch.as_tensor(f["attention_mask"], dtype=torch.long)
            else:
                mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        label_key = "labels" if "labels" in features[0] else "label" if "label" in features[0] else None
        if label_key is not None:
            batch["labels"] = torch.tensor([int(f[label_key]) for f in features], dtype=torch.long)
        return batch


# --------------------------------------------------------------------------------------------
# The same tokenizer as a Hugging Face tokenizer (for Hub folders, pipelines, AutoTokenizer)
# --------------------------------------------------------------------------------------------

# HF's names for OpenAI's two files (same bytes): encoder.json is vocab.json, vocab.bpe is merges.txt.
HF_BPE_FILE_NAMES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}


def build_hf_tokenizer(bpe_dir: str | os.PathLike | None = None) -> Any:
    """A ``GPT2TokenizerFast`` that gives exactly our tiktoken ids, built offline from GPT-2's BPE files.

    ``<|endoftext|>`` is the pad token (right padding, ``model_max_length=1024``), and the text
    ``<|endoftext|>`` inside a message is encoded as ordinary text (``split_special_tokens=True``),
    like tiktoken's ``encode_ordinary`` that training uses. The setting is saved with the tokenizer.
    """
    from transformers import GPT2TokenizerFast

    files = gpt2_bpe_files(bpe_dir)
    vocab = json.loads(files["encoder.json"])
    # vocab.bpe: a "#version" header line, then one "left right" merge per line, in rank order.
    merges = [tuple(line.split(" ")) for line in files["vocab.bpe"].decode("utf-8").splitlines()[1:] if line]
    return GPT2TokenizerFast(
        vocab=vocab,
        merges=merges,
        pad_token=END_OF_TEXT,
        padding_side="right",
        model_max_length=1024,
        split_special_tokens=True,
    )


def save_hf_tokenizer(folder: str | os.PathLike, bpe_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the HF tokenizer files (``tokenizer.json``, ``tokenizer_config.json``) and GPT-2's
    ``vocab.json``/``merges.txt`` into ``folder``; returns the paths written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = [Path(p) for p in build_hf_tokenizer(bpe_dir).save_pretrained(str(out))]
    # The raw BPE files too: older transformers, slow tokenizers and `encoding_for_folder` read them.
    for name, data in gpt2_bpe_files(bpe_dir).items():
        target = out / HF_BPE_FILE_NAMES[name]
        target.write_bytes(data)
        written.append(target)
    return sorted({p for p in written if p.is_file()})


def encoding_for_folder(
    folder: str | os.PathLike | None, bpe_dir: str | os.PathLike | None = None
) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding for a saved model folder, without a download when possible.

    Order: ``bpe_dir``/``$HF_SPAM_BPE_DIR``; else the folder's ``vocab.json``/``merges.txt`` when
    they are byte-identical to GPT-2's files (sha256 checked); else ``get_encoding()``.
    """
    if resolve_bpe_dir(bpe_dir) is not None or folder is None:
        return get_encoding(bpe_dir)
    local = Path(folder)
    hf_names = {hf: name for name, hf in HF_BPE_FILE_NAMES.items()}
    paths = {hf_names[hf]: local / hf for hf in hf_names}
    if all(p.is_file() for p in paths.values()) and all(
        hashlib.sha256(p.read_bytes()).hexdigest() == BPE_SHA256[name] for name, p in paths.items()
    ):
        return _encoding_from_hf_folder(str(local.resolve()))
    return get_encoding()


@lru_cache(maxsize=4)
def _encoding_from_hf_folder(folder: str) -> tiktoken.Encoding:
    # Same construction as `_encoding_from_dir`, reading HF's file names (checked by the caller).
    byte_decoder = {ch: b for b, ch in _bytes_to_unicode().items()}
    encoder = json.loads((Path(folder) / "vocab.json").read_bytes())
    ranks = {bytes(byte_decoder[ch] for ch in token): rank for token, rank in encoder.items() if token != END_OF_TEXT}
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: PAD_TOKEN_ID},
        explicit_n_vocab=50257,
    )
