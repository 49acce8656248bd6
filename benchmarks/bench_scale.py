"""Cost as the data grows: the fast recipe on 1x, 4x and 16x the chapter's SMS splits.

Each scale replicates the chapter's balanced train/validation/test rows (1,045 / 149 / 300) N times,
writes them as CSV files and runs the real command line on them, in its own process, from a cold
feature cache:

    scripts/train.py --config configs/seed_fast.yaml --weights random --train_file train.csv
        --validation_file validation.csv --test_file test.csv --text_column Text --label_column Label
        --label_names ham spam --num_train_epochs E --eval_strategy epoch

(GPT-2 small's shape, random weights; evaluation once per epoch, so that the number of evaluations
does not grow with the data). Reported: wall time of the whole process, its peak RSS, and the
feature cache's size on disk. Targets: 16x data in at most 18x the time; peak RSS at 16x at most
1.2x the 1x run's.

    python benchmarks/bench_scale.py             # GPT-2 small, 1 epoch: about 15 minutes on 2 cores
    python benchmarks/bench_scale.py --quick     # tiny model, 1x and 4x of a few dozen rows (smoke test)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from _common import (
    ROOT,
    base_parser,
    busy_note,
    data_file_arg,
    gpt2_small_or_tiny,
    main_guard,
    markdown_table,
    run_command_measured,
    select_cases,
    small_sms_file,
    wait_until_quiet,
    write_json,
)

SCALES = {"1x": 1, "4x": 4, "16x": 16}
TIME_TARGET, RSS_TARGET = 18.0, 1.2


def write_scaled_csv(data_file: str | None, scale: int, folder: Path) -> dict[str, int]:
    """The chapter's splits, each row repeated ``scale`` times, as ``{split}.csv`` (``Label`` 0/1, ``Text``)."""
    from hf_spam.data import load_sms_spam, write_splits_csv

    raw = load_sms_spam(data_file)
    scaled = type(raw)({split: ds.select([i for _ in range(scale) for i in range(len(ds))])
                        for split, ds in raw.items()})
    write_splits_csv(scaled, folder)
    return {split: len(ds) for split, ds in scaled.items()}


def run_scale(case: str, args, workdir: Path) -> dict:  # noqa: ANN001
    folder = workdir / case
    rows = write_scaled_csv(args.data_file, SCALES[case], folder)
    out = folder / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", "configs/seed_fast.yaml",
           "--weights", "random", "--model_size", gpt2_small_or_tiny(args.quick),
           "--train_file", str(folder / "train.csv"),
           "--validation_file", str(folder / "validation.csv"), "--test_file", str(folder / "test.csv"),
           "--text_column", "Text", "--label_column", "Label", "--label_names", "ham", "spam",
           "--num_train_epochs", str(args.epochs), "--eval_strategy", "epoch", "--logging_steps", "50",
           "--output_dir", str(out), "--feature_cache_dir", str(folder / "features"), "--disable_tqdm", "true"]
    # A fresh datasets cache per scale: the CSV parsing and tokenization are part of the cost measured.
    result = run_command_measured(cmd, folder / "train.log", env={"HF_DATASETS_CACHE": str(folder / "hf_datasets")})
    metrics = json.loads((out / "metrics.json").read_text())
    cache_mb = sum(p.stat().st_size for p in (folder / "features").iterdir()) / 2**20
    return {**result, "rows": rows, "cache_mb": round(cache_mb, 1), "test_accuracy": metrics.get("test_accuracy"),
            "examples_scored": sum(metrics.get(f"{s}_examples", 0) for s in ("train", "validation", "test"))}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1, help="Training epochs at every scale (default 1).")
    parser.add_argument("--workdir", default=None, help="Keep the runs' outputs here (default: a temp folder).")
    args = parser.parse_args()
    args.data_file = data_file_arg(args.data_file)
    if args.quick and not args.cases:
        args.cases = ["1x", "4x"]
    cases, machine = select_cases(args, SCALES)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        if args.quick:
            args.data_file = small_sms_file(args.data_file, workdir / "data")
        for case in cases:
            waited = wait_until_quiet(args.wait_quiet)
            results[case] = {**run_scale(case, args, workdir), "waited_for_quiet_s": round(waited, 1)}
            print(f"  {case}: {results[case]['wall_s']:.1f} s, peak RSS {results[case]['peak_rss_mb']:,.0f} MB",
                  flush=True)
    base = results.get(cases[0])
    rows = []
    for case, r in results.items():
        n = SCALES[case] / SCALES[cases[0]]
        rows.append([case, f"{r['rows']['train']:,}", f"{r['wall_s']:,.1f}", f"{r['wall_s'] / base['wall_s']:.1f}x",
                     f"{r['peak_rss_mb']:,.0f}", f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x",
                     f"{r['cache_mb']:,.0f}", f"{r['test_accuracy']:.3f}" if r["test_accuracy"] is not None else "",
                     f"{n:g}x data"])
    title = "tiny model, a few dozen rows (smoke run: not a measurement)" if args.quick else \
        f"GPT-2 small shape, random weights, {args.epochs} epoch(s), configs/seed_fast.yaml, cold feature cache"
    print(f"\n### Cost as the data grows: {title}\n")
    print(markdown_table(["data", "train rows", "wall s", "time vs first", "peak RSS (MB)", "RSS vs first",
                          "feature cache (MB)", "test acc.", "scale"], rows))
    if "1x" in results and "16x" in results:
        t = results["16x"]["wall_s"] / results["1x"]["wall_s"]
        m = results["16x"]["peak_rss_mb"] / results["1x"]["peak_rss_mb"]
        verdict = {True: "met", False: "NOT met"}
        print(f"\n16x the data: {t:.1f}x the time (target <= {TIME_TARGET:g}x: {verdict[t <= TIME_TARGET]}), "
              f"{m:.2f}x the peak RSS (target <= {RSS_TARGET:g}x: {verdict[m <= RSS_TARGET]})")
    print(busy_note(results))
    write_json(args.json, {"machine": machine, "epochs": args.epochs, "results": results})


if __name__ == "__main__":
    main_guard(main)
