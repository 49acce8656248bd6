"""Labelling texts with a trained model: ``SpamClassifier`` (ham/spam, or whatever labels the model has).

A thin layer over the model's own ``forward`` (or any function giving logits, such as an ONNX session):
texts are tokenized with tiktoken exactly as in training (``encode_ordinary``), batched by length with right
padding (``tokenization.length_batches``), and the model shapes each batch as it was trained
(``GPTSpamForSequenceClassification.trained_shape``: the cut, the padding that ``last`` pooling reads, an
empty text). Results come back in input order, and a text's result never depends on its batch. ``dtype``
(``hf_spam.arithmetic``) converts the model itself (bfloat16 weights, int8 Linear layers); logits stay float32.
(In bfloat16 and int8 a text's probabilities shift slightly with its batch: rounding, and int8's one scale for
each batch's activations.)
``predict_stream`` reads its input lazily in chunks: memory stays bounded whatever the input size. Calling the
classifier, ``clf(inputs, top_k=..., function_to_apply=...)``, answers what ``pipeline("text-classification")``
answers (the shape the HTTP service and Inference Endpoints return). Native GPT-2 folders
(``GPT2ForSequenceClassification``, ``hf-spam export --format transformers``) load too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from huggingface_hub import snapshot_download
from transformers import GPT2ForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from .arithmetic import ALIASES, FLOAT32, Arithmetic, choose_dtype, convert_model, model_bytes
from .errors import HfSpamError, UnavailableError, one_line
from .files import is_hub_id
from .modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
from .tokenization import PAD_TOKEN_ID, get_encoding, length_batches

Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> logits, on the CPU
MODELS = {GPTSpamConfig.model_type: GPTSpamForSequenceClassification, "gpt2": GPT2ForSequenceClassification}
SCORES = {  # the pipeline's function_to_apply, on numpy float32 logits as it computes them
    "softmax": lambda x: (e := np.exp(x - x.max(-1, keepdims=True))) / e.sum(-1, keepdims=True),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)), "none": lambda x: x}


def input_rules(config: PretrainedConfig) -> dict[str, Any]:
    """How texts reach a model of each type (the one place that knows them): the cut, the length every text is
    padded to (or ``None``), pooling and trained length. An hf-spam model shapes its inputs itself, as its config
    says; GPT-2's own pooling reads the last non-pad token, so it needs only the cut to ``n_positions``."""
    if config.model_type == GPTSpamConfig.model_type:
        return {"max_input_tokens": config.max_input_tokens, "fixed_length": config.fixed_length,
                "pooling": config.pooling, "training_length": config.training_length}
    return {"max_input_tokens": config.n_positions, "fixed_length": None, "pooling": "last_non_pad",
            "training_length": None}


