"""Wall time of the whole fine-tuning job: ours (``scripts/train.py``) vs the chapter's plain loop.

The job: GPT-2 small (random weights, so nothing is downloaded; the work is the same as with
OpenAI's), last block + final norm + head trained, 5 epochs of batch 8, evaluation every 50 steps,
then accuracy on every example of each split. Ours runs the real command line
(``scripts/train.py --config configs/seed_fast.yaml`` / ``configs/seed.yaml --weights random``),
each in its own process, from a cold feature cache and again with the cache warm. The chapter's
plain loop (padded to 120 tokens) is timed on a few training steps and evaluation batches and
extrapolated to the recipe's 650 steps and 367 evaluation batches (``--plain_full`` runs it all).

    python benchmarks/bench_seed_job.py            # GPT-2 small: about 10-15 minutes on 2 cores
    python benchmarks/bench_seed_job.py --quick    # tiny model, a few training steps (smoke test)
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    ROOT,
    base_parser,
    busy_note,
    data_file_arg,
    emit,
    gpt2_small_or_tiny,
    main_guard,
    markdown_table,
    median,
    run_case,
    run_command_measured,
    select_cases,
    small_sms_file,
    wait_until_quiet,
    write_json,
)

CHAPTER_LENGTH = 120
# case: description
CASES = {
    "chapter_plain_120": "chapter's code, plain PyTorch loop, padded to 120",
    "ours_model_plain_120": "ours (hf_spam model), plain PyTorch loop, padded to 120",
    "ours_seed_fast_cold": "ours: scripts/train.py --config configs/seed_fast.yaml (cache cold)",
    "ours_seed_fast_warm": "ours: same again (feature cache warm)",
    "ours_seed_fast_cold_accelerate": "ours: accelerate launch (configs/accelerate/one_process.yaml) scripts/train.py "
    "--config configs/seed_fast.yaml (cache cold)",
    "ours_seed_fast_bf16_cold": "ours: same with --bf16 (trunk features under bf16 autocast; cache cold)",
    "ours_seed_cold": "ours: scripts/train.py --config configs/seed.yaml, the chapter's exact recipe (cache cold)",
}
BASELINE = "chapter_plain_120"


def plain_job(case: str, model_size: str, data_file: str | None, steps: int, eval_batches: int, full: bool) -> dict:
    """The chapter's recipe in a plain loop; timed in full, or timed in part and extrapolated."""
    import psutil
    import torch
    from chapter_baseline import (
        calc_accuracy_loader,
        chapter_classifier,
        padded_batches,
        recipe_counts,
        train_classifier_simple,
    )

    from hf_spam.data import load_sms_spam
    from hf_spam.tokenization import encode_texts, get_encoding

    raw = load_sms_spam(data_file)
    enc = get_encoding()
    loaders = {}
    for split in ("train", "validation", "test"):
        ids = encode_texts(raw[split]["text"], enc)
        loaders[split] = padded_batches(ids, list(raw[split]["label"]), CHAPTER_LENGTH,
                                        shuffle=split == "train", drop_last=split == "train")
    if case == "chapter_plain_120":
        model = chapter_classifier(model_size)

        def logits_of(x):  # noqa: ANN001
            return model(x)[:, -1, :]
    else:
        from hf_spam.starting_model import build_model
        from hf_spam.trainer import set_trainable_layers

        model = build_model(model_size=model_size, weights="random", pooling="last")
        model.config.padded_length = CHAPTER_LENGTH
        set_trainable_layers(model, "last_block")

        def logits_of(x):  # noqa: ANN001
            return model(input_ids=x).logits
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    counts = recipe_counts(len(raw["train"]), len(raw["validation"]), len(raw["test"]))
    # Setup as ours pays it too: from the process's start (interpreter, imports, data, model).
    setup_s = time.time() - psutil.Process().create_time()
    if full and case == "chapter_plain_120":
        t = time.perf_counter()
        train_classifier_simple(model, loaders["train"], loaders["validation"], optimizer, "cpu", 5, 50, 5)
        accs = [calc_accuracy_loader(loaders[s], model, "cpu") for s in ("train", "validation", "test")]
        return {"total_s": setup_s + time.perf_counter() - t, "how": "run in full", "test_accuracy": accs[2],
                **counts}
    batches = iter(loaders["train"])
    step_times, eval_times = [], []
    model.train()
    for i in range(steps + 1):  # the first step is a warm-up
        x, y = next(batches)
        t = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(logits_of(x), y).backward()
        optimizer.step()
        if i:
            step_times.append(time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        for i, (x, _) in enumerate(loaders["train"]):
            if i > eval_batches:
                break
            t = time.perf_counter()
            logits_of(x).argmax(-1)
            if i:
                eval_times.append(time.perf_counter() - t)
    # Medians: a burst of other work on a shared machine inflates a few timings, not the typical one.
    step, per_eval = median(step_times), median(eval_times)
    total = setup_s + counts["train_steps"] * step + counts["eval_batches"] * per_eval
    how = (f"extrapolated: {counts['train_steps']} x {step:.3f} s/step (median of {len(step_times)}) + "
           f"{counts['eval_batches']} x {per_eval:.3f} s/eval batch (median of {len(eval_times)}) + "
           f"setup {setup_s:.1f} s")
    return {"total_s": total, "how": how, "s_per_step": step, "s_per_eval_batch": per_eval, **counts}


def ours_job(case: str, args, workdir: Path) -> dict:  # noqa: ANN001
    """``scripts/train.py`` in its own process; wall time and that process's peak RSS."""
    config = "configs/seed.yaml" if case == "ours_seed_cold" else "configs/seed_fast.yaml"
    caches = {"ours_seed_cold": "cache_exact", "ours_seed_fast_bf16_cold": "cache_bf16"}
    cache = workdir / caches.get(case, "cache_fast")
    if "_cold" in case:
        shutil.rmtree(cache, ignore_errors=True)
    out = workdir / case
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs" / "accelerate" / "one_process.yaml")] if case.endswith("_accelerate") \
        else [sys.executable]
    cmd = [*launcher, str(ROOT / "scripts" / "train.py"), "--config", config, "--weights", "random",
           "--output_dir", str(out), "--data_cache_dir", str(cache), "--disable_tqdm", "true"]
    if args.data_file:
        cmd += ["--data_file", args.data_file]
    if "_bf16" in case:  # on a machine without a GPU the recipe sets --use_cpu true itself
        cmd += ["--bf16", "true"]
    if args.quick:
        cmd += ["--model_size", "tiny", "--max_steps", "6", "--eval_steps", "3", "--logging_steps", "3"]
    result = run_command_measured(cmd, workdir / f"{case}.log")
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    return {"total_s": result["wall_s"], "peak_rss_mb": result["peak_rss_mb"], "cpu_s": result["cpu_s"],
            "load_after": result["load_after"], "how": "measured (whole process)",
            "test_accuracy": metrics.get("test_accuracy")}


def add_plain_loop_args(parser: argparse.ArgumentParser) -> None:
    """The flags of the job benchmarks (this one and ``bench_search.py``): how much of the chapter's plain loop
    is timed, and where the jobs' outputs go."""
    parser.add_argument("--plain_steps", type=int, default=8, help="Timed plain-loop steps for the extrapolation.")
    parser.add_argument("--plain_eval_batches", type=int, default=6, help="Timed plain-loop evaluation batches.")
    parser.add_argument("--workdir", default=None, help="Keep the jobs' outputs here (default: a temp folder).")


def plain_worker(args: argparse.Namespace, full: bool = False) -> None:
    """A worker process's case: the plain loop, timed (a step and a batch with ``--quick``) and extrapolated."""
    steps, evals = (1, 1) if args.quick else (args.plain_steps, args.plain_eval_batches)
    emit({"case": args.worker, **plain_job(args.worker, gpt2_small_or_tiny(args.quick), args.data_file, steps, evals,
                                           full)})


def run_jobs(script: str, args: argparse.Namespace, cases: list[str], ours: dict[str, Callable[[Path], dict]],
             forwarded: list[str] = ()) -> dict[str, dict]:
    """Each case in turn once the machine is quiet: ``ours[case](workdir)``, or else the plain loop in a worker
    process of ``script`` (given ``forwarded`` too); with ``--quick``, on a small SMS file."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.quick:
            args.data_file = small_sms_file(args.data_file, workdir / "data")
        forwarded = [*(["--quick"] if args.quick else ["--plain_steps", str(args.plain_steps),
                                                         "--plain_eval_batches", str(args.plain_eval_batches)]),
                     *(["--data_file", args.data_file] if args.data_file else []), *forwarded]
        for case in cases:
            waited = wait_until_quiet(args.wait_quiet)
            results[case] = ours[case](workdir) if case in ours else run_case(script, case, forwarded)
            results[case]["waited_for_quiet_s"] = round(waited, 1)
            print(f"  {case}: {results[case]['total_s']:.1f} s", flush=True)
    return results


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    add_plain_loop_args(parser)
    parser.add_argument("--plain_full", action="store_true", help="Run the chapter's plain loop in full (~25 min).")
    args = parser.parse_args()
    args.data_file = data_file_arg(args.data_file)
    if args.worker:
        return plain_worker(args, args.plain_full)
    cases, machine = select_cases(args, CASES)
    ours = {case: functools.partial(ours_job, case, args) for case in CASES if case.startswith("ours_seed")}
    results = run_jobs(__file__, args, cases, ours, ["--plain_full"] if args.plain_full else [])
    base = results.get(BASELINE)
    rows = []
    for case, r in results.items():
        speedup = f"{base['total_s'] / r['total_s']:.1f}x" if base else "n/a"
        acc = r.get("test_accuracy")
        rows.append([CASES[case], f"{r['total_s']:,.0f}", f"{r['total_s'] / 60:.1f}", speedup,
                     f"{r['peak_rss_mb']:,.0f}", "" if acc is None else f"{acc:.3f}", r["how"]])
    title = "tiny model, 6 steps (smoke run: not a measurement)" if args.quick else \
        "GPT-2 small (124M), random weights, 5 epochs, eval every 50 steps, full-set metrics"
    print(f"\n### Whole fine-tuning job, {title}\n")
    print(markdown_table(["job", "wall s", "min", f"vs {BASELINE}", "peak RSS (MB)", "test acc.", "how"], rows))
    if "ours_seed_fast_cold" in results and "ours_seed_fast_cold_accelerate" in results:
        ratio = results["ours_seed_fast_cold_accelerate"]["total_s"] / results["ours_seed_fast_cold"]["total_s"]
        print(f"\naccelerate launch / python, the same job from a cold cache: {ratio:.2f}x")
    print(busy_note(results))
    write_json(args.json, {"machine": machine, "results": results})


if __name__ == "__main__":
    main_guard(main)
