"""The chapter's sanity checks on pretrained GPT-2, and the HF-vs-OpenAI weights cross-check.

``main``: load GPT-2, greedily continue "Every effort moves you" (coherent text means the weights
landed in the right places), then try the zero-shot spam prompt (the base model cannot classify:
the reason the chapter fine-tunes). ``crosscheck_main``: load the Hugging Face checkpoint and
OpenAI's TensorFlow files into the same ``GPTModel`` and show, tensor by tensor, that they agree.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .generation import generate_text
from .modeling_gpt import count_parameters
from .weights import (
    HUB_ALIASES,
    OPENAI_TO_HUB,
    WeightsError,
    WeightsUnavailableError,
    compare_state_dicts,
    download_hf_gpt2,
    download_openai_gpt2,
    load_gpt2,
    load_hf_checkpoint,
    load_openai_tf_checkpoint,
    model_from_state_dict,
    source_tensor_names,
)

GENERATION_PROMPT = "Every effort moves you"
SPAM_PROMPT = (
    "Is the following text 'spam'? Answer with 'yes' or 'no':"
    " 'You are a winner you have been specially"
    " selected to receive $1000 cash or a $2000 award.'"
)
# What the chapter prints for GPT-2 124M (15 and 23 greedy tokens).
CHAPTER_OUTPUTS = {
    GENERATION_PROMPT: "Every effort moves you forward.\n\nThe first step is to understand the importance of your work",
    SPAM_PROMPT: SPAM_PROMPT + "\n\nThe following text 'spam'? Answer with 'yes' or 'no': 'You are a winner",
}
PARAM_ATOL = 1e-6
LOGITS_ATOL = 1e-4


def _error(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _encoding(bpe_dir: str | None) -> Any:
    from .tokenization import get_encoding

    try:
        return get_encoding(bpe_dir)
    except (RuntimeError, OSError, ValueError) as err:
        _error(str(err))


def main(argv: list[str] | None = None) -> None:
    """Load GPT-2 and print the chapter's two greedy generations; exit 1 if the 124M model differs from the book."""
    parser = argparse.ArgumentParser(description="Sanity-check pretrained GPT-2 weights as in the chapter.")
    parser.add_argument("--model_name_or_path", default="openai-community/gpt2",
                        help="Hub id/alias (gpt2, 124M ...), a local HF folder or OpenAI's TF folder")
    parser.add_argument("--cache_dir", help="Hugging Face cache folder (default: the Hub's own)")
    parser.add_argument("--bpe_dir", help="folder with GPT-2's encoder.json and vocab.bpe (offline use)")
    parser.add_argument("--max_new_tokens", type=int, default=15, help="tokens to generate for the first prompt")
    parser.add_argument("--zero_shot_tokens", type=int, default=23, help="tokens to generate for the spam prompt")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps)")
    args = parser.parse_args(argv)

    try:
        model = load_gpt2(args.model_name_or_path, cache_dir=args.cache_dir).to(args.device)
    except (WeightsError, WeightsUnavailableError) as err:
        _error(str(err))
    encoding = _encoding(args.bpe_dir)
    cfg = model.cfg
    # The tied head is counted once.
    _, total = count_parameters(model)
    print(f"Model: {args.model_name_or_path} ({total / 1e6:.1f}M parameters: {cfg.n_layers} layers, "
          f"width {cfg.emb_dim}, {cfg.n_heads} heads, context {cfg.context_length})")

    is_chapter_model = HUB_ALIASES.get(args.model_name_or_path) == OPENAI_TO_HUB["124M"]
    mismatches = []
    checks = [
        ("Text generation", GENERATION_PROMPT, args.max_new_tokens),
        ("Zero-shot spam prompt", SPAM_PROMPT, args.zero_shot_tokens),
    ]
    for title, prompt, n_tokens in checks:
        text = generate_text(model, prompt, n_tokens, cfg.context_length, encoding)
        print(f"\n## {title} (greedy, {n_tokens} new tokens)")
        print(f"Prompt: {prompt}")
        print(f"Continuation: {text[len(prompt):]!r}" if text.startswith(prompt) else f"Output: {text!r}")
        if is_chapter_model and n_tokens == (15 if prompt == GENERATION_PROMPT else 23):
            same = text == CHAPTER_OUTPUTS[prompt]
            print(f"Same as the chapter's output: {'yes' if same else 'NO'}")
            if not same:
                mismatches.append(title)
    if mismatches:
        _error(f"{', '.join(mismatches)}: output differs from the chapter's for GPT-2 124M", code=1)


# --------------------------------------------------------------------------------------------------
# Cross-check: the Hugging Face checkpoint vs OpenAI's TensorFlow checkpoint
# --------------------------------------------------------------------------------------------------


@dataclass
class CrosscheckReport:
    """Tensor-by-tensor comparison of two GPT-2 checkpoints, plus the logits on a fixed prompt."""

    hf_source: str
    tf_source: str
    rows: list[dict[str, Any]]
    prompt_ids: list[int]
    logits_max_abs_diff: float | None
    param_atol: float
    logits_atol: float
    size_differences: list[str] = field(default_factory=list)

    @property
    def differing(self) -> list[str]:
        return [r["tensor"] for r in self.rows if not r["ok"]]

    @property
    def logits_ok(self) -> bool:
        return self.logits_max_abs_diff is not None and self.logits_max_abs_diff <= self.logits_atol

    @property
    def ok(self) -> bool:
        return not self.differing and not self.size_differences and self.logits_ok


