"""The recipe's arguments: three dataclasses, a flat YAML config, command-line flags that win.

``--config FILE.yaml`` is read first (``include: OTHER.yaml`` pulls in a base recipe; the including
file's keys win), every key must be a field of one of the dataclasses, and the values become the
parser's defaults (``HfArgumentParser.set_defaults``), so flags given on the command line override
them. Choices are ``Literal`` types, which ``--help`` lists; argparse checks the flags' values and
``_check_config_values`` the config's (argparse never checks defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.integrations import get_available_reporting_integrations

from .errors import HfSpamError, one_line, without_secrets
from .modeling_gpt import MODEL_PRESETS, POOLING_CHOICES, resolve_model_size
from .starting_model import is_trained_classifier
from .tokenization import PADDING_CHOICES


def _check_choice(where: str, value: Any, choices: Any) -> None:
    if choices is not None and value not in choices:
        raise HfSpamError(f"{where}: unknown value {value!r}; expected one of {', '.join(map(str, choices))}")


@dataclass
class ModelArguments:
    """Which GPT, which weights, what is trained and how the classifier reads the sequence."""

    model_size: str = field(default="gpt2-small", metadata={
        "help": f"Size preset: {', '.join(MODEL_PRESETS)} (or 124M/355M/774M/1558M)."})
    weights: Literal["pretrained", "random"] = field(default="pretrained", metadata={"help": "GPT-2's, or random."})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "GPT-2 weights: a Hub id (default: openai-community/gpt2 for the chosen size), a local Hugging "
        "Face checkpoint folder or a local OpenAI TensorFlow checkpoint folder."})
    trainable_layers: Literal["last_layer", "last_block", "last_two_blocks", "all", "lora"] = field(
        default="last_block", metadata={"help": "What is trained."})
    pooling: Literal[POOLING_CHOICES] = field(default="last", metadata={"help": "Token(s) classified."})
    drop_rate: float = field(default=0.0, metadata={"help": "Dropout rate (the chapter fine-tunes with 0.0)."})
    disable_causal_mask: bool = field(default=False, metadata={"help": "Let every token attend to every token."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r (with --trainable_layers lora)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; peft scales the update by alpha/r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    bpe_dir: str | None = field(default=None, metadata={
        "help": "Folder with GPT-2's encoder.json + vocab.bpe (offline tokenization)."})

    def __post_init__(self) -> None:
        try:
            self.model_size = resolve_model_size(self.model_size)
        except ValueError as err:
            raise HfSpamError(f"--{err}") from None
        if self.weights == "pretrained" and self.model_size == "tiny" and not self.model_name_or_path:
            raise HfSpamError("--model_size tiny has no pretrained weights; use --weights random")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise HfSpamError(f"--lora_rank: expected a positive integer, got {self.lora_rank!r}")
        if not self.lora_alpha > 0:
            raise HfSpamError(f"--lora_alpha: expected a positive number, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise HfSpamError(f"--lora_dropout: expected a value in [0, 1), got {self.lora_dropout!r}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise HfSpamError(f"--drop_rate: expected a value in [0, 1), got {self.drop_rate!r}")
        if self.weights == "random" and self.model_name_or_path and not is_trained_classifier(self.model_name_or_path):
            raise HfSpamError("--model_name_or_path: a checkpoint's weights are not used with --weights random; "
                              "drop one of the two")


@dataclass
class DataArguments:
    """Where the data comes from (the SMS Spam Collection unless told otherwise), how it is split and padded."""

    data_file: str | None = field(default=None, metadata={
        "help": "Local SMSSpamCollection file (the default data); downloaded from UCI when not given."})
    dataset_name: str | None = field(default=None, metadata={
        "help": "Your data instead: a Hub dataset id, or a local folder of data files (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(default=None, metadata={
        "help": "Your data instead: a .csv, .tsv, .json, .jsonl or .parquet file of training rows."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation rows (else cut from train)."})
    test_file: str | None = field(default=None, metadata={"help": "Test rows (else cut from train)."})
    text_column: str = field(default="text", metadata={"help": "The column holding the texts (your data)."})
    label_column: str = field(default="label", metadata={"help": "The column holding the labels (your data)."})
    label_names: list[str] | None = field(default=None, metadata={
        "help": "Names of integer labels 0..k-1, or the order of string labels (your data)."})
    positive_label: str | None = field(default=None, metadata={
        "help": "Two classes: the one whose precision/recall/F1 are reported (default spam if present, else the "
        "second label)."})
    validation_split_percentage: float = field(default=10, metadata={
        "help": "Validation split when none is given: this share of the training rows, cut stratified by label "
        "(the SMS recipe: 10 of its 70/10/20 cut)."})
    test_split_percentage: float = field(default=20, metadata={
        "help": "Test split when none is given: this share of the training rows, cut stratified by label (the "
        "SMS recipe: 20)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation rows."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use only the first N test rows."})
    balance: Literal["none", "undersample"] = field(default="none", metadata={
        "help": "none, or undersample: every class of each split cut to its smallest class (your data; the SMS "
        "recipe balances its own way)."})
    data_cache_dir: str | None = field(default=None, metadata={
        "help": "Cache for downloads and frozen-trunk features (default $HF_SPAM_CACHE or ~/.cache/hf_spam)."})
    natural_balance: bool = field(default=False, metadata={
        "help": "Keep all 5,572 messages (stratified split) instead of the balanced recipe."})
    padding: Literal[PADDING_CHOICES] = field(default="longest_train", metadata={"help": "How texts are padded."})
    max_length: int | None = field(default=None, metadata={
        "help": "Override the padded length of longest_train/max_context."})
    write_csv: bool = field(default=False, metadata={"help": "Also write train/validation/test.csv to output_dir."})
    split_seed: int = field(default=123, metadata={
        "help": "Seed of the data's sampling, shuffling and split (the chapter's 123); --seed seeds the training."})

    @property
    def user_data(self) -> bool:
        """Whether the data is the user's (``--dataset_name`` or files) rather than the SMS collection."""
        return bool(self.dataset_name or self.train_file)

    @property
    def source_settings(self) -> dict[str, Any]:
        """The settings ``hf_spam.sources.load_data`` takes: where the data comes from and how it is cut."""
        return {k: v for k, v in vars(self).items() if k not in ("positive_label", "padding", "max_length",
                                                                 "write_csv")}

    def __post_init__(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if not self.user_data:
            for name in ("dataset_config_name", "text_column", "label_column", "label_names", "balance",
                         "validation_file", "test_file"):
                if getattr(self, name) != defaults[name]:
                    raise HfSpamError(f"--{name}: applies to your data (--dataset_name or --train_file); the SMS "
                                      "collection has its own columns, labels and balancing")
        elif self.natural_balance:
            raise HfSpamError("--natural_balance: applies to the SMS collection; for your data the rows are kept as "
                              "they are unless --balance undersample")
        if self.text_column == self.label_column:
            raise HfSpamError(f"--text_column and --label_column: both {self.text_column!r}; expected two columns")
        if self.label_names is not None and not self.label_names:
            raise HfSpamError("--label_names: expected one or more names")
        if self.data_file and self.user_data:
            raise HfSpamError("--data_file (the SMS collection) with --dataset_name/--train_file: choose one source")
        if self.dataset_name and (self.train_file or self.validation_file or self.test_file):
            raise HfSpamError("--dataset_name with --train_file/--validation_file/--test_file: choose one source")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise HfSpamError(f"--{name}: expected a positive number of rows, got {getattr(self, name)}")
        for name in ("validation_split_percentage", "test_split_percentage"):
            if not 0 < getattr(self, name) < 100:
                raise HfSpamError(f"--{name}: expected a percentage between 0 and 100, got {getattr(self, name)}")
        if self.validation_split_percentage + self.test_split_percentage >= 100:
            raise HfSpamError("--validation_split_percentage + --test_split_percentage: must leave rows to train on")
        if self.max_length is not None and self.max_length < 1:
            raise HfSpamError(f"--max_length: expected a positive number of tokens, got {self.max_length}")
        if self.max_length is not None and self.padding == "dynamic":
            raise HfSpamError("--max_length: sets the padded length of --padding longest_train or max_context; with "
                              "--padding dynamic nothing is padded (texts are cut to the context length)")


def parse_class_weight(value: str) -> str | list[float]:
    """``--class_weight``'s value: ``"balanced"``, ``"none"``, or the explicit weights ``w0,w1,...`` as floats
    (each positive and finite); anything else is an ``HfSpamError`` naming the flag."""
    text = str(value).strip()
    if text in ("balanced", "none"):
        return text
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        weights = []
    if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
        raise HfSpamError(f"--class_weight {value}: expected balanced, none, or one positive number per label, "
                          "comma-separated in label order (e.g. 1,4)")
    return weights


# How a two-label model decides: a threshold, or a target it is chosen for on the validation split.
DECISION_FLAGS = ("decision_threshold", "max_false_positive_rate", "min_precision")


@dataclass
class SpamTrainingArguments(TrainingArguments):
    """transformers' ``TrainingArguments`` plus what this recipe adds to a training run."""

    cache_features: bool = field(default=True, metadata={
        "help": "With a frozen trunk (last_layer, last_block, last_two_blocks) and dropout 0, run the frozen "
        "blocks once per example (cached on disk, see --feature_cache_dir) and train only the top: same results, "
        "much faster. false: recompute the whole model every step."})
    feature_dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "How the cached features are stored: float32 (training as without the cache), bfloat16 or float16 "
        "(half the disk, features rounded)."})
    feature_cache_dir: str | None = field(default=None, metadata={
        "help": "Folder of the frozen-trunk feature cache (default DATA_CACHE_DIR/features); `hf-spam cache list` "
        "shows it, `hf-spam cache clear` empties it."})
    plot_train_batches: int = field(default=5, metadata={
        "help": "Training batches scored at each epoch end for the accuracy plot (the chapter's eval_iter)."})
    cpu_threads: int | None = field(default=None, metadata={
        "help": "PyTorch threads per process on the CPU (default: all cores, shared fairly between the "
        "processes of this machine; OMP_NUM_THREADS > 1 also counts as a choice)."})
    do_train: bool = field(default=True, metadata={"help": "Train (false: score the model as it is, e.g. a "
                                                   "trained folder given as --model_name_or_path)."})
    do_eval: bool = field(default=True, metadata={"help": "Score every example of each split into metrics.json."})
    do_predict: bool = field(default=False, metadata={
        "help": "Write predictions.jsonl for the test split: text, true and predicted label, probabilities."})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "Stop after this many evaluations without improvement (with --load_best_model_at_end true)."})
    calibrate: Literal["none", "temperature"] = field(default="none", metadata={
        "help": "temperature: fit one temperature on the validation split (its log loss), folded into the head."})
    decision_threshold: float | None = field(default=None, metadata={
        "help": "Two labels: decide the positive class when its probability is at least this (default: argmax)."})
    max_false_positive_rate: float | None = field(default=None, metadata={
        "help": "Two labels: the threshold with the largest validation recall at a false-positive rate <= this."})
    min_precision: float | None = field(default=None, metadata={
        "help": "Two labels: the threshold with the largest validation recall at a precision >= this."})
    class_weight: str = field(default="none", metadata={
        "help": "Weighted cross-entropy: balanced (n_samples / (n_classes * count) of each class in the training "
        "split), none, or one weight per label, comma-separated in label order (e.g. 1,4)."})
    # transformers' --label_names (the input keys holding labels: always "labels" here) gives way to the data's
    # --label_names (the names of the classes).
    label_names: list[str] | None = field(default=None, init=False)
    hub_strategy: str = field(default="end", metadata={
        "help": "When the model is pushed (--push_to_hub): once, the finished folder, at the end (transformers' "
        "every_save, checkpoint and all_checkpoints are refused)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace what an earlier run left in output_dir (otherwise a used folder is refused, unless "
        "--resume_from_checkpoint continues that run)."})
    dataloader_pin_memory: bool | None = field(default=None, metadata={
        "help": "Pin batches in memory for faster copies to an accelerator (default: when there is one).",
        "nargs": "?", "const": True})

    def __post_init__(self) -> None:
        if not self.cache_features and (self.feature_dtype != "float32" or self.feature_cache_dir):
            raise HfSpamError("--feature_dtype/--feature_cache_dir: set how the frozen-trunk feature cache is stored, "
                              "and --cache_features is false")
        given = [name for name in DECISION_FLAGS if getattr(self, name) is not None]
        if len(given) > 1:
            raise HfSpamError(f"--{given[1]}: one of --{', --'.join(DECISION_FLAGS)} at a time (--{given[0]} given)")
        for name in given:
            if not 0 <= getattr(self, name) <= 1 or name == "decision_threshold" and getattr(self, name) in (0, 1):
                raise HfSpamError(f"--{name}: expected a probability between 0 and 1, got {getattr(self, name)}")
        if parse_class_weight(self.class_weight) != "none":
            if self.label_smoothing_factor:
                raise HfSpamError("--class_weight with --label_smoothing_factor: Trainer's label smoothing replaces "
                                  "the model's weighted loss; use one of the two")
            if not self.do_train:
                raise HfSpamError("--class_weight: weights the training loss, and --do_train is false")
        if not self.output_dir:
            raise HfSpamError("--output_dir: required (where the model, metrics and plots are written)")
        for name in ("cpu_threads", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "plot_train_batches"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise HfSpamError(f"--{name}: expected a positive number, got {getattr(self, name)}")
        for name in ("learning_rate", "seed", "weight_decay", "warmup_steps"):
            if getattr(self, name) < 0:
                raise HfSpamError(f"--{name}: expected a number >= 0, got {getattr(self, name)}")
        for name in ("eval_steps", "save_steps", "logging_steps"):  # a count, or (below 1) a share of all the steps
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise HfSpamError(f"--{name}: expected a number of steps >= 0 (or a share of the training steps "
                                  f"below 1), got {getattr(self, name):g}")
        if self.max_steps < -1:
            raise HfSpamError(f"--max_steps: expected a positive number of steps, or -1 for --num_train_epochs, got "
                              f"{self.max_steps}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise HfSpamError(f"--num_train_epochs {self.num_train_epochs}: nothing would be trained; expected "
                              "a positive number of epochs (or --max_steps N)")
        if self.early_stopping_patience is not None and not (self.early_stopping_patience >= 1
                                                             and self.load_best_model_at_end):
            raise HfSpamError("--early_stopping_patience: expected a positive number, with --load_best_model_at_end "
                              "true (and save and evaluation at the same steps)")
        if self.push_to_hub and self.hub_strategy != "end":
            raise HfSpamError(f"--hub_strategy {self.hub_strategy}: not supported; the finished model folder is "
                              "pushed once, at the end (--hub_strategy end)")
        self.use_cpu_for_bf16 = False  # set below: transformers refuses bf16 on a CPU unless use_cpu is set
        if (self.bf16 or self.bf16_full_eval) and not self.use_cpu \
                and not getattr(torch, "accelerator", torch.cuda).is_available():
            self.use_cpu = self.use_cpu_for_bf16 = True  # no GPU here: the CPU it is (train.py logs it)
        if self.dataloader_pin_memory is None:  # pinned memory only speeds up copies to an accelerator
            self.dataloader_pin_memory = not self.use_cpu and getattr(torch, "accelerator", torch.cuda).is_available()
        try:
            super().__post_init__()
        except ValueError as err:  # transformers' own checks (--bf16 with --fp16, strategies that must match ...)
            raise HfSpamError(one_line(err)) from None
        if self.fp16 and not torch.cuda.is_available():
            raise HfSpamError("--fp16: needs a CUDA GPU, and none is visible here; on a CPU use --bf16")
        available = get_available_reporting_integrations()
        for name in self.report_to:
            if name not in available:
                raise HfSpamError(f"--report_to {name}: the {name} package is not installed; pip install "
                                  f"{name.replace('_', '-')}, or --report_to none")


ARGUMENT_CLASSES = (ModelArguments, DataArguments, SpamTrainingArguments)


class _Parser(HfArgumentParser):
    """argparse's errors (a bad type, a missing value) become one ``HfSpamError`` line, not usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise HfSpamError(without_secrets(message))

    def _check_value(self, action: argparse.Action, value: Any) -> None:  # a flag's value; the config's: below
        _check_choice(f"--{action.dest}", value, action.choices)


def load_config(path: str | Path, _including: tuple[Path, ...] = ()) -> dict[str, tuple[Any, Path]]:
    """A flat YAML config as ``{key: (value, file it came from)}``, its ``include:`` merged underneath;
    unknown keys are errors."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise HfSpamError(f"{path}: config file not found") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise HfSpamError(f"{path}: not a readable YAML file ({one_line(err)})") from None
    if not isinstance(raw, dict):
        raise HfSpamError(f"{path}: expected a mapping of argument names to values")
    merged: dict[str, tuple[Any, Path]] = {}
    include = raw.pop("include", None)
    if include is not None:
        if not isinstance(include, str) or not include:
            raise HfSpamError(f"{path}: include: expected the path of another YAML config")
        included = (path.parent / include).resolve()
        if included in (*_including, path.resolve()):
            raise HfSpamError(f"{path}: include: {include} includes itself (directly or through other files)")
        if not included.is_file():
            raise HfSpamError(f"{path}: include: {included} not found")
        merged = load_config(included, (*_including, path.resolve()))
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}  # the dataclasses' fields
    for key in raw:
        if key not in known:
            raise HfSpamError(f"{path}: unknown key {key!r}; expected an argument of scripts/train.py (see --help)")
    return {**merged, **{k: (v, path) for k, v in raw.items() if v is not None}}


