"""The experiments runner and the LoRA comparison, run as the user runs them (scripts, real data): each row is
a real scripts/train.py process whose metrics.json the scripts collect."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from compare_lora import main as compare_lora_main
from conftest import ROOT
from run_experiments import SKIPPED_QUICK_SIZE, TABLE_COLUMNS, context_label, discover
from run_experiments import main as run_experiments_main

from hf_spam.errors import HfSpamError

# Few steps and no periodic evaluation: the tests check the plumbing, not the learning.
FAST = ["--max_steps", "3", "--eval_strategy", "no"]
PERCENT = re.compile(r"^\d{1,3}\.\d\d%$")


def run_script(script: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_quick_rows_make_the_table(tmp_path, sms_file):
    out = tmp_path / "table"
    result = run_script("run_experiments.py", [
        "configs/experiments", "--quick", "--only", "last_block,lora,first_token,gpt2_medium",
        "--data_file", str(sms_file), "--data_cache_dir", str(tmp_path / "cache"), "--output_dir", str(out), *FAST,
    ])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    columns, rows = read_csv(out / "results.csv")
    assert columns == TABLE_COLUMNS
    assert [r["Experiment"] for r in rows] == ["last_block", "first_token", "gpt2_medium", "lora"]  # table order
    assert [r["#"] for r in rows] == ["1", "2", "6", "10"]
    trained = [r for r in rows if r["Experiment"] != "gpt2_medium"]
    for r in trained:
        for col in ("Training acc", "Validation acc", "Test acc"):
            assert PERCENT.match(r[col]), (r["Experiment"], col, r[col])
        assert r["Model"].startswith("tiny") and r["Weights"] == "random" and r["Notes"] == ""
        assert r["Context length"] == "longest train ex. (120)"  # the real data's longest training text
        assert re.match(r"^\d+\.\d\d (min|s)$", r["Training time"]) and r["CPU/GPU"].startswith("CPU")
    by_name = {r["Experiment"]: r for r in rows}
    assert by_name["first_token"]["Trainable token position"] == "first"
    assert by_name["lora"]["Trainable layers"] == "LoRA (r=16, peft alpha=256)"
    assert by_name["gpt2_medium"]["Notes"] == SKIPPED_QUICK_SIZE and by_name["gpt2_medium"]["Test acc"] == "—"
    assert by_name["gpt2_medium"]["Model"] == "gpt2-medium (355M)"  # what the row is, not what --quick would run
    assert by_name["last_block"]["CPU/GPU"] == by_name["lora"]["CPU/GPU"]  # the device the row's run reported

    md = (out / "results.md").read_text()
    assert "| " + " | ".join(TABLE_COLUMNS) + " |" in md and "Quick mode" in md
    assert md.count("\n| ") == 1 + len(rows)
    data = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in data["rows"]] == ["ok", "ok", "skipped", "ok"]
    lora = data["rows"][3]
    assert lora["metrics"]["trainable_parameters"] < data["rows"][0]["metrics"]["trainable_parameters"]
    assert lora["peak_rss_mb"] > 100 and lora["wall_seconds"] > lora["training_seconds"] > 0
    # each row kept its run (metrics, log, adapter config) but not its weights (no --keep_models)
    assert (out / "lora" / "adapter" / "adapter_config.json").is_file()
    assert (out / "lora" / "metrics.json").is_file() and (out / "lora.log").is_file()
    assert not list(out.glob("**/*.safetensors"))
    assert not (out / "gpt2_medium.log").exists()  # skipped without starting a job


def test_pretrained_rows_are_skipped_when_the_weights_cannot_be_had(tmp_path, sms_file):
    out = tmp_path / "table"
    result = run_script(
        "run_experiments.py",
        ["configs/experiments", "--only", "first_token,last_block", "--data_file", str(sms_file),
         "--output_dir", str(out), *FAST],
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, rows = read_csv(out / "results.csv")
    for row in rows:  # the row's own one-line reason, with the way out
        assert row["Notes"].startswith("skipped: openai-community/gpt2: ") and "--weights random" in row["Notes"]
    assert rows[0]["Notes"] == rows[1]["Notes"]
    assert all(r["Test acc"] == "—" and r["Model"] == "gpt2-small (124M)" for r in rows)
    # the first row found the checkpoint missing; the second (same checkpoint) was not started at all
    assert (out / "last_block.log").is_file() and not (out / "first_token.log").exists()
    assert [r["status"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["skipped", "skipped"]
    assert "last_block: openai-community/gpt2: " in result.stdout


def test_compare_lora(tmp_path, sms_file):
    out = tmp_path / "compare"
    result = run_script("compare_lora.py", [
        "--weights", "random", "--model_size", "tiny", "--data_file", str(sms_file),
        "--data_cache_dir", str(tmp_path / "cache"), "--output_dir", str(out), *FAST,
    ])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((out / "comparison.json").read_text())
    last_block, lora = data["rows"]
    assert (last_block["name"], lora["name"]) == ("last_block", "lora")
    # same data and seed: the same split sizes; LoRA trains far fewer parameters
    for key in ("train_examples", "validation_examples", "test_examples"):
        assert last_block["metrics"][key] == lora["metrics"][key]
    assert 0 < lora["metrics"]["trainable_parameters"] < last_block["metrics"]["trainable_parameters"]
    assert lora["settings"]["lora_alpha"] == 256 and lora["settings"]["lora_rank"] == 16
    md = (out / "comparison.md").read_text()
    for col in ("Trainable parameters", "Share of all parameters", "Wall time", "Peak memory (RSS)", "Test acc",
                "Test F1"):
        assert col in md
    assert "Peak GPU memory" not in md  # CPU run
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "lora" / "adapter" / "adapter_model.safetensors").is_file()  # compare keeps both models
    assert f"{lora['metrics']['trainable_parameters']:,}" in result.stdout


def test_compare_lora_refuses_trainable_layers(tmp_path):
    with pytest.raises(HfSpamError, match="--trainable_layers: compare_lora trains last_block and lora itself"):
        compare_lora_main(["--trainable_layers", "all", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["configs/experiments", "--only", "lora,nope"], "--only: unknown experiment(s) nope; expected some of"),
        (["no/such/folder"], "no/such/folder: not a folder of experiment configs"),
        (["configs/experiments", "--pooling", "middle"], "--pooling: unknown value 'middle'"),
        (["configs/experiments", "--config", "configs/tiny.yaml"], "--config: set by the runner"),
    ],
)
def test_runner_errors_come_before_anything_runs(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(HfSpamError) as info:
        run_experiments_main([*args, "--output_dir", str(tmp_path / "out")])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_bad_row_file_fails_before_any_row_runs(tmp_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "01_fine.yaml").write_text("include: " + str(ROOT / "configs" / "tiny.yaml") + "\n")
    (folder / "02_bad.yaml").write_text("include: " + str(ROOT / "configs" / "tiny.yaml") + "\nbatch: 3\n")
    with pytest.raises(HfSpamError, match="02_bad.yaml: unknown key 'batch'"):
        run_experiments_main([str(folder), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_scripts_exit_cleanly_on_bad_input(tmp_path):
    # the real scripts: one line on stderr, status 2, no traceback
    result = run_script("run_experiments.py", ["no/such/folder", "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: no/such/folder: not a folder of experiment configs (*.yaml)"
    ]
    result = run_script("compare_lora.py", ["--output_dir", str(tmp_path / "out"), "--trainable_layers", "all"])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_discover_orders_by_number_and_refuses_duplicates(tmp_path):
    for name in ("10_b.yaml", "2_a.yaml", "c.yaml"):
        (tmp_path / name).write_text("")
    assert [(n, name) for n, name, _ in discover(tmp_path, None)] == [(2, "a"), (10, "b"), (None, "c")]
    assert [name for _, name, _ in discover(tmp_path, ["c", "10_b"])] == ["b", "c"]
    (tmp_path / "3_c.yaml").write_text("")
    with pytest.raises(HfSpamError, match="several files give the experiment name"):
        discover(tmp_path, None)


def test_context_length_column():
    base = {"batch_size": 8, "gradient_accumulation_steps": 1, "causal": True}
    assert context_label({**base, "padding": "longest_train"}, 120) == "longest train ex. (120)"
    assert context_label({**base, "padding": "max_context"}, 1024) == "context length (1024)"
    assert context_label({**base, "padding": "dynamic", "batch_size": 1}, None) == "variable: no padding (batch size 1)"
    assert context_label({**base, "padding": "dynamic", "batch_size": 1, "gradient_accumulation_steps": 8},
                         None) == "variable: no padding (batch size 1, 8 accumulated)"
    assert context_label({**base, "padding": "dynamic"}, None) == "variable: padded per batch (batch size 8)"
    assert context_label({**base, "padding": "longest_train", "causal": False},
                         120) == "longest train ex. (120); no causal mask"