def crosscheck(
    hf_source: str | Path,
    tf_source: str | Path,
    prompt_ids: list[int],
    param_atol: float = PARAM_ATOL,
    logits_atol: float = LOGITS_ATOL,
) -> CrosscheckReport:
    """Load both checkpoints into ``GPTModel`` and compare every parameter and the logits on ``prompt_ids``."""
    sizes_hf, sd_hf = load_hf_checkpoint(hf_source)
    sizes_tf, sd_tf = load_openai_tf_checkpoint(tf_source)
    size_diffs = [f"{k}: {sizes_hf[k]} (HF) vs {sizes_tf[k]} (OpenAI)" for k in sizes_hf if sizes_hf[k] != sizes_tf[k]]
    rows = compare_state_dicts(sd_hf, sd_tf, param_atol)
    logits_diff = None
    # Logits only when the shapes agree (a size difference already fails the check).
    shape_keys = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")
    if all(sizes_hf[k] == sizes_tf[k] for k in shape_keys):
        if max(prompt_ids) >= sizes_hf["vocab_size"]:
            raise WeightsError(
                f"{hf_source}: vocabulary of {sizes_hf['vocab_size']} tokens is smaller than GPT-2's; "
                "the prompt's token ids do not fit"
            )
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        with torch.no_grad():
            a = model_from_state_dict(sizes_hf, sd_hf)(ids)
            b = model_from_state_dict(sizes_tf, sd_tf)(ids)
        logits_diff = (a.double() - b.double()).abs().max().item()
    return CrosscheckReport(str(hf_source), str(tf_source), rows, list(prompt_ids), logits_diff,
                            param_atol, logits_atol, size_diffs)


def format_crosscheck(report: CrosscheckReport, prompt: str = GENERATION_PROMPT) -> str:
    """The report as markdown: a table of every tensor, then the logits line and the verdict."""
    lines = [
        "# GPT-2 weights cross-check",
        "",
        f"- Hugging Face checkpoint: `{report.hf_source}`",
        f"- OpenAI TensorFlow checkpoint: `{report.tf_source}`",
        f"- Tolerances: max abs diff <= {report.param_atol:g} per parameter, <= {report.logits_atol:g} on the logits",
        "",
        "| tensor | HF name | OpenAI name | shape | max abs diff | ok |",
        "|---|---|---|---|---:|---|",
    ]
    for r in report.rows:
        try:
            hf, oa = source_tensor_names(r["tensor"])
        except KeyError:
            hf = oa = "?"
        shape = "x".join(map(str, r["shape"])) if isinstance(r["shape"], list) else r["shape"]
        lines.append(f"| {r['tensor']} | {hf} | {oa} | {shape} | {r['max_abs_diff']:.3g} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    lines.append("")
    for diff in report.size_differences:
        lines.append(f"- Size differs: {diff}")
    if report.logits_max_abs_diff is None:
        lines.append("- Logits: not compared (the sizes differ)")
    else:
        lines.append(f"- Logits on {prompt!r} (token ids {report.prompt_ids}): max abs diff "
                     f"{report.logits_max_abs_diff:.3g} ({'ok' if report.logits_ok else 'NOT ok'})")
    n = len(report.rows)
    if report.ok:
        lines.append(f"- Result: all {n} tensors and the logits match")
    else:
        lines.append(f"- Result: MISMATCH: {len(report.differing)} of {n} tensors differ: "
                     f"{', '.join(report.differing) or 'none'}")
    return "\n".join(lines)


def crosscheck_main(argv: list[str] | None = None) -> None:
    """CLI: exit 0 when the HF and OpenAI checkpoints agree, 1 naming the differing tensors, 2 on errors."""
    parser = argparse.ArgumentParser(
        description="Load GPT-2 from the Hugging Face checkpoint and from OpenAI's TensorFlow files and compare."
    )
    parser.add_argument("--model_size", choices=list(OPENAI_TO_HUB),
                        help="download both checkpoints of this size (HF Hub + OpenAI's files)")
    parser.add_argument("--hf_dir", help="local Hugging Face GPT-2 folder (config.json + model.safetensors)")
    parser.add_argument("--tf_dir", help="local OpenAI GPT-2 folder (hparams.json + model.ckpt.*)")
    parser.add_argument("--cache_dir", help="cache for OpenAI's files (default: $HF_SPAM_CACHE or ~/.cache/hf_spam)")
    parser.add_argument("--bpe_dir", help="folder with GPT-2's encoder.json and vocab.bpe (offline use)")
    parser.add_argument("--atol", type=float, default=PARAM_ATOL, help="tolerance per parameter")
    parser.add_argument("--logits_atol", type=float, default=LOGITS_ATOL, help="tolerance on the logits")
    args = parser.parse_args(argv)
    if args.model_size is None and (args.hf_dir is None or args.tf_dir is None):
        parser.error("pass --model_size, or both --hf_dir and --tf_dir")

    encoding = _encoding(args.bpe_dir)
    prompt_ids = encoding.encode_ordinary(GENERATION_PROMPT)
    try:
        hf_dir = args.hf_dir or download_hf_gpt2(OPENAI_TO_HUB[args.model_size])
        tf_dir = args.tf_dir or download_openai_gpt2(args.model_size, args.cache_dir)
        report = crosscheck(hf_dir, tf_dir, prompt_ids, args.atol, args.logits_atol)
    except (WeightsError, WeightsUnavailableError) as err:
        _error(str(err))
    print(format_crosscheck(report))
    if not report.ok:
        what = ", ".join(report.differing) or "; ".join(report.size_differences) or "the logits"
        _error(f"the checkpoints differ: {what}", code=1)


__all__ = ["main", "crosscheck_main", "crosscheck", "format_crosscheck", "CrosscheckReport", "CHAPTER_OUTPUTS"]
