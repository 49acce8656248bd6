"""Fine-tuning with transformers' ``Trainer``: arguments, model building, freezing, plots.

``scripts/train.py`` is a thin wrapper around ``main``. Arguments are three dataclasses parsed by
``HfArgumentParser`` (ours for the model and the data, transformers' ``TrainingArguments``);
``--config FILE.yaml`` supplies defaults that later command-line flags override. The same code
runs under ``python`` and ``accelerate launch`` (CPU, CUDA, MPS, several processes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed

from .modeling_gpt import (
    MODEL_PRESETS,
    POOLING_CHOICES,
    GPTSpamConfig,
    GPTSpamForSequenceClassification,
    count_parameters,
    resolve_model_size,
)
from .tokenization import PADDING_CHOICES, PaddingCollator, tokenize_splits

logger = logging.getLogger("hf_spam")

TRAINABLE_LAYER_CHOICES = ("last_layer", "last_block", "last_two_blocks", "all", "lora")
WEIGHTS_CHOICES = ("pretrained", "random")
# The Hub checkpoint used for each GPT-2 size when --model_name_or_path is not given.
HUB_IDS = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


class ConfigError(ValueError):
    """A bad argument or config file (unknown key, unknown choice ...)."""


@dataclass
class ModelArguments:
    """Which GPT, which weights, what is trained and how the classifier reads the sequence."""

    model_size: str = field(
        default="gpt2-small",
        metadata={"help": f"Size preset: {', '.join(MODEL_PRESETS)} (or 124M/355M/774M/1558M)."},
    )
    weights: str = field(default="pretrained", metadata={"help": "pretrained (GPT-2's weights) or random."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "GPT-2 weights: a Hub id (default: openai-community/gpt2 for the chosen size), a local "
            "Hugging Face checkpoint folder or a local OpenAI TensorFlow checkpoint folder."
        },
    )
    trainable_layers: str = field(
        default="last_block", metadata={"help": f"What is trained: {', '.join(TRAINABLE_LAYER_CHOICES)}."}
    )
    pooling: str = field(default="last", metadata={"help": f"Token(s) classified: {', '.join(POOLING_CHOICES)}."})
    cache_features: bool = field(
        default=True,
        metadata={
            "help": "With a frozen trunk (last_layer, last_block, last_two_blocks) and dropout 0, run the frozen "
            "blocks once per example (cached on disk under DATA_CACHE_DIR/features) and train only the top: same "
            "results, much faster. false: recompute the whole model every step."
        },
    )
    drop_rate: float = field(default=0.0, metadata={"help": "Dropout rate (the chapter fine-tunes with 0.0)."})
    disable_causal_mask: bool = field(default=False, metadata={"help": "Let every token attend to every token."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r (with --trainable_layers lora)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; peft scales the update by alpha/r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    bpe_dir: str | None = field(
        default=None, metadata={"help": "Folder with GPT-2's encoder.json + vocab.bpe (offline tokenization)."}
    )


@dataclass
class DataArguments:
    """Where the SMS data comes from and how it is split and padded."""

    data_file: str | None = field(
        default=None, metadata={"help": "Local SMSSpamCollection file; downloaded from UCI when not given."}
    )
    data_cache_dir: str | None = field(default=None, metadata={"help": "Download cache (default ~/.cache/hf_spam)."})
    natural_balance: bool = field(
        default=False, metadata={"help": "Keep all 5,572 messages (stratified split) instead of the balanced recipe."}
    )
    padding: str = field(default="longest_train", metadata={"help": f"Padding: {', '.join(PADDING_CHOICES)}."})
    max_length: int | None = field(
        default=None, metadata={"help": "Override the padded length of longest_train/max_context."}
    )
    write_csv: bool = field(default=False, metadata={"help": "Also write train/validation/test.csv to output_dir."})
    plot_train_batches: int = field(
        default=5,
        metadata={"help": "Training batches scored at each epoch end for the accuracy plot (the chapter's eval_iter)."},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def _yaml_to_flags(path: Path, known: set[str], _including: tuple[Path, ...] = ()) -> list[str]:
    """Turn a flat YAML mapping into ``--key value`` flags, refusing keys no dataclass has.

    ``include: OTHER.yaml`` (a path relative to this file) reads another config first, so a file can
    hold just its changes to a recipe; the including file's keys win.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of argument names to values")
    flags: list[str] = []
    include = raw.pop("include", None)
    if include is not None:
        if not isinstance(include, str) or not include:
            raise ConfigError(f"{path}: include: expected the path of another YAML config")
        included = (path.parent / include).resolve()
        if included in (*_including, path.resolve()):
            raise ConfigError(f"{path}: include: {include} includes itself (directly or through other files)")
        if not included.is_file():
            raise ConfigError(f"{path}: include: {included} not found")
        flags += _yaml_to_flags(included, known, (*_including, path.resolve()))
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown key {key!r}; expected an argument of scripts/train.py (see --help)")
        if value is None:
            continue
        if isinstance(value, list):
            flags += [f"--{key}", *[str(v) for v in value]]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse ``[--config FILE] [--flag value ...]``; flags given on the command line win."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config: expected a YAML file path")
        config_path = Path(argv[i + 1])
        argv = _yaml_to_flags(config_path, known) + argv[:i] + argv[i + 2 :]
    if "--output_dir" not in argv and not {"-h", "--help"} & set(argv):
        raise ConfigError("--output_dir: required (where the model, metrics and plots are written)")
    model_args, data_args, training_args, rest = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if rest:
        raise ConfigError(f"unknown argument(s): {' '.join(rest)}")
    validate_args(model_args, data_args, training_args)
    return model_args, data_args, training_args


