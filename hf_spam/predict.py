"""Fast spam/ham prediction with a trained model: ``SpamClassifier``.

Texts are tokenized with tiktoken exactly as in training (``encode_ordinary``: the text
``<|endoftext|>`` is ordinary text), sorted by length and batched with right padding, so a batch
is only as long as its longest text; results come back in input order. ``predict_stream`` reads
its input lazily in chunks, so memory stays bounded whatever the input size.

How a text's tokens reach the classifier (so that a prediction never depends on which other texts
share its batch):

- texts are cut to the padded length used in training (``config.padded_length``) when the model
  stores one, else to the context length (1,024 tokens);
- ``pooling="last"`` (the book: read the last position, padding or not): with
  ``config.padded_length``, every text is padded to that length, which reproduces training and its
  evaluation exactly; without it (a model trained with dynamic padding), the last *real* token is
  classified instead (the only batch-independent choice);
- other poolings (``last_non_pad``, ``first``, ``mean``) ignore padding by construction.

An empty text is classified as a single ``<|endoftext|>`` token (id 50256, the padding token):
it gets a label and a probability like any other text, so output lines stay one per input.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .modeling_gpt import GPTSpamForSequenceClassification, pool_hidden_states
from .tokenization import PAD_TOKEN_ID, encoding_for_folder

MODEL_TYPE = "hf_spam_gpt"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(OSError):
    """A model folder or Hub id that cannot be loaded as an hf-spam classifier (one-line message)."""


def default_device() -> torch.device:
    """CUDA when available, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return None if dtype == torch.float32 else dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown value {dtype!r}; expected one of {', '.join(DTYPES)}")
    return None if DTYPES[dtype] == torch.float32 else DTYPES[dtype]


def _looks_like_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _strip_eol(line: str) -> str:
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith(("\n", "\r")):
        return line[:-1]
    return line


