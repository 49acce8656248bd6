"""Hyperparameter search over the recipe (scripts/train.py) with Optuna: trials over the cached frozen trunk, pruned.

    python scripts/search.py --config configs/seed_fast.yaml --n_trials 30 --output_dir runs/search
    python scripts/search.py ... --metric validation_macro_f1 --timeout 3600 --search_space my_space.yaml
    python scripts/search.py ... --storage sqlite:///runs/search/study.db --study_name sms   # in several processes
    python scripts/search.py ... --resume                                                    # a killed search

Every flag of scripts/train.py is accepted and fixed for all trials; the search space (configs/search_space.yaml by
default) names what varies. The data, the model and the frozen-trunk features are prepared once per process (the
features once per distinct frozen part, on disk: a second process reads them); each trial then resets the trainable
top to the recipe's starting weights and trains only it, with a TPE sampler seeded by --seed, reporting the
validation metric at every epoch end to a median pruner. The test split is never scored during the search: the best
trial is trained again with scripts/train.py's own code into OUTPUT_DIR/best, a normal model folder scored once on
all splits. Results: OUTPUT_DIR/results.{md,csv,json} (one row per trial, from the study, after every trial),
optimization-history.png, param-importances.png and search.log. Bad input ends with one ``error: ...`` line and exit
status 2, before any work.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from transformers.hf_argparser import string_to_bool

from hf_spam.arguments import DECISION_FLAGS, parse_args
from hf_spam.errors import HfSpamError, one_line, run_main, without_secrets
from hf_spam.files import atomic_folder, atomic_path, cache_dir, file_lock, write_json, write_text
from hf_spam.run_folder import history, logger, setup_logging

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = ROOT / "configs" / "search_space.yaml"
# The scores a trial can be chosen by: all of the validation split (metrics.json's keys), and which way is better.
METRICS = {"validation_accuracy": "maximize", "validation_macro_f1": "maximize", "validation_roc_auc": "maximize",
           "validation_log_loss": "minimize"}
# What a search space may vary: each a recipe flag (warmup_ratio: --warmup_steps as a fraction of the steps).
PARAMETERS = {"learning_rate": float, "num_train_epochs": int, "per_device_train_batch_size": int,
              "weight_decay": float, "warmup_ratio": float, "trainable_layers": str}
CACHED_PARTS = ("last_layer", "last_block", "last_two_blocks")  # each: one frozen part, one feature cache
REFUSED = {  # recipe flags that mean nothing, or something else, in a search
    "do_train": "the search trains (--do_train false scores a model as it is)",
    "load_best_model_at_end": "trials are scored at their end and pruned on the per-epoch validation score",
    "early_stopping_patience": "trials are scored at their end and pruned on the per-epoch validation score",
    "resume_from_checkpoint": "a killed search continues with --resume",
}
MISSING_OPTUNA = "the search needs Optuna: pip install 'hf-spam[search]'"


@dataclass(frozen=True)
class Parameter:
    """One dimension of the search space: a range (``log``: sampled log-uniformly) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """This dimension's value for ``trial`` (Optuna's ``suggest_*``)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if PARAMETERS[self.name] is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> dict[str, Any]:
        """As written in the space file (stored with the study, so processes that join it can be checked)."""
        return {"choices": list(self.choices)} if self.choices is not None else \
            {"low": self.low, "high": self.high, "log": self.log}


def _check_value(where: str, name: str, value: Any) -> None:
    """A value the recipe's flag would refuse, named with its file and parameter."""
    kind = PARAMETERS[name]
    if kind is str:
        if value not in CACHED_PARTS:
            raise HfSpamError(f"{where}: {value!r} cannot be searched; expected some of {', '.join(CACHED_PARTS)} "
                              "(each trains the top over its own cached frozen part)")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or kind is int and value != int(value):
        raise HfSpamError(f"{where}: {value!r} is not {'an integer' if kind is int else 'a number'}")
    bounds = {"learning_rate": (0, None), "weight_decay": (0, None), "warmup_ratio": (0, 1),
              "num_train_epochs": (1, None), "per_device_train_batch_size": (1, None)}
    low, high = bounds[name]
    if value < low or (name == "learning_rate" and value == 0) or (high is not None and value >= high):
        expected = {"learning_rate": "> 0", "weight_decay": ">= 0", "warmup_ratio": "in [0, 1)"}.get(name, ">= 1")
        raise HfSpamError(f"{where}: {value!r} out of bounds; expected a value {expected}")