def validate_args(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Check choices up front so a bad value fails before any data or weights are loaded."""
    try:
        model_args.model_size = resolve_model_size(model_args.model_size)
    except ValueError as err:
        raise ConfigError(f"--{err}") from None
    for name, value, choices in (
        ("weights", model_args.weights, WEIGHTS_CHOICES),
        ("trainable_layers", model_args.trainable_layers, TRAINABLE_LAYER_CHOICES),
        ("pooling", model_args.pooling, POOLING_CHOICES),
        ("padding", data_args.padding, PADDING_CHOICES),
    ):
        if value not in choices:
            raise ConfigError(f"--{name}: unknown value {value!r}; expected one of {', '.join(choices)}")
    if model_args.weights == "pretrained" and model_args.model_size == "tiny" and not model_args.model_name_or_path:
        raise ConfigError("--model_size tiny has no pretrained weights; use --weights random")
    if model_args.trainable_layers == "lora":
        from .lora import LoraError, check_lora_settings

        try:
            check_lora_settings(model_args.lora_rank, model_args.lora_alpha, model_args.lora_dropout)
        except LoraError as err:
            raise ConfigError(str(err)) from None


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def reset_classification_head(model: GPTSpamForSequenceClassification, seed: int = 123) -> None:
    """A fresh ``nn.Linear`` head created right after ``torch.manual_seed(123)``, like the chapter."""
    torch.manual_seed(seed)
    model.gpt.out_head = torch.nn.Linear(model.config.emb_dim, model.config.num_labels)


def build_model(
    model_args: ModelArguments, max_length: int | None = None, seed: int = 123
) -> GPTSpamForSequenceClassification:
    """The classifier with GPT-2's weights (or random ones) and the chapter's new 2-way head."""
    extra: dict[str, Any] = {
        "pooling": model_args.pooling,
        "drop_rate": model_args.drop_rate,
        "causal": not model_args.disable_causal_mask,
    }
    if max_length is not None:
        # The padded length used in training: prediction with `last` pooling pads to it.
        # (Not `max_length`: transformers treats that name as a generation setting.)
        extra["padded_length"] = max_length
    if model_args.weights == "random":
        config = GPTSpamConfig.from_preset(model_args.model_size, **extra)
        torch.manual_seed(seed)
        model = GPTSpamForSequenceClassification(config)
    else:
        from .weights import load_gpt2_state_dict

        source = model_args.model_name_or_path or HUB_IDS[model_args.model_size]
        sizes, state_dict = load_gpt2_state_dict(source)
        config = GPTSpamConfig(**sizes, **extra)
        model = GPTSpamForSequenceClassification(config)
        trunk = {k: v for k, v in state_dict.items() if not k.startswith("out_head.")}
        missing, unexpected = model.gpt.load_state_dict(trunk, strict=False)
        missing = [k for k in missing if not k.startswith("out_head.")]
        if missing or unexpected:
            raise ValueError(f"{source}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    reset_classification_head(model)
    return model


def set_trainable_layers(model: torch.nn.Module, choice: str) -> None:
    """Freeze everything, then unfreeze what the chapter's option names (``lora`` is handled by peft)."""
    gpt = model.gpt
    if choice == "all":
        for p in model.parameters():
            p.requires_grad = True
        return
    for p in model.parameters():
        p.requires_grad = False
    trainable: list[torch.nn.Module] = [gpt.out_head]
    if choice in ("last_block", "last_two_blocks"):
        n = 1 if choice == "last_block" else 2
        trainable += [*gpt.trf_blocks[-n:], gpt.final_norm]
    elif choice not in ("last_layer", "lora"):
        raise ConfigError(f"--trainable_layers: unknown value {choice!r}")
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True


# --------------------------------------------------------------------------------------------
# Training helpers: per-epoch accuracy for the plots, full-set metrics, plots
# --------------------------------------------------------------------------------------------


class SpamTrainer(Trainer):
    """``Trainer`` whose evaluation and prediction never drop examples: the chapter drops the
    last incomplete *training* batch (``dataloader_drop_last``), but scores every example."""

    def _without_drop_last(self, make, *args, **kwargs):  # noqa: ANN001, ANN202 - thin wrapper
        if not self.args.dataloader_drop_last:
            return make(*args, **kwargs)
        self.args.dataloader_drop_last = False
        try:
            return make(*args, **kwargs)
        finally:
            self.args.dataloader_drop_last = True

    def get_eval_dataloader(self, eval_dataset=None):  # noqa: ANN001, ANN201 - Trainer's signature
        return self._without_drop_last(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset):  # noqa: ANN001, ANN201 - Trainer's signature
        return self._without_drop_last(super().get_test_dataloader, test_dataset)


class EpochAccuracyCallback(TrainerCallback):
    """At each epoch end, score a few training batches and the validation set (the chapter's
    per-epoch accuracy) and log them as ``epoch_train_accuracy``/``epoch_validation_accuracy``."""

    def __init__(self, train_subset: Any, validation: Any):
        self.train_subset = train_subset
        self.validation = validation
        self.trainer: Trainer | None = None

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
        if self.trainer is None:
            return control
        train_acc = self.trainer.predict(self.train_subset, metric_key_prefix="x").metrics["x_accuracy"]
        val_acc = self.trainer.predict(self.validation, metric_key_prefix="x").metrics["x_accuracy"]
        self.trainer.log({"epoch_train_accuracy": train_acc, "epoch_validation_accuracy": val_acc})
        return control


class HistoryLogCallback(TrainerCallback):
    """Append every Trainer log entry (loss, eval metrics, ...) to ``OUTPUT_DIR/train.log``."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer's signature
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")
        return control


def full_set_metrics(trainer: Trainer, splits: dict[str, Any]) -> dict[str, float]:
    """Accuracy/precision/recall/F1/loss on every example of each split (each counted once,
    also with several processes: Trainer gathers with ``gather_for_metrics``)."""
    out: dict[str, float] = {}
    for name, ds in splits.items():
        result = trainer.predict(ds, metric_key_prefix=name)
        for key in ("accuracy", "precision", "recall", "f1", "loss"):
            if f"{name}_{key}" in result.metrics:
                out[f"{name}_{key}"] = float(result.metrics[f"{name}_{key}"])
        # How many predictions were scored (after gathering across processes): must equal len(ds).
        out[f"{name}_examples"] = int(len(result.label_ids))
    return out


def format_accuracy_table(metrics: dict[str, float]) -> str:
    """The chapter's final printout, as a small table."""
    lines = ["| split | accuracy | F1 (spam) | examples |", "|---|---|---|---|"]
    for split in ("train", "validation", "test"):
        if f"{split}_accuracy" in metrics:
            lines.append(
                f"| {split} | {metrics[f'{split}_accuracy'] * 100:.2f}% | {metrics[f'{split}_f1']:.4f} "
                f"| {int(metrics[f'{split}_examples'])} |"
            )
    return "\n".join(lines)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file in the same folder, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_values(
    epochs_seen: list[float],
    examples_seen: list[float],
    train_values: list[float],
    val_values: list[float],
    label: str,
    out_stem: Path,
    val_epochs: list[float] | None = None,
) -> list[Path]:
    """The chapter's ``plot_values``: epochs on the bottom axis, examples seen on the top axis;
    saved as PNG and PDF. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, label=f"Training {label}")
    ax1.plot(val_epochs if val_epochs is not None else epochs_seen, val_values, linestyle="-.",
             label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()  # examples seen, on the same scale as the epochs below
    ax2.plot(examples_seen, train_values, alpha=0)
    ax2.set_xlabel("Examples seen")
    fig.tight_layout()
    written = []
    for ext in ("png", "pdf"):
        path = out_stem.with_suffix(f".{ext}")
        tmp = path.with_name(f".{path.name}.tmp.{ext}")
        fig.savefig(tmp)
        os.replace(tmp, path)
        written.append(path)
    plt.close(fig)
    return written


def plot_history(log_history: list[dict], examples_per_step: int, steps_per_epoch: float, out_dir: Path) -> list[Path]:
    """Loss plot (logged training loss vs evaluation loss) and per-epoch accuracy plot."""
    written: list[Path] = []
    train = [(h["epoch"], h["step"], h["loss"]) for h in log_history if "loss" in h and "epoch" in h]
    evals = [(h["epoch"], h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if train and evals:
        written += plot_values(
            [e for e, _, _ in train], [s * examples_per_step for _, s, _ in train], [v for _, _, v in train],
            [v for _, _, v in evals], "loss", out_dir / "loss-plot", val_epochs=[e for e, _, _ in evals],
        )
    acc = [h for h in log_history if "epoch_train_accuracy" in h]
    if acc:
        epochs = [round(h["epoch"]) for h in acc]
        written += plot_values(
            epochs, [e * steps_per_epoch * examples_per_step for e in epochs],
            [h["epoch_train_accuracy"] for h in acc], [h["epoch_validation_accuracy"] for h in acc],
            "accuracy", out_dir / "accuracy-plot",
        )
    return written


def hub_base_model(model_args: ModelArguments) -> str | None:
    """The Hub id of the pretrained weights, for the model card (``None`` for random or local weights)."""
    if model_args.weights != "pretrained":
        return None
    source = model_args.model_name_or_path or HUB_IDS[model_args.model_size]
    return None if Path(source).exists() else source


def training_args_summary(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """The arguments worth keeping with the model (no tokens, no Hub credentials)."""
    out = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args)}
    for key in (
        "learning_rate", "weight_decay", "lr_scheduler_type", "num_train_epochs", "max_steps",
        "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
        "seed", "eval_steps", "bf16", "fp16", "optim", "warmup_steps",
    ):
        value = getattr(args, key, None)
        out[key] = value.value if hasattr(value, "value") else value
    return out


def _setup_logging(args: TrainingArguments, out_dir: Path) -> None:
    """Our messages at INFO on the main process, libraries at WARNING; a copy in OUTPUT_DIR/train.log."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO if args.should_log else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if args.process_index == 0:
        handlers.append(logging.FileHandler(out_dir / "train.log", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict[str, float]:
    """Data → model → Trainer → train → full-set metrics → save → plots → push. Returns the metrics."""
    from .data import load_sms_spam

    out_dir = Path(training_args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(training_args, out_dir)
    push = training_args.push_to_hub
    hub_model_id, hub_token = training_args.hub_model_id, training_args.hub_token
    hub_private = training_args.hub_private_repo
    if push and not hub_model_id:
        raise ConfigError("--push_to_hub: also pass --hub_model_id NAME")
    # The Trainer would create the Hub repo (and need the network) as soon as it is built; we push
    # the finished folder ourselves at the end instead.
    training_args.push_to_hub = False
    set_seed(training_args.seed)
    started = time.time()

    # ---- data ----
    raw = load_sms_spam(data_args.data_file, cache_dir=data_args.data_cache_dir, balanced=not data_args.natural_balance)
    if data_args.write_csv and training_args.process_index == 0:
        from .data import write_splits_csv

        write_splits_csv(raw, out_dir)
    tokenized, max_length = tokenize_splits(
        raw, padding=data_args.padding, bpe_dir=model_args.bpe_dir, max_length=data_args.max_length,
        context_length=MODEL_PRESETS[model_args.model_size].get("context_length", 1024),
    )
    tokenized = tokenized.rename_column("label", "labels").remove_columns(["text"])
    logger.info("Data: %s; padding=%s (length %s)", {k: len(v) for k, v in tokenized.items()}, data_args.padding,
                max_length)

    # ---- model ----
    model = build_model(model_args, max_length=max_length)
    set_trainable_layers(model, model_args.trainable_layers)
    full_model = model  # what gets saved: always the whole classifier
    if model_args.trainable_layers == "lora":
        from .lora import apply_lora

        model = apply_lora(
            model, rank=model_args.lora_rank, alpha=model_args.lora_alpha, dropout=model_args.lora_dropout
        )
    trainable, total = count_parameters(model)
    logger.info("Trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    # ---- frozen-trunk feature cache: the frozen blocks run once per example, Trainer trains the top ----
    collator: Any = PaddingCollator()
    if model_args.cache_features and model is full_model:
        from .feature_cache import default_feature_cache_dir, prepare_cached_training

        cached = prepare_cached_training(
            full_model, tokenized, trainable_layers=model_args.trainable_layers, padding=data_args.padding,
            training_args=training_args, cache_dir=default_feature_cache_dir(data_args.data_cache_dir),
        )
        if cached is not None:
            # Every split (train, eval, the epoch-accuracy subset, full-set metrics) is read from the cache.
            model, tokenized, collator = cached.model, cached.datasets, cached.collator

    # ---- Trainer ----
    from .metrics import trainer_compute_metrics

    n_plot = min(len(tokenized["train"]), data_args.plot_train_batches * training_args.per_device_train_batch_size)
    epoch_acc = EpochAccuracyCallback(tokenized["train"].select(range(n_plot)), tokenized["validation"])
    trainer = SpamTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=collator,
        compute_metrics=trainer_compute_metrics,
        callbacks=[epoch_acc, HistoryLogCallback(out_dir / "train.log")],
    )
    epoch_acc.trainer = trainer

    # ---- train ----
    train_result = trainer.train(resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint))
    train_seconds = time.time() - started

    # ---- evaluate on every example of each split ----
    metrics = full_set_metrics(trainer, {k: tokenized[k] for k in ("train", "validation", "test")})
    metrics.update(
        train_runtime_seconds=train_seconds, train_loss=float(train_result.training_loss),
        trainable_parameters=trainable, total_parameters=total,
        device=str(training_args.device), num_processes=training_args.world_size,
    )

    # ---- save (main process only) ----
    if trainer.is_world_process_zero():
        print(format_accuracy_table(metrics))
        write_json_atomic(out_dir / "metrics.json", metrics)
        write_json_atomic(out_dir / "log_history.json", trainer.state.log_history)
        from .hub import save_model_folder

        summary = training_args_summary(model_args, data_args, training_args)
        to_save = full_model
        if model_args.trainable_layers == "lora":
            from .lora import save_adapter_and_merge

            # The adapter in peft's format under OUTPUT_DIR/adapter; the merged weights below.
            to_save = save_adapter_and_merge(trainer.model, out_dir / "adapter")
        save_model_folder(
            to_save, out_dir, metrics=metrics, training_args=summary,
            card={
                "base_model": hub_base_model(model_args),
                "weights": model_args.weights,
                "model_size": model_args.model_size,
                "recipe": "natural balance, stratified 70/10/20" if data_args.natural_balance
                else "balanced (747 ham + 747 spam), 70/10/20",
                "splits": {k: len(v) for k, v in raw.items()},
            },
            bpe_dir=model_args.bpe_dir,
        )
        total_batch = training_args.per_device_train_batch_size * training_args.world_size
        total_batch *= training_args.gradient_accumulation_steps
        steps_per_epoch = math.floor(len(tokenized["train"]) / total_batch) or 1
        plot_history(trainer.state.log_history, total_batch, steps_per_epoch, out_dir)
        logger.info("Saved model, metrics and plots to %s (%.1f s)", out_dir, time.time() - started)

        # ---- push ----
        if push:
            from .hub import push_folder_to_hub

            url = push_folder_to_hub(out_dir, hub_model_id, private=bool(hub_private), token=hub_token)
            logger.info("Pushed to %s", url)
    trainer.accelerator.wait_for_everyone()
    return metrics


def resume_target(value: str | bool | None) -> str | bool | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``true``/``last`` for the newest one
    in ``output_dir`` (Trainer's ``True``)."""
    if isinstance(value, str) and value.lower() in ("true", "last", "latest", "1", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "none", ""):
        return None
    if isinstance(value, str) and not Path(value).is_dir():
        raise ConfigError(f"--resume_from_checkpoint: {value} is not a checkpoint folder")
    return value


def user_errors() -> tuple[type[BaseException], ...]:
    """Error types that are the user's input, reported as one line without a traceback."""
    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError]
    from .data import DataFileError
    from .download import DownloadError
    from .lora import LoraError

    errors += [DataFileError, DownloadError, LoraError]
    try:
        from .weights import WeightsError, WeightsUnavailableError

        errors += [WeightsError, WeightsUnavailableError]
    except ImportError:  # pragma: no cover - weights module always ships
        pass
    try:
        from .hub import HubError

        errors.append(HubError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _no_accelerator() -> bool:
    return not torch.cuda.is_available() and not (
        hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    )


def cpu_processes_requested() -> int | None:
    """N when this process was started by ``accelerate launch --cpu --num_processes N`` (N > 1).

    For CPUs, accelerate's launcher starts a single process and expects ``mpirun`` to start the
    others; it only sets ``MASTER_ADDR``. We detect that case (no rank variables yet) and read N
    from the launcher's command line, so the documented command trains with N processes.
    """
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1") or "MASTER_ADDR" not in env:
        return None
    if any(k in env for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        return None
    try:
        parent = [a.decode() for a in Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:  # not Linux: nothing to read, run as one process
        return None
    for i, arg in enumerate(parent):
        value = arg.split("=", 1)[1] if arg.startswith("--num_processes=") else None
        if arg == "--num_processes" and i + 1 < len(parent):
            value = parent[i + 1]
        if value is not None and value.isdigit() and int(value) > 1:
            return int(value)
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``scripts/train.py`` and ``hf-spam train``."""
    n_cpu = cpu_processes_requested()
    if n_cpu:
        # Start the N workers ourselves (torch's elastic launcher; one thread each by default).
        import subprocess

        args = list(sys.argv[1:] if argv is None else argv)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n_cpu),
               "--master_addr", os.environ["MASTER_ADDR"], "--master_port", os.environ.get("MASTER_PORT", "29500"),
               "-m", "hf_spam.training", *args]
        sys.exit(subprocess.call(cmd))
    if "LOCAL_RANK" in os.environ and _no_accelerator():
        # Several processes on a machine without GPU (torchrun, accelerate launch --multi_gpu):
        # accelerate only sets up CPU DDP (gloo) when told the run is on CPU.
        os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        model_args, data_args, training_args = parse_args(argv)
        run(model_args, data_args, training_args)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