class SpamClassifier:
    """A trained hf-spam model plus its tokenizer, ready to label texts as ham or spam.

    >>> clf = SpamClassifier.from_pretrained("runs/gpt2-small")       # doctest: +SKIP
    >>> clf.predict(["You won a prize! Call now", "See you at 6?"])     # doctest: +SKIP
    [{'text': ..., 'label': 'spam', 'spam_probability': 0.99}, {'text': ..., 'label': 'ham', ...}]
    """

    def __init__(
        self,
        model: torch.nn.Module,
        encoding: Any,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        config = model.config
        if getattr(config, "model_type", None) != MODEL_TYPE:
            raise ValueError(f"model: model_type {getattr(config, 'model_type', None)!r}; expected {MODEL_TYPE!r}")
        labels = {int(k): str(v) for k, v in config.id2label.items()}
        if len(labels) != 2 or "spam" not in {v.lower() for v in labels.values()}:
            raise ValueError(f"model: labels {labels}; expected two classes, one of them 'spam'")
        self.spam_index = next(i for i, v in labels.items() if v.lower() == "spam")
        self.ham_index = 1 - self.spam_index
        self.labels = labels
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = _resolve_dtype(dtype)
        if self.dtype == torch.float16 and self.device.type == "cpu":
            raise ValueError("dtype: float16 needs a GPU; use bfloat16 on the CPU")
        self.model = model.to(self.device).eval()
        self.encoding = encoding
        self.pooling = getattr(config, "pooling", "last")
        self.padded_length = getattr(config, "padded_length", None) or None
        self.max_tokens = min(int(self.padded_length or config.context_length), int(config.context_length))
        # `last` pooling pads to the trained length when known; otherwise read the last real token.
        self.fixed_length = self.max_tokens if self.pooling == "last" and self.padded_length else None
        self.read_last_real_token = self.pooling == "last" and not self.padded_length

    @classmethod
    def from_pretrained(
        cls,
        name_or_folder: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
        bpe_dir: str | os.PathLike | None = None,
        revision: str | None = None,
    ) -> SpamClassifier:
        """Load a model folder written by training, or a Hub model id.

        With ``trust_remote_code=False`` (default) the installed ``hf_spam`` classes are used and the
        folder's ``modeling_gpt.py`` is never run; ``True`` runs the folder's own copy through
        transformers' Auto classes. ``dtype="bfloat16"`` runs under bf16 autocast. The tokenizer is
        tiktoken's GPT-2 encoding, built from the folder's ``vocab.json``/``merges.txt`` when present
        (no download). Raises ``ModelLoadError`` (an ``OSError``) with a one-line reason.
        """
        name = os.fspath(name_or_folder)
        local = Path(name).expanduser()
        if local.is_dir():
            source, where = str(local), "config.json"
        elif local.exists() or not _looks_like_hub_id(name):
            raise ModelLoadError(f"{name}: not a model folder (expected a folder holding config.json) or a Hub id")
        else:
            source, where = name, "config.json (not a local folder, so tried as a Hub id)"
        try:
            config_dict, _ = GPTSpamForSequenceClassification.config_class.get_config_dict(source, revision=revision)
        except Exception as err:  # transformers raises OSError, ValueError, HTTP errors ...
            raise ModelLoadError(f"{name}: could not read {where}: {_first_line(err)}") from None
        if config_dict.get("model_type") != MODEL_TYPE:
            raise ModelLoadError(
                f"{name}: model_type {config_dict.get('model_type')!r}; expected an hf-spam model ({MODEL_TYPE!r})"
            )
        try:
            if trust_remote_code:
                # The folder's own class, even though hf_spam registered ours for the same model_type.
                from transformers.dynamic_module_utils import get_class_from_dynamic_module

                reference = (config_dict.get("auto_map") or {}).get("AutoModelForSequenceClassification")
                if not reference:
                    raise ModelLoadError(f"{name}: config.json has no auto_map, so there is no remote code to trust")
                model_cls = get_class_from_dynamic_module(reference, source, revision=revision)
                model, info = model_cls.from_pretrained(
                    source, trust_remote_code=True, revision=revision, output_loading_info=True
                )
            else:
                model, info = GPTSpamForSequenceClassification.from_pretrained(
                    source, revision=revision, output_loading_info=True
                )
        except ModelLoadError:
            raise
        except Exception as err:
            raise ModelLoadError(f"{name}: could not load the model ({_first_line(err)})") from None
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            detail = "; ".join(f"{k.replace('_', ' ')}: {sorted(map(str, v))[:3]}" for k, v in problems.items())
            raise ModelLoadError(f"{name}: the weights do not match the config ({detail})")
        try:
            encoding = encoding_for_folder(cls._tokenizer_folder(source, revision), bpe_dir)
        except (OSError, ValueError, RuntimeError) as err:
            raise ModelLoadError(f"{name}: could not load GPT-2's tokenizer ({_first_line(err)})") from None
        return cls(model, encoding, device=device, dtype=dtype)

    @staticmethod
    def _tokenizer_folder(source: str, revision: str | None) -> str | None:
        """The folder holding the model's ``vocab.json``/``merges.txt`` (downloaded for a Hub id), or None."""
        if Path(source).is_dir():
            return source
        try:
            from huggingface_hub import hf_hub_download

            vocab = hf_hub_download(source, "vocab.json", revision=revision)
            hf_hub_download(source, "merges.txt", revision=revision)
            return str(Path(vocab).parent)
        except Exception:  # no such files (or offline): fall back to tiktoken's own files
            return None

    # ---- tokenizing ----

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, cut to ``max_tokens``; an empty text becomes ``[50256]``."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{i}]: expected str, got {type(text).__name__}")
        ids = self.encoding.encode_ordinary_batch(list(texts))
        return [x[: self.max_tokens] if x else [PAD_TOKEN_ID] for x in ids]

    # ---- the model ----

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.read_last_real_token:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        # `last` pooling without a trained padded length: the same trunk and head, read at the last
        # real token, so the result does not depend on how far the batch pads this text.
        gpt = self.model.gpt
        hidden = gpt.run_blocks(gpt.embed(input_ids), self.model.trunk_attention_mask(attention_mask))
        return gpt.out_head(pool_hidden_states(gpt.final_norm(hidden), attention_mask, "last_non_pad"))

    def spam_probabilities(self, token_ids: Sequence[Sequence[int]], batch_size: int = 64) -> list[float]:
        """P(spam) per token-id list, in input order (length-sorted batches, dynamic right padding)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size}; expected a positive integer")
        n = len(token_ids)
        # Longest first: the first batch shows at once whether memory suffices.
        order = sorted(range(n), key=lambda i: len(token_ids[i]), reverse=True)
        probs = [0.0] * n
        with torch.inference_mode(), self._autocast():
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                length = self.fixed_length or len(token_ids[idx[0]])
                input_ids = torch.full((len(idx), length), PAD_TOKEN_ID, dtype=torch.long)
                mask = torch.zeros((len(idx), length), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids = token_ids[i]
                    input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
                    mask[row, : len(ids)] = 1
                logits = self._logits(input_ids.to(self.device), mask.to(self.device))
                p = torch.softmax(logits.float(), dim=-1)[:, self.spam_index].cpu().tolist()
                for i, value in zip(idx, p):
                    probs[i] = value
        return probs

    # ---- public API ----

    def predict(self, texts: str | Sequence[str], batch_size: int = 64, *, return_text: bool = True) -> list[dict]:
        """``[{"text", "label", "spam_probability"}]`` per text, in input order.

        ``label`` is ``"spam"`` when ``spam_probability > 0.5`` (the model's argmax), else ``"ham"``.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        probs = self.spam_probabilities(self.encode(texts), batch_size)
        spam, ham = self.labels[self.spam_index], self.labels[self.ham_index]
        out = []
        for text, p in zip(texts, probs):
            record = {"text": text} if return_text else {}
            record.update(label=spam if p > 0.5 else ham, spam_probability=p)
            out.append(record)
        return out

    def predict_stream(
        self, lines: Iterable[str], batch_size: int = 64, chunk_size: int = 1024, *, return_text: bool = True
    ) -> Iterator[dict]:
        """Like ``predict`` over an iterable of lines (line endings removed), read lazily ``chunk_size``
        lines at a time and sorted by length within each chunk: memory stays bounded by the chunk."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size: {chunk_size}; expected a positive integer")
        chunk: list[str] = []
        for line in lines:
            chunk.append(_strip_eol(line))
            if len(chunk) >= chunk_size:
                yield from self.predict(chunk, batch_size, return_text=return_text)
                chunk = []
        if chunk:
            yield from self.predict(chunk, batch_size, return_text=return_text)


__all__ = ["ModelLoadError", "SpamClassifier", "default_device"]
