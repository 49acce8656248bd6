"""Your own data: Hub-style folders and CSV/TSV/JSON/JSONL/Parquet files, your columns, two or more labels,
bad input refused in one line; and the feature cache's scale: half-precision storage, a disk check, flat
memory while reading, and a command that lists and removes it. Real files, real runs of scripts/train.py."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, run_train
from test_hub import subprocess_env
from test_speed import tiny_model, tokenized_splits, trainer_args
from train import main as train_main

from hf_spam import feature_cache
from hf_spam.arguments import DataArguments, parse_args
from hf_spam.cli import main as cli_main
from hf_spam.data import load_sms_spam
from hf_spam.errors import HfSpamError, UnavailableError
from hf_spam.feature_cache import prepare_cached_training
from hf_spam.feature_files import FeatureFile, write_features
from hf_spam.sources import load_data

SPLITS = ("train", "validation", "test")
COMPARED = ("accuracy", "precision", "recall", "f1", "macro_f1", "loss", "examples", "per_class", "confusion_matrix")

# A three-class task a tiny random model learns in a few epochs: each topic has its own words.
TOPICS = {
    "sports": "goal match team score player coach league stadium referee season win ball".split(),
    "food": "soup bread cheese recipe oven dinner spicy salad kitchen taste sauce bake".split(),
    "weather": "rain sunny cloud storm wind forecast snow cold humid thunder warm fog".split(),
}
FILLER = "the a today really very some and with my our this that".split()


def topic_frame(n_per_topic: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = [{"text": " ".join(rng.choice(words if rng.random() < 0.6 else FILLER) for _ in range(rng.randint(5, 12))),
             "label": topic} for topic, words in TOPICS.items() for _ in range(n_per_topic)]
    rng.shuffle(rows)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sms_splits(sms_file):
    return load_sms_spam(sms_file)


def chapter_frames(splits) -> dict[str, pd.DataFrame]:
    """The chapter's train/validation/test data frames: columns Label (0/1) and Text."""
    return {s: pd.DataFrame({"Label": splits[s]["label"], "Text": splits[s]["text"]}) for s in SPLITS}


def file_flags(folder: Path, ext: str) -> list[str]:
    return [arg for s in SPLITS for arg in (f"--{s}_file", str(folder / f"{s}.{ext}"))]


