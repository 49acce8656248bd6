"""An hf-spam model as a plain transformers ``GPT2ForSequenceClassification``: a folder that loads without
``trust_remote_code`` (the Hub widget, serverless inference, vLLM and other runtimes that run no custom code).

The chapter's GPT is GPT-2, so its weights map onto GPT-2's by ``gpt2_names.chapter_to_hf``: ``nn.Linear`` weights
transposed into GPT-2's ``Conv1D`` layout, query/key/value fused into ``c_attn`` (zeros for a model without
``qkv_bias``). GPT-2's ``score`` head has no bias; the chapter's ``out_head`` has one. The final LayerNorm feeds only
the head, so the bias moves into its shift exactly: with ``delta = pinv(W) b``, ``W (x + delta) = W x + b`` (``W``,
``[labels, width]``, has full row rank). GPT-2's classifier reads the rightmost token that is not padding, under the
causal mask, over the whole text: models that read anything else are refused, naming the recipe to train instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

from .errors import HfSpamError
from .export import PARITY_ATOL, max_logit_difference
from .files import atomic_folder
from .gpt2_names import chapter_to_hf
from .modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
from .predict import SpamClassifier
from .tokenization import build_hf_tokenizer, save_hf_tokenizer

RECIPE = "train with --pooling last_non_pad --padding dynamic instead (configs/seed_fast.yaml)"


def inexpressible(config: GPTSpamConfig) -> str | None:
    """Why ``GPT2ForSequenceClassification`` (the last real token, causal mask, the whole text) cannot compute the
    model of ``config``, or ``None`` when it can."""
    reads = "GPT2ForSequenceClassification reads the last real token"
    if config.pooling in ("first", "mean"):
        what = "the first token" if config.pooling == "first" else "the mean of the tokens"
        return f"pooling {config.pooling!r} reads {what}; {reads}"
    if not config.causal:
        return "the model was trained without the causal mask (GPT-2 always applies it)"
    if config.fixed_length:
        return (f"pooling 'last' with a trained length reads position {config.fixed_length} of a padded text "
                f"(padding for shorter texts); {reads}")
    if config.max_input_tokens < config.context_length:
        return (f"the model cuts texts to its trained length of {config.max_input_tokens} tokens; GPT-2's pipeline "
                f"reads them up to {config.context_length}")
    return None


# What training folded into the head (``hf_spam.operating_point``): kept as records in the native config too.
FOLDED = ("calibration_temperature", "decision_threshold", "decision_log_odds", "decision_label")


def gpt2_config(config: GPTSpamConfig) -> GPT2Config:
    """GPT-2's config for the sizes, labels, dropout and padding of an hf-spam model's config, with the records
    of what was folded into its head."""
    folded = {key: getattr(config, key) for key in FOLDED if getattr(config, key, None) is not None}
    return GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.emb_dim,
                      n_layer=config.n_layers, n_head=config.n_heads, activation_function="gelu_new",
                      resid_pdrop=config.drop_rate, embd_pdrop=config.drop_rate, attn_pdrop=config.drop_rate,
                      layer_norm_epsilon=config.layer_norm_eps, initializer_range=config.initializer_range,
                      pad_token_id=config.pad_token_id, bos_token_id=config.pad_token_id,  # <|endoftext|>: all three
                      eos_token_id=config.pad_token_id, id2label={int(k): v for k, v in config.id2label.items()},
                      label2id=dict(config.label2id), **folded)


def to_gpt2_classifier(model: GPTSpamForSequenceClassification, source: str = "model") -> GPT2ForSequenceClassification:
    """The same classifier as transformers' GPT-2 (float32, on the CPU); an ``HfSpamError`` naming ``source`` when
    GPT-2 cannot compute it."""
    config = model.config
    why = inexpressible(config)
    if why:
        raise HfSpamError(f"{source}: cannot be a plain GPT-2 classifier: {why}; {RECIPE}")
    ours = {k.removeprefix("gpt."): v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    parts: dict[str, list[torch.Tensor]] = {}
    for key, name in chapter_to_hf(config.n_layers).items():
        if key.startswith("out_head."):  # GPT-2's tied LM head; the classifier's is `score`
            continue
        tensor = ours[key] if key in ours or ".att.W_" not in key else torch.zeros(config.emb_dim)  # no qkv_bias
        parts.setdefault(f"transformer.{name}", []).append(tensor.T if tensor.dim() == 2 and name.startswith("h.")
                                                           else tensor)  # Conv1D: x @ W, W is [n_in, n_out]
    tensors = {name: torch.cat(group, dim=-1) for name, group in parts.items()}  # c_attn: query, key, value
    weight, bias = ours["out_head.weight"], ours["out_head.bias"]
    tensors["transformer.ln_f.bias"] += (torch.linalg.pinv(weight.double()) @ bias.double()).float()
    tensors["score.weight"] = weight.clone()
    with torch.device("meta"):  # no random init of weights that are replaced at once
        native = GPT2ForSequenceClassification(gpt2_config(config))
    native.load_state_dict(tensors, strict=True, assign=True)
    return native.eval()


def export_native(folder: str | os.PathLike, output: str | os.PathLike, check_texts: Sequence[str]) -> dict[str, Any]:
    """Write the classifier in ``folder`` to the folder ``output`` as a plain transformers GPT-2 classifier (weights,
    config, tokenizer, card) and check it: the reloaded model's logits on ``check_texts`` (batched, right padding)
    within ``PARITY_ATOL`` of the hf-spam model's, else an ``HfSpamError`` and no folder. Empty texts are left out
    of the check: GPT-2 has no token to read there (a fully masked row in a batch, an error alone)."""
    output, name, texts = Path(output), Path(folder).resolve().name, [text for text in check_texts if text]
    if not texts:
        raise HfSpamError("check_texts: no text to check the export on; expected at least one non-empty text")
    _check_output(output, Path(folder))
    clf = SpamClassifier.from_pretrained(folder, device="cpu")
    native = to_gpt2_classifier(clf.model, str(folder))
    bpe_dir = folder if Path(folder).is_dir() else None
    with atomic_folder(output) as stage:
        native.save_pretrained(stage)
        tokenizer = build_hf_tokenizer(bpe_dir)
        tokenizer.model_max_length = native.config.n_positions
        save_hf_tokenizer(tokenizer, stage, bpe_dir)
        reloaded = AutoModelForSequenceClassification.from_pretrained(stage).eval()  # what users will load

        def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return reloaded(input_ids=input_ids, attention_mask=attention_mask).logits

        diff = max_logit_difference(clf, logits, texts)
        if not diff <= PARITY_ATOL:
            raise HfSpamError(f"{output}: the GPT-2 classifier's logits differ from the hf-spam model's by {diff:.2g} "
                              f"(more than {PARITY_ATOL:g}); the export is not kept")
        native_card(Path(folder), name, clf.config, diff, len(texts)).save(stage / "README.md")
    return {"folder": str(output), "max_abs_diff": diff, "texts": len(texts), "empty": len(check_texts) - len(texts)}


def _check_output(output: Path, folder: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier native export (never the model folder)."""
    if not output.exists() or output.is_dir() and not any(output.iterdir()):
        return
    try:
        earlier = output.resolve() != folder.resolve() and \
            json.loads((output / "config.json").read_text(encoding="utf-8")).get("model_type") == "gpt2"
    except (OSError, ValueError, AttributeError):
        earlier = False
    if not earlier:
        raise HfSpamError(f"{output}: exists and is not an earlier GPT-2 export; expected a new or empty folder")


