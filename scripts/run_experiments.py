"""Regenerate the chapter's experiment table: one run of scripts/train.py per row of configs/experiments/.

    python scripts/run_experiments.py configs/experiments --quick --data_file SMSSpamCollection
    python scripts/run_experiments.py configs/experiments --only last_block,lora,first_token
    python scripts/run_experiments.py configs/experiments --model_name_or_path LOCAL_GPT2_DIR

Each row file (``NN_name.yaml``) includes the recipe (configs/seed.yaml) and changes one thing. Every row
is parsed first (a bad row fails before hours of training), then trained in its own process (its own
peak memory; a crashing row cannot take the table down), and its metrics.json collected. Writes
OUTPUT_DIR/results.md, results.csv and results.json (default runs/experiments[-quick]) after every row;
each row's run (metrics, plots, model) stays under OUTPUT_DIR/NAME and its output in OUTPUT_DIR/NAME.log.
Flags not listed in --help go to every row's scripts/train.py; a --hub_token among them reaches the rows
as HF_TOKEN, never on a command line or in a file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from measure import last_error_line, markdown_table, run_measured

from hf_spam.arguments import parse_args
from hf_spam.errors import EXIT_UNAVAILABLE, HfSpamError, hide_secrets, run_main
from hf_spam.files import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
QUICK_FLAGS = ["--model_size", "tiny", "--weights", "random", "--num_train_epochs", "1"]
# Before the user's flags, which may override them. A row's folder is the runner's: each run replaces it.
ROW_FLAGS = ["--disable_tqdm", "true", "--overwrite_output_dir", "true"]
RESULT_FILE = "row_result.json"
SKIPPED_QUICK_SIZE = "skipped: not run with --quick (the row only changes the model size)"
TABLE_COLUMNS = ["#", "Experiment", "Model", "Weights", "Trainable token position", "Trainable layers",
                 "Context length", "Training acc", "Validation acc", "Test acc", "Training time", "CPU/GPU", "Notes"]
MODEL_LABELS = {"tiny": "tiny (2 blocks, 128 wide)", "gpt2-small": "gpt2-small (124M)",
                "gpt2-medium": "gpt2-medium (355M)", "gpt2-large": "gpt2-large (774M)", "gpt2-xl": "gpt2-xl (1558M)"}
POSITION_LABELS = {"last": "last", "first": "first", "last_non_pad": "last real token", "mean": "mean of real tokens"}


@dataclass
class Row:
    """One training run and what it produced (all JSON-friendly)."""

    name: str
    number: int | None
    argv: list[str]
    output_dir: str
    settings: dict[str, Any]
    status: str = "planned"  # ok | skipped | error
    reason: str | None = None  # why a row was skipped or failed: its one-line error
    metrics: dict[str, Any] = field(default_factory=dict)
    training_seconds: float | None = None
    wall_seconds: float | None = None
    peak_rss_mb: float | None = None
    padded_length: int | None = None


def row_settings(argv: list[str]) -> dict[str, Any]:
    """Parse a row's arguments as scripts/train.py does (so a bad row fails before anything runs), keeping
    what the tables show."""
    model_args, data_args, args = parse_args(argv)
    return {"model_size": model_args.model_size, "weights": model_args.weights,
            "model_name_or_path": model_args.model_name_or_path, "trainable_layers": model_args.trainable_layers,
            "pooling": model_args.pooling, "causal": not model_args.disable_causal_mask,
            "lora_rank": model_args.lora_rank, "lora_alpha": model_args.lora_alpha, "padding": data_args.padding,
            "max_length": data_args.max_length, "batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def log_file(row: Row) -> Path:
    """Where a row's output goes: beside its folder, which the run itself replaces."""
    return Path(f"{row.output_dir}.log")


def run_row(row: Row, env: dict[str, str] | None = None) -> Row:
    """Train one row in a fresh process (its output in OUTPUT_DIR/NAME.log) and collect its results."""
    out = Path(row.output_dir)
    (out / "metrics.json").unlink(missing_ok=True)
    measured = run_measured([sys.executable, str(ROOT / "scripts" / "train.py"), *row.argv], log_file(row),
                            env={"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", **(env or {})})
    row.wall_seconds, row.peak_rss_mb = measured["wall_s"], measured["peak_rss_mb"]
    if measured["status"] == 0 and (metrics := _json(out / "metrics.json")):
        history = _json(out / "log_history.json") or []
        row.status, row.metrics = "ok", metrics
        # Trainer's own train_runtime: the training loop with its evaluations, like the chapter's timing.
        row.training_seconds = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
        row.padded_length = (_json(out / "config.json") or {}).get("padded_length")
    else:
        reason = last_error_line(log_file(row)) or f"exit status {measured['status']} (see {log_file(row)})"
        row.status, row.reason = ("skipped" if measured["status"] == EXIT_UNAVAILABLE else "error"), reason
    write_json(out / RESULT_FILE, public(row))
    return row


