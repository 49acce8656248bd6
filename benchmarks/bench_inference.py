"""Inference texts/s: ours (``hf_spam.predict.SpamClassifier``: length-sorted batches, dynamic
padding, inference_mode, optional bf16) vs the chapter's ``classify_review`` (one text at a time,
padded to 120 tokens), with the chapter's model code and with ours; ours also in bfloat16 and int8 (``--dtype``).

GPT-2 small shape, random weights (speed does not depend on the weights), the texts of the
chapter's test split. Each case runs in its own process. Run from the repository root:

    python benchmarks/bench_inference.py            # GPT-2 small, about 3 minutes
    python benchmarks/bench_inference.py --quick    # tiny model, seconds (smoke test)
"""

from __future__ import annotations

import time

from _common import (
    base_parser,
    busy_note,
    data_file_arg,
    emit,
    gpt2_small_or_tiny,
    main_guard,
    markdown_table,
    run_cases,
    select_cases,
    write_json,
)

CHAPTER_LENGTH = 120
# case: (description, padding)
CASES = {
    "chapter_one_at_a_time_120": ("chapter's classify_review and GPTModel code: one text at a time", "120 (fixed)"),
    "ours_model_one_at_a_time_120": ("same loop with the hf_spam model (fused attention)", "120 (fixed)"),
    "ours_batched_120": ("ours, SpamClassifier.predict, `last` pooling (trained at 120)", "120 (fixed)"),
    "ours_batched_dynamic": ("ours, SpamClassifier.predict, last_non_pad, length-sorted", "dynamic"),
    "ours_batched_dynamic_bf16": ("same, --dtype bfloat16 (bf16 weights)", "dynamic"),
    "ours_batched_dynamic_bf16_autocast": ("same, float32 weights under bf16 autocast", "dynamic"),
    "ours_batched_dynamic_int8": ("same, --dtype int8 (dynamic quantisation of the Linear layers; engine chosen: "
                                  "{engine})", "dynamic"),
    "ours_batched_dynamic_int8_x86": ("same, int8 with PyTorch's x86 engine (FBGEMM kernels)", "dynamic"),
    "ours_batched_dynamic_int8_onednn": ("same, int8 with PyTorch's onednn engine (oneDNN kernels)", "dynamic"),
}
BASELINE = "chapter_one_at_a_time_120"


def test_texts(data_file: str | None, n: int) -> list[str]:
    from hf_spam.data import load_sms_spam

    test = load_sms_spam(data_file)["test"]
    return list(test.select(range(min(n, len(test))))["text"])


def worker(case: str, args) -> None:  # noqa: ANN001
    import torch

    from hf_spam.arithmetic import quantize_int8
    from hf_spam.modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
    from hf_spam.tokenization import get_encoding

    model_size = gpt2_small_or_tiny(args.quick)
    texts = test_texts(args.data_file, 8 if args.quick else args.texts)
    warmup_texts = texts[:8]
    enc = get_encoding()
    pooling = "last_non_pad" if "dynamic" in case else "last"
    torch.manual_seed(123)
    config = GPTSpamConfig.from_preset(model_size, pooling=pooling,
                                       **({} if "dynamic" in case else {"padded_length": CHAPTER_LENGTH}))
    model = GPTSpamForSequenceClassification(config).eval()
    if case.endswith("one_at_a_time_120"):
        if case == BASELINE:
            from chapter_baseline import chapter_classifier

            chapter = chapter_classifier(model_size).eval()

            def last_logits(x: torch.Tensor) -> torch.Tensor:
                return chapter(x)[:, -1, :]
        else:
            def last_logits(x: torch.Tensor) -> torch.Tensor:
                return model(input_ids=x).logits

        def run(texts: list[str] = texts) -> list[str]:
            # The chapter's classify_review: encode, cut, pad to 120, one forward pass per text.
            labels = []
            for text in texts:
                ids = enc.encode(text, allowed_special={"<|endoftext|>"})[:CHAPTER_LENGTH]
                ids += [50256] * (CHAPTER_LENGTH - len(ids))
                with torch.no_grad():
                    logits = last_logits(torch.tensor(ids).unsqueeze(0))
                labels.append("spam" if torch.argmax(logits, dim=-1).item() == 1 else "ham")
            return labels
        repeats, engine = 1, None
    else:
        from hf_spam.predict import SpamClassifier

        dtype = "bfloat16" if case.endswith("_bf16") else "int8" if case.endswith("_int8") else None
        engine = case.rpartition("_int8_")[2] if "_int8_" in case else None
        if engine:  # an engine named, whatever int8_engine would choose here
            model = quantize_int8(model, engine)
        clf = SpamClassifier.from_model(model, enc, device="cpu", dtype=dtype)
        engine = engine or clf.arithmetic.engine
        if case.endswith("_bf16_autocast"):  # the alternative to bf16 weights, measured against them
            float32_logits = clf.logits

            def autocast_logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                with torch.autocast("cpu", torch.bfloat16):
                    return float32_logits(input_ids, attention_mask)
            clf.logits = autocast_logits

        def run(texts: list[str] = texts) -> list[str]:
            return [r["label"] for r in clf.predict(texts, batch_size=args.batch_size, return_text=False)]
        repeats = 1 if args.quick else 3
    run(warmup_texts)  # warm-up (first-call allocations, oneDNN kernel selection)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    best = min(times)
    emit({"case": case, "model_size": model_size, "texts": len(texts), "seconds": best,
          "texts_per_s": len(texts) / best, "repeats": repeats, "engine": engine})


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=300, help="Texts classified per case (from the test split).")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="Our batch size. Batches are length-sorted, so with a few hundred texts a moderate size "
                        "pads least (64 texts of 300 pad 1.4x the real tokens, 16 only 1.1x).")
    args = parser.parse_args()
    args.data_file = data_file_arg(args.data_file)
    if args.worker:
        return worker(args.worker, args)
    cases, machine = select_cases(args, CASES)
    forwarded = (["--quick"] if args.quick else []) + ["--texts", str(args.texts), "--batch_size", str(args.batch_size)]
    forwarded += ["--data_file", args.data_file] if args.data_file else []
    results = run_cases(__file__, cases, forwarded, args.wait_quiet, lambda r: f"{r['texts_per_s']:.1f} texts/s")
    base = results.get(BASELINE)
    rows = []
    for case, r in results.items():
        desc, padding = CASES[case]
        desc = desc.format(engine=r.get("engine"))
        batch = "1" if case.endswith("one_at_a_time_120") else str(args.batch_size)
        speedup = f"{r['texts_per_s'] / base['texts_per_s']:.1f}x" if base else "n/a"
        rows.append([desc, batch, padding, r["texts_per_s"], speedup, f"{r['peak_rss_mb']:,.0f}"])
    size = "tiny (smoke run: not a measurement)" if args.quick else "GPT-2 small (124M), random weights"
    n = next(iter(results.values()))["texts"]
    print(f"\n### Inference, {size}, {n} texts of the test split\n")
    print(markdown_table(["path", "batch", "padding", "texts/s", f"vs {BASELINE}", "peak RSS (MB)"], rows))
    print(busy_note(results))
    write_json(args.json, {"machine": machine, "results": results})


if __name__ == "__main__":
    main_guard(main)
