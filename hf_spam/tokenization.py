"""GPT-2 tokenization with tiktoken (as in the chapter), padding modes, and the same tokenizer for the Hub.

tiktoken's ``gpt2`` encoding downloads OpenAI's two BPE files on first use. Offline it is built from a
local folder holding them (``bpe_dir=``/``--bpe_dir`` or ``$HF_SPAM_BPE_DIR``; OpenAI's names
``encoder.json``/``vocab.bpe`` or Hugging Face's ``vocab.json``/``merges.txt``, as in every saved model
folder). Messages are encoded with ``encode_ordinary``: the text ``<|endoftext|>`` inside a message is
ordinary text, never the special token.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import tiktoken
from tiktoken.load import read_file_cached
from transformers import GPT2TokenizerFast

from .errors import HfSpamError, UnavailableError

PAD_TOKEN_ID = 50256
END_OF_TEXT = "<|endoftext|>"
BPE_DIR_ENV = "HF_SPAM_BPE_DIR"
PADDING_CHOICES = ("longest_train", "max_context", "dynamic")
MAX_PADDING_WASTE = 0.25  # padding a length-sorted batch may add to its real tokens before it is split

# OpenAI's file names, their Hugging Face names (same bytes), download URLs and the sha256 tiktoken checks.
HF_NAMES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}
BPE_URLS = {
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}
BPE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's pre-tokenization regex (tiktoken's r50k/gpt2 pattern).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _local_bpe_dir(bpe_dir: str | os.PathLike | None) -> Path | None:
    chosen = bpe_dir if bpe_dir is not None else os.environ.get(BPE_DIR_ENV) or None
    return Path(chosen) if chosen is not None else None


def gpt2_bpe_files(bpe_dir: str | os.PathLike | None = None) -> dict[str, bytes]:
    """``encoder.json`` and ``vocab.bpe`` as bytes, sha256-checked: from a local folder when one is given
    or configured (either naming), else through tiktoken's own cache (which downloads once)."""
    folder = _local_bpe_dir(bpe_dir)
    if folder is None:
        try:
            return {name: read_file_cached(url, BPE_SHA256[name]) for name, url in BPE_URLS.items()}
        except Exception as err:  # network errors come in many types (requests, OSError, ValueError ...)
            raise UnavailableError(
                f"could not get GPT-2's BPE files from OpenAI or tiktoken's cache ({type(err).__name__}); "
                f"offline, point {BPE_DIR_ENV} (or --bpe_dir where a command has it) at a folder holding encoder.json "
                "and vocab.bpe"
            ) from None
    files = {}
    for name, hf_name in HF_NAMES.items():
        path = next((p for p in (folder / name, folder / hf_name) if p.is_file()), None)
        if path is None:
            raise HfSpamError(f"{folder}: GPT-2 BPE file {name} (or {hf_name}) not found; expected encoder.json "
                              "and vocab.bpe")
        files[name] = path.read_bytes()
        if hashlib.sha256(files[name]).hexdigest() != BPE_SHA256[name]:
            raise HfSpamError(f"{path}: sha256 does not match OpenAI's GPT-2 {name} ({BPE_SHA256[name]})")
    return files


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's reversible byte -> printable character map used in ``encoder.json``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    return dict(zip(chars, printable + others))


@lru_cache(maxsize=4)
def _encoding_from(folder: str | None) -> tiktoken.Encoding:
    if folder is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception:  # offline: the same message as for the raw files
            gpt2_bpe_files(None)
            raise
    decoder = _byte_decoder()
    # tiktoken's gpt2 loader checks that vocab.bpe's merge order equals encoder.json's ranks, so the ranks
    # can be read from encoder.json alone.
    encoder = json.loads(gpt2_bpe_files(folder)["encoder.json"])
    ranks = {bytes(decoder[c] for c in token): rank for token, rank in encoder.items() if token != END_OF_TEXT}
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                             special_tokens={END_OF_TEXT: PAD_TOKEN_ID}, explicit_n_vocab=50257)


