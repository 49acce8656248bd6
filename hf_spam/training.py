"""Parts of a training run that are ours: processes and threads, logging, what is trained, the chapter's
evaluation habits on top of ``Trainer`` (no example dropped, per-epoch accuracy), and the final scores.
``scripts/train.py`` puts them together."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .arguments import DataArguments, ModelArguments
from .errors import HfSpamError
from .files import write_text
from .metrics import compute_metrics, confusion_matrix, per_class

logger = logging.getLogger("hf_spam")
history = logging.getLogger("hf_spam.history")

# Environment variables that torchrun (and accelerate's multi-process launcher) or accelerate's
# one-process launcher set in the processes they start; both default OMP_NUM_THREADS to 1 there.
LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")


def configure_processes() -> None:
    """Before arguments are parsed: several processes without a GPU (torchrun, ``accelerate launch
    --multi_gpu``) need accelerate's CPU mode for a gloo process group, which only ``ACCELERATE_USE_CPU``
    turns on."""
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if "LOCAL_RANK" in os.environ and not (torch.cuda.is_available() or mps):
        os.environ["ACCELERATE_USE_CPU"] = "true"


def fsdp_enabled(args: TrainingArguments) -> bool:
    """Whether this run shards the model with FSDP (``--fsdp`` or an accelerate FSDP config)."""
    return bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def configure_cpu_threads(requested: int | None = None) -> int:
    """Give PyTorch this process's fair share of the CPU cores, and return the thread count.

    ``requested`` (``--cpu_threads``) wins; so does ``OMP_NUM_THREADS`` set by the user. Launchers set
    ``OMP_NUM_THREADS=1`` by default (``accelerate launch`` even for a single process), which would
    leave all cores but one idle: under a launcher, 1 counts as its default, not a choice.
    """
    omp = os.environ.get("OMP_NUM_THREADS", "")
    launched = any(v in os.environ for v in LAUNCHER_VARIABLES)
    if requested is None and omp.isdigit() and int(omp) > 0 and not (launched and omp == "1"):
        requested = int(omp)
    if requested is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        requested = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    torch.set_num_threads(requested)
    return requested


def describe_device(device: torch.device | str) -> str:
    """A short name of where a run computes (``NVIDIA H100 80GB HBM3``, ``CPU (x86_64, 2 threads)``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"


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


def setup_logging(output_dir: Path, is_main: bool, progress_bars: bool = True) -> None:
    """Our messages at INFO on stdout and in ``OUTPUT_DIR/train.log`` (main process); libraries stay quiet, and
    ``datasets``' progress bars follow Trainer's (``--disable_tqdm``). The log is appended to (a resumed run
    continues it) but never through a symbolic link."""
    if not progress_bars:
        datasets.disable_progress_bars()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main:
        log = output_dir / "train.log"
        if log.is_symlink():
            log.unlink()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
        handlers.append(logging.StreamHandler(open(fd, "a", encoding="utf-8")))  # noqa: SIM115 - the log's life
    for handler in handlers:
        handler.setFormatter(fmt)
    logger.handlers = handlers
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    history.handlers = handlers[1:]  # Trainer's own log entries: the file only, as JSON lines
    history.propagate = False


def set_trainable_layers(model: torch.nn.Module, choice: str) -> None:
    """The chapter's choices: freeze everything, then unfreeze the head (``last_layer``), plus the last
    block(s) and the final norm (``last_block``/``last_two_blocks``), or everything (``all``).
    ``lora`` leaves the head trainable; peft then decides the rest (``hf_spam.lora``)."""
    gpt = model.gpt
    for p in model.parameters():
        p.requires_grad = choice == "all"
    blocks = {"last_block": 1, "last_two_blocks": 2}.get(choice, 0)
    for module in [gpt.out_head, *([gpt.final_norm, *gpt.trf_blocks[-blocks:]] if blocks else [])]:
        for p in module.parameters():
            p.requires_grad = True


@contextmanager
def _keep_every_example(args: TrainingArguments) -> Iterator[None]:
    drop, args.dataloader_drop_last = args.dataloader_drop_last, False
    try:
        yield
    finally:
        args.dataloader_drop_last = drop


class SpamTrainer(Trainer):
    """``Trainer`` that never drops an example when scoring: the chapter drops the last incomplete
    *training* batch (``dataloader_drop_last``) but evaluates every example."""

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        with _keep_every_example(self.args):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        with _keep_every_example(self.args):
            return super().get_test_dataloader(test_dataset)


class EpochAccuracyCallback(TrainerCallback):
    """The chapter's per-epoch accuracy: at each epoch end, score a few training batches and the whole
    validation set, logged as ``epoch_train_accuracy``/``epoch_validation_accuracy`` (for the plot)."""

    def __init__(self, trainer: Trainer, train_subset: Any, validation: Any):
        self.trainer, self.train_subset, self.validation = trainer, train_subset, validation

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        scores = {f"epoch_{name}_accuracy": self.trainer.predict(ds, metric_key_prefix="x").metrics["x_accuracy"]
                  for name, ds in (("train", self.train_subset), ("validation", self.validation))}
        self.trainer.log(scores)
        return control


class HistoryLogCallback(TrainerCallback):
    """Every Trainer log entry (loss, evaluation metrics ...) as a JSON line in ``OUTPUT_DIR/train.log``."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> Any:
        if state.is_world_process_zero and logs:
            history.info(json.dumps({"step": state.global_step, **logs}, default=str))
        return control


def classification_metrics(num_labels: int = 2, positive: int = 1) -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` for ``Trainer``: the argmax of the logits against the labels (``hf_spam.metrics``;
    with two labels, ``positive``'s precision/recall/F1)."""

    def compute(eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return compute_metrics(logits.argmax(axis=-1), eval_pred.label_ids, num_labels, positive)

    return compute


def evaluate_splits(trainer: Trainer, splits: dict[str, Any],
                    label_names: list[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Scores on every example of each split (each exactly once, also with several processes:
    ``Trainer.predict`` gathers with ``gather_for_metrics``): loss, accuracy, macro and (two labels) positive-class
    precision/recall/F1, how many were scored, per-class scores and the confusion matrix; and the logits per
    split, in the split's order."""
    out: dict[str, Any] = {}
    logits = {}
    for name, ds in splits.items():
        result = trainer.predict(ds, metric_key_prefix=name)
        out.update({k: float(v) for k, v in result.metrics.items()
                    if k.rsplit("_", 1)[-1] in ("accuracy", "precision", "recall", "f1", "loss")})
        out[f"{name}_examples"] = int(len(result.label_ids))
        logits[name] = result.predictions[0] if isinstance(result.predictions, tuple) else result.predictions
        cm = confusion_matrix(logits[name].argmax(axis=-1), result.label_ids, len(label_names))
        out[f"{name}_per_class"] = dict(zip(label_names, per_class(cm)))
        out[f"{name}_confusion_matrix"] = cm.tolist()
    return out, logits


def write_predictions(path: Path, texts: list[str], labels: list[int], logits: np.ndarray,
                      id2label: dict[int, str]) -> Path:
    """``predictions.jsonl``: per example its text, true and predicted label, and each label's probability."""
    probabilities = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).tolist()
    names = [id2label[i] for i in range(len(id2label))]
    lines = [json.dumps({"text": text, "label": names[label], "predicted": names[max(range(len(p)), key=p.__getitem__)],
                         "probabilities": dict(zip(names, p))}, ensure_ascii=False)
             for text, label, p in zip(texts, labels, probabilities)]
    return write_text(path, "".join(line + "\n" for line in lines))


def format_accuracy_table(metrics: dict[str, Any], label_names: list[str], positive: int = 1) -> str:
    """The chapter's final printout of accuracies, as a small table: with the positive class's F1 for two
    labels, the macro F1 for more."""
    two = len(label_names) == 2
    f1, header = ("f1", f"F1 ({label_names[positive]})") if two else ("macro_f1", "macro F1")
    lines = [f"| split | accuracy | {header} | examples |", "|---|---|---|---|"]
    for s in (s for s in ("train", "validation", "test") if f"{s}_accuracy" in metrics):
        lines.append(f"| {s} | {metrics[f'{s}_accuracy'] * 100:.2f}% | {metrics[f'{s}_{f1}']:.4f} | "
                     f"{int(metrics[f'{s}_examples'])} |")
    return "\n".join(lines)


# The settings kept with a trained model (training_args.json, the model card): an allow-list, so that
# tokens, local paths and other private values never leave the machine.
SUMMARY_FIELDS = (
    "model_size", "weights", "trainable_layers", "pooling", "drop_rate", "disable_causal_mask", "lora_rank",
    "lora_alpha", "lora_dropout", "natural_balance", "padding", "max_length", "split_seed",
    "validation_split_percentage", "test_split_percentage", "max_train_samples", "max_eval_samples",
    "max_test_samples", "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps", "num_train_epochs",
    "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "dataloader_drop_last", "seed", "eval_steps", "bf16", "fp16", "optim", "cache_features", "feature_dtype",
)
# Kept too when the data is the user's (a Hub dataset's id only: a local path stays private).
USER_DATA_FIELDS = ("dataset_name", "dataset_config_name", "text_column", "label_column", "balance", "positive_label")


def run_summary(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict[str, Any]:
    """The allow-listed settings of a run, as JSON-friendly values."""
    values = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args)}
    out = {}
    for key in SUMMARY_FIELDS + (USER_DATA_FIELDS if data_args.user_data else ()):
        value = values[key] if key in values else getattr(args, key, None)
        out[key] = getattr(value, "value", value)  # enums (scheduler, optimizer) as their names
    if data_args.user_data:
        out.pop("natural_balance")
        out["dataset_name"] = data_args.hub_dataset or "local files"
    if model_args.trainable_layers != "lora":
        for key in ("lora_rank", "lora_alpha", "lora_dropout"):
            out.pop(key)
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
