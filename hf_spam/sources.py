"""Where the recipe's data comes from: the SMS Spam Collection (the chapter's default), a Hub dataset or local
folder (``--dataset_name``), or CSV/TSV/JSON/JSONL/Parquet files (``--train_file`` ...), with your text and
label columns and two or more labels.

``load_data`` always gives the same shape: a ``DatasetDict`` with ``train``/``validation``/``test`` and the
columns ``text`` and ``label`` (a ``ClassLabel`` holding the label names), plus what the model card says
about the data. Splits that are not given are cut from the training rows, stratified by label; every check
names the file, split, column, row or label that is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets

from .data import load_sms_spam
from .errors import HfSpamError, UnavailableError, one_line
from .files import is_hub_id

# datasets' builder and options per extension; CSV cells such as "NA" or "null" stay text.
BUILDERS = {".csv": ("csv", {"keep_default_na": False}), ".tsv": ("csv", {"delimiter": "\t", "keep_default_na": False}),
            ".json": ("json", {}), ".jsonl": ("json", {}), ".parquet": ("parquet", {})}
SPLITS = ("train", "validation", "test")


def _load_file(path: str, split: str) -> datasets.Dataset:
    file = Path(path)
    if file.suffix.lower() not in BUILDERS:
        raise HfSpamError(f"{file}: unknown extension {file.suffix or '(none)'!r}; expected one of "
                          f"{', '.join(BUILDERS)}")
    if not file.is_file():
        raise HfSpamError(f"{file}: file not found (--{split}_file)")
    if file.stat().st_size == 0:
        raise HfSpamError(f"{file}: empty file; expected the {split} rows")
    builder, options = BUILDERS[file.suffix.lower()]
    try:
        return datasets.load_dataset(builder, data_files={split: str(file)}, split=split, **options)
    except Exception as err:  # the builders raise many types for a malformed file
        raise HfSpamError(f"{file}: not readable as {file.suffix.lower()[1:]} ({one_line(err)[:200]})") from None


def _load_named(name: str, config: str | None) -> dict[str, datasets.Dataset]:
    try:
        loaded = datasets.load_dataset(name, config)
    except FileNotFoundError as err:
        raise HfSpamError(f"--dataset_name {name}: no such local folder or Hub dataset ({one_line(err)[:150]})") \
            from None
    except ConnectionError as err:
        raise UnavailableError(f"--dataset_name {name}: not in the datasets cache and the Hub cannot be reached "
                               f"({one_line(err)[:150]}); run once online, or pass --train_file") from None
    except Exception as err:  # datasets' own errors (a bad configuration name, a malformed file ...)
        raise HfSpamError(f"--dataset_name {name}: {one_line(err)[:200]}") from None
    if "train" not in loaded:
        raise HfSpamError(f"--dataset_name {name}: no train split (found {', '.join(loaded) or 'none'}); expected "
                          "train and optionally validation and test")
    return {split: ds for split, ds in loaded.items() if split in SPLITS}


def _columns(ds: datasets.Dataset, where: str, text: str, label: str) -> datasets.Dataset:
    """``text`` and ``label`` only, renamed, string labels stripped of surrounding white space; a missing column,
    an empty text or a missing label is an error naming the row (counted from 1, header not counted)."""
    for column, flag in ((text, "--text_column"), (label, "--label_column")):
        if column not in ds.column_names:
            raise HfSpamError(f"{where}: no column {column!r} (the {flag}); the columns are "
                              f"{', '.join(ds.column_names)}")
    ds = ds.select_columns([text, label]).rename_columns({text: "_text", label: "_label"})
    ds = ds.rename_columns({"_text": "text", "_label": "label"})
    missing = -1 if isinstance(ds.features["label"], datasets.ClassLabel) else None  # ClassLabel's "no label"
    row = 0
    for batch in ds.iter(batch_size=10_000):
        for t, lab in zip(batch["text"], batch["label"]):
            row += 1
            if not isinstance(t, str) or not t.strip():
                raise HfSpamError(f"{where}, row {row}: empty or missing text in column {text!r}")
            if lab is None or lab == missing or (isinstance(lab, str) and not lab.strip()):
                raise HfSpamError(f"{where}, row {row}: missing label in column {label!r}")
    feature = ds.features["label"]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):  # "spam " is "spam"
        ds = ds.map(lambda b: {"label": [lab.strip() for lab in b["label"]]}, batched=True,
                    desc="stripping the labels")
    return ds


def _labels(train: datasets.Dataset, given: list[str] | None) -> tuple[list[str], dict[Any, int]]:
    """The label names and each raw label value's id: a ``ClassLabel`` keeps its names; strings become their
    sorted names (or ``--label_names``' order); integers 0..k-1 become ``"0".."k-1"`` (or ``--label_names``)."""
    feature, values = train.features["label"], set(train.unique("label"))
    given = [name.strip() for name in given] if given is not None else None  # as the labels themselves
    if len(values) < 2:
        raise HfSpamError(f"train split: only one class ({next(iter(values), 'none')!s}); expected two or more labels")
    if isinstance(feature, datasets.ClassLabel) or all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                      for v in values):
        names = feature.names if isinstance(feature, datasets.ClassLabel) else [str(i) for i in range(max(values) + 1)]
        if given is not None and len(given) != len(names):
            raise HfSpamError(f"--label_names: {len(given)} name(s) for {len(names)} labels (0..{len(names) - 1}); "
                              "expected one name per label")
        names = list(given or names)
        mapping = {i: i for i in range(len(names))}
    elif all(isinstance(v, str) for v in values):
        unnamed = sorted(values - set(given or values))
        if unnamed:
            raise HfSpamError(f"--label_names: the training labels {', '.join(unnamed[:5])} are not among them "
                              f"({', '.join(given or [])})")
        names = list(given) if given else sorted(values)
        mapping = {name: i for i, name in enumerate(names)}
    else:
        kinds = sorted({type(v).__name__ for v in values})
        raise HfSpamError(f"train split: labels of type {', '.join(kinds)}; expected strings or integers >= 0")
    if len(set(names)) != len(names):
        raise HfSpamError(f"label names {', '.join(names)}: each name must be different")
    return names, mapping