def get_encoding(bpe_dir: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding, built from a local BPE folder when one is given or configured."""
    folder = _local_bpe_dir(bpe_dir)
    return _encoding_from(str(folder.resolve()) if folder is not None else None)


def encode_texts(texts: list[str], encoding: tiktoken.Encoding | None = None) -> list[list[int]]:
    """Token ids per text; ``<|endoftext|>`` inside a text is encoded as ordinary text."""
    return (encoding or get_encoding()).encode_ordinary_batch(list(texts), num_threads=1)


def pad_and_truncate(ids: list[int], length: int) -> tuple[list[int], list[int]]:
    """Right-pad (or cut) ``ids`` to ``length``; returns ``(input_ids, attention_mask)``."""
    ids = ids[:length]
    return ids + [PAD_TOKEN_ID] * (length - len(ids)), [1] * len(ids) + [0] * (length - len(ids))


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int | None = None) -> Iterator[list[int]]:
    """Indices of ``lengths`` in batches of similar length, longest first: at most ``max_rows`` rows and, padded to
    their longest, ``max_tokens`` tokens; a batch ends where that padding would add more than ``MAX_PADDING_WASTE``
    to its real tokens (prediction and the frozen-trunk cache both batch this way)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    start = 0
    while start < len(order):
        end, real, width = start + 1, lengths[order[start]], lengths[order[start]]
        while end < len(order) and end - start < max_rows:
            padded = (end + 1 - start) * width
            if padded > (1 + MAX_PADDING_WASTE) * (real + lengths[order[end]]) or max_tokens and padded > max_tokens:
                break
            real += lengths[order[end]]
            end += 1
        yield order[start:end]
        start = end


def tokenize_splits(
    dataset: datasets.DatasetDict,
    padding: str = "longest_train",
    context_length: int = 1024,
    bpe_dir: str | os.PathLike | None = None,
    max_length: int | None = None,
) -> tuple[datasets.DatasetDict, int | None]:
    """Add ``input_ids``/``attention_mask`` to every split; returns the splits and the padded length.

    ``longest_train`` pads every split to the longest training text and cuts longer validation/test
    texts to it (the chapter); ``max_context`` pads to ``context_length``; ``dynamic`` leaves texts
    unpadded (cut to ``context_length``) for ``DataCollatorWithPadding``, and returns length ``None``.
    ``max_length`` overrides the padded length of the first two modes.
    """
    if padding not in PADDING_CHOICES:
        raise HfSpamError(f"padding: unknown value {padding!r}; expected one of {', '.join(PADDING_CHOICES)}")
    enc = get_encoding(bpe_dir)
    # The map functions close over a tiktoken object that datasets cannot hash: fingerprints are set
    # explicitly, so tokenization is cached like any other map.
    encoded = datasets.DatasetDict({
        split: ds.map(lambda b: {"input_ids": encode_texts(b["text"], enc)}, batched=True,
                      new_fingerprint=_fingerprint(ds, "gpt2-encode-ordinary"), desc=f"Tokenizing {split}")
        for split, ds in dataset.items()
    })
    if padding == "dynamic":
        length = None
    elif max_length is not None:
        length = min(max_length, context_length)
    elif padding == "longest_train":
        longest = max(max(map(len, batch["input_ids"]), default=0)  # a batch at a time: never a whole column
                      for batch in encoded["train"].select_columns(["input_ids"]).iter(batch_size=4096))
        length = min(longest, context_length)
    else:
        length = context_length

    def pad(batch: dict[str, list]) -> dict[str, list]:
        if length is None:
            ids = [x[:context_length] for x in batch["input_ids"]]
            return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}
        pairs = [pad_and_truncate(x, length) for x in batch["input_ids"]]
        return {"input_ids": [p[0] for p in pairs], "attention_mask": [p[1] for p in pairs]}

    padded = datasets.DatasetDict({
        split: ds.map(pad, batched=True, new_fingerprint=_fingerprint(ds, f"pad|{length}|{context_length}"),
                      desc=f"Padding {split}")
        for split, ds in encoded.items()
    })
    return padded, length


def _fingerprint(ds: datasets.Dataset, step: str) -> str:
    return hashlib.sha256(f"{ds._fingerprint}|{step}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The same tokenizer for Hugging Face: Hub folders, pipelines, AutoTokenizer, DataCollatorWithPadding
# --------------------------------------------------------------------------------------------


def build_hf_tokenizer(bpe_dir: str | os.PathLike | None = None) -> GPT2TokenizerFast:
    """A ``GPT2TokenizerFast`` giving exactly our tiktoken ids: pad ``<|endoftext|>`` on the right, 1,024
    tokens, and the text ``<|endoftext|>`` encoded as ordinary text (``split_special_tokens=True``, saved
    with the tokenizer), like ``encode_ordinary``."""
    files = gpt2_bpe_files(bpe_dir)
    # vocab.bpe: a "#version" line, then one "left right" merge per line in rank order.
    merges = [tuple(line.split(" ")) for line in files["vocab.bpe"].decode("utf-8").splitlines()[1:] if line]
    return GPT2TokenizerFast(vocab=json.loads(files["encoder.json"]), merges=merges, pad_token=END_OF_TEXT,
                             padding_side="right", model_max_length=1024, split_special_tokens=True)


def save_hf_tokenizer(tokenizer: Any, folder: str | os.PathLike, bpe_dir: str | os.PathLike | None = None) -> None:
    """Write ``tokenizer`` (``tokenizer.json``, ``tokenizer_config.json``) and GPT-2's raw ``vocab.json`` /
    ``merges.txt`` into ``folder``: the raw files let ``get_encoding(folder)`` rebuild tiktoken offline."""
    tokenizer.save_pretrained(str(folder))
    for name, data in gpt2_bpe_files(bpe_dir).items():
        (Path(folder) / HF_NAMES[name]).write_bytes(data)