def loaded(argv: list[str]):
    _, data_args, _ = parse_args([*argv, "--output_dir", "unused"])
    return load_data(**data_args.source_settings)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def test_chapter_csvs_give_the_default_runs_numbers(tiny_run, sms_splits, tmp_path):
    """The chapter's own CSV files, given as --train_file ..., train exactly like the default SMS run."""
    for split, frame in chapter_frames(sms_splits).items():
        frame.to_csv(tmp_path / f"{split}.csv", index=None)  # as the chapter writes them
    out = tmp_path / "run"
    result = run_train(["--config", "configs/tiny.yaml", *file_flags(tmp_path, "csv"), "--text_column", "Text",
                        "--label_column", "Label", "--label_names", "ham", "spam", "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    default, ours = (json.loads((folder / "metrics.json").read_text()) for folder in (tiny_run, out))
    keys = [f"{s}_{k}" for s in SPLITS for k in COMPARED]
    assert all(key in default for key in keys)
    for key in keys:  # the same rows in the same order: the same run (losses to float rounding)
        assert ours[key] == (pytest.approx(default[key], abs=1e-6) if key.endswith("_loss") else default[key]), key
    assert ours["label_names"] == default["label_names"] == ["ham", "spam"] and ours["positive_label"] == "spam"
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "ham", "1": "spam"}


def test_every_format_and_a_dataset_folder_give_the_same_rows(sms_splits, tmp_path):
    frames = chapter_frames(sms_splits)
    for split, frame in frames.items():
        named = frame.assign(Label=frame["Label"].map({0: "ham", 1: "spam"}))  # string labels: sorted names
        named.to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
        frame.to_parquet(tmp_path / f"{split}.parquet")
        frame.to_csv(tmp_path / f"{split}.tsv", sep="\t", index=None)
        (tmp_path / "folder").mkdir(exist_ok=True)
        frame.to_csv(tmp_path / "folder" / f"{split}.csv", index=None)
    columns = ["--text_column", "Text", "--label_column", "Label"]
    for argv in ([*file_flags(tmp_path, "jsonl"), *columns],
                 [*file_flags(tmp_path, "parquet"), *columns, "--label_names", "ham", "spam"],
                 [*file_flags(tmp_path, "tsv"), *columns, "--label_names", "ham", "spam"],
                 ["--dataset_name", str(tmp_path / "folder"), *columns, "--label_names", "ham", "spam"]):
        splits, info = loaded(argv)
        assert info["labels"] == ["ham", "spam"] and info["source"] == "local", argv
        for split in SPLITS:
            assert splits[split]["text"] == sms_splits[split]["text"], (argv, split)
            assert splits[split]["label"] == sms_splits[split]["label"], (argv, split)


def test_missing_splits_are_cut_stratified_and_rows_can_be_limited_or_balanced(tmp_path):
    frame = topic_frame(100, seed=1)
    frame = pd.concat([frame, topic_frame(50, seed=2).query("label == 'food'")])  # food: 150, the others 100
    frame.to_csv(tmp_path / "all.csv", index=None)
    splits, info = loaded(["--train_file", str(tmp_path / "all.csv")])
    assert {s: len(splits[s]) for s in SPLITS} == {"train": 245, "validation": 35, "test": 70}
    assert info["labels"] == ["food", "sports", "weather"]
    assert info["made"]["test"] == "20% of the training rows, stratified (seed 123)"
    for split in SPLITS:  # each split keeps the 3:2:2 proportions (within a row)
        counts = pd.Series(splits[split]["label"]).value_counts()
        assert abs(counts[0] / len(splits[split]) - 3 / 7) < 1.5 / len(splits[split]) + 0.01, split
    again, _ = loaded(["--train_file", str(tmp_path / "all.csv")])
    assert again["test"]["text"] == splits["test"]["text"]  # seeded
    other, _ = loaded(["--train_file", str(tmp_path / "all.csv"), "--split_seed", "7"])
    assert other["test"]["text"] != splits["test"]["text"]
    balanced, _ = loaded(["--train_file", str(tmp_path / "all.csv"), "--balance", "undersample",
                          "--max_train_samples", "60", "--max_test_samples", "9"])
    assert len(balanced["train"]) == 60 and len(balanced["test"]) == 9
    for split in ("validation",):
        assert len(set(pd.Series(balanced[split]["label"]).value_counts())) == 1  # every class the same size


# --------------------------------------------------------------------------------------------
# Three classes, end to end
# --------------------------------------------------------------------------------------------

PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline

    clf = pipeline("text-classification", model=sys.argv[1], trust_remote_code=True, device="cpu")
    out = {"top": [r["label"] for r in clf(json.loads(sys.argv[2]))],
           "all": [sorted(d["label"] for d in r) for r in clf(json.loads(sys.argv[2]), top_k=None)],
           "hf_spam_imported": any(n == "hf_spam" or n.startswith("hf_spam.") for n in sys.modules)}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """The issue's acceptance command on a three-class CSV (string labels), tiny config as it is."""
    folder = tmp_path_factory.mktemp("three")
    for split, (n, seed) in {"train": (150, 1), "validation": (20, 2), "test": (30, 3)}.items():
        topic_frame(n, seed).to_csv(folder / f"{split}.csv", index=None)
    out = folder / "run"
    result = run_train(["--config", "configs/tiny.yaml", *file_flags(folder, "csv"), "--text_column", "text",
                        "--label_column", "label", "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, out, result.stdout


def test_three_classes_train_well_above_chance_with_per_class_metrics(three_classes):
    _, out, stdout = three_classes
    metrics = json.loads((out / "metrics.json").read_text())
    names = ["food", "sports", "weather"]
    assert metrics["label_names"] == names and "positive_label" not in metrics
    assert metrics["test_accuracy"] >= 0.8, metrics["test_accuracy"]  # chance is 1/3
    assert set(metrics["test_per_class"]) == set(names)
    assert [metrics["test_per_class"][n]["support"] for n in names] == [30, 30, 30]
    cm = metrics["test_confusion_matrix"]
    assert len(cm) == 3 and all(len(row) == 3 for row in cm) and sum(map(sum, cm)) == 90
    assert [sum(row) for row in cm] == [30, 30, 30]
    assert metrics["test_accuracy"] == pytest.approx(sum(cm[i][i] for i in range(3)) / 90)
    assert {"macro_f1", "macro_precision", "macro_recall"} <= {k.split("_", 1)[1] for k in metrics if "_" in k}
    assert "| split | accuracy | macro F1 | examples |" in stdout
    assert (out / "confusion-matrix.png").read_bytes().startswith(b"\x89PNG")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "food", "1": "sports", "2": "weather"}
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["type"] == "local-files" and result["dataset"]["split"] == "test"
    assert {m["name"] for m in result["metrics"]} == {"Accuracy", "F1 (macro)", "Precision (macro)", "Recall (macro)"}
    assert "spam" not in card.lower().split("## usage")[0].replace("hf-spam", "")  # no ham/spam wording
    assert "| sports |" in card and "| **weather** |" in card and "Local files" in card
    settings = json.loads((out / "training_args.json").read_text())
    assert settings["dataset_name"] == "local files" and settings["label_column"] == "label"


def test_three_class_model_loads_with_pipeline_without_hf_spam(three_classes, tmp_path):
    _, out, _ = three_classes
    texts = ["goal match team score player", "soup bread cheese dinner", "rain cloud storm forecast"]
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(out), json.dumps(texts)], cwd=work,
                          env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["hf_spam_imported"] is False
    assert result["top"] == ["sports", "food", "weather"]
    assert result["all"] == [["food", "sports", "weather"]] * 3


def test_predict_and_evaluate_use_the_models_labels(three_classes, capsys):
    folder, out, _ = three_classes
    cli_main(["predict", "--model", str(out), "soup bread cheese recipe"])
    record = json.loads(capsys.readouterr().out)
    assert record["label"] == "food" and set(record["probabilities"]) == {"food", "sports", "weather"}
    assert "spam_probability" not in record and sum(record["probabilities"].values()) == pytest.approx(1)
    cli_main(["evaluate", "--model", str(out), *file_flags(folder, "csv"), "--output_dir", str(out / "eval")])
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    saved = json.loads((out / "eval" / "eval_metrics.json").read_text())
    assert "the test split (90 rows) of your files" in printed and "weather" in printed
    assert saved["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert saved["confusion_matrix"]["rows_true_columns_predicted"] == metrics["test_confusion_matrix"]
    assert (out / "eval" / "confusion-matrix.png").is_file()
    # Another cut could score training rows: refused, naming the setting the model was trained with.
    with pytest.raises(SystemExit) as info:
        cli_main(["evaluate", "--model", str(out), "--train_file", str(folder / "train.csv"), "--split_seed", "7"])
    assert info.value.code == 2 and "trained with split_seed 123" in capsys.readouterr().err


def test_lora_and_two_processes_on_three_classes(three_classes, tmp_path):
    folder, _, _ = three_classes
    lora = tmp_path / "lora"
    result = run_train(["--config", "configs/tiny.yaml", *file_flags(folder, "csv"), "--trainable_layers", "lora",
                        "--max_steps", "6", "--eval_strategy", "no", "--output_dir", str(lora)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads((lora / "config.json").read_text())["id2label"]) == 3
    assert (lora / "adapter" / "adapter_model.safetensors").is_file()
    ddp = tmp_path / "ddp"
    result = run_train(["--config", "configs/tiny.yaml", *file_flags(folder, "csv"), "--max_steps", "4",
                        "--eval_strategy", "no", "--output_dir", str(ddp)],
                       launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", "29527"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert (metrics["train_examples"], metrics["validation_examples"], metrics["test_examples"]) == (450, 60, 90)
    assert sum(map(sum, metrics["test_confusion_matrix"])) == 90  # each example once


def test_resume_and_the_experiments_runner_on_three_classes(three_classes, tmp_path):
    folder, _, _ = three_classes
    common = ["--config", "configs/tiny.yaml", *file_flags(folder, "csv"), "--max_steps", "8", "--eval_strategy",
              "no", "--save_strategy", "steps", "--save_steps", "4"]
    straight = tmp_path / "straight"
    result = run_train([*common, "--output_dir", str(straight)])
    assert result.returncode == 0, result.stderr[-3000:]
    # What a kill right after checkpoint-4 leaves behind: that checkpoint and nothing else.
    killed = tmp_path / "killed"
    shutil.copytree(straight / "checkpoint-4", killed / "checkpoint-4")
    result = run_train([*common, "--output_dir", str(killed), "--resume_from_checkpoint", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, killed))
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "test_macro_f1", "test_loss"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert b["test_confusion_matrix"] == a["test_confusion_matrix"]

    table = tmp_path / "table"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_experiments.py"), "configs/experiments",
                           "--quick", "--only", "last_block", *file_flags(folder, "csv"), "--max_steps", "3",
                           "--eval_strategy", "no", "--output_dir", str(table)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads((table / "results.json").read_text())["rows"]
    assert row["status"] == "ok" and row["metrics"]["label_names"] == ["food", "sports", "weather"]
    assert row["metrics"]["test_examples"] == 90


# --------------------------------------------------------------------------------------------
# Bad input: one line naming what is wrong, exit 2, nothing written
# --------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


BAD_INPUTS = {
    "missing text column": (lambda d: ["--train_file", write(d / "t.csv", "body,label\nhi,a\nyo,b\n")],
                            r"t\.csv: no column 'text' \(the --text_column\); the columns are body, label"),
    "missing label column": (lambda d: ["--train_file", write(d / "t.csv", "text,tag\nhi,a\nyo,b\n")],
                             r"no column 'label' \(the --label_column\); the columns are text, tag"),
    "empty file": (lambda d: ["--train_file", write(d / "t.csv", "")], r"t\.csv: empty file"),
    "unknown extension": (lambda d: ["--train_file", write(d / "t.xlsx", "x")],
                          r"t\.xlsx: unknown extension '\.xlsx'; expected one of \.csv, \.tsv, \.json, \.jsonl"),
    "empty text": (lambda d: ["--train_file", write(d / "t.csv", "text,label\nhi,a\n\"  \",b\nyo,b\n")],
                   r"t\.csv, row 2: empty or missing text in column 'text'"),
    "null text": (lambda d: ["--train_file", write(d / "t.jsonl", '{"text": "hi", "label": "a"}\n'
                                                   '{"text": null, "label": "b"}\n')],
                  r"t\.jsonl, row 2: empty or missing text"),
    "null label": (lambda d: ["--train_file", write(d / "t.jsonl", '{"text": "hi", "label": "a"}\n'
                                                    '{"text": "yo", "label": "b"}\n{"text": "x", "label": null}\n')],
                   r"t\.jsonl, row 3: missing label in column 'label'"),
    "unseen label": (lambda d: ["--train_file", write(d / "t.csv", "text,label\n" + "hi,a\nyo,b\n" * 10),
                                "--validation_file", write(d / "v.csv", "text,label\nhi,a\nnew,c\n")],
                     r"v\.csv: label\(s\) c never seen in training; the known labels are a, b"),
    "one class": (lambda d: ["--train_file", write(d / "t.csv", "text,label\nhi,a\nyo,a\n")],
                  r"train split: only one class \(a\); expected two or more labels"),
    "too few names": (lambda d: ["--train_file", write(d / "t.csv", "text,label\nhi,0\nyo,1\nok,2\n"),
                                 "--label_names", "x", "y"],
                      r"--label_names: 2 name\(s\) for 3 labels \(0\.\.2\)"),
    "data_file and train_file": (lambda d: ["--data_file", "x", "--train_file", write(d / "t.csv", "text,label\n")],
                                 r"--data_file .* with --dataset_name/--train_file: choose one source"),
    "data_file and dataset_name": (lambda d: ["--data_file", "x", "--dataset_name", "someone/data"],
                                   r"choose one source"),
    "columns without data": (lambda d: ["--text_column", "body"], r"--text_column: applies to your data"),
    "positive label of three": (lambda d: ["--train_file", write(d / "t.csv", "text,label\n" + "hi,a\nyo,b\nok,c\n"
                                                                 * 10), "--positive_label", "a"],
                                r"--positive_label a: 3 labels report macro"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
    make, message = BAD_INPUTS[case]
    (tmp_path / "data").mkdir()
    out = tmp_path / "out"
    argv = ["--config", "configs/tiny.yaml", *make(tmp_path / "data"), "--output_dir", str(out)]
    with pytest.raises(HfSpamError, match=message) as info:
        train_main(argv)
    assert "\n" not in str(info.value)
    assert not out.exists() or {p.name for p in out.iterdir()} <= {"train.log"}  # no model, no half file


def test_bad_input_exits_2_and_an_uncached_hub_dataset_offline_says_what_to_do(tmp_path):
    result = run_train(["--config", "configs/tiny.yaml", "--train_file", write(tmp_path / "t.csv", "a,b\n1,2\n"),
                        "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true"])
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: t.csv: no column 'text'")
    with pytest.raises(UnavailableError, match=r"--dataset_name someone/not-cached: not in the datasets cache and "
                                               r"the Hub cannot be reached .* pass --train_file"):
        loaded(["--dataset_name", "someone/not-cached"])
    with pytest.raises(HfSpamError, match=r"--dataset_name .*nowhere: no such local folder or Hub dataset"):
        loaded(["--dataset_name", str(tmp_path / "nowhere")])


def cache_as_hub_dataset(csv_file: Path, repo_id: str, cache: Path) -> None:
    """Leave in ``cache`` what ``load_dataset(repo_id)`` leaves after downloading a Hub dataset of one CSV
    file: ``namespace___name/default/0.0.0/HASH/name-train.arrow`` plus its dataset_info.json."""
    from datasets.packaged_modules.csv.csv import Csv

    namespace, name = repo_id.split("/")
    builder = Csv(data_files={"train": str(csv_file)}, dataset_name=f"{namespace}___{name}", config_id="default",
                  hash="0123abcd", cache_dir=str(cache))
    builder.download_and_prepare()
    prepared = Path(builder.cache_dir)
    (prepared / f"{namespace}___{name}-train.arrow").rename(prepared / f"{name}-train.arrow")


def test_a_hub_dataset_in_the_cache_trains_offline_and_the_card_names_it(three_classes, tmp_path):
    folder, _, _ = three_classes
    cache = tmp_path / "hf_datasets"
    cache_as_hub_dataset(folder / "train.csv", "someone/topics", cache)
    out = tmp_path / "run"
    result = run_train(["--config", "configs/tiny.yaml", "--dataset_name", "someone/topics", "--max_steps", "2",
                        "--eval_strategy", "no", "--output_dir", str(out)],
                       env={"HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # only a train split on the "Hub": validation and test are cut from its 450 rows (10% and 20%)
    assert (metrics["train_examples"], metrics["validation_examples"], metrics["test_examples"]) == (315, 45, 90)
    meta = yaml.safe_load((out / "README.md").read_text().split("---\n", 2)[1])
    assert meta["datasets"] == ["someone/topics"]
    dataset = meta["model-index"][0]["results"][0]["dataset"]
    assert dataset["type"] == "someone/topics" and dataset["split"] == "train"  # the rows held out of train
    assert json.loads((out / "training_args.json").read_text())["dataset_name"] == "someone/topics"


def test_imdb_config_parses_as_the_books_bonus(tmp_path):
    model_args, data_args, args = parse_args(["--config", "configs/imdb.yaml", "--output_dir", str(tmp_path)])
    assert data_args.dataset_name == "stanfordnlp/imdb" and data_args.user_data
    assert (data_args.text_column, data_args.label_column, data_args.max_length) == ("text", "label", 256)
    assert model_args.model_size == "gpt2-small" and model_args.trainable_layers == "last_block"
    assert model_args.pooling == "last" and args.learning_rate == 5e-5 and args.feature_dtype == "bfloat16"


# --------------------------------------------------------------------------------------------
# The feature cache at scale: stored dtype, disk check, flat memory, list and clear
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def padded(sms_splits):
    raw = type(sms_splits)({split: sms_splits[split].select(range(48)) for split in SPLITS})
    return tokenized_splits(raw, "longest_train")


def test_half_precision_features_take_half_the_disk(padded, tmp_path):
    tok, length = padded
    infos = {}
    for dtype in ("float32", "bfloat16", "float16"):
        infos[dtype] = prepare_cached_training(tiny_model("last_block", "last", length), tok,
                                               trainable_layers="last_block", padding="longest_train",
                                               training_args=trainer_args(tmp_path / "out"),
                                               cache_dir=tmp_path / "cache", feature_dtype=dtype)
    sizes = {d: sum(f.stat().st_size for f in info.cache_files.values()) for d, info in infos.items()}
    assert 0.49 < sizes["bfloat16"] / sizes["float32"] < 0.52 and abs(sizes["float16"] - sizes["bfloat16"]) < 64
    exact = infos["float32"].states("train", 7)
    assert exact.shape == (length, 128)
    for dtype, tolerance in (("bfloat16", 1e-2), ("float16", 1e-3)):
        rounded = infos[dtype].states("train", 7)
        assert rounded.dtype == torch.float32 and not torch.equal(rounded, exact)
        assert torch.allclose(rounded, exact, rtol=tolerance, atol=tolerance), dtype
    # A standard safetensors file, readable without hf_spam.
    from safetensors import safe_open

    with safe_open(str(infos["bfloat16"].cache_files["train"]), "pt") as f:
        assert f.get_slice("states").get_dtype() == "BF16" and f.metadata()["rows"] == "48"


def test_a_cache_that_would_not_fit_stops_before_writing(padded, tmp_path, monkeypatch):
    tok, length = padded
    real = feature_cache.shutil.disk_usage
    monkeypatch.setattr(feature_cache.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=feature_cache.DISK_MARGIN_BYTES))  # a full disk
    with pytest.raises(HfSpamError, match=r"frozen-trunk feature cache: needs about 0\.\d GB in .* but 1\.1 GB is "
                                          r"free; pass --cache_features false .* --feature_dtype bfloat16 .* "
                                          r"--feature_cache_dir"):
        prepare_cached_training(tiny_model("last_block", "last", length), tok, trainable_layers="last_block",
                                padding="longest_train", training_args=trainer_args(tmp_path / "out"),
                                cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_a_feature_file_keeps_memory_flat(tmp_path):
    import datasets

    def file_pages_mb() -> float:
        lines = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in lines if line.startswith("RssFile")) / 1024

    ds = datasets.Dataset.from_dict({"input_ids": [[(i * 7 + j) % 50000 for j in range(128)] for i in range(1700)],
                                     "attention_mask": [[1] * 128] * 1700})
    path = write_features(tiny_model("last_block", "last", 128), ds, 1, tmp_path / "f.safetensors")
    assert path.stat().st_size > 100 * 2**20  # 1700 x 128 x 128 float32 values
    features = FeatureFile(path)
    before = file_pages_mb()
    total = sum(float(features.states(i)[-1, 0]) for i in range(len(features)))
    assert total == total and file_pages_mb() - before < 16  # read it all; resident file pages stayed put


def test_cache_command_lists_and_clears(padded, tmp_path, capsys):
    tok, length = padded
    prepare_cached_training(tiny_model("last_block", "last", length), tok, trainable_layers="last_block",
                            padding="longest_train", training_args=trainer_args(tmp_path / "out"),
                            cache_dir=tmp_path / "features")
    (tmp_path / "features" / ".train-x.safetensors.123.tmp").write_bytes(b"unfinished")
    cli_main(["cache", "list", "--feature_cache_dir", str(tmp_path / "features")])
    listed = capsys.readouterr().out
    assert listed.count("safetensors") == 4 and "48 rows, float32" in listed and "leftover" in listed
    assert "Total: 4 file(s)" in listed
    cli_main(["cache", "clear", "--feature_cache_dir", str(tmp_path / "features")])
    assert "Removed: 4 file(s)" in capsys.readouterr().out
    assert list((tmp_path / "features").iterdir()) == []
    cli_main(["cache", "list", "--data_cache_dir", str(tmp_path / "nothing")])
    assert "Total: 0 file(s)" in capsys.readouterr().out


def test_user_data_flags_are_refused_for_the_sms_data_and_vice_versa():
    with pytest.raises(HfSpamError, match="--balance: applies to your data"):
        DataArguments(balance="undersample")
    with pytest.raises(HfSpamError, match="--natural_balance: applies to the SMS collection"):
        DataArguments(train_file="t.csv", natural_balance=True)
    with pytest.raises(HfSpamError, match="--text_column and --label_column: both 'x'"):
        DataArguments(train_file="t.csv", text_column="x", label_column="x")
    with pytest.raises(HfSpamError, match="--feature_dtype/--feature_cache_dir"):
        parse_args(["--output_dir", "x", "--cache_features", "false", "--feature_dtype", "bfloat16"])
    assert ROOT.is_dir()


def test_card_of_a_hub_dataset_names_it_and_the_split_the_scores_came_from():
    from hf_spam.model_card import model_card
    from hf_spam.modeling_gpt import GPTSpamConfig

    config = GPTSpamConfig.from_preset("tiny", id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    metrics = {"test_accuracy": 0.9, "test_f1": 0.91, "test_precision": 0.92, "test_recall": 0.9,
               "test_examples": 25000, "positive_label": "pos",
               "test_per_class": {"neg": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 12500},
                                  "pos": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 12500}},
               "test_confusion_matrix": [[11250, 1250], [1250, 11250]]}
    data = {"source": "hub", "dataset_id": "stanfordnlp/imdb", "dataset_config": None, "balance": "none",
            "made": {"train": "given", "test": "given",
                     "validation": "10% of the training rows, stratified (seed 123)"},
            "splits": {"train": 22500, "validation": 2500, "test": 25000}, "labels": ["neg", "pos"]}
    card = str(model_card(config, metrics, {}, {"data": data}, "gpt2-imdb"))
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["datasets"] == ["stanfordnlp/imdb"] and "spam-detection" not in meta["tags"] and "widget" not in meta
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["type"] == "stanfordnlp/imdb" and result["dataset"]["split"] == "test"
    assert {m["name"] for m in result["metrics"]} == {"Accuracy", "F1 (pos)", "Precision (pos)", "Recall (pos)"}
    assert "[stanfordnlp/imdb](https://huggingface.co/datasets/stanfordnlp/imdb)" in card
    assert "| validation | 2500 | 10% of the training rows, stratified (seed 123) |" in card
    assert "`pos` is the positive class" in card and "| **neg** | 11250 | 1250 |" in card
    # A test split carved from the Hub's train split is named as such: no split that does not exist.
    data["made"]["test"] = "20% of the training rows, stratified (seed 123)"
    meta = yaml.safe_load(str(model_card(config, metrics, {}, {"data": data}, "m")).split("---\n", 2)[1])
    assert meta["model-index"][0]["results"][0]["dataset"]["split"] == "train"
