"""Cross-check GPT-2's Hugging Face checkpoint against OpenAI's TensorFlow files, tensor by tensor.

    python scripts/crosscheck_weights.py --model_size 124M          # downloads both
    python scripts/crosscheck_weights.py --hf_dir HF_DIR --tf_dir TF_DIR

Both are loaded into the chapter's GPTModel through their own readers; the script prints a markdown table
of every tensor's largest difference and the logits' difference on the chapter's prompt, and exits 0 only
when everything matches (1 names the differing tensors; 2 is bad input). Needs the ``tf`` extra.
"""

from __future__ import annotations

import argparse
import sys

import torch
from measure import markdown_table

from hf_spam.errors import HfSpamError, run_main
from hf_spam.gpt2_names import chapter_to_hf, openai_name
from hf_spam.openai_tf import SIZES, download_openai_gpt2, load_openai_gpt2
from hf_spam.sanity import GENERATION_PROMPT
from hf_spam.tokenization import get_encoding
from hf_spam.weights import gpt_from_state_dict, hub_id, load_hf_gpt2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_size", choices=SIZES, help="download both checkpoints of this size")
    parser.add_argument("--hf_dir", help="local Hugging Face GPT-2 folder (config.json + model.safetensors)")
    parser.add_argument("--tf_dir", help="local OpenAI GPT-2 folder (hparams.json + model.ckpt.*)")
    parser.add_argument("--cache_dir", help="cache for OpenAI's files (default: $HF_SPAM_CACHE or ~/.cache/hf_spam)")
    parser.add_argument("--bpe_dir", help="folder with GPT-2's encoder.json and vocab.bpe (offline use)")
    parser.add_argument("--atol", type=float, default=1e-6, help="tolerance per parameter")
    parser.add_argument("--logits_atol", type=float, default=1e-4, help="tolerance on the logits")
    args = parser.parse_args()
    if args.model_size is None and (args.hf_dir is None or args.tf_dir is None):
        parser.error("pass --model_size, or both --hf_dir and --tf_dir")
    hf_source = args.hf_dir or hub_id(args.model_size)
    tf_source = args.tf_dir or download_openai_gpt2(args.model_size, args.cache_dir)
    prompt_ids = get_encoding(args.bpe_dir).encode_ordinary(GENERATION_PROMPT)
    (hf_sizes, hf), (tf_sizes, tf) = load_hf_gpt2(hf_source), load_openai_gpt2(tf_source)

    rows, differing, hf_names = [], [], chapter_to_hf(hf_sizes["n_layers"])
    for name in hf:
        a, b = hf[name], tf[name]  # both readers return every tensor of GPTModel, by construction
        diff = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else float("inf")
        ok = diff <= args.atol
        differing += [] if ok else [name]
        rows.append([name, hf_names[name], openai_name(hf_names[name]), "x".join(map(str, a.shape)),
                     f"{diff:.3g}", "yes" if ok else "NO"])
    sizes_differ = [f"{k}: {v} (HF) vs {tf_sizes[k]} (OpenAI)" for k, v in hf_sizes.items() if v != tf_sizes[k]]
    logits = None
    if not sizes_differ:
        if max(prompt_ids) >= hf_sizes["vocab_size"]:
            raise HfSpamError(f"{hf_source}: a vocabulary of {hf_sizes['vocab_size']} tokens is smaller than GPT-2's")
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            logits = (gpt_from_state_dict(hf_sizes, hf)(ids).double()
                      - gpt_from_state_dict(tf_sizes, tf)(ids).double()).abs().max().item()
    print("\n".join([
        "# GPT-2 weights cross-check", "", f"- Hugging Face checkpoint: `{hf_source}`",
        f"- OpenAI TensorFlow checkpoint: `{tf_source}`",
        f"- Tolerances: max abs diff <= {args.atol:g} per parameter, <= {args.logits_atol:g} on the logits", "",
        markdown_table(["tensor", "HF name", "OpenAI name", "shape", "max abs diff", "ok"], rows), "",
        *(f"- Size differs: {d}" for d in sizes_differ),
        "- Logits: not compared (the sizes differ)" if logits is None else
        f"- Logits on {GENERATION_PROMPT!r} (token ids {prompt_ids}): max abs diff {logits:.3g} "
        f"({'ok' if logits <= args.logits_atol else 'NOT ok'})",
        f"- Result: all {len(rows)} tensors and the logits match" if not differing and not sizes_differ
        and logits is not None and logits <= args.logits_atol else
        f"- Result: MISMATCH: {len(differing)} of {len(rows)} tensors differ: {', '.join(differing) or 'none'}",
    ]))
    if differing or sizes_differ or logits is None or logits > args.logits_atol:
        print(f"error: the checkpoints differ: {', '.join(differing) or '; '.join(sizes_differ) or 'the logits'}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