def load_space(path: str | Path) -> dict[str, Parameter]:
    """The search space file: ``NAME: {low: A, high: B[, log: true]}`` or ``NAME: {choices: [...]}`` per
    parameter of ``PARAMETERS``; anything else is one-line error naming the file and the parameter."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HfSpamError(f"--search_space {path}: file not found") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise HfSpamError(f"--search_space {path}: not a readable YAML file ({one_line(err)})") from None
    if not isinstance(raw, dict) or not raw:
        raise HfSpamError(f"{path}: expected a mapping of parameters to ranges or choices (see {DEFAULT_SPACE.name})")
    space = {}
    for name, spec in raw.items():
        where = f"{path}: {name}"
        if name not in PARAMETERS:
            raise HfSpamError(f"{path}: unknown parameter {name!r}; expected some of {', '.join(PARAMETERS)}")
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise HfSpamError(f"{where}: expected {{low: A, high: B}} (a range) or {{choices: [...]}}")
        extra = set(spec) - ({"choices"} if "choices" in spec else {"low", "high", "log"})
        if extra:
            raise HfSpamError(f"{where}: unknown key(s) {', '.join(map(repr, sorted(extra)))}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices or len(set(map(str, choices))) != len(choices):
                raise HfSpamError(f"{where}: choices: expected a list of different values")
            for value in choices:
                _check_value(where, name, value)
            space[name] = Parameter(name, choices=tuple(choices))
            continue
        if PARAMETERS[name] is str:
            raise HfSpamError(f"{where}: expected {{choices: [...]}}")
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        for value in (low, high):
            _check_value(where, name, value)
        if low >= high:
            raise HfSpamError(f"{where}: empty range (low {low} >= high {high})")
        if not isinstance(log, bool) or log and low <= 0:
            raise HfSpamError(f"{where}: log: expected true or false (true needs low > 0)")
        space[name] = Parameter(name, float(low), float(high), log)
    return space


def parse_search_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The search's own flags, and the rest: the recipe's, fixed for every trial."""
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:
            raise HfSpamError(without_secrets(message))

    parser = Parser(prog="scripts/search.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                    epilog="Every flag of scripts/train.py (python scripts/train.py --help) is accepted too, fixed "
                    "for all trials; --output_dir is required.")
    parser.add_argument("--n_trials", type=int, default=20, help="Trials this process runs (with --resume: "
                        "trials the study holds at the end, counting those finished before).")
    parser.add_argument("--metric", default="validation_accuracy", help=f"What chooses: {', '.join(METRICS)}.")
    parser.add_argument("--timeout", type=float, default=None, help="Start no trial after this many seconds.")
    parser.add_argument("--storage", default=None, help="An Optuna database URL (sqlite:///FILE, postgresql://...) "
                        "that several processes share (default: sqlite:///OUTPUT_DIR/study.db, this search's own).")
    parser.add_argument("--study_name", default="search", help="The study in the storage (default: search).")
    parser.add_argument("--resume", type=string_to_bool, nargs="?", const=True, default=False,
                        help="Continue the study of a killed search: up to --n_trials in all.")
    parser.add_argument("--search_space", default=str(DEFAULT_SPACE), help="YAML file of the ranges searched.")
    parser.add_argument("--pruner_startup_trials", type=int, default=5,
                        help="Complete trials before the median pruner stops any (default 5).")
    opts, rest = parser.parse_known_args(argv)
    if opts.metric not in METRICS:
        raise HfSpamError(f"--metric {opts.metric}: unknown; expected one of {', '.join(METRICS)}")
    if opts.n_trials < 1 or opts.pruner_startup_trials < 0 or opts.timeout is not None and not opts.timeout > 0:
        raise HfSpamError("--n_trials, --pruner_startup_trials, --timeout: expected a positive number (the startup "
                          "trials: >= 0)")
    return opts, rest


def import_optuna() -> Any:
    """Optuna (the ``search`` extra), with what using it needs said in one line when it is missing."""
    try:
        import optuna
    except ImportError:
        raise HfSpamError(MISSING_OPTUNA) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says it all
    return optuna