def _as_class_label(ds: datasets.Dataset, where: str, names: list[str], mapping: dict[Any, int]) -> datasets.Dataset:
    """``label`` as ids of ``names``; a label training never saw is an error naming split, label and known ones."""
    unseen = sorted(str(v) for v in ds.unique("label") if v not in mapping)
    if unseen:
        known = ", ".join(map(str, mapping)) if not all(isinstance(v, int) for v in mapping) else \
            f"0..{len(mapping) - 1}"
        raise HfSpamError(f"{where}: label(s) {', '.join(unseen[:5])} never seen in training; the known labels are "
                          f"{known}")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return ds.map(lambda b: {"label": [mapping[v] for v in b["label"]]}, batched=True, features=features,
                  desc="Labels")


def undersample(ds: datasets.Dataset, seed: int) -> datasets.Dataset:
    """Every class cut to the size of the smallest (seeded sampling), then shuffled: the chapter's balancing."""
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(ds["label"]):
        by_class.setdefault(lab, []).append(i)
    n = min(len(rows) for rows in by_class.values())
    keep = [i for rows in by_class.values() for i in datasets.Dataset.from_dict({"i": rows}).shuffle(seed=seed)
            .select(range(n))["i"]]
    return ds.select(sorted(keep)).shuffle(seed=seed)


