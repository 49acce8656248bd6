"""Training step time and examples/s: ours (Trainer, with and without the frozen-trunk cache) vs
plain loops (transformers' GPT2ForSequenceClassification, the chapter's code) padded to 120 tokens.

GPT-2 small shape with random weights (no pretrained weights needed: speed does not depend on
them), the chapter's set-up: last block + final norm + 2-way head trained, AdamW, batch 8, real
SMS training texts. Each case runs in its own process. Run from the repository root:

    python benchmarks/bench_train_step.py            # GPT-2 small, a few minutes
    python benchmarks/bench_train_step.py --quick    # tiny model, seconds (smoke test)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import (
    BenchError,
    base_parser,
    busy_note,
    data_file_arg,
    emit,
    gpt2_small_or_tiny,
    main_guard,
    markdown_table,
    median,
    run_cases,
    select_cases,
    write_json,
)

BATCH = 8
CHAPTER_LENGTH = 120  # the longest training text of the chapter's split, in GPT-2 tokens

# case: (description, padding, how)
CASES = {
    "chapter_plain_120": ("chapter's code, plain loop", "120 (fixed)", "plain"),
    "hf_gpt2_plain_120": ("transformers GPT2ForSequenceClassification, plain loop", "120 (fixed)", "plain"),
    "ours_plain_120": ("ours (hf_spam model), plain loop", "120 (fixed)", "plain"),
    "ours_trainer_120": ("ours, Trainer, --cache_features false", "120 (fixed)", "trainer"),
    "ours_trainer_dynamic": ("ours, Trainer, last_non_pad, --cache_features false", "dynamic", "trainer"),
    "ours_trainer_cached_120": ("ours, Trainer, frozen-trunk cache", "120 (fixed)", "trainer"),
    "ours_trainer_cached_dynamic": ("ours, Trainer, last_non_pad, frozen-trunk cache", "dynamic", "trainer"),
    "ours_trainer_cached_dynamic_bf16": ("same, --bf16 (autocast)", "dynamic", "trainer"),
}
BASELINE = "chapter_plain_120"


def training_texts(data_file: str | None, n: int) -> tuple[list[list[int]], list[int]]:
    """Token ids and labels of the first ``n`` texts of the chapter's training split."""
    from hf_spam.data import load_sms_spam
    from hf_spam.tokenization import encode_texts, get_encoding

    train = load_sms_spam(data_file)["train"].select(range(n))
    return encode_texts(train["text"], get_encoding()), list(train["label"])


def plain_loop_step_times(case: str, model_size: str, data_file: str | None, warmup: int, steps: int) -> dict:
    """Seconds per optimizer step of a plain PyTorch loop over batches padded to 120."""
    import torch
    from chapter_baseline import chapter_classifier, padded_batches

    ids, labels = training_texts(data_file, BATCH * (warmup + steps))
    loader = padded_batches(ids, labels, CHAPTER_LENGTH, BATCH)
    if case == "chapter_plain_120":
        model = chapter_classifier(model_size)

        def loss_fn(x, y):  # noqa: ANN001
            return torch.nn.functional.cross_entropy(model(x)[:, -1, :], y)
    elif case == "hf_gpt2_plain_120":
        from transformers import GPT2Config, GPT2ForSequenceClassification

        from hf_spam.modeling_gpt import MODEL_PRESETS

        p = MODEL_PRESETS[model_size]
        torch.manual_seed(123)
        config = GPT2Config(n_embd=p["emb_dim"], n_layer=p["n_layers"], n_head=p["n_heads"], num_labels=2,
                            pad_token_id=50256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2ForSequenceClassification(config)
        for q in model.parameters():
            q.requires_grad = False
        for module in (model.transformer.h[-1], model.transformer.ln_f, model.score):
            for q in module.parameters():
                q.requires_grad = True

        def loss_fn(x, y):  # noqa: ANN001
            return model(input_ids=x, attention_mask=(x != 50256).long(), labels=y).loss
    else:
        from hf_spam.starting_model import build_model
        from hf_spam.trainer import set_trainable_layers

        model = build_model(model_size=model_size, weights="random", pooling="last")
        model.config.padded_length = CHAPTER_LENGTH
        set_trainable_layers(model, "last_block")

        def loss_fn(x, y):  # noqa: ANN001
            return model(input_ids=x, labels=y).loss
    model.train()
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=5e-5, weight_decay=0.1)
    times = []
    for x, y in loader:
        t = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(x, y).backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return {"step_times": times[warmup:]}