def native_card(folder: Path, name: str, config: GPTSpamConfig, diff: float, texts: int) -> ModelCard:
    """The export's README.md: the source card's metadata (results, data, widget), what the folder is and where it
    came from, and how to use it."""
    source = folder / "README.md"
    data = ModelCard.load(source).data.to_dict() if source.is_file() else {}
    tags = [*(data.get("tags") or []), "hf-spam-export"]
    card = ModelCardData(**{**data, "library_name": "transformers", "pipeline_tag": "text-classification",
                            "tags": tags, "license": data.get("license", "apache-2.0")})
    labels = ", ".join(f"`{config.id2label[i]}`" for i in range(config.num_labels))
    return ModelCard(f"""---
{card.to_yaml()}
---

# {name} (plain GPT-2)

The hf-spam model `{name}` (a GPT-2 fine-tuned as a text classifier: labels {labels}; {config.n_layers} layers,
width {config.emb_dim}, {config.n_heads} heads) as a plain transformers `GPT2ForSequenceClassification`, written by
`hf-spam export --format transformers`. It loads **without** `trust_remote_code`:

```python
from transformers import pipeline
clf = pipeline("text-classification", model="PATH_OR_REPO_ID")
clf(["Congratulations! You have won a free cruise.", "Running late, see you at 6?"], top_k=None)
```

The weights are the original model's: GPT-2's layout (query, key and value fused, weights transposed), and the
original head's bias folded into the final LayerNorm's shift (GPT-2's `score` head has none), which changes no logit.
Like the original, it classifies the last real token of each text.
At export its logits agreed with the original's within {diff:.2g} on {texts} texts, batched with right padding.

Texts longer than {config.context_length} tokens need `truncation=True`. The empty string has no token to read: alone
it is an error, in a batch its score is not the original's (which reads it as one `<|endoftext|>`). The original's
card, metrics and training settings are in the hf-spam model folder (or repository) it came from.
""")