def _user_splits(loaded: dict[str, datasets.Dataset], where: dict[str, str], text_column: str, label_column: str,
                 label_names: list[str] | None, shares: dict[str, float], seed: int,
                 balance: str) -> tuple[datasets.DatasetDict, dict[str, str]]:
    """The user's splits as ``text``/``label`` with label names, and how each split was made (a missing one is
    cut from the training rows, its share of them, stratified)."""
    splits = {s: _columns(ds, where.get(s, f"{s} split"), text_column, label_column) for s, ds in loaded.items()}
    names, mapping = _labels(splits["train"], label_names)
    splits = {s: _as_class_label(ds, where.get(s, f"{s} split"), names, mapping) for s, ds in splits.items()}
    made = {s: "given" for s in splits}
    given = len(splits["train"])
    for split, share in shares.items():
        if split in splits:
            continue
        size = max(1, round(given * share / 100))
        try:
            cut = splits["train"].train_test_split(test_size=size, stratify_by_column="label", seed=seed)
        except ValueError as err:  # too few rows, or of a class, to stratify
            raise HfSpamError(f"train split: cannot cut a stratified {split} split of {size} rows from "
                              f"{len(splits['train'])} ({one_line(err)[:150]}); give --{split}_file or more rows") \
                from None
        splits["train"], splits[split] = cut["train"], cut["test"]
        made[split] = f"{share:g}% of the training rows, stratified (seed {seed})"
    if balance == "undersample":
        splits = {s: undersample(ds, seed) for s, ds in splits.items()}
    return datasets.DatasetDict({s: splits[s] for s in SPLITS}), made


def load_data(*, data_file: str | None = None, dataset_name: str | None = None, dataset_config_name: str | None = None,
              train_file: str | None = None, validation_file: str | None = None, test_file: str | None = None,
              text_column: str = "text", label_column: str = "label", label_names: list[str] | None = None,
              balance: str = "none", natural_balance: bool = False, split_seed: int = 123,
              validation_split_percentage: float = 10, test_split_percentage: float = 20,
              max_train_samples: int | None = None, max_eval_samples: int | None = None,
              max_test_samples: int | None = None,
              data_cache_dir: str | None = None) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """The recipe's splits (``text``, ``label`` as a ``ClassLabel``) and what the model card says about them: your
    data when ``dataset_name`` (Hub id or folder) or ``train_file`` (``validation_file``, ``test_file``) is given,
    else the SMS collection (``data_file``, else a download) cut like the chapter; the recipe's data flags."""
    validation, test = validation_split_percentage, test_split_percentage
    if dataset_name or train_file:
        if dataset_name:
            loaded, where = _load_named(dataset_name, dataset_config_name), {}
        else:
            files = {s: f for s, f in zip(SPLITS, (train_file, validation_file, test_file)) if f}
            loaded, where = {s: _load_file(f, s) for s, f in files.items()}, {s: Path(f).name for s, f in files.items()}
        splits, made = _user_splits(loaded, where, text_column, label_column, label_names,
                                    {"test": test, "validation": validation}, split_seed, balance)
        # Only a Hub dataset's id may be written into the model card and training_args.json: a local path stays private.
        hub = dataset_name if dataset_name and is_hub_id(dataset_name) and not os.path.isdir(dataset_name) else None
        info = {"source": "hub" if hub else "local", "dataset_id": hub, "dataset_config": dataset_config_name,
                "made": made, "balance": balance}
    else:
        splits = load_sms_spam(data_file, cache=data_cache_dir, balanced=not natural_balance, seed=split_seed,
                               train_frac=(100 - validation - test) / 100, validation_frac=validation / 100)
        recipe = "natural balance, stratified" if natural_balance else "balanced (747 ham + 747 spam), shuffled"
        info = {"source": "sms", "recipe": f"{recipe}, split {100 - validation - test:g}/{validation:g}/{test:g}"}
    for split, limit in (("train", max_train_samples), ("validation", max_eval_samples), ("test", max_test_samples)):
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].select(range(limit))
    info.update(splits={s: len(ds) for s, ds in splits.items()}, labels=splits["train"].features["label"].names)
    return splits, info