def trainer_step_times(case: str, model_size: str, data_file: str | None, warmup: int, steps: int) -> dict:
    """Seconds between consecutive optimizer steps of a real ``Trainer`` run (data loading included)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from hf_spam.data import load_sms_spam
    from hf_spam.feature_cache import prepare_cached_training
    from hf_spam.starting_model import build_model
    from hf_spam.tokenization import build_hf_tokenizer, tokenize_splits
    from hf_spam.trainer import set_trainable_layers

    dynamic = "dynamic" in case
    cached = "cached" in case
    padding, pooling = ("dynamic", "last_non_pad") if dynamic else ("longest_train", "last")
    n = BATCH * (warmup + steps)
    raw = load_sms_spam(data_file)
    raw = type(raw)({"train": raw["train"].select(range(n))})
    tok, length = tokenize_splits(raw, padding=padding, max_length=None if dynamic else CHAPTER_LENGTH)
    tok = tok.rename_column("label", "labels").remove_columns(["text"])
    full = build_model(model_size=model_size, weights="random", pooling=pooling)
    full.config.padded_length = length
    set_trainable_layers(full, "last_block")

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.marks.append(time.perf_counter())

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=BATCH, learning_rate=5e-5, weight_decay=0.1,
            lr_scheduler_type="constant", max_steps=warmup + steps, logging_strategy="no", save_strategy="no",
            report_to="none", seed=123, use_cpu=True, disable_tqdm=True, dataloader_drop_last=True,
            bf16="bf16" in case,
        )
        model, data, collator, extra = full, tok, DataCollatorWithPadding(build_hf_tokenizer()), {}
        if cached:
            t = time.perf_counter()
            info = prepare_cached_training(full, tok, trainable_layers="last_block", padding=padding,
                                           training_args=args, cache_dir=Path(tmp) / "cache")
            if info is None:
                raise BenchError(f"{case}: the feature cache did not apply")
            extra = {"cache_build_s": round(time.perf_counter() - t, 2), "cache_examples": n}
            model, data, collator = info.model, info.datasets, info.collator
        clock = StepClock()
        trainer = Trainer(model=model, args=args, train_dataset=data["train"], data_collator=collator,
                          callbacks=[clock])
        trainer.train()
    intervals = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    return {"step_times": intervals[warmup:], **extra}


def worker(case: str, args) -> None:  # noqa: ANN001
    import torch

    model_size = gpt2_small_or_tiny(args.quick)
    warmup, steps = (1, 2) if args.quick else (2, args.steps)
    if CASES[case][2] == "plain":
        result = plain_loop_step_times(case, model_size, args.data_file, warmup, steps)
    else:
        result = trainer_step_times(case, model_size, args.data_file, warmup, steps)
    times = result.pop("step_times")
    # The median: a burst of other work on a shared machine inflates a few steps, not the typical one.
    typical = median(times)
    emit({"case": case, "model_size": model_size, "steps": len(times), "s_per_step": typical,
          "s_per_step_mean": sum(times) / len(times), "examples_per_s": BATCH / typical,
          "threads": torch.get_num_threads(), **result})


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8,
                        help="Timed steps per case (after 2 warm-up steps); the median is reported.")
    args = parser.parse_args()
    args.data_file = data_file_arg(args.data_file)
    if args.worker:
        return worker(args.worker, args)
    cases, machine = select_cases(args, CASES)
    forwarded = (["--quick"] if args.quick else []) + ["--steps", str(args.steps)]
    forwarded += ["--data_file", args.data_file] if args.data_file else []
    results = run_cases(__file__, cases, forwarded, args.wait_quiet, lambda r: f"{r['s_per_step']:.3f} s/step")
    base = results.get(BASELINE)
    rows = []
    for case, r in results.items():
        desc, padding, _ = CASES[case]
        note = ""
        if "cache_build_s" in r:
            note = f"cache built once: {r['cache_build_s']:.1f} s for {r['cache_examples']} texts (not in s/step)"
        speedup = f"{base['s_per_step'] / r['s_per_step']:.1f}x" if base else "n/a"
        rows.append([desc, padding, r["s_per_step"], r["examples_per_s"], speedup, f"{r['peak_rss_mb']:,.0f}", note])
    size = "tiny (smoke run: not a measurement)" if args.quick else "GPT-2 small (124M), random weights"
    print(f"\n### Training step, {size}, batch {BATCH}, last block + final norm + head trained\n")
    print(markdown_table(["path", "padding", "s/step", "examples/s", f"vs {BASELINE}", "peak RSS (MB)", "note"],
                         rows))
    print(busy_note(results))
    write_json(args.json, {"machine": machine, "results": results})


if __name__ == "__main__":
    main_guard(main)