def safe_url(url: str) -> str:
    """The storage URL as it may be printed: without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy can read: shown as given, tokens hidden
        return without_secrets(url)


def open_study(optuna: Any, opts: argparse.Namespace, space: dict[str, Parameter], out_dir: Path,
               overwrite: bool) -> tuple[Any, bool, str]:
    """The study this process works on (a new one, the one it resumes with ``--resume``, or, with ``--storage``, the
    one other processes share), whether it created it, and the storage's URL (password hidden). Refused before any
    work: a storage that cannot be opened, a used output folder, a study whose metric or space differs."""
    default = opts.storage is None
    url = opts.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    if default and not opts.resume and overwrite:
        for path in out_dir.iterdir():  # --overwrite_output_dir: an earlier search (and its study) goes
            path.unlink() if path.is_symlink() or not path.is_dir() else shutil.rmtree(path)
    elif default and not opts.resume and any(p.name != ".search.lock" for p in out_dir.iterdir()):
        raise HfSpamError(f"--output_dir {out_dir}: holds another search or run; pass --resume to continue its "
                          "search, or --overwrite_output_dir true to replace it")
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - sqlalchemy's: a bad URL, a missing driver, an unreachable server
        raise HfSpamError(f"--storage {safe_url(url)}: cannot be opened ({one_line(err)})") from None
    names = {s.study_name for s in storage.get_all_studies()}
    direction = METRICS[opts.metric]
    described = {name: p.describe() for name, p in space.items()}
    if opts.resume and opts.study_name not in names:
        raise HfSpamError(f"--resume: no study {opts.study_name!r} in {safe_url(url)} to continue")
    created = False
    if opts.study_name not in names:
        try:
            study = optuna.create_study(storage=storage, study_name=opts.study_name, direction=direction)
            study.set_user_attr("metric", opts.metric)
            study.set_user_attr("space", described)
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago
            pass
    if not created:
        study = optuna.load_study(study_name=opts.study_name, storage=storage)
        attrs = study.user_attrs
        if attrs.get("metric", opts.metric) != opts.metric:
            raise HfSpamError(f"--metric {opts.metric}: study {opts.study_name!r} searches {attrs['metric']}; use "
                              "that, or another --study_name")
        if attrs.get("space", described) != described:
            raise HfSpamError(f"--search_space {opts.search_space}: differs from the space study "
                              f"{opts.study_name!r} was started with; use that file, or another --study_name")
    return study, created, safe_url(url)


def check_recipe(opts: argparse.Namespace, space: dict[str, Parameter], model_args: Any, args: Any) -> None:
    """Recipe flags a search cannot honour: one line each, before any work."""
    for name, why in REFUSED.items():
        value = getattr(args, name)
        if (value is not None and value is not False) if name != "do_train" else not value:
            raise HfSpamError(f"--{name}: not used in a search: {why}")
    if model_args.trainable_layers == "lora" and "trainable_layers" not in space:
        raise HfSpamError("--trainable_layers lora: not searched here (no frozen part to cache); search "
                          "last_layer, last_block or last_two_blocks")
    if args.max_steps > 0 and "num_train_epochs" in space:
        raise HfSpamError(f"--max_steps {args.max_steps} with num_train_epochs in {opts.search_space}: one of the two")
    if args.world_size > 1:
        raise HfSpamError("the search runs in one process; start several with one --storage to share a study")


@dataclass
class Setup:
    """What every trial of this process shares: the data, the model and its starting weights, the cached parts."""

    model: Any
    tokenized: Any
    tokenizer: Any
    labels: list[str]
    positive: int
    decision: dict[str, float]
    initial: dict[str, Any]
    cached: dict[str, Any]  # trainable_layers -> CachedTraining, or None where the cache does not apply
    reasons: dict[str, str]  # trainable_layers -> how its features are had, for the per-trial log line


def prepare(model_args: Any, data_args: Any, args: Any, parts: list[str]) -> Setup:
    """The recipe's steps 2-6 once for the whole search (scripts/train.py): data, tokens, model, and the
    frozen-trunk features of each part trained (computed once; processes on one machine take turns)."""
    import torch
    from transformers import set_seed

    from hf_spam.evaluation import check_decision
    from hf_spam.feature_cache import caching_blocker, prepare_cached_training
    from hf_spam.metrics import positive_index
    from hf_spam.sources import load_data
    from hf_spam.starting_model import build_model, is_trained_classifier
    from hf_spam.tokenization import build_hf_tokenizer, tokenize_splits
    from hf_spam.trainer import class_weights, set_trainable_layers

    set_seed(args.seed)
    raw, data_info = load_data(**data_args.source_settings)
    labels = data_info["labels"]
    positive = positive_index(labels, data_args.positive_label)
    decision = check_decision({flag: getattr(args, flag) for flag in DECISION_FLAGS}, labels)
    weights = class_weights(args.class_weight, raw["train"]["label"], labels)
    model = build_model(model_size=model_args.model_size, weights=model_args.weights, pooling=model_args.pooling,
                        checkpoint=model_args.model_name_or_path, drop_rate=model_args.drop_rate, labels=labels,
                        causal=not model_args.disable_causal_mask, seed=args.seed)
    trained = is_trained_classifier(model_args.model_name_or_path)
    if weights is not None:
        model.class_weights = torch.tensor(list(weights.values()), dtype=torch.float32)
    padding, max_length = (("longest_train", model.config.padded_length) if trained and model.config.padded_length
                           else (data_args.padding, data_args.max_length))
    tokenized, length = tokenize_splits(raw, padding=padding, context_length=model.config.context_length,
                                        bpe_dir=model_args.bpe_dir, max_length=max_length)
    if not trained:
        model.config.padded_length = length
    tokenized = tokenized.rename_column("label", "labels").remove_columns(["text"])
    logger.info("Data: %s, labels %s; padding %s (length %s)", data_info["splits"], ", ".join(labels), padding,
                length)
    names: set[str] = set()
    for part in parts:  # the starting weights of everything any trial trains, restored before each trial
        set_trainable_layers(model, part)
        names |= {n for n, p in model.named_parameters() if p.requires_grad}
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    features = Path(args.feature_cache_dir or cache_dir(data_args.data_cache_dir) / "features")
    cached, reasons = {}, {}
    for part in parts:
        set_trainable_layers(model, part)
        blocker = caching_blocker(model, part, data_args.padding) if args.cache_features else "--cache_features false"
        with ExitStack() as stack:
            try:  # another search process on this machine computing the same features: wait, then read them
                stack.enter_context(file_lock(features / ".search.lock"))
            except OSError:
                pass
            cached[part] = None if blocker else prepare_cached_training(
                model, tokenized, trainable_layers=part, padding=data_args.padding, training_args=args,
                feature_dtype=args.feature_dtype, cache_dir=features)
        if cached[part] is None:
            reasons[part] = f"features not cached ({blocker or 'the cache location cannot be written'}): every " \
                            "step runs the whole model"
        else:
            when = "computed at the start of this search" if cached[part].computed else "there before it started"
            reasons[part] = f"{part} features read from the cache ({when}; no trunk pass in the trial)"
            logger.info("Frozen-trunk features for %s: %s for the whole search (%s); every trial reads them", part,
                        "computed once" if cached[part].computed else "read from the cache",
                        ", ".join(cached[part].computed) or "no trunk pass")
    return Setup(model, tokenized, build_hf_tokenizer(model_args.bpe_dir), labels, positive, decision, initial,
                 cached, reasons)


def trial_flags(params: dict[str, Any], args: Any) -> dict[str, Any]:
    """A trial's parameters as recipe arguments (the warm-up ratio as ``warmup_steps`` below 1; under the
    ``constant`` schedule, which has no warm-up, as ``constant_with_warmup``)."""
    flags = {k: v for k, v in params.items() if k != "warmup_ratio"}
    if "warmup_ratio" in params:
        flags["warmup_steps"] = params["warmup_ratio"]
        if params["warmup_ratio"] > 0 and getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == \
                "constant":
            flags["lr_scheduler_type"] = "constant_with_warmup"
    return flags


def make_objective(optuna: Any, setup: Setup, space: dict[str, Parameter], model_args: Any, data_args: Any,
                   args: Any, metric: str, out_dir: Path) -> Any:
    """The function Optuna calls per trial: reset the trainable top, train it with the trial's settings (no
    checkpoint, no log), score the validation split at each epoch end (reported, maybe pruned) and return
    the last score."""
    import torch
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainerCallback, set_seed

    from hf_spam.evaluation import evaluate_splits
    from hf_spam.trainer import SpamTrainer, set_trainable_layers

    def score(trainer: Any, validation: Any) -> float:
        metrics, _ = evaluate_splits(trainer, {"validation": validation}, setup.labels, setup.positive,
                                     setup.decision, args.calibrate)
        value = metrics[metric]
        return float("nan") if value is None else float(value)

    class Report(TrainerCallback):
        """At each epoch end: the validation score to Optuna, and a stop when the pruner says so."""

        def __init__(self, trial: Any, trainer: Any, validation: Any):
            self.trial, self.trainer, self.validation, self.last, self.epochs = trial, trainer, validation, None, 0

        def on_epoch_end(self, targs: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.epochs += 1
            self.last = score(self.trainer, self.validation)
            self.trial.report(self.last, self.epochs)
            self.trial.set_user_attr("epochs", self.epochs)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"after epoch {self.epochs}: {metric} {self.last:.4f}")
            return control

    def objective(trial: Any) -> float:
        params = {name: p.suggest(trial) for name, p in space.items()}
        part = params.get("trainable_layers", model_args.trainable_layers)
        trial.set_user_attr("features", setup.reasons[part])
        set_trainable_layers(setup.model, part)
        with torch.no_grad():
            for name, p in setup.model.named_parameters():
                if name in setup.initial:
                    p.copy_(setup.initial[name])
        cached = setup.cached[part]
        model, data, collator = (cached.model, cached.datasets, cached.collator) if cached else \
            (setup.model, setup.tokenized, DataCollatorWithPadding(setup.tokenizer))
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".trial-{trial.number}-") as tmp:
            targs = replace(args, **trial_flags({k: v for k, v in params.items() if k != "trainable_layers"}, args),
                            output_dir=tmp, eval_strategy="no", save_strategy="no", logging_strategy="no",
                            report_to="none", disable_tqdm=True, push_to_hub=False)
            set_seed(args.seed)
            trainer = SpamTrainer(model=model, args=targs, train_dataset=data["train"],
                                  eval_dataset=data["validation"], data_collator=collator)
            trainer.remove_callback(PrinterCallback)
            report = Report(trial, trainer, data["validation"])
            trainer.add_callback(report)
            trainer.train()
        return report.last if report.last is not None else score(trainer, data["validation"])

    return objective


def _seconds(trial: Any) -> float | None:
    end = trial.datetime_complete
    return round((end - trial.datetime_start).total_seconds(), 2) if end and trial.datetime_start else None


def trial_rows(study: Any, metric: str, names: list[str]) -> list[dict[str, Any]]:
    """One row per trial of the study (all processes'), in trial order: number, state, the metric (a pruned
    trial: its last reported value), epochs scored, seconds and parameters."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        steps = sorted(t.intermediate_values)
        value = t.value if t.value is not None else t.intermediate_values[steps[-1]] if steps else None
        rows.append({"number": t.number, "state": t.state.name.lower(), metric: value,
                     "epochs": t.user_attrs.get("epochs", len(steps)), "seconds": _seconds(t),
                     **{name: t.params.get(name) for name in names}})
    return rows


