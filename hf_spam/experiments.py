"""The chapter's experiment table and the LoRA comparison, each row a separate training job.

``configs/experiments/NN_name.yaml`` holds one row: a config for ``scripts/train.py`` that includes
the recipe (``configs/seed.yaml``) and changes one thing. ``run_experiments`` trains every row and
writes one table (markdown, CSV and JSON) with the chapter's columns; ``compare_lora`` trains the
recipe's ``last_block`` and ``lora`` on the same data and seed and compares cost and accuracy.

Each row runs in its own Python process (``python -m hf_spam.experiments --result FILE ...``):
its peak memory is then its own (a process's peak RSS never goes down, so in one process the
second row would inherit the first one's peak), one crashing or out-of-memory row cannot take the
table down, and no state (seeds, logging handlers, accelerate's singletons, CUDA caches) leaks from
one row into the next. The cost is a few seconds of imports per row.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .training import ConfigError, parse_args, write_json_atomic

# Flags added to every row in --quick mode: the tiny random-init GPT and one epoch.
QUICK_FLAGS = ["--model_size", "tiny", "--weights", "random", "--num_train_epochs", "1"]
# Flags added to every row (before the user's, so they can be overridden): no progress bars in the logs.
ROW_FLAGS = ["--disable_tqdm", "true"]
SKIPPED_WEIGHTS = "skipped: pretrained weights unavailable — pass --model_name_or_path LOCAL_DIR"
SKIPPED_QUICK_SIZE = "skipped: not run with --quick (the row only changes the model size)"
RESULT_FILE = "row_result.json"
LOG_FILE = "run.log"

TABLE_COLUMNS = [
    "#", "Experiment", "Model", "Weights", "Trainable token position", "Trainable layers", "Context length",
    "Training acc", "Validation acc", "Test acc", "Training time", "CPU/GPU", "Notes",
]
MODEL_LABELS = {
    "tiny": "tiny (2 blocks, 128 wide)",
    "gpt2-small": "gpt2-small (124M)",
    "gpt2-medium": "gpt2-medium (355M)",
    "gpt2-large": "gpt2-large (774M)",
    "gpt2-xl": "gpt2-xl (1558M)",
}
POSITION_LABELS = {"last": "last", "first": "first", "last_non_pad": "last real token", "mean": "mean of real tokens"}
# The chapter's LoRA row: rank 16, alpha 16 with the update scaled by alpha alone = peft's lora_alpha 256.
COMPARE_VARIANTS: dict[str, list[str]] = {
    "last_block": ["--trainable_layers", "last_block"],
    "lora": ["--trainable_layers", "lora", "--lora_rank", "16", "--lora_alpha", "256"],
}

_ROW_FILE = re.compile(r"^(\d+)[_-](.+)$")


class ExperimentError(ValueError):
    """A bad experiments folder, row file or runner argument."""


@dataclass(frozen=True)
class Experiment:
    """One row: ``NN_name.yaml`` gives number NN and name ``name``."""

    name: str
    path: Path
    number: int | None = None


@dataclass
class RowResult:
    """What one row produced: its status, metrics and resource use (all JSON-friendly)."""

    name: str
    number: int | None
    config: str
    argv: list[str]
    output_dir: str
    status: str  # ok | skipped | error
    reason: str | None = None  # the table's note for a skipped or failed row
    detail: str | None = None  # the full error message behind it
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training_seconds: float | None = None
    wall_seconds: float | None = None
    peak_rss_bytes: int | None = None
    peak_gpu_bytes: int | None = None
    device_name: str | None = None
    padded_length: int | None = None


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


def discover_experiments(folder: str | os.PathLike, only: list[str] | None = None) -> list[Experiment]:
    """The rows in ``folder`` (``*.yaml``), ordered by their number; ``only`` picks some by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExperimentError(f"{folder}: not a folder of experiment configs (*.yaml)")
    rows: list[Experiment] = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        match = _ROW_FILE.match(path.stem)
        rows.append(Experiment(match.group(2), path, int(match.group(1))) if match else Experiment(path.stem, path))
    if not rows:
        raise ExperimentError(f"{folder}: no experiment configs (*.yaml) found")
    names = [r.name for r in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExperimentError(f"{folder}: several files give the experiment name(s) {', '.join(duplicates)}")
    rows.sort(key=lambda r: (r.number is None, r.number or 0, r.name))
    if only:
        by_name = {r.name: r for r in rows} | {r.path.stem: r for r in rows}
        unknown = [n for n in only if n not in by_name]
        if unknown:
            raise ExperimentError(
                f"--only: unknown experiment(s) {', '.join(unknown)}; expected some of {', '.join(names)}"
            )
        wanted = {by_name[n].path for n in only}
        rows = [r for r in rows if r.path in wanted]
    return rows


def row_argv(config: str | os.PathLike, output_dir: str | os.PathLike, *, quick: bool = False,
             extra: list[str] | None = None) -> list[str]:
    """``scripts/train.py`` arguments of one row: its config, the quick flags, the user's flags, the output."""
    return [
        "--config", str(config), *ROW_FLAGS, *(QUICK_FLAGS if quick else []), *(extra or []),
        "--output_dir", str(output_dir),
    ]


def check_extra_flags(extra: list[str]) -> None:
    """Refuse flags the runner sets itself."""
    for flag in ("--config", "--output_dir"):
        if flag in extra:
            raise ExperimentError(f"{flag}: set by the runner for each row; give the runner's own --output_dir instead")


def row_settings(argv: list[str]) -> dict[str, Any]:
    """Parse a row's arguments like ``scripts/train.py`` would (so a bad row fails before anything runs)
    and keep what the table shows."""
    model_args, data_args, training_args = parse_args(argv)
    return {
        "model_size": model_args.model_size,
        "weights": model_args.weights,
        "model_name_or_path": model_args.model_name_or_path,
        "trainable_layers": model_args.trainable_layers,
        "pooling": model_args.pooling,
        "causal": not model_args.disable_causal_mask,
        "lora_rank": model_args.lora_rank,
        "lora_alpha": model_args.lora_alpha,
        "padding": data_args.padding,
        "max_length": data_args.max_length,
        "batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
    }


# --------------------------------------------------------------------------------------------
# One row in its own process
# --------------------------------------------------------------------------------------------


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory so far."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return int(getattr(psutil.Process().memory_info(), "peak_wset", 0)) or None
        except Exception:  # pragma: no cover - psutil missing or unsupported
            return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def peak_gpu_bytes() -> int | None:
    """Peak memory allocated by PyTorch on all CUDA devices (``None`` when CUDA was not used)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return int(sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())))


def describe_device(device: Any) -> str:
    """A short name for the table's CPU/GPU column (``NVIDIA H100 80GB HBM3``, ``CPU (x86_64, 2 threads)``)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple GPU (MPS)"
    if dev.type == "cpu":
        return f"CPU ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"
    return str(dev)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _trainer_runtime(out_dir: Path) -> float | None:
    """Trainer's own ``train_runtime`` (the training loop with its evaluations, like the chapter's timing)."""
    history = _read_json(out_dir / "log_history.json") or []
    for entry in reversed(history if isinstance(history, list) else []):
        if isinstance(entry, dict) and "train_runtime" in entry:
            return float(entry["train_runtime"])
    return None


def child_main(argv: list[str]) -> None:
    """``python -m hf_spam.experiments --result FILE TRAIN_ARGS...``: train one row, write its result.

    Exit status 0 (trained), 3 (skipped: pretrained weights unavailable) or 1 (failed).
    """
    if len(argv) < 2 or argv[0] != "--result":
        print("usage: python -m hf_spam.experiments --result RESULT.json [scripts/train.py arguments]", file=sys.stderr)
        sys.exit(2)
    from .training import run, user_errors
    from .weights import WeightsUnavailableError

    result_path, train_argv = Path(argv[1]), argv[2:]
    result: dict[str, Any] = {"status": "ok", "reason": None, "metrics": {}}
    out_dir: Path | None = None
    try:
        model_args, data_args, training_args = parse_args(train_argv)
        out_dir = Path(training_args.output_dir)
        result["metrics"] = run(model_args, data_args, training_args)
        result["device_name"] = describe_device(training_args.device)
    except WeightsUnavailableError as err:
        result.update(status="skipped", reason=str(err))
    except user_errors() as err:
        result.update(status="error", reason=str(err))
    except Exception as err:  # a crash: keep the traceback in the row's log, a line in the table
        traceback.print_exc()
        result.update(status="error", reason=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if result["status"] == "ok" and out_dir is not None:
        result["training_seconds"] = _trainer_runtime(out_dir) or result["metrics"].get("train_runtime_seconds")
        config = _read_json(out_dir / "config.json") or {}
        result["padded_length"] = config.get("padded_length") if isinstance(config, dict) else None
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["peak_gpu_bytes"] = peak_gpu_bytes()
    if result["status"] != "ok":
        print(f"{result['status']}: {result['reason']}", file=sys.stderr)
    write_json_atomic(result_path, result)
    sys.exit({"ok": 0, "skipped": 3}.get(result["status"], 1))


def run_row(name: str, argv: list[str], output_dir: str | os.PathLike, *, number: int | None = None,
            config: str = "", settings: dict[str, Any] | None = None) -> RowResult:
    """Train one row in a fresh Python process; its output (logs included) goes to ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / RESULT_FILE
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "hf_spam.experiments", "--result", str(result_path), *argv]
    started = time.perf_counter()
    with open(out / LOG_FILE, "w", encoding="utf-8") as log:
        returncode = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    wall = time.perf_counter() - started
    data = _read_json(result_path)
    if not isinstance(data, dict):
        data = {"status": "error", "reason": f"the training process exited with status {returncode} and no result "
                f"(see {out / LOG_FILE})"}
    given = {"name": name, "number": number, "config": config, "argv": list(argv), "output_dir": str(out),
             "settings": dict(settings or {}), "wall_seconds": wall}
    known = set(RowResult.__dataclass_fields__) - set(given)
    row = RowResult(**given, **{k: v for k, v in data.items() if k in known})
    if row.status == "skipped":  # the child only skips when the pretrained weights cannot be had
        row.reason, row.detail = SKIPPED_WEIGHTS, row.reason
    write_json_atomic(result_path, {**data, **row.__dict__})
    return row


def _log_tail(output_dir: str, lines: int = 15) -> str:
    try:
        text = (Path(output_dir) / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _drop_weights(output_dir: str) -> None:
    """Delete a row's weight files (the table keeps metrics, logs and plots)."""
    out = Path(output_dir)
    for folder in (out, out / "adapter"):
        for path in folder.glob("*.safetensors"):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _pct(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) else "—"


def _minutes(seconds: Any) -> str:
    """The chapter's "0.28 min"; seconds below 0.01 min (a cached or tiny run), where minutes would read 0.00."""
    if not isinstance(seconds, (int, float)):
        return "—"
    return f"{seconds / 60:.2f} min" if seconds >= 0.6 else f"{seconds:.2f} s"


def _mib(n: Any) -> str:
    return f"{int(n) / 2**20:,.0f} MiB" if isinstance(n, (int, float)) else "—"


def context_label(settings: dict[str, Any], padded_length: int | None) -> str:
    """The chapter's "Context length" column."""
    padding = settings.get("padding")
    length = padded_length or settings.get("max_length")
    if padding == "longest_train":
        text = f"longest train ex. ({length})" if length else "longest train ex."
    elif padding == "max_context":
        text = f"context length ({length})" if length else "context length"
    else:
        batch, accum = settings.get("batch_size", 1), settings.get("gradient_accumulation_steps", 1)
        if batch == 1:
            text = "variable: no padding (batch size 1"
            text += f", {accum} accumulated)" if accum > 1 else ")"
        else:
            text = f"variable: padded per batch (batch size {batch})"
    if settings.get("causal") is False:
        text += "; no causal mask"
    return text


def table_row(row: RowResult) -> dict[str, str]:
    """One row of the table, as strings, keyed by ``TABLE_COLUMNS``."""
    s, m = row.settings, row.metrics
    layers = s.get("trainable_layers", "")
    if layers == "lora":
        layers = f"LoRA (r={s.get('lora_rank')}, peft alpha={s.get('lora_alpha'):g})"
    if row.status == "ok":
        notes = ""
    elif row.status == "skipped":
        notes = row.reason or SKIPPED_WEIGHTS
    else:
        notes = f"failed: {row.reason}" if row.reason else "failed"
    return {
        "#": "" if row.number is None else str(row.number),
        "Experiment": row.name,
        "Model": MODEL_LABELS.get(s.get("model_size", ""), s.get("model_size", "")),
        "Weights": s.get("weights", ""),
        "Trainable token position": POSITION_LABELS.get(s.get("pooling", ""), s.get("pooling", "")),
        "Trainable layers": layers,
        "Context length": context_label(s, row.padded_length),
        "Training acc": _pct(m.get("train_accuracy")),
        "Validation acc": _pct(m.get("validation_accuracy")),
        "Test acc": _pct(m.get("test_accuracy")),
        "Training time": _minutes(row.training_seconds) if row.status == "ok" else "—",
        "CPU/GPU": row.device_name or "—",
        "Notes": notes,
    }


def markdown_table(columns: list[str], rows: list[dict[str, str]]) -> str:
    """A GitHub-flavoured markdown table (``|`` inside cells escaped)."""
    def cell(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temp file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_text(columns: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_results_table(results: list[RowResult], output_dir: str | os.PathLike, *, quick: bool = False,
                        command: str = "") -> list[Path]:
    """``results.md``, ``results.csv`` (the same table) and ``results.json`` (everything, raw) in ``output_dir``."""
    out = Path(output_dir)
    rows = [table_row(r) for r in results]
    header = ["# Fine-tuning experiments (Build a Large Language Model From Scratch, ch. 6, bonus table)", ""]
    if command:
        header += [f"Command: `{command}`", ""]
    if quick:
        header += [f"**Quick mode** (`{' '.join(QUICK_FLAGS)}` on top of each row, then the command's own flags): "
                   "a smoke test of the set-ups on a tiny random-init GPT, not the chapter's numbers.", ""]
    footer = [
        "",
        "Accuracies are over every example of each split; training time is Trainer's training loop "
        "(with its periodic evaluations). Rows that train only the top of a frozen model (last_layer, "
        "last_block, last_two_blocks) use the frozen-trunk feature cache unless run with "
        "`--cache_features false`, so their times are not the chapter's plain loop.",
    ]
    md = "\n".join([*header, markdown_table(TABLE_COLUMNS, rows), *footer]) + "\n"
    paths = [out / "results.md", out / "results.csv", out / "results.json"]
    write_text_atomic(paths[0], md)
    write_text_atomic(paths[1], csv_text(TABLE_COLUMNS, rows))
    write_json_atomic(paths[2], {"quick": quick, "command": command, "rows": [r.__dict__ for r in results]})
    return paths


# --------------------------------------------------------------------------------------------
# The experiments runner
# --------------------------------------------------------------------------------------------


def run_experiments(
    experiments_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    only: list[str] | None = None,
    quick: bool = False,
    extra: list[str] | None = None,
    keep_models: bool = False,
    resume: bool = False,
    command: str = "",
    echo: Any = print,
) -> list[RowResult]:
    """Train each row of ``experiments_dir`` (in its own process) and write the table to ``output_dir``."""
    extra = list(extra or [])
    check_extra_flags(extra)
    out = Path(output_dir)
    experiments = discover_experiments(experiments_dir, only)
    # Parse every row first: a bad row or flag fails here, before hours of training.
    planned = []
    for exp in experiments:
        row_dir = out / exp.name
        argv = row_argv(exp.path, row_dir, quick=quick, extra=extra)
        try:
            declared = row_settings(row_argv(exp.path, row_dir))
            settings = row_settings(argv)
        except ConfigError as err:
            raise ExperimentError(f"{exp.path}: {err}") from None
        planned.append((exp, row_dir, argv, declared, settings))

    results: list[RowResult] = []
    unavailable: dict[tuple, str] = {}  # weights source -> reason, so each missing checkpoint is tried once
    for i, (exp, row_dir, argv, declared, settings) in enumerate(planned, 1):
        common = {"name": exp.name, "number": exp.number, "config": str(exp.path), "argv": argv,
                  "output_dir": str(row_dir), "settings": settings}
        source = (settings["model_size"], settings["model_name_or_path"])
        previous = _read_json(row_dir / RESULT_FILE) if resume else None
        if quick and declared["model_size"] != "gpt2-small":
            row = RowResult(status="skipped", reason=SKIPPED_QUICK_SIZE, **{**common, "settings": declared})
        elif settings["weights"] == "pretrained" and source in unavailable:
            row = RowResult(status="skipped", reason=SKIPPED_WEIGHTS, detail=unavailable[source], **common)
        elif isinstance(previous, dict) and previous.get("status") == "ok" and previous.get("argv") == argv:
            known = set(RowResult.__dataclass_fields__) - set(common)
            row = RowResult(**common, **{k: v for k, v in previous.items() if k in known})
            echo(f"[{i}/{len(planned)}] {exp.name}: reusing the finished run in {row_dir}")
        else:
            echo(f"[{i}/{len(planned)}] {exp.name}: training ({row_dir / LOG_FILE}) ...")
            row = run_row(exp.name, argv, row_dir, number=exp.number, config=str(exp.path), settings=settings)
            if row.status == "skipped":
                unavailable[source] = row.detail or ""
            if not keep_models:
                _drop_weights(str(row_dir))
        if row.status == "ok":
            m = row.metrics
            echo(f"    {exp.name}: test accuracy {_pct(m.get('test_accuracy'))}, {_minutes(row.training_seconds)}")
        elif row.status == "skipped":
            echo(f"    {exp.name}: {row.reason}" + (f" ({row.detail})" if row.detail else ""))
        else:
            echo(f"    {exp.name}: FAILED: {row.reason}\n{_log_tail(row.output_dir)}")
        results.append(row)
        write_results_table(results, out, quick=quick, command=command)  # a partial table survives a crash
    return results


def _split_folder_arg(argv: list[str], default: Path | None) -> tuple[Path | None, list[str]]:
    """An optional leading positional folder; everything else is flags (so a flag's value is never taken for it)."""
    if argv and not argv[0].startswith("-"):
        return Path(argv[0]), argv[1:]
    return default, argv


def run_experiments_main(argv: list[str] | None = None, default_experiments_dir: Path | None = None) -> None:
    """Entry point of ``scripts/run_experiments.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="run_experiments.py", allow_abbrev=False,
        description="Train every row of an experiments folder (one YAML per row) and write the chapter's table "
        "(results.md, results.csv, results.json). Flags not listed here (--data_file, --model_name_or_path, "
        "--max_steps, ...) go to every row's scripts/train.py.",
        usage="%(prog)s [EXPERIMENTS_DIR] [--only NAMES] [--quick] [--output_dir DIR] [scripts/train.py flags]",
    )
    parser.add_argument("--only", help="Comma-separated experiment names (file names without their number).")
    parser.add_argument("--quick", action="store_true",
                        help="Tiny random-init model, one epoch: the whole table on a CPU in minutes.")
    parser.add_argument("--output_dir", help="Where rows and the table go (default runs/experiments[-quick]).")
    parser.add_argument("--keep_models", action="store_true", help="Keep each row's model weights (default: deleted).")
    parser.add_argument("--resume", action="store_true",
                        help="Reuse rows already finished in OUTPUT_DIR with the same arguments.")
    folder, rest = _split_folder_arg(argv, default_experiments_dir)
    args, extra = parser.parse_known_args(rest)
    if folder is None:
        parser.error("EXPERIMENTS_DIR: required (e.g. configs/experiments)")
    output_dir = Path(args.output_dir or ("runs/experiments-quick" if args.quick else "runs/experiments"))
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    command = " ".join(["python scripts/run_experiments.py", *argv])
    try:
        results = run_experiments(folder, output_dir, only=only, quick=args.quick, extra=extra,
                                  keep_models=args.keep_models, resume=args.resume, command=command)
    except (ExperimentError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print()
    print((output_dir / "results.md").read_text(encoding="utf-8"))
    print(f"Wrote {output_dir / 'results.md'}, results.csv and results.json")
    failed = [r.name for r in results if r.status == "error"]
    if failed:
        print(f"error: {len(failed)} row(s) failed: {', '.join(failed)} (see their {LOG_FILE})", file=sys.stderr)
        sys.exit(1)


# --------------------------------------------------------------------------------------------
# LoRA vs last block
# --------------------------------------------------------------------------------------------

COMPARE_COLUMNS = [
    "Trainable layers", "Trainable parameters", "Share of all parameters", "Wall time", "Training time",
    "Peak memory (RSS)", "Peak GPU memory", "Training acc", "Validation acc", "Test acc", "Training F1",
    "Validation F1", "Test F1", "CPU/GPU",
]


def comparison_row(row: RowResult) -> dict[str, str]:
    m = row.metrics
    trainable, total = m.get("trainable_parameters"), m.get("total_parameters")
    f1 = {split: (f"{m[f'{split}_f1']:.4f}" if isinstance(m.get(f"{split}_f1"), (int, float)) else "—")
          for split in ("train", "validation", "test")}
    return {
        "Trainable layers": table_row(row)["Trainable layers"] if row.settings else row.name,
        "Trainable parameters": f"{int(trainable):,}" if isinstance(trainable, (int, float)) else "—",
        "Share of all parameters": _pct(trainable / total) if trainable is not None and total else "—",
        "Wall time": f"{row.wall_seconds:.1f} s" if row.wall_seconds is not None else "—",
        "Training time": f"{row.training_seconds:.1f} s" if row.training_seconds is not None else "—",
        "Peak memory (RSS)": _mib(row.peak_rss_bytes),
        "Peak GPU memory": _mib(row.peak_gpu_bytes),
        "Training acc": _pct(m.get("train_accuracy")),
        "Validation acc": _pct(m.get("validation_accuracy")),
        "Test acc": _pct(m.get("test_accuracy")),
        "Training F1": f1["train"],
        "Validation F1": f1["validation"],
        "Test F1": f1["test"],
        "CPU/GPU": row.device_name or "—",
    }


def plot_comparison(results: list[RowResult], path: Path) -> Path:
    """Bar charts: trainable parameters (log scale), training time, peak memory, test accuracy and F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    use_gpu = any(r.peak_gpu_bytes for r in results)
    panels = [
        ("Trainable parameters", [r.metrics.get("trainable_parameters") or 0 for r in results], True),
        ("Training time (s)", [r.training_seconds or 0 for r in results], False),
        ("Peak GPU memory (MiB)" if use_gpu else "Peak memory, RSS (MiB)",
         [((r.peak_gpu_bytes if use_gpu else r.peak_rss_bytes) or 0) / 2**20 for r in results], False),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, (title, values, log) in zip(axes, panels):
        bars = ax.bar(names, values, color=colors[: len(names)])
        ax.set_title(title, fontsize=10)
        if log and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 10 else f"{v:.2f}" for v in values], fontsize=8)
    ax = axes[3]
    width = 0.38
    xs = range(len(results))
    acc = [100 * (r.metrics.get("test_accuracy") or 0) for r in results]
    f1 = [100 * (r.metrics.get("test_f1") or 0) for r in results]
    b1 = ax.bar([x - width / 2 for x in xs], acc, width, label="test accuracy")
    b2 = ax.bar([x + width / 2 for x in xs], f1, width, label="test F1")
    ax.bar_label(b1, fmt="%.1f", fontsize=8)
    ax.bar_label(b2, fmt="%.1f", fontsize=8)
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 110)
    ax.set_title("Test accuracy / F1 (%)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


def compare_lora(
    train_flags: list[str],
    output_dir: str | os.PathLike,
    *,
    base_config: str | os.PathLike,
    echo: Any = print,
) -> list[RowResult]:
    """Train ``last_block`` and ``lora`` with the same flags, data and seed; write comparison.md/.json/.png."""
    if "--trainable_layers" in train_flags:
        raise ExperimentError("--trainable_layers: compare_lora trains last_block and lora itself; drop the flag")
    check_extra_flags(train_flags)
    out = Path(output_dir)
    planned = []
    for name, variant in COMPARE_VARIANTS.items():
        # The variant's flags come first so that the user's --lora_rank/--lora_alpha win.
        argv = ["--config", str(base_config), *ROW_FLAGS, *variant, *train_flags, "--output_dir", str(out / name)]
        try:
            planned.append((name, argv, row_settings(argv)))
        except ConfigError as err:
            raise ExperimentError(str(err)) from None
    results = []
    for name, argv, settings in planned:
        echo(f"{name}: training ({out / name / LOG_FILE}) ...")
        row = run_row(name, argv, out / name, config=str(base_config), settings=settings)
        if row.status != "ok":
            reason = f"{row.reason} ({row.detail})" if row.detail else row.reason
            echo(f"    {name}: FAILED: {reason}\n{_log_tail(row.output_dir)}")
        results.append(row)
    columns = [c for c in COMPARE_COLUMNS if c != "Peak GPU memory" or any(r.peak_gpu_bytes for r in results)]
    rows = [comparison_row(r) for r in results]
    table = markdown_table(columns, rows)
    md = "\n".join([
        "# LoRA vs. training the last block", "",
        f"Same data, seed and recipe ({base_config}); flags: `{' '.join(train_flags) or '(none)'}`.", "",
        table, "",
        "Trainable parameters are those the optimizer updates; the share is of every parameter in the trained "
        "model (LoRA's added matrices included). Wall time is the whole process (start-up, data, training, "
        "evaluation, saving); training time is Trainer's loop. Peak memory is the process's peak resident set "
        "size" + ("; peak GPU memory is PyTorch's peak allocation." if "Peak GPU memory" in columns else "."),
    ]) + "\n"
    write_text_atomic(out / "comparison.md", md)
    write_json_atomic(out / "comparison.json", {"base_config": str(base_config), "flags": train_flags,
                                                "rows": [r.__dict__ for r in results]})
    if all(r.status == "ok" for r in results):
        plot_comparison(results, out / "comparison.png")
    echo("")
    echo(table)
    return results


def compare_lora_main(argv: list[str] | None = None, default_config: Path | None = None) -> None:
    """Entry point of ``scripts/compare_lora.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="compare_lora.py", allow_abbrev=False,
        description="Train last_block and LoRA (rank 16, peft lora_alpha 256 = the chapter's alpha 16) with the same "
        "data, seed and recipe, and compare trainable parameters, time, peak memory, accuracy and F1 "
        "(comparison.md, comparison.json, comparison.png). Other flags go to scripts/train.py.",
        usage="%(prog)s --output_dir DIR [--config RECIPE.yaml] [scripts/train.py flags]",
    )
    parser.add_argument("--output_dir", required=True, help="Where both runs and the comparison go.")
    parser.add_argument("--config", default=str(default_config) if default_config else None,
                        help="The recipe both runs start from (default configs/seed.yaml).")
    args, flags = parser.parse_known_args(argv)
    if not args.config:
        parser.error("--config: required")
    try:
        results = compare_lora(flags, args.output_dir, base_config=args.config)
    except (ExperimentError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"\nWrote {Path(args.output_dir) / 'comparison.md'}, comparison.json"
          + (", comparison.png" if all(r.status == "ok" for r in results) else ""))
    if any(r.status != "ok" for r in results):
        print("error: " + "; ".join(f"{r.name}: {r.reason}" for r in results if r.status != "ok"), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    child_main(sys.argv[1:])
