"""The ``hf-spam`` command: predict, evaluate, and the project's other entry points.

    hf-spam predict --model FOLDER_OR_ID "text" ...        # or --file messages.txt, or stdin
    hf-spam evaluate --model FOLDER [--data_file F | --labelled_file F] [--output_dir DIR]
    hf-spam train ... | sanity ... | prepare-data ... | push FOLDER --repo_id NAME

``predict`` writes one JSON line per input message, in input order, as it goes (bounded memory on
any input size). Errors are one ``error: ...`` line on stderr: exit code 2 for bad input (missing
files, bad arguments, a folder that is not a model), 1 for runtime failures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Subcommands handled by other modules' own ``main(argv)`` (imported only when used).
DELEGATED = {
    "train": ("hf_spam.training", "Fine-tune GPT-2 as a spam classifier (Trainer); see hf-spam train --help"),
    "sanity": ("hf_spam.sanity", "Sanity checks of the set-up; see hf-spam sanity --help"),
    "prepare-data": ("hf_spam.data", "Write the chapter's train/validation/test CSV files"),
    "push": ("hf_spam.hub", "Push a trained model folder to the Hugging Face Hub"),
}


class CliError(ValueError):
    """Bad command-line input (reported as one line, exit code 2)."""


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


def _load_classifier(args: argparse.Namespace) -> Any:
    from transformers.utils import logging as hf_logging

    from .predict import SpamClassifier

    hf_logging.disable_progress_bar()  # keep stderr for errors; stdout is the JSON lines
    return SpamClassifier.from_pretrained(
        args.model, device=args.device, dtype="bfloat16" if args.bf16 else None,
        trust_remote_code=args.trust_remote_code,
    )


def _lines_of(path: str) -> Iterator[str]:
    """The lines of a UTF-8 file (or ``-`` for stdin), read lazily; only ``\\n`` ends a line."""
    if path == "-":
        stream, name = sys.stdin, "<stdin>"
        stream.reconfigure(encoding="utf-8", newline="\n")
    else:
        stream, name = open(path, encoding="utf-8", newline="\n"), path  # noqa: SIM115 - closed below
    number = 0
    try:
        for number, line in enumerate(stream, start=1):  # noqa: B007 - `number` is read in the error
            yield line
    except UnicodeDecodeError as err:
        raise CliError(f"{name}: not UTF-8 text ({err.reason}) after line {number}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def cmd_predict(args: argparse.Namespace) -> None:
    if args.texts and args.file:
        raise CliError("predict: give texts or --file, not both")
    if args.batch_size < 1 or args.chunk_size < 1:
        raise CliError("predict: --batch_size and --chunk_size must be positive")
    if args.file and args.file != "-" and not Path(args.file).is_file():
        what = "is a directory" if Path(args.file).is_dir() else "file not found"
        raise CliError(f"{args.file}: {what}; expected a text file with one message per line")
    classifier = _load_classifier(args)
    if args.texts:  # texts given as arguments are used exactly as given
        records = iter(classifier.predict(args.texts, batch_size=args.batch_size))
    else:
        lines = _lines_of(args.file or "-")
        records = classifier.predict_stream(lines, batch_size=args.batch_size, chunk_size=args.chunk_size)
    out = sys.stdout
    out.reconfigure(encoding="utf-8")
    written = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        written += 1
        if written % args.chunk_size == 0:
            out.flush()  # a chunk's results go out before the next chunk is read
    out.flush()


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def format_confusion_matrix(cm: Any, labels: list[str]) -> str:
    """A text table of ``[true, predicted]`` counts."""
    width = max(8, *(len(name) + 2 for name in labels))
    lines = ["Confusion matrix (rows: true label, columns: predicted label)",
             " " * width + "".join(f"{name:>{width}}" for name in labels)]
    for name, row in zip(labels, cm):
        lines.append(f"{name:<{width}}" + "".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines)


def _save_confusion_png(cm: Any, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(textwrap.fill(title, 48), fontsize=8)
    peak = max(int(cm.max()), 1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if cm[i, j] > peak / 2 else "black")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .metrics import compute_spam_metrics, confusion_matrix

    if args.labelled_file:
        from .data import LABEL_NAMES, read_sms_file

        frame = read_sms_file(args.labelled_file)
        texts = frame["Text"].tolist()
        references = [LABEL_NAMES.index(label) for label in frame["Label"]]
        source = f"all {len(texts)} messages of {Path(args.labelled_file).name}"
    else:
        from .data import load_sms_spam

        test = load_sms_spam(args.data_file, cache_dir=args.cache_dir)["test"]
        texts, references = list(test["text"]), [int(x) for x in test["label"]]
        name = Path(args.data_file).name if args.data_file else "the SMS Spam Collection"
        source = f"the test split ({len(texts)} messages) of {name}, balanced recipe"
    if args.output_dir and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise CliError(f"{args.output_dir}: exists and is not a folder; expected an output folder")
    classifier = _load_classifier(args)
    results = classifier.predict(texts, batch_size=args.batch_size, return_text=False)
    spam = classifier.labels[classifier.spam_index]
    predictions = [1 if r["label"] == spam else 0 for r in results]
    metrics = compute_spam_metrics(predictions, references)
    cm = confusion_matrix(predictions, references)
    labels = ["ham", "spam"]
    model_name = Path(args.model).name if Path(args.model).is_dir() else args.model

    print(f"Model {model_name} on {source}")
    for key in ("accuracy", "precision", "recall", "f1"):
        print(f"  {key:<10} {metrics[key] * 100:6.2f}%")
    print(format_confusion_matrix(cm, labels))
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = {
            **{k: float(v) for k, v in metrics.items()},
            "examples": len(texts),
            "confusion_matrix": {"labels": labels, "rows_true_columns_predicted": cm.tolist()},
            "model": model_name,
            "data": source,
        }
        _write_json_atomic(out / "eval_metrics.json", report)
        _save_confusion_png(cm, labels, out / "confusion_matrix.png", f"{model_name}: {source}")
        print(f"Wrote {out / 'eval_metrics.json'} and {out / 'confusion_matrix.png'}")


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder written by training, or a Hub model id")
    p.add_argument("--batch_size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument("--bf16", action="store_true", help="run under bfloat16 autocast (faster on recent GPUs/CPUs)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--trust_remote_code", action="store_true",
                   help="run the folder's own modeling_gpt.py instead of the installed hf_spam classes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-spam",
        description="GPT-2 as an SMS spam classifier (Build a Large Language Model From Scratch, ch. 6).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hf-spam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("predict", help="label messages as ham or spam (JSON lines on stdout)",
                       description="Label messages as ham or spam. Texts come from the arguments, --file (one "
                       "message per line) or stdin; one JSON line per message goes to stdout, in input order.")
    _add_model_args(p)
    p.add_argument("texts", nargs="*", help="messages to classify (default: read --file or stdin)")
    p.add_argument("--file", default=None, help="UTF-8 text file with one message per line ('-' for stdin)")
    p.add_argument("--chunk_size", type=int, default=1024,
                   help="lines read and sorted at a time; bounds memory (default 1024)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="accuracy, precision, recall, F1 and a confusion matrix",
                       description="Recompute the test metrics (spam positive) on the chapter's test split, or "
                       "on every message of a labelled file in the SMS Spam Collection format.")
    _add_model_args(p)
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data_file", default=None,
                      help="local SMSSpamCollection file: evaluate on its balanced test split (default: download)")
    data.add_argument("--labelled_file", default=None, help="file of 'ham|spam<TAB>text' lines: evaluate on all")
    p.add_argument("--cache_dir", default=None, help="download cache for the collection")
    p.add_argument("--output_dir", default=None, help="write eval_metrics.json and confusion_matrix.png here")
    p.set_defaults(func=cmd_evaluate)

    for name, (_module, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _run_delegated(command: str, argv: list[str]) -> None:
    from importlib import import_module

    module_name = DELEGATED[command][0]
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        module = None
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"error: hf-spam {command} is not available in this installation ({module_name}.main missing)",
              file=sys.stderr)
        sys.exit(1)
    entry(argv)


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CliError, FileNotFoundError, ValueError, OSError]
    return tuple(errors)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``hf-spam`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        _run_delegated(argv[0], argv[1:])
        return
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        sys.exit(2)
    try:
        args.func(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except _known_errors() as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:  # runtime failures: tokenizer unavailable, out of memory, Hub errors ...
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(1)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    main()
