"""Labelling texts with a trained model: ``SpamClassifier`` (ham/spam, or whatever labels the model has).

A thin layer over the model's own ``forward`` (or any function giving logits, such as an ONNX session):
texts are tokenized with tiktoken exactly as in training (``encode_ordinary``), batched by length with right
padding (``tokenization.length_batches``), and the model shapes each batch as it was trained
(``GPTSpamForSequenceClassification.trained_shape``: the cut, the padding that ``last`` pooling reads, an
empty text). Results come back in input order, and a text's result never depends on its batch.
``predict_stream`` reads its input lazily in chunks: memory stays bounded whatever the input size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from accelerate import PartialState
from huggingface_hub import snapshot_download
from transformers import PretrainedConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from .errors import HfSpamError, UnavailableError, one_line
from .files import is_hub_id
from .modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
from .tokenization import PAD_TOKEN_ID, get_encoding, length_batches

DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> logits, on the CPU


class SpamClassifier:
    """A trained hf-spam model and its tokenizer, ready to label texts with the model's own label names.

    >>> clf = SpamClassifier.from_pretrained("runs/gpt2-small")       # doctest: +SKIP
    >>> clf.predict(["You won a prize! Call now", "See you at 6?"])     # doctest: +SKIP
    [{'text': ..., 'label': 'spam', 'probabilities': {'ham': 0.01, 'spam': 0.99}, 'spam_probability': 0.99}, ...]
    """

    def __init__(self, logits: Logits, config: GPTSpamConfig, encoding: object, *, model_bytes: int = 0,
                 model: GPTSpamForSequenceClassification | None = None):
        labels = {int(k): str(v) for k, v in config.id2label.items()}
        if len(labels) < 2 or sorted(labels) != list(range(len(labels))):
            raise HfSpamError(f"model: labels {labels}; expected two or more classes numbered from 0")
        # The chapter's ham/spam models also report P(spam) as `spam_probability`.
        self.spam_index = next((i for i, v in labels.items() if v.lower() == "spam"), None) if len(labels) == 2 \
            else None
        self.labels, self.names, self.encoding = labels, [labels[i] for i in range(len(labels))], encoding
        self.logits, self.config, self.model_bytes, self.model = logits, config, model_bytes, model

    @classmethod
    def from_model(cls, model: GPTSpamForSequenceClassification, encoding: object, *,
                   device: str | torch.device | None = None, dtype: str | None = None) -> SpamClassifier:
        """Label texts with ``model`` itself (its ``forward``) on ``device`` (default: a GPU if there is one),
        under ``dtype`` autocast if given."""
        if dtype not in (None, *DTYPES):
            raise HfSpamError(f"dtype: unknown value {dtype!r}; expected one of {', '.join(DTYPES)}")
        device = checked_device(device) if device is not None else PartialState().default_device
        if DTYPES.get(dtype) == torch.float16 and device.type == "cpu":
            raise HfSpamError("dtype: float16 needs a GPU; use bfloat16 on the CPU")
        model, autocast = model.to(device).eval(), DTYPES.get(dtype)

        def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, autocast, enabled=autocast is not None):
                return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.cpu()

        return cls(logits, model.config, encoding, model=model,
                   model_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))

    @classmethod
    def from_pretrained(cls, name_or_folder: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: str | None = None, trust_remote_code: bool = False,
                        bpe_dir: str | os.PathLike | None = None, revision: str | None = None) -> SpamClassifier:
        """Load a model folder written by training, or a Hub model id.

        With ``trust_remote_code=False`` the installed hf_spam classes are used and the folder's
        ``modeling_gpt.py`` never runs; ``True`` runs the folder's own copy. The tokenizer is built from the
        folder's ``vocab.json``/``merges.txt`` (no download). Errors are one-line ``HfSpamError``s.
        """
        name = os.fspath(name_or_folder)
        local = Path(name).expanduser().is_dir()
        if not local and not is_hub_id(name):
            raise HfSpamError(f"{name}: not a model folder (expected a folder holding config.json) or a Hub id")
        where = "config.json" if local else "config.json (not a local folder, so tried as a Hub id)"
        try:
            config, _ = PretrainedConfig.get_config_dict(name, revision=revision)
        except Exception as err:  # transformers raises OSError, ValueError, HTTP errors ...
            error = HfSpamError if local else UnavailableError
            raise error(f"{name}: could not read {where}: {one_line(err)[:200]}") from None
        if config.get("model_type") != GPTSpamConfig.model_type:
            raise HfSpamError(f"{name}: model_type {config.get('model_type')!r}; expected an hf-spam model "
                              f"({GPTSpamConfig.model_type!r})")
        reference = (config.get("auto_map") or {}).get("AutoModelForSequenceClassification")
        if trust_remote_code and not reference:
            raise HfSpamError(f"{name}: config.json has no auto_map, so there is no remote code to trust")
        try:
            # The folder's own class: the Auto classes would pick hf_spam's, registered for the same model_type.
            loader = get_class_from_dynamic_module(reference, name, revision=revision) if trust_remote_code \
                else GPTSpamForSequenceClassification
            model, info = loader.from_pretrained(name, revision=revision, output_loading_info=True)
        except Exception as err:
            raise HfSpamError(f"{name}: could not load the model ({one_line(err)[:200]})") from None
        problems = [f"{k.replace('_', ' ')}: {sorted(map(str, v))[:3]}" for k, v in info.items()
                    if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v]
        if problems:
            raise HfSpamError(f"{name}: the weights do not match the config ({'; '.join(problems)})")
        folder = name if local or bpe_dir else _hub_tokenizer_folder(name, revision)
        try:
            encoding = get_encoding(bpe_dir or folder)
        except HfSpamError as err:
            raise type(err)(f"{name}: could not load GPT-2's tokenizer ({one_line(err)})") from None
        return cls.from_model(model, encoding, device=device, dtype=dtype)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, cut to the model's ``max_input_tokens`` (memory stays bounded for any text)."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise HfSpamError(f"texts[{i}]: expected str, got {type(text).__name__}")
        return [x[: self.config.max_input_tokens] for x in self.encoding.encode_ordinary_batch(list(texts))]

    def probabilities(self, token_ids: Sequence[Sequence[int]], batch_size: int = 64) -> list[list[float]]:
        """Each label's probability per token-id list, in input order (length-sorted batches, right padding; the
        first batch is the longest, so it shows at once whether memory suffices)."""
        if batch_size < 1:
            raise HfSpamError(f"batch_size: {batch_size}; expected a positive integer")
        fixed = self.config.fixed_length  # every text is padded to it anyway: batches need not follow lengths
        probs: list[list[float]] = [[]] * len(token_ids)
        for rows in length_batches([fixed or len(ids) for ids in token_ids], batch_size):
            length = max(len(token_ids[i]) for i in rows)
            ids = torch.full((len(rows), length), PAD_TOKEN_ID, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : len(token_ids[i])] = torch.as_tensor(token_ids[i], dtype=torch.long)
                mask[r, : len(token_ids[i])] = 1
            for i, p in zip(rows, torch.softmax(self.logits(ids, mask).float(), dim=-1).tolist()):
                probs[i] = p
        return probs

    def predict_labels(self, texts: Sequence[str], batch_size: int = 64) -> list[dict]:
        """``[{"label", "probabilities": {label: p}}]`` per text, in input order; ``label`` is the most probable.
        (What the HTTP service returns.)"""
        return [{"label": self.names[max(range(len(p)), key=p.__getitem__)], "probabilities": dict(zip(self.names, p))}
                for p in self.probabilities(self.encode(texts), batch_size)]

    def predict(self, texts: str | Sequence[str], batch_size: int = 64, *, return_text: bool = True) -> list[dict]:
        """``[{"text", "label", "probabilities"}]`` per text, in input order; ``label`` is the most probable, and
        a ham/spam model adds ``spam_probability``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        records = self.predict_labels(texts, batch_size)
        spam = self.labels.get(self.spam_index)
        return [{**({"text": t} if return_text else {}), **r,
                 **({"spam_probability": r["probabilities"][spam]} if spam is not None else {})}
                for t, r in zip(texts, records)]

    def predict_stream(self, lines: Iterable[str], batch_size: int = 64, chunk_size: int = 1024, *,
                       return_text: bool = True) -> Iterator[dict]:
        """``predict`` over lines (line ends removed), read ``chunk_size`` at a time: bounded memory."""
        if chunk_size < 1:
            raise HfSpamError(f"chunk_size: {chunk_size}; expected a positive integer")
        chunk: list[str] = []
        for line in lines:
            chunk.append(line.removesuffix("\n").removesuffix("\r"))
            if len(chunk) == chunk_size:
                yield from self.predict(chunk, batch_size, return_text=return_text)
                chunk = []
        if chunk:
            yield from self.predict(chunk, batch_size, return_text=return_text)


def checked_device(name: str | torch.device) -> torch.device:
    """``name`` as a device that PyTorch can use here, else an error saying so."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise HfSpamError(f"--device {name}: not a device name; expected cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": hasattr(torch.backends, "mps") and torch.backends.mps.is_available()}
    if not available.get(device.type, True):
        raise HfSpamError(f"--device {name}: not available on this machine; use --device cpu")
    return device


def _hub_tokenizer_folder(repo_id: str, revision: str | None) -> str | None:
    """The local snapshot holding a Hub model's ``vocab.json``/``merges.txt``, or ``None`` (then tiktoken's own)."""
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=["vocab.json", "merges.txt"])
    except Exception:  # offline and not cached: tiktoken's own files are the same
        return None
    return folder if (Path(folder) / "vocab.json").is_file() else None
