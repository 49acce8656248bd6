"""Wall time of a hyperparameter search (``scripts/search.py``, 20 trials) against one run of the chapter's own loop.

The search: GPT-2 small (random weights: nothing is downloaded, the work is the same as with OpenAI's),
``configs/seed_fast.yaml`` with the default space (``configs/search_space.yaml``), 20 trials from a cold
feature cache, so the trunk pass is paid once inside the measurement; then the best trial trained again and
scored. The whole command runs in its own process. The chapter's plain loop (padded to 120 tokens) is timed
on a few steps and evaluation batches and extrapolated to the recipe's 650 steps and 367 evaluation batches,
as ``bench_seed_job.py`` does, in the same run of this script.

    python benchmarks/bench_search.py            # GPT-2 small: about 20-30 minutes on 2 cores
    python benchmarks/bench_search.py --quick    # tiny model, 2 short trials (smoke test)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from _common import (
    ROOT,
    base_parser,
    busy_note,
    data_file_arg,
    main_guard,
    markdown_table,
    run_command_measured,
    select_cases,
    write_json,
)
from bench_seed_job import add_plain_loop_args, plain_worker, run_jobs

CASES = {
    "chapter_plain_120": "chapter's code, plain PyTorch loop, padded to 120: one run",
    "ours_search": "ours: scripts/search.py --config configs/seed_fast.yaml, N trials (cache cold), best retrained",
}
BASELINE = "chapter_plain_120"
QUICK_SPACE = "learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\n"


def search_job(args, workdir: Path) -> dict:  # noqa: ANN001
    """``scripts/search.py`` in its own process from a cold cache; wall time, peak RSS, and what its files say."""
    out, cache = workdir / "search", workdir / "cache"
    cmd = [sys.executable, str(ROOT / "scripts" / "search.py"), "--config", "configs/seed_fast.yaml", "--weights",
           "random", "--n_trials", str(args.n_trials), "--output_dir", str(out), "--data_cache_dir", str(cache),
           "--disable_tqdm", "true"]
    if args.data_file:
        cmd += ["--data_file", args.data_file]
    if args.quick:
        (workdir / "space.yaml").write_text(QUICK_SPACE)
        cmd += ["--model_size", "tiny", "--search_space", str(workdir / "space.yaml"), "--max_steps", "4",
                "--cpu_threads", "1"]
    result = run_command_measured(cmd, workdir / "search.log")
    data = json.loads((out / "results.json").read_text())
    log = (out / "search.log").read_text()
    trunk = [float(s) for s in re.findall(r"\(computed: [a-z, ]+\) in ([0-9.]+) s", log)]
    trials = [r["seconds"] for r in data["trials"] if r["seconds"] is not None]
    best = data.get("best_model", {})
    how = (f"measured (whole process): {len(data['trials'])} trials ({data['counts']['complete']} complete, "
           f"{data['counts']['pruned']} pruned) in {sum(trials):.0f} s, median {sorted(trials)[len(trials) // 2]:.1f} "
           f"s each; trunk pass {sum(trunk):.1f} s, paid {len(trunk)}x; then the best trial retrained and scored")
    return {"total_s": result["wall_s"], "peak_rss_mb": result["peak_rss_mb"], "cpu_s": result["cpu_s"],
            "load_after": result["load_after"], "how": how, "trials": len(data["trials"]), "trial_s": trials,
            "trunk_pass_s": trunk, "counts": data["counts"], "test_accuracy": best.get("test_accuracy"),
            "best_validation": data["best_trial"][data["metric"]] if data.get("best_trial") else None}


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--n_trials", type=int, default=None, help="Trials of the search (default 20; --quick: 2).")
    add_plain_loop_args(parser)
    args = parser.parse_args()
    args.data_file = data_file_arg(args.data_file)
    args.n_trials = args.n_trials or (2 if args.quick else 20)
    if args.worker:
        return plain_worker(args)
    cases, machine = select_cases(args, CASES)
    results = run_jobs(__file__, args, cases, {"ours_search": lambda workdir: search_job(args, workdir)})
    base = results.get(BASELINE)
    rows = []
    for case, r in results.items():
        ratio = f"{r['total_s'] / base['total_s']:.1f}x" if base else "n/a"
        acc = r.get("test_accuracy")
        rows.append([CASES[case].replace("N trials", f"{args.n_trials} trials"), f"{r['total_s']:,.0f}",
                     f"{r['total_s'] / 60:.1f}", ratio, f"{r['peak_rss_mb']:,.0f}",
                     "" if acc is None else f"{acc:.3f}", r["how"]])
    title = "tiny model, 2 trials of 4 steps (smoke run: not a measurement)" if args.quick else \
        f"GPT-2 small (124M), random weights, seed_fast.yaml, {args.n_trials} trials"
    print(f"\n### Hyperparameter search against one chapter run, {title}\n")
    print(markdown_table(["job", "wall s", "min", f"time vs {BASELINE}", "peak RSS (MB)", "test acc.", "how"], rows))
    if base and "ours_search" in results:
        ratio = results["ours_search"]["total_s"] / base["total_s"]
        print(f"\n{args.n_trials} trials (and the best retrained) took {ratio:.2f}x the chapter's one run "
              f"({'within' if ratio <= 1 else 'over'} the target of 1x).")
    print(busy_note(results))
    write_json(args.json, {"machine": machine, "n_trials": args.n_trials, "results": results})


if __name__ == "__main__":
    main_guard(main)
