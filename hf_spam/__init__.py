"""hf-spam: the "fine-tune GPT-2 as a spam classifier" chapter as Hugging Face software.

Importing the package registers the model with transformers' Auto classes, so
``AutoModelForSequenceClassification.from_pretrained(folder)`` works on saved folders without
``trust_remote_code``. The heavier entry points load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .modeling_gpt import GPTModel, GPTSpamConfig, GPTSpamForSequenceClassification

__version__ = "0.2.0"

AutoConfig.register(GPTSpamConfig.model_type, GPTSpamConfig, exist_ok=True)
AutoModel.register(GPTSpamConfig, GPTSpamForSequenceClassification, exist_ok=True)
AutoModelForSequenceClassification.register(GPTSpamConfig, GPTSpamForSequenceClassification, exist_ok=True)

_LAZY = {"load_sms_spam": "data", "load_data": "sources", "load_gpt2": "weights", "SpamClassifier": "predict"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # datasets, pandas and tiktoken are only imported by the code that needs them
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_spam' has no attribute {name!r}")


__all__ = ["GPTModel", "GPTSpamConfig", "GPTSpamForSequenceClassification", "SpamClassifier", "load_data",
           "load_gpt2", "load_sms_spam", "__version__"]