def write_results(study: Any, out_dir: Path, metric: str, names: list[str], extra: dict[str, Any] | None = None
                  ) -> list[dict[str, Any]]:
    """results.md, results.csv and results.json from the study's trials (whichever process writes last writes
    the whole table); each file replaced atomically."""
    from measure import markdown_table

    rows = trial_rows(study, metric, names)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    complete = [r for r in rows if r["state"] == "complete" and r[metric] == r[metric]]  # not NaN
    best = (max if METRICS[metric] == "maximize" else min)(complete, key=lambda r: r[metric]) if complete else None
    headers = ["trial", "state", metric, "epochs", "seconds", *names]
    cells = [[r["number"], r["state"], "" if r[metric] is None else f"{r[metric]:.4f}", r["epochs"],
              "" if r["seconds"] is None else r["seconds"], *("" if r[n] is None else r[n] for n in names)]
             for r in rows]
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    md = [f"# Hyperparameter search: study `{study.study_name}`", "",
          f"{len(rows)} trials ({summary}); `{metric}` ({METRICS[metric]}), scored on the validation split only (a "
          "pruned trial: its last epoch's score). " + (f"Best: trial {best['number']}, {best[metric]:.6g}."
                                                       if best else "No trial has completed yet."), "",
          markdown_table(headers, cells), ""]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([headers, *cells])
    write_text(out_dir / "results.md", "\n".join(md))
    write_text(out_dir / "results.csv", buffer.getvalue())
    write_json(out_dir / "results.json", {"study": study.study_name, "metric": metric,
                                          "direction": METRICS[metric], "counts": counts, "best_trial": best,
                                          "trials": rows, **(extra or {})})
    return rows


