"""The chapter's sanity checks on pretrained GPT-2: greedy generation (``generate_text_simple``) from
"Every effort moves you", which is coherent only when every weight landed in its place, and the
zero-shot spam prompt, which the base model cannot answer (the reason the chapter fine-tunes)."""

from __future__ import annotations

import tiktoken
import torch
from torch import nn

GENERATION_PROMPT = "Every effort moves you"
SPAM_PROMPT = (
    "Is the following text 'spam'? Answer with 'yes' or 'no':"
    " 'You are a winner you have been specially"
    " selected to receive $1000 cash or a $2000 award.'"
)
# What the chapter prints for GPT-2 124M: (new tokens, text).
CHAPTER_OUTPUTS = {
    GENERATION_PROMPT: (15, GENERATION_PROMPT + " forward.\n\nThe first step is to understand the importance of "
                        "your work"),
    SPAM_PROMPT: (23, SPAM_PROMPT + "\n\nThe following text 'spam'? Answer with 'yes' or 'no': 'You are a winner"),
}


@torch.no_grad()
def generate_greedy(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """The chapter's ``generate_text_simple``: append ``max_new_tokens`` argmax tokens to ``idx``
    (``[batch, tokens]``), feeding the model only the last ``context_size`` tokens, without a cache."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])
        logits = getattr(logits, "logits", logits)  # a ModelOutput, or the chapter's bare tensor
        idx = torch.cat((idx, logits[:, -1, :].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


def generate_text(model: nn.Module, prompt: str, max_new_tokens: int, encoding: tiktoken.Encoding) -> str:
    """``prompt`` and its greedy continuation, as text (prompts are encoded with ``encode_ordinary``)."""
    device = next(model.parameters()).device
    ids = torch.tensor([encoding.encode_ordinary(prompt)], device=device)
    return encoding.decode(generate_greedy(model, ids, max_new_tokens, model.cfg.context_length)[0].tolist())


def sanity_report(model: nn.Module, encoding: tiktoken.Encoding, *, new_tokens: tuple[int, int] = (15, 23),
                  compare_with_chapter: bool = False) -> tuple[str, list[str]]:
    """The two generations as text, and the checks whose output differs from the chapter's (GPT-2 124M only)."""
    lines, mismatches = [], []
    for title, prompt, n in (("Text generation", GENERATION_PROMPT, new_tokens[0]),
                             ("Zero-shot spam prompt", SPAM_PROMPT, new_tokens[1])):
        text = generate_text(model, prompt, n, encoding)
        lines += ["", f"## {title} (greedy, {n} new tokens)", f"Prompt: {prompt}",
                  f"Continuation: {text[len(prompt):]!r}"]
        if compare_with_chapter and CHAPTER_OUTPUTS[prompt][0] == n:
            same = text == CHAPTER_OUTPUTS[prompt][1]
            lines.append(f"Same as the chapter's output: {'yes' if same else 'NO'}")
            mismatches += [] if same else [title]
    return "\n".join(lines), mismatches