def public(row: Row) -> dict[str, Any]:
    """A row as written to files: its command line without secret values."""
    return {**asdict(row), "argv": hide_secrets(row.argv)}


def token_to_environment(flags: list[str]) -> tuple[list[str], dict[str, str]]:
    """``--hub_token T`` taken out of the rows' command lines and handed to them as ``HF_TOKEN``, so that no
    file, log or launcher message of a row shows it."""
    flags, env = list(flags), {}
    for i, flag in enumerate(flags):
        if flag == "--hub_token" and i + 1 < len(flags):
            env["HF_TOKEN"] = flags.pop(i + 1)
            flags.pop(i)
            break
        if flag.startswith("--hub_token="):
            env["HF_TOKEN"] = flags.pop(i).split("=", 1)[1]
            break
    return flags, env


def output_folder(path: str) -> Path:
    """The runner's output folder, refused when it is a file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise HfSpamError(f"--output_dir {path}: exists and is not a folder")
    return Path(path)


def context_label(settings: dict[str, Any], padded_length: int | None) -> str:
    """The chapter's "Context length" column."""
    length = padded_length or settings.get("max_length")
    if settings.get("padding") == "longest_train":
        text = f"longest train ex. ({length})" if length else "longest train ex."
    elif settings.get("padding") == "max_context":
        text = f"context length ({length})" if length else "context length"
    elif settings.get("batch_size", 1) == 1:
        accum = settings.get("gradient_accumulation_steps", 1)
        text = f"variable: no padding (batch size 1{f', {accum} accumulated' if accum > 1 else ''})"
    else:
        text = f"variable: padded per batch (batch size {settings.get('batch_size')})"
    return text + ("; no causal mask" if settings.get("causal") is False else "")


def pct(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) else "—"


def layers_label(settings: dict[str, Any]) -> str:
    if settings.get("trainable_layers") == "lora":
        return f"LoRA (r={settings['lora_rank']}, peft alpha={settings['lora_alpha']:g})"
    return settings.get("trainable_layers", "")


def table_row(row: Row) -> list[str]:
    """One row of the table, in ``TABLE_COLUMNS`` order."""
    s, m = row.settings, row.metrics
    seconds = row.training_seconds
    time_text = "—" if seconds is None else f"{seconds / 60:.2f} min" if seconds >= 0.6 else f"{seconds:.2f} s"
    notes = "" if row.status == "ok" else row.reason if row.status == "skipped" else f"failed: {row.reason}"
    if row.status == "skipped" and not str(notes).startswith("skipped"):
        notes = f"skipped: {notes}"
    return ["" if row.number is None else str(row.number), row.name, MODEL_LABELS.get(s["model_size"], s["model_size"]),
            s["weights"], POSITION_LABELS.get(s["pooling"], s["pooling"]), layers_label(s),
            context_label(s, row.padded_length), pct(m.get("train_accuracy")), pct(m.get("validation_accuracy")),
            pct(m.get("test_accuracy")), time_text if row.status == "ok" else "—", m.get("device_name", "—"), notes]


def write_results(rows: list[Row], out: Path, *, quick: bool, command: str) -> None:
    """results.md and results.csv (the table) and results.json (everything)."""
    cells = [table_row(r) for r in rows]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([TABLE_COLUMNS, *cells])
    header = ["# Fine-tuning experiments (Build a Large Language Model From Scratch, ch. 6, bonus table)", "",
              f"Command: `{command}`", ""]
    if quick:
        header += [f"**Quick mode** (`{' '.join(QUICK_FLAGS)}` on top of each row, then the command's own flags): a "
                   "smoke test of the set-ups on a tiny random-init GPT, not the chapter's numbers.", ""]
    footer = ["", "Accuracies are over every example of each split; training time is Trainer's training loop (with "
              "its periodic evaluations). Rows that train only the top of a frozen model use the frozen-trunk "
              "feature cache unless run with `--cache_features false`, so their times are not the chapter's loop."]
    write_text(out / "results.md", "\n".join([*header, markdown_table(TABLE_COLUMNS, cells), *footer]) + "\n")
    write_text(out / "results.csv", buffer.getvalue())
    write_json(out / "results.json", {"quick": quick, "command": command, "rows": [public(r) for r in rows]})