def write_plots(optuna: Any, study: Any, out_dir: Path) -> None:
    """optimization-history.png and param-importances.png (Optuna's matplotlib plots); an importance that
    cannot be had is one log line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    def save(ax: Any, name: str) -> None:
        fig = ax.figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)

    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plots are marked experimental
        save(plots.plot_optimization_history(study), "optimization-history.png")
        if complete < 2:
            logger.info("Parameter importance not plotted: it needs at least 2 complete trials (the study has %d)",
                        complete)
            return
        try:
            save(plots.plot_param_importances(study), "param-importances.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. every complete trial scored the same
            logger.info("Parameter importance not plotted: %s", one_line(err))


def best_flags(params: dict[str, Any], args: Any) -> list[str]:
    """The best trial's settings as flags of scripts/train.py."""
    return [item for key, value in trial_flags(params, args).items() for item in (f"--{key}", str(value))]


@contextmanager
def own_logging() -> Iterator[None]:
    """Keep the search's log handlers across a nested scripts/train.py run (which sets up its own)."""
    saved, saved_history = list(logger.handlers), list(history.handlers)
    try:
        yield
    finally:
        logger.handlers, history.handlers = saved, saved_history
        logger.setLevel("INFO")


def train_best(optuna: Any, study: Any, opts: argparse.Namespace, recipe_argv: list[str], args: Any,
               out_dir: Path) -> dict[str, Any] | None:
    """Train the best trial's settings again with scripts/train.py (into OUTPUT_DIR/best, put in place whole):
    a normal model folder, scored once on every split, its card naming the search. Skipped when best/ already
    holds this study's best trial at this number of finished trials (another process wrote it)."""
    import json

    from train import main as train_main

    best = study.best_trial
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.PRUNED)))
    record = {"study": study.study_name, "metric": opts.metric, "value": best.value, "best_trial": best.number,
              "params": best.params, "trials": finished,
              "complete": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
              "pruned": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))}
    try:
        if json.loads((out_dir / "best" / "search.json").read_text(encoding="utf-8")) == record:
            logger.info("%s already holds trial %d's model (written by another process)", out_dir / "best",
                        best.number)
            return None
    except (OSError, ValueError):
        pass
    logger.info("Best: trial %d, %s %.4f; training it again into %s, then scoring every split (the test split's "
                "only use)", best.number, opts.metric, best.value, out_dir / "best")
    with atomic_folder(out_dir / "best", keep_name=True) as folder:
        with own_logging():
            metrics = train_main([*recipe_argv, *best_flags(best.params, args), "--output_dir", str(folder)],
                                 search=record)
        write_json(folder / "search.json", record)
    logger.info("Best model in %s: %s %.4f (the trial: %.4f), test accuracy %.4f", out_dir / "best", opts.metric,
                metrics.get(opts.metric, float("nan")), best.value, metrics.get("test_accuracy", float("nan")))
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Search, then train the best trial's settings into OUTPUT_DIR/best; returns the search's results."""
    started = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)

    # 1. Arguments: the search's, the recipe's (fixed for all trials), the space; the study. Bad input stops here.
    opts, recipe_argv = parse_search_args(argv)
    optuna = import_optuna()
    model_args, data_args, args = parse_args(recipe_argv)
    space = load_space(opts.search_space)
    check_recipe(opts, space, model_args, args)
    out_dir, made = Path(args.output_dir), not Path(args.output_dir).exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
        with file_lock(out_dir / ".search.lock"):  # processes started at once create the study one at a time
            study, created, url = open_study(optuna, opts, space, out_dir, args.overwrite_output_dir)
    except (HfSpamError, OSError) as err:
        if made:  # refused before any work: nothing of this search is left behind
            shutil.rmtree(out_dir, ignore_errors=True)
        if isinstance(err, HfSpamError):
            raise
        raise HfSpamError(f"--output_dir {out_dir}: not writable ({err.strerror or type(err).__name__})") from None

    # 2. Logging (OUTPUT_DIR/search.log), the sampler (seeded), the pruner; a resumed search's leftovers.
    from hf_spam.launch import configure_cpu_threads, describe_device

    setup_logging(out_dir, is_main=True, progress_bars=not args.disable_tqdm, log_name="search.log")
    threads = configure_cpu_threads(args.cpu_threads)
    seed = args.seed if created else (args.seed * 1_000_003 + os.getpid()) % 2**31  # joiners sample differently
    study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=opts.pruner_startup_trials, n_warmup_steps=0)
    running = optuna.trial.TrialState.RUNNING
    if opts.resume:
        for t in study.get_trials(deepcopy=False, states=(running,)):  # left by the killed process
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)  # noqa: SLF001
            logger.info("Trial %d was left running by a stopped search: marked failed", t.number)
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED)))
    n_trials = max(0, opts.n_trials - done) if opts.resume else opts.n_trials
    logger.info("Study %r (%s, %s): %d trial(s) finished before; %d to run here; %s %s on the validation split; "
                "TPE seed %d; %s, %d threads", opts.study_name, "new" if created else "joined", url, done, n_trials,
                METRICS[opts.metric], opts.metric, seed, describe_device(args.device), threads)

    # 3. Once for the whole search: data, model, and the frozen-trunk features of each part trained.
    parts = list(space["trainable_layers"].choices) if "trainable_layers" in space else [model_args.trainable_layers]
    setup = prepare(model_args, data_args, args, parts) if n_trials else None

    # 4. The trials, with a progress bar and a line each; the results tables after every trial.
    from tqdm.auto import tqdm

    names = list(space)
    bar = tqdm(total=n_trials, desc="Trials", unit=" trial", disable=args.disable_tqdm or not n_trials)

    def after_trial(study: Any, trial: Any) -> None:
        value = trial.value if trial.value is not None else next(reversed(trial.intermediate_values.values()), None)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        logger.info("Trial %d %s after %s epoch(s) in %.1f s: %s %s; %s; %s", trial.number, trial.state.name.lower(),
                    trial.user_attrs.get("epochs", 0), _seconds(trial) or 0.0, opts.metric,
                    "n/a" if value is None else f"{value:.4f}", params, trial.user_attrs.get("features", ""))
        write_results(study, out_dir, opts.metric, names)
        bar.update(1)
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            bar.set_postfix_str(f"best {study.best_value:.4f} (trial {study.best_trial.number})")

    objective = make_objective(optuna, setup, space, model_args, data_args, args, opts.metric, out_dir)
    if n_trials:
        study.optimize(objective, n_trials=n_trials, timeout=opts.timeout, callbacks=[after_trial])
    bar.close()

    # 5. The whole study's tables; once every trial has finished (the last process to finish), the plots and the
    #    best trial trained again into OUTPUT_DIR/best.
    with file_lock(out_dir / ".search.lock"):
        rows = write_results(study, out_dir, opts.metric, names)
        still = [t.number for t in study.get_trials(deepcopy=False, states=(running,))]
        if still:
            logger.info("Trial(s) %s still running in other processes: the last to finish writes the plots and "
                        "%s", ", ".join(map(str, still)), out_dir / "best")
            return {"trials": rows, "best": None}
        if not any(r["state"] == "complete" for r in rows):
            raise HfSpamError("no trial completed, so there is no best model; see search.log")
        write_plots(optuna, study, out_dir)
        del objective, setup  # the trials' model and features: freed before the best model is built
        metrics = train_best(optuna, study, opts, recipe_argv, args, out_dir)
        if metrics is not None:
            rows = write_results(study, out_dir, opts.metric, names, {"best_model": {
                "folder": "best", "trial": study.best_trial.number,
                **{k: metrics.get(k) for k in (opts.metric, "test_accuracy", "test_macro_f1", "test_roc_auc")}}})
    logger.info("Search done in %.1f s: %s", time.time() - started, out_dir / "results.md")
    return {"trials": rows, "best": metrics}


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; continue the search with --resume")
