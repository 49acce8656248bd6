"""Measuring whole commands and printing results: tooling shared by the scripts beside this file and the
``benchmarks/`` scripts (``from measure import ...`` with ``scripts/`` on ``sys.path``), not part of the package.

Each measured command runs in its own process, so its peak memory is its own (a process's peak resident
size never goes down) and nothing (seeds, caches, accelerate's state) leaks from one run into the next.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _mb(rusage_maxrss: int) -> float:
    return rusage_maxrss / 2**20 if sys.platform == "darwin" else rusage_maxrss / 1024  # bytes on macOS, KiB else


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB."""
    return _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_measured(cmd: Sequence[str], log_file: str | os.PathLike, *, timeout: float = 7200,
                 env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log_file``; returns its exit ``status``, ``wall_s``, ``cpu_s`` and
    ``peak_rss_mb`` (``os.wait4``'s resource usage of exactly this child). A run past ``timeout`` is
    killed and reported with status ``None``."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started, timed_out = time.perf_counter(), False
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        while not (result := os.wait4(proc.pid, os.WNOHANG))[0]:
            if timed_out := time.perf_counter() - started > timeout:
                proc.kill()
                result = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    _, status, usage = result
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped above: keep Popen from waiting again
    return {"status": None if timed_out else proc.returncode, "wall_s": round(time.perf_counter() - started, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(_mb(usage.ru_maxrss), 1)}


def last_error_line(log_file: str | os.PathLike) -> str | None:
    """The last ``error: ...`` line a run printed (its one-line reason for failing), without the prefix."""
    try:
        lines = Path(log_file).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")), None)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats get 3 significant digits (thousands separators above 100)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])
