"""Smoke runs of the benchmark scripts (``--quick``: tiny model, a few steps), as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT


def run_bench(script: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line for line in stdout.splitlines() if line.startswith("| ")][1:]  # without the header
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


@pytest.mark.parametrize(
    "script, cases, ratio_column",
    [
        # One plain loop (the baseline) and the Trainer path through the cache with bf16.
        ("bench_train_step.py", ["chapter_plain_120", "ours_trainer_cached_dynamic_bf16"], 4),
        ("bench_inference.py", ["chapter_one_at_a_time_120", "ours_batched_dynamic", "ours_batched_dynamic_int8"], 4),
        # The whole command line (scripts/train.py, cold then warm cache, and --bf16) and the extrapolated plain loop.
        ("bench_seed_job.py", ["chapter_plain_120", "ours_seed_fast_cold", "ours_seed_fast_warm",
                               "ours_seed_fast_bf16_cold"], 3),
        # A 2-trial search (scripts/search.py, cold cache, best retrained) against the chapter's extrapolated loop.
        ("bench_search.py", ["chapter_plain_120", "ours_search"], 3),
        # Cost as the data grows: the fast recipe on 1x and 4x the data, through CSV files.
        ("bench_scale.py", ["1x", "4x"], 3),
        # The server under load: torch at 1 client, torch with --dtype int8 and onnxruntime at 32, no failed request.
        ("bench_serve.py", ["torch_1", "torch_int8_32", "onnx_float32_32", "torch_int8_32_workers1"], None),
    ],
)
def test_benchmark_quick_run_prints_a_table(tmp_path, script, cases, ratio_column):
    out = tmp_path / "results.json"
    result = run_bench(script, "--cases", *cases, "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Machine:" in result.stdout and "smoke run" in result.stdout
    rows = table_rows(result.stdout)
    assert len(rows) == len(cases)
    if ratio_column is None:  # bench_serve: good requests all answered, bad ones all 4xx
        assert all(row[8] == "0" and row[9].split(" / ")[0] == row[9].split(" / ")[1] for row in rows), rows
    else:
        assert rows[0][ratio_column] == "1.0x"  # the baseline against itself
    for row in rows if ratio_column is not None else []:
        assert row[ratio_column].endswith("x") and float(row[ratio_column][:-1]) > 0
    data = json.loads(out.read_text())
    assert list(data["results"]) == cases
    for case in cases:
        assert data["results"][case]["peak_rss_mb"] > 50  # a real measurement of a real process


def test_benchmark_rejects_an_unknown_case_in_one_line():
    result = run_bench("bench_inference.py", "--cases", "no_such_case", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: --cases: unknown ['no_such_case']")
    assert "Traceback" not in result.stderr