def discover(folder: Path, only: list[str] | None) -> list[tuple[int | None, str, Path]]:
    """The rows of ``folder`` as (number, name, file), ordered by number; ``only`` picks some by name."""
    if not folder.is_dir():
        raise HfSpamError(f"{folder}: not a folder of experiment configs (*.yaml)")
    rows = []
    for path in sorted(folder.glob("*.y*ml")):
        match = re.match(r"^(\d+)[_-](.+)$", path.stem)
        rows.append((int(match[1]), match[2], path) if match else (None, path.stem, path))
    if not rows:
        raise HfSpamError(f"{folder}: no experiment configs (*.yaml) found")
    names = [name for _, name, _ in rows]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise HfSpamError(f"{folder}: several files give the experiment name(s) {', '.join(duplicates)}")
    rows.sort(key=lambda r: (r[0] is None, r[0] or 0, r[1]))
    unknown = [n for n in only or [] if n not in names and n not in {p.stem for _, _, p in rows}]
    if unknown:
        raise HfSpamError(f"--only: unknown experiment(s) {', '.join(unknown)}; expected some of {', '.join(names)}")
    return [r for r in rows if not only or r[1] in only or r[2].stem in only]


def check_flags(flags: list[str]) -> None:
    """The runner sets a row's config and output folder itself."""
    for flag in ("--config", "--output_dir"):
        if any(f == flag or f.startswith(f"{flag}=") for f in flags):
            raise HfSpamError(f"{flag}: set by the runner for each row; give the runner's own --output_dir instead")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="run_experiments.py", allow_abbrev=False, description=__doc__.split("\n\n")[0],
        usage="%(prog)s [EXPERIMENTS_DIR] [--only NAMES] [--quick] [--output_dir DIR] [scripts/train.py flags]")
    parser.add_argument("--only", help="Comma-separated experiment names (file names without their number).")
    parser.add_argument("--quick", action="store_true", help="Tiny random-init model, one epoch: minutes on a CPU.")
    parser.add_argument("--output_dir", help="Where rows and the table go (default runs/experiments[-quick]).")
    parser.add_argument("--keep_models", action="store_true", help="Keep each row's weights (default: deleted).")
    parser.add_argument("--resume", action="store_true", help="Reuse rows finished in OUTPUT_DIR with the same flags.")
    folder = Path(argv.pop(0)) if argv and not argv[0].startswith("-") else ROOT / "configs" / "experiments"
    args, extra = parser.parse_known_args(argv)
    check_flags(extra)
    extra, env = token_to_environment(extra)
    out = output_folder(args.output_dir or ("runs/experiments-quick" if args.quick else "runs/experiments"))
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    command = " ".join(hide_secrets(["python scripts/run_experiments.py", *sys.argv[1:]]))

    rows = []  # every row parsed first: a bad row or flag fails here, before any training
    for number, name, path in discover(folder, only):
        row_argv = ["--config", str(path), *ROW_FLAGS, *(QUICK_FLAGS if args.quick else []), *extra,
                    "--output_dir", str(out / name)]
        try:
            declared = row_settings(["--config", str(path), "--output_dir", str(out / name)])
            row = Row(name, number, row_argv, str(out / name), row_settings(row_argv))
        except HfSpamError as err:
            raise HfSpamError(f"{path}: {err}") from None
        if args.quick and declared["model_size"] != "gpt2-small":
            row.settings, row.status, row.reason = declared, "skipped", SKIPPED_QUICK_SIZE
        rows.append(row)

    unavailable: dict[tuple, str] = {}  # weights source -> reason: each missing checkpoint is tried once
    for i, row in enumerate(rows, 1):
        source = (row.settings["model_size"], row.settings["model_name_or_path"])
        previous = _json(Path(row.output_dir) / RESULT_FILE) if args.resume else None
        if row.status == "skipped":
            pass
        elif row.settings["weights"] == "pretrained" and source in unavailable:
            row.status, row.reason = "skipped", unavailable[source]
        elif isinstance(previous, dict) and previous.get("status") == "ok" and previous.get("argv") == hide_secrets(
                row.argv):
            rows[i - 1] = row = Row(**{**previous, "argv": row.argv})
            print(f"[{i}/{len(rows)}] {row.name}: reusing the finished run in {row.output_dir}")
        else:
            print(f"[{i}/{len(rows)}] {row.name}: training ({log_file(row)}) ...", flush=True)
            run_row(row, env)
            if row.status == "skipped":
                unavailable[source] = row.reason
            for weights in [] if args.keep_models else Path(row.output_dir).glob("**/*.safetensors"):
                weights.unlink()
        summary = {"ok": f"test accuracy {pct(row.metrics.get('test_accuracy'))}", "skipped": row.reason,
                   "error": f"FAILED: {row.reason}"}
        print(f"    {row.name}: {summary[row.status]}", flush=True)
        write_results(rows[:i], out, quick=args.quick, command=command)  # a partial table survives a crash
    print("\n" + (out / "results.md").read_text(encoding="utf-8"))
    print(f"Wrote {out}/results.md, results.csv, results.json")
    if failed := [r.name for r in rows if r.status == "error"]:
        print(f"error: {len(failed)} row(s) failed: {', '.join(failed)} (see their NAME.log)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