def _check_config_values(parser: argparse.ArgumentParser, config: dict[str, tuple[Any, Path]]) -> None:
    """A value the parser would not take names its file and key (argparse would name only the flag)."""
    actions = {a.dest: a for a in parser._actions  # noqa: SLF001 - argparse keeps no public index of them
               if f"--{a.dest}" in a.option_strings}
    for key, (value, path) in config.items():
        kind = actions[key].type
        if isinstance(value, bool) and kind is not None and getattr(kind, "__name__", "") != "string_to_bool":
            raise HfSpamError(f"{path}: {key}: YAML reads {str(value).lower()!r} as a boolean; quote the value "
                              f"({key}: \"{'yes' if value else 'no'}\")")
        try:
            value = kind(value) if isinstance(value, str) and callable(kind) else value
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            raise HfSpamError(f"{path}: {key}: {value!r} is not a valid value for --{key}") from None
        _check_choice(f"{path}: {key}", value, actions[key].choices)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, SpamTrainingArguments]:
    """Parse ``[--config FILE.yaml] [--flag value ...]``: the config gives defaults, flags win."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(ARGUMENT_CLASSES)
    parser.add_argument("--config", default=None, help="YAML file of defaults for any argument below.")
    pre = _Parser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        config = load_config(known.config)
        _check_config_values(parser, config)
        parser.set_defaults(**{key: value for key, (value, _) in config.items()})
    model_args, data_args, training_args, _, rest = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True)
    if rest:  # flag names only: a mistyped flag's value may be a secret
        flags = [a.split("=", 1)[0] for a in rest if a.startswith("-")]
        raise HfSpamError(f"unknown argument(s): {' '.join(flags) or 'a value without a flag'}")
    return model_args, data_args, training_args