def check_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """A text-classification request's ``parameters`` checked: ``top_k`` a positive integer or ``None``,
    ``function_to_apply`` one of ``SCORES`` (any case) or ``None``; else an ``HfSpamError``."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping) or set(parameters) - {"top_k", "function_to_apply"}:
        raise HfSpamError('parameters: expected {"top_k": K | null, "function_to_apply": "softmax" | "sigmoid" | '
                          f'"none"}}, got {parameters!r:.80}')
    checked = dict(parameters)
    top_k, function = checked.get("top_k"), checked.get("function_to_apply")
    if top_k is not None and (type(top_k) is not int or top_k < 1):
        raise HfSpamError(f"parameters.top_k: {top_k!r:.40}; expected a positive integer or null (all labels)")
    if function is not None and (not isinstance(function, str) or function.lower() not in SCORES):
        raise HfSpamError(f"parameters.function_to_apply: {function!r:.40}; expected one of {', '.join(SCORES)}")
    if function is not None:
        checked["function_to_apply"] = function.lower()
    return checked


class SpamClassifier:
    """A trained hf-spam model and its tokenizer, ready to label texts with the model's own label names.

    >>> clf = SpamClassifier.from_pretrained("runs/gpt2-small")       # doctest: +SKIP
    >>> clf.predict(["You won a prize! Call now", "See you at 6?"])     # doctest: +SKIP
    [{'text': ..., 'label': 'spam', 'probabilities': {'ham': 0.01, 'spam': 0.99}, 'spam_probability': 0.99}, ...]
    >>> clf("You won a prize! Call now", top_k=None)                   # doctest: +SKIP
    [{'label': 'spam', 'score': 0.99}, {'label': 'ham', 'score': 0.01}]
    """

    def __init__(self, logits: Logits, config: PretrainedConfig, encoding: object, *, model_bytes: int = 0,
                 model: PreTrainedModel | None = None, arithmetic: Arithmetic = FLOAT32):
        labels = {int(k): str(v) for k, v in config.id2label.items()}
        if len(labels) < 2 or sorted(labels) != list(range(len(labels))):
            raise HfSpamError(f"model: labels {labels}; expected two or more classes numbered from 0")
        # The chapter's ham/spam models also report P(spam) as `spam_probability`.
        self.spam_index = next((i for i, v in labels.items() if v.lower() == "spam"), None) if len(labels) == 2 \
            else None
        self.labels, self.names, self.encoding = labels, [labels[i] for i in range(len(labels))], encoding
        self.logits, self.config, self.model_bytes, self.model = logits, config, model_bytes, model
        self.inputs = input_rules(config)
        self.arithmetic = arithmetic  # what the logits are computed in (as far as this layer knows)

    @classmethod
    def from_model(cls, model: PreTrainedModel, encoding: object, *,
                   device: str | torch.device | None = None, dtype: str | None = None) -> SpamClassifier:
        """Label texts with ``model`` itself (its ``forward``) on ``device`` (default: a GPU if there is one; the
        CPU for int8) in ``dtype`` (``arithmetic.choose_dtype``: ``None`` float32, ``auto``, ``bfloat16`` weights,
        ``int8`` Linear layers); the model is moved and converted in place. Logits come back in float32."""
        if device is None and ALIASES.get(dtype, dtype) == "int8":
            device = "cpu"  # int8 runs on the CPU only
        device = checked_device(device) if device is not None else PartialState().default_device
        arithmetic = choose_dtype(dtype, device)
        model, autocast = convert_model(model.to(device).eval(), arithmetic)

        def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, autocast, enabled=autocast is not None):
                out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            return out.float().cpu()

        return cls(logits, model.config, encoding, model=model, model_bytes=model_bytes(model), arithmetic=arithmetic)

    @classmethod
    def from_pretrained(cls, name_or_folder: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: str | None = None, trust_remote_code: bool = False,
                        bpe_dir: str | os.PathLike | None = None, revision: str | None = None) -> SpamClassifier:
        """Load a model folder written by training (or a native GPT-2 one), or a Hub model id.

        With ``trust_remote_code=False`` the installed hf_spam classes are used and the folder's
        ``modeling_gpt.py`` never runs; ``True`` runs the folder's own copy. ``device`` and ``dtype`` (``auto``,
        ``float32``, ``bfloat16``, ``int8``) as in ``from_model``. The tokenizer is built from the folder's
        ``vocab.json``/``merges.txt`` (no download). Errors are one-line ``HfSpamError``s.
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
        if config.get("model_type") not in MODELS:
            raise HfSpamError(f"{name}: model_type {config.get('model_type')!r}; expected an hf-spam model "
                              f"({GPTSpamConfig.model_type!r}) or a native GPT-2 one ('gpt2')")
        reference = (config.get("auto_map") or {}).get("AutoModelForSequenceClassification")
        if trust_remote_code and not reference:
            raise HfSpamError(f"{name}: config.json has no auto_map, so there is no remote code to trust")
        try:
            # The folder's own class: the Auto classes would pick hf_spam's, registered for the same model_type.
            loader = get_class_from_dynamic_module(reference, name, revision=revision) if trust_remote_code \
                else MODELS[config["model_type"]]
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
        """Token ids per text, cut to the model's ``max_input_tokens`` (memory stays bounded for any text); an empty
        text is one ``<|endoftext|>`` token (hf-spam models read it so themselves; GPT-2 needs telling)."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise HfSpamError(f"texts[{i}]: expected str, got {type(text).__name__}")
        cut = self.inputs["max_input_tokens"]
        return [x[:cut] or [PAD_TOKEN_ID] for x in self.encoding.encode_ordinary_batch(list(texts))]

    def logits_of(self, token_ids: Sequence[Sequence[int]], batch_size: int = 64) -> torch.Tensor:
        """The float32 logits per token-id list, ``(texts, labels)`` in input order (length-sorted batches, right
        padding; the first batch is the longest, so it shows at once whether memory suffices)."""
        if batch_size < 1:
            raise HfSpamError(f"batch_size: {batch_size}; expected a positive integer")
        fixed = self.inputs["fixed_length"]  # every text is padded to it anyway: batches need not follow lengths
        out = torch.zeros((len(token_ids), len(self.names)))
        for rows in length_batches([fixed or len(ids) for ids in token_ids], batch_size):
            length = max(len(token_ids[i]) for i in rows)
            ids = torch.full((len(rows), length), PAD_TOKEN_ID, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : len(token_ids[i])] = torch.as_tensor(token_ids[i], dtype=torch.long)
                mask[r, : len(token_ids[i])] = 1
            out[rows] = self.logits(ids, mask).float()
        return out

    def probabilities(self, token_ids: Sequence[Sequence[int]], batch_size: int = 64) -> list[list[float]]:
        """Each label's probability (softmax) per token-id list, in input order."""
        return self.logits_of(token_ids, batch_size).softmax(-1).tolist()

    def __call__(self, inputs: str | Sequence[str], batch_size: int = 64, **parameters: Any) -> list:
        """What ``pipeline("text-classification")(inputs, **parameters)`` answers (see ``pipeline_results``)."""
        parameters = check_parameters(parameters)
        single = isinstance(inputs, str)
        return self.pipeline_results(self.logits_of(self.encode([inputs] if single else inputs), batch_size), single,
                                     parameters)

    def pipeline_results(self, logits: torch.Tensor, single: bool, parameters: Mapping[str, Any] | None = None) -> list:
        """``pipeline("text-classification")``'s answer from logits ``(texts, labels)``: scores by
        ``function_to_apply`` (default: softmax, or the pipeline's choice for the config's ``problem_type``); without
        ``top_k`` the best ``{"label", "score"}`` per text; with it each text's labels by score, the first ``top_k``
        (``None``: all), a list per text, or that one list for a single text (``single``)."""
        parameters = check_parameters(parameters)
        function = parameters.get("function_to_apply") or {"regression": "none", "multi_label_classification":
                                                            "sigmoid"}.get(self.config.problem_type, "softmax")
        scores = SCORES[function](logits.float().numpy())
        if "top_k" not in parameters:  # the pipeline's legacy answer
            return [{"label": self.names[int(s.argmax())], "score": s.max().item()} for s in scores]
        ranked = [sorted(({"label": n, "score": v.item()} for n, v in zip(self.names, s)), key=lambda r: r["score"],
                         reverse=True)[: parameters["top_k"]] for s in scores]
        return ranked[0] if single else ranked

    def predict_labels(self, texts: Sequence[str], batch_size: int = 64) -> list[dict]:
        """``[{"label", "probabilities": {label: p}}]`` per text, in input order; ``label`` is the most probable."""
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
