"""Shared pieces of the benchmark scripts: one subprocess per measured case, peak RSS, tables.

Each benchmark script is its own driver: run without ``--worker`` it starts itself once per case
as ``python benchmarks/bench_X.py --worker CASE ...`` (so peak memory and warm caches never mix
between cases), reads the JSON line each worker prints last, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hf_spam import files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # measure: the runners' tooling, beside the scripts that use it
from measure import markdown_table, peak_rss_mb, run_measured  # noqa: E402, F401 - re-exported for the scripts

DEFAULT_DATA_FILE = ROOT.parent / "shared" / "data" / "sms_spam_collection" / "SMSSpamCollection"
DEFAULT_BPE_DIR = ROOT.parent / "shared" / "data" / "gpt2-bpe"
RESULT_PREFIX = "BENCH_RESULT "


class BenchError(RuntimeError):
    """A case that could not be measured (its worker failed); the message says which and why."""


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="Smoke run: the tiny model, a few steps, a few seconds (for the test suite).")
    parser.add_argument("--data_file", default=None,
                        help=f"SMSSpamCollection file (default: {DEFAULT_DATA_FILE} if present, else download).")
    parser.add_argument("--cases", nargs="*", default=None, help="Only these cases (default: all).")
    parser.add_argument("--json", default=None, help="Also write the results as JSON to this file.")
    parser.add_argument("--wait_quiet", type=float, default=0.0,
                        help="Before each case wait up to this many seconds for other processes to leave the CPU.")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def data_file_arg(value: str | None) -> str | None:
    """The SMS file to read: the argument, else ../shared's copy when present, else None (download).

    Also points ``HF_SPAM_BPE_DIR`` (unless set) at ../shared's GPT-2 BPE files when present, so the
    benchmarks tokenize offline; they are OpenAI's files, checked against their sha256 when read.
    """
    if "HF_SPAM_BPE_DIR" not in os.environ and (DEFAULT_BPE_DIR / "encoder.json").is_file():
        os.environ["HF_SPAM_BPE_DIR"] = str(DEFAULT_BPE_DIR)  # inherited by every case's process
    if value:
        return value
    return str(DEFAULT_DATA_FILE) if DEFAULT_DATA_FILE.is_file() else None


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def select_cases(args: argparse.Namespace, known: dict[str, Any]) -> tuple[list[str], str]:
    """The cases to run (``--cases`` or all, checked) and the machine line, printed first."""
    cases = args.cases or list(known)
    unknown = [c for c in cases if c not in known]
    if unknown:
        raise ValueError(f"--cases: unknown {unknown}; expected some of {', '.join(known)}")
    machine = machine_description()
    print(f"Machine: {machine}\n", flush=True)
    return cases, machine


def emit(result: dict[str, Any]) -> None:
    """Worker side: print the result (with this process's peak RSS and CPU time) as the last stdout line."""
    result = {**result, "peak_rss_mb": round(peak_rss_mb(), 1), "cpu_s": round(cpu_seconds(), 1)}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def wait_until_quiet(max_wait: float, busy_percent: float = 25.0) -> float:
    """Wait (up to ``max_wait`` s) until other processes leave the CPU mostly idle, so a case is not
    timed while something else runs; returns the seconds waited. 0 disables the wait."""
    if max_wait <= 0:
        return 0.0
    import psutil

    started = time.perf_counter()
    quiet = 0
    while time.perf_counter() - started < max_wait:
        quiet = quiet + 1 if psutil.cpu_percent(interval=1.0) < busy_percent else 0
        if quiet >= 3:
            break
    return time.perf_counter() - started


def busy_note(results: dict[str, dict[str, Any]], own_load: dict[str, float] | None = None) -> str:
    """A warning naming the cases during which other processes competed for the CPU (their
    one-minute load average exceeded what the case itself puts there: ``own_load[case]`` runnable threads,
    by default one per core), or ''."""
    own_load = own_load or {}
    busy = [f"{case} ({r['load_after']:.1f})" for case, r in results.items()
            if r.get("load_after", 0) > own_load.get(case, os.cpu_count() or 1) + 1.0]
    if not busy:
        return ""
    return ("\nNote: other processes competed for the CPU during " + ", ".join(busy) +
            f" (1-minute load average on {os.cpu_count()} cores): those timings are inflated.")


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def run_case(script: str | Path, case: str, argv: Sequence[str], timeout: float = 3600) -> dict[str, Any]:
    """Driver side: run ``script --worker case argv...`` in a fresh process and return its result."""
    cmd = [sys.executable, str(script), "--worker", case, *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"case {case}: no result within {timeout:.0f} s") from None
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchError(f"case {case}: worker exited with {proc.returncode}: {' | '.join(tail)}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result.setdefault("process_wall_s", round(wall, 2))
    result["load_after"] = round(load_average(), 2)
    return result


def run_cases(script: str | Path, cases: Sequence[str], forwarded: Sequence[str], wait_quiet: float,
              describe: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
    """Each case in its own worker process (after waiting for a quiet CPU), with a progress line each."""
    results = {}
    for case in cases:
        waited = wait_until_quiet(wait_quiet)
        results[case] = {**run_case(script, case, forwarded), "waited_for_quiet_s": round(waited, 1)}
        print(f"  {case}: {describe(results[case])}", flush=True)
    return results


def run_command_measured(
    cmd: Sequence[str], log_file: Path, timeout: float = 7200, env: dict | None = None
) -> dict[str, Any]:
    """Run a whole command (e.g. ``scripts/train.py``) in its own process, output to ``log_file``: wall time
    and that process's own peak RSS; a failure is a ``BenchError`` with the end of its log."""
    result = run_measured(cmd, log_file, timeout=timeout, env=env, cwd=ROOT)
    if result["status"] != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise BenchError(f"{' '.join(map(str, cmd[1:3]))}: exited with {result['status']}: {' | '.join(tail)}")
    return {**result, "load_after": round(load_average(), 2)}


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` for ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def machine_description() -> str:
    """The processor (PyTorch's view of it: its vector capability and the flags ``hf_spam.arithmetic`` chooses by),
    cores, torch threads and the load, in one line."""
    import torch

    from hf_spam.arithmetic import KNOWN_FLAGS, cpu_flags

    flags = ", ".join(sorted(cpu_flags())) or "none of " + ", ".join(KNOWN_FLAGS)
    return (
        f"{platform.machine()} CPU with {torch.backends.cpu.get_cpu_capability()} ({flags}), {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, load average at start {load_average():.2f}"
    )


def write_json(path: str | None, data: Any) -> None:
    """Write results atomically, when ``--json FILE`` was given."""
    if path:
        files.write_json(path, data)


def gpt2_small_or_tiny(quick: bool) -> str:
    return "tiny" if quick else "gpt2-small"


def small_sms_file(source: str | None, folder: Path, lines: int = 600) -> str:
    """The first ``lines`` lines of the real collection (balanced: a few dozen texts per split), for
    quick runs. Needs the real file."""
    if source is None:
        raise BenchError("--quick needs the SMS file (--data_file or ../shared's copy)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "SMSSpamCollection"
    with open(source, encoding="utf-8") as f:
        head = [line for _, line in zip(range(lines), f)]
    path.write_text("".join(head), encoding="utf-8")
    return str(path)


def main_guard(fn: Callable[[], None]) -> None:
    """Run ``fn``; a failed case or bad input is one line on stderr and exit status 1, no traceback."""
    try:
        fn()
    except (BenchError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
