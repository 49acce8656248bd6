"""Greedy text generation with the chapter's ``GPTModel`` (``generate_text_simple``) and text helpers.

Used by the sanity checks: a pretrained GPT-2 should continue "Every effort moves you" sensibly.
Prompts are encoded like every message in this package (``encode_ordinary``: the text
``<|endoftext|>`` is ordinary text).
"""

from __future__ import annotations

import tiktoken
import torch
from torch import nn

from .tokenization import get_encoding


def _last_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    logits = out.logits if hasattr(out, "logits") else out  # a ModelOutput or the chapter's bare tensor
    return logits[:, -1, :]


@torch.no_grad()
def generate_greedy(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """Append ``max_new_tokens`` argmax tokens to ``idx`` (``[batch, tokens]``), the chapter's ``generate_text_simple``.

    Only the last ``context_size`` tokens are fed to the model. No caching: the model reruns on
    the whole window each step, exactly like the chapter (put the model in eval mode first).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if context_size <= 0:
        raise ValueError(f"context_size must be positive, got {context_size}")
    for _ in range(max_new_tokens):
        idx_next = torch.argmax(_last_logits(model, idx[:, -context_size:]), dim=-1, keepdim=True)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def text_to_token_ids(text: str, encoding: tiktoken.Encoding | None = None) -> torch.Tensor:
    """``[1, tokens]`` ids of ``text``."""
    enc = encoding or get_encoding()
    return torch.tensor(enc.encode_ordinary(text), dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, encoding: tiktoken.Encoding | None = None) -> str:
    """Text of ``[1, tokens]`` (or ``[tokens]``) ids."""
    enc = encoding or get_encoding()
    return enc.decode(token_ids.reshape(-1).tolist())


def generate_text(
    model: nn.Module,
    prompt: str,
    max_new_tokens: int,
    context_size: int | None = None,
    encoding: tiktoken.Encoding | None = None,
) -> str:
    """``prompt`` followed by its greedy continuation (``max_new_tokens`` tokens), as text.

    ``context_size`` defaults to the model's context length (``model.cfg.context_length``).
    """
    enc = encoding or get_encoding()
    if context_size is None:
        context_size = model.cfg.context_length
    device = next(model.parameters()).device
    ids = text_to_token_ids(prompt, enc).to(device)
    return token_ids_to_text(generate_greedy(model, ids, max_new_tokens, context_size).cpu(), enc)


__all__ = ["generate_greedy", "generate_text", "text_to_token_ids", "token_ids_to_text"]
