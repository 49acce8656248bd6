"""hf-spam: the "fine-tune GPT-2 as a spam classifier" chapter as Hugging Face software.

Importing the package registers the model with transformers' Auto classes, so
``AutoModelForSequenceClassification.from_pretrained(folder)`` works on our saved folders.
Heavier entry points are imported lazily.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .modeling_gpt import GPTModel, GPTSpamConfig, GPTSpamForSequenceClassification

__version__ = "0.1.0"

AutoConfig.register(GPTSpamConfig.model_type, GPTSpamConfig, exist_ok=True)
AutoModel.register(GPTSpamConfig, GPTSpamForSequenceClassification, exist_ok=True)
AutoModelForSequenceClassification.register(GPTSpamConfig, GPTSpamForSequenceClassification, exist_ok=True)

_LAZY = {
    "load_sms_spam": "data",
    "load_gpt2": "weights",
    "SpamClassifier": "predict",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_spam' has no attribute {name!r}")


__all__ = [
    "GPTModel",
    "GPTSpamConfig",
    "GPTSpamForSequenceClassification",
    "load_sms_spam",
    "load_gpt2",
    "SpamClassifier",
    "__version__",
]
