"""The classifier a training run starts from: GPT-2's weights (or random ones) with a new head, or a
classifier folder this recipe saved, as it was trained."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import HfSpamError, UnavailableError
from .modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
from .weights import hub_id, load_gpt2_state_dict


def is_trained_classifier(path: str | None) -> bool:
    """Whether ``path`` (a ``--model_name_or_path``) is a local folder holding a classifier this package saved."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == GPTSpamConfig.model_type


def build_model(*, model_size: str = "gpt2-small", weights: str = "pretrained", checkpoint: str | None = None,
                pooling: str = "last", drop_rate: float = 0.0, causal: bool = True, labels: list[str] | None = None,
                seed: int = 123) -> GPTSpamForSequenceClassification:
    """A new classifier: GPT-2's weights (``checkpoint``, else ``model_size``'s from the Hub) or random ones, and a
    head with one output per label (default ham, spam) made after ``torch.manual_seed(seed)``; a saved one as is."""
    if is_trained_classifier(checkpoint):  # a folder this recipe wrote: as it was trained
        return GPTSpamForSequenceClassification.from_pretrained(checkpoint)
    extra = {"pooling": pooling, "drop_rate": drop_rate, "causal": causal}
    if labels is not None:
        extra.update(id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    if weights == "random":
        torch.manual_seed(seed)
        model = GPTSpamForSequenceClassification(GPTSpamConfig.from_preset(model_size, **extra))
    else:
        try:
            sizes, state_dict = load_gpt2_state_dict(checkpoint or hub_id(model_size))
        except UnavailableError as err:
            raise UnavailableError(f"{err} (--model_name_or_path LOCAL_DIR), or train from random weights "
                                   "(--weights random)") from None
        with torch.device("meta"):
            model = GPTSpamForSequenceClassification(GPTSpamConfig(**sizes, **extra))
        del state_dict["out_head.weight"]  # tied to tok_emb in GPT-2; the classifier gets its own head
        missing, unexpected = model.gpt.load_state_dict(state_dict, strict=False, assign=True)
        if unexpected or [k for k in missing if not k.startswith("out_head.")]:  # guards model changes
            raise HfSpamError(f"weights do not fit the classifier (missing {missing}, unexpected {unexpected})")
    torch.manual_seed(seed)
    model.gpt.out_head = torch.nn.Linear(model.config.emb_dim, model.config.num_labels)
    return model
