"""A run's output folder: checked and cleared before any work, the checkpoint a run resumes from, and its log."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import datasets
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .errors import HfSpamError

logger = logging.getLogger("hf_spam")
history = logging.getLogger("hf_spam.history")


def prepare_output_dir(args: TrainingArguments) -> Path:
    """The output folder, ready before any work: a writable folder that holds no other run (an earlier run's
    files are removed with ``--overwrite_output_dir``, kept with ``--resume_from_checkpoint``). Only the main
    process checks and clears; symbolic links found there are removed, never followed."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise HfSpamError(f"--output_dir {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise HfSpamError(f"--output_dir {out}: not writable ({err.strerror or type(err).__name__})") from None
    earlier = sorted(p.name for p in out.iterdir() if not p.name.startswith(".stage-"))
    if args.process_index == 0 and earlier and resume_target(args.resume_from_checkpoint, out) is None:
        if not args.overwrite_output_dir:
            raise HfSpamError(f"--output_dir {out}: holds another run ({', '.join(earlier[:3])}"
                              f"{' ...' if len(earlier) > 3 else ''}); pass --overwrite_output_dir true to replace "
                              "it, or --resume_from_checkpoint true to continue it")
        for name in earlier:
            path = out / name
            path.unlink() if path.is_symlink() or not path.is_dir() else shutil.rmtree(path)
    return out


def resume_target(value: str | None, output_dir: Path) -> str | None:
    """The checkpoint ``--resume_from_checkpoint`` names: a folder, or ``true``/``last`` for the newest one in
    ``output_dir``; checked to be a readable Trainer checkpoint before any work is done."""
    if value is None or value.lower() in ("false", "no", "none", ""):
        return None
    if value.lower() in ("true", "last", "latest", "yes"):
        value = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if value is None:
            raise HfSpamError(f"--resume_from_checkpoint true: no checkpoint-* folder in {output_dir} to resume from")
    try:
        json.loads((Path(value) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        raise HfSpamError(f"--resume_from_checkpoint {value}: not a complete Trainer checkpoint (no readable "
                          "trainer_state.json)") from None
    return value


def setup_logging(output_dir: Path, is_main: bool, progress_bars: bool = True, node_main: bool = False,
                  log_name: str = "train.log") -> None:
    """Our messages at INFO on stdout and in ``OUTPUT_DIR/train.log`` (``log_name``; main process; the first
    process of each other machine, ``node_main``, logs on its stdout only); libraries stay quiet, and ``datasets``'
    progress bars follow Trainer's (``--disable_tqdm``). The log is appended to (a resumed run continues it) but
    never through a symbolic link."""
    if not progress_bars:
        datasets.disable_progress_bars()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main:
        log = output_dir / log_name
        if log.is_symlink():
            log.unlink()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
        handlers.append(logging.StreamHandler(open(fd, "a", encoding="utf-8")))  # noqa: SIM115 - the log's life
    for handler in handlers:
        handler.setFormatter(fmt)
    logger.handlers = handlers
    logger.setLevel(logging.INFO if is_main or node_main else logging.WARNING)
    logger.propagate = False
    history.handlers = handlers[1:]  # Trainer's own log entries: the file only, as JSON lines
    history.propagate = False


class HistoryLogCallback(TrainerCallback):
    """Every Trainer log entry (loss, evaluation metrics ...) as a JSON line in ``OUTPUT_DIR/train.log``."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> Any:
        if state.is_world_process_zero and logs:
            history.info(json.dumps({"step": state.global_step, **logs}, default=str))
        return control
