"""Hostile-but-fair use: tokens never written or printed, output folders that cannot lose or mix a run,
symlinks never followed, a feature cache that heals, and one line (never a traceback) on every surface."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_train, scaled_tiny_model
from test_speed import tiny_model, tokenized_splits, trainer_args

from hf_spam.arguments import parse_args
from hf_spam.cli import main as cli_main
from hf_spam.data import load_sms_spam, read_sms_file
from hf_spam.errors import HfSpamError
from hf_spam.feature_cache import prepare_cached_training
from hf_spam.hub import save_model_folder

TOKEN = "hf_HardeningTestToken0123456789abcdef"
QUICK = ["--config", "configs/tiny.yaml", "--max_steps", "6", "--eval_steps", "3", "--disable_tqdm", "true"]


def files_containing(folder: Path, text: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def run_script(script: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_a_token_is_never_written_or_printed(tmp_path, sms_file):
    # Training with a token and checkpoints: not in training_args.bin, the log, the card, anywhere.
    out = tmp_path / "run"
    result = run_train([*QUICK, "--data_file", str(sms_file), "--output_dir", str(out), "--hub_token", TOKEN,
                        "--save_strategy", "steps", "--save_steps", "3"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "checkpoint-6" / "training_args.bin").is_file()
    assert files_containing(out, TOKEN) == [] and TOKEN not in result.stdout + result.stderr
    # Both experiment runners, given the token (and a misspelt token flag), write and print none of it.
    runs = [
        ("run_experiments.py", ["configs/experiments", "--quick", "--only", "last_block", "--hub_token", TOKEN,
                                "--max_steps", "3", "--eval_strategy", "no", "--data_file", str(sms_file),
                                "--data_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "exp")]),
        ("compare_lora.py", ["--weights", "random", "--model_size", "tiny", f"--hub_token={TOKEN}", "--max_steps",
                             "3", "--eval_strategy", "no", "--data_file", str(sms_file), "--data_cache_dir",
                             str(tmp_path / "cache"), "--output_dir", str(tmp_path / "lora")]),
        ("run_experiments.py", ["configs/experiments", "--quick", "--only", "first_token", "--hubtoken", TOKEN,
                                "--data_file", str(sms_file), "--output_dir", str(tmp_path / "typo")]),
    ]
    for script, args in runs:
        result = run_script(script, args)
        assert TOKEN not in result.stdout + result.stderr, script
        assert files_containing(tmp_path, TOKEN) == [], script
    # the misspelt flag is refused while the rows are planned: its name, not its value, and nothing run
    assert result.returncode == 2 and result.stderr.strip().endswith("unknown argument(s): --hubtoken")
    assert not (tmp_path / "typo").exists()
    assert json.loads((tmp_path / "lora" / "comparison.json").read_text())["flags"].startswith("--weights random")


def test_a_used_output_folder_is_refused_and_overwritten_without_following_links(tmp_path, sms_file):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "notes.txt").write_text("an earlier run")
    targets = {name: outside / name for name in ("train.log", "model.safetensors", "loss-plot.png", "adapter")}
    for name, target in targets.items():
        target.write_text("mine") if name != "adapter" else target.mkdir()
        (out / name).symlink_to(target)
    (outside / "adapter" / "keep.txt").write_text("mine")
    args = [*QUICK, "--data_file", str(sms_file), "--output_dir", str(out)]
    refused = run_train(args)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        f"error: --output_dir {out}: holds another run")
    assert (out / "notes.txt").is_file()  # nothing touched
    done = run_train([*args, "--overwrite_output_dir", "true", "--trainable_layers", "lora"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "notes.txt").exists() and (out / "metrics.json").is_file()
    for name, target in targets.items():
        assert not (out / name).is_symlink(), name  # replaced by this run's own file or folder
        assert (target / "keep.txt" if name == "adapter" else target).read_text() == "mine", name
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "outside"]  # nothing staged beside the folder


def test_resuming_replaces_a_planted_log_link(tmp_path, sms_file):
    out, target = tmp_path / "out", tmp_path / "target.log"
    args = [*QUICK, "--data_file", str(sms_file), "--output_dir", str(out), "--save_strategy", "steps",
            "--save_steps", "3"]
    assert run_train(args).returncode == 0
    target.write_text("mine")
    (out / "train.log").unlink()
    (out / "train.log").symlink_to(target)
    resumed = run_train([*args, "--max_steps", "9", "--resume_from_checkpoint", "true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert target.read_text() == "mine" and not (out / "train.log").is_symlink()
    assert "Saved model" in (out / "train.log").read_text()


@pytest.mark.parametrize("case", ["a_file", "unwritable", "resume_without_checkpoint", "resume_not_a_checkpoint"])
def test_output_folder_problems_stop_before_any_work(tmp_path, case):
    out = {"a_file": tmp_path / "file", "unwritable": Path("/proc/hf-spam-output"),
           "resume_without_checkpoint": tmp_path / "new", "resume_not_a_checkpoint": tmp_path / "new"}[case]
    if case == "a_file":
        out.write_text("x")
    extra = {"resume_without_checkpoint": ["--resume_from_checkpoint", "true"],
             "resume_not_a_checkpoint": ["--resume_from_checkpoint", str(tmp_path)]}.get(case, [])
    # --data_file points nowhere: an error about the data would mean the folder was not checked first
    result = run_train([*QUICK, "--data_file", str(tmp_path / "no-data"), "--output_dir", str(out), *extra])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len([x for x in lines if x.startswith("error:")]) == 1
    expected = {"a_file": "exists and is not a folder", "unwritable": "not writable",
                "resume_without_checkpoint": "no checkpoint-* folder", "resume_not_a_checkpoint": "not a complete"}
    assert expected[case] in lines[-1] and "Traceback" not in result.stderr


def test_ctrl_c_is_one_line_and_keeps_the_checkpoints(tmp_path, sms_file):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", "configs/tiny.yaml", "--data_file",
           str(sms_file), "--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "20",
           "--num_train_epochs", "1", "--disable_tqdm", "true"]
    # A shell's background job inherits SIGINT ignored, and Python then keeps it ignored: restore the default.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / "checkpoint-20" / "trainer_state.json").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted; ") and "--resume_from_checkpoint" in err
    assert (out / "checkpoint-20").is_dir() and not (out / "metrics.json").exists()


def test_a_damaged_feature_cache_heals_and_an_unwritable_one_is_skipped(sms_file, tmp_path, caplog):
    logging.getLogger("hf_spam").addHandler(caplog.handler)  # the package's logger does not propagate
    data = load_sms_spam(sms_file)
    raw = type(data)({split: data[split].select(range(24)) for split in data})
    tok, _ = tokenized_splits(raw, "dynamic")
    args = trainer_args(tmp_path / "out")
    first = prepare_cached_training(tiny_model("last_block", "last_non_pad", None), tok, trainable_layers="last_block",
                                    padding="dynamic", training_args=args, cache_dir=tmp_path / "cache")
    states = first.states("train", 5)
    damaged = first.cache_files["train"]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a kill or a full disk
    healed = prepare_cached_training(tiny_model("last_block", "last_non_pad", None), tok,
                                     trainable_layers="last_block", padding="dynamic", training_args=args,
                                     cache_dir=tmp_path / "cache")
    assert "damaged frozen-trunk feature cache file" in caplog.text
    assert torch.equal(healed.states("train", 5), states)
    (tmp_path / "a_file").write_text("x")
    assert prepare_cached_training(tiny_model("last_block", "last_non_pad", None), tok, trainable_layers="last_block",
                                   padding="dynamic", training_args=args, cache_dir=tmp_path / "a_file") is None
    assert "Frozen-trunk feature cache not used: cannot write" in caplog.text
    logging.getLogger("hf_spam").removeHandler(caplog.handler)


@pytest.mark.parametrize("flags, message", [
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size: expected a positive number"),
    (["--gradient_accumulation_steps=0"], "--gradient_accumulation_steps: expected a positive number"),
    (["--learning_rate", "-1"], "--learning_rate: expected a number >= 0"),
    (["--seed", "-3"], "--seed: expected a number >= 0"),
    (["--num_train_epochs", "0"], "nothing would be trained"),
    # transformers' own check (its bf16 check comes first and, without --use_cpu, needs a GPU with bf16).
    (["--use_cpu", "true", "--bf16", "true", "--fp16", "true"], "At most one of fp16 and bf16 can be True"),
    (["--fp16", "true"], "--fp16: needs a CUDA GPU"),
    (["--model_name_or_path", "openai-community/gpt2"], "not used with --weights random"),
    (["--report_to", "wandb"], "--report_to wandb: the wandb package is not installed"),
    (["--max_length=0"], "--max_length: expected a positive number"),
])
def test_values_that_make_no_sense_are_refused_before_any_work(flags, message):
    if "--fp16" in flags and len(flags) == 2 and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: --fp16 is fine")
    with pytest.raises(HfSpamError, match=message) as info:
        parse_args(["--config=configs/tiny.yaml", "--output_dir=/tmp/never-written", *flags])
    assert "\n" not in str(info.value)


def test_memory_is_pinned_only_for_an_accelerator_unless_asked():
    _, _, args = parse_args(["--config=configs/tiny.yaml", "--output_dir=/tmp/never-written"])
    assert args.dataloader_pin_memory is torch.accelerator.is_available()
    for value, pinned in (("true", True), ("false", False)):
        _, _, args = parse_args(["--config=configs/tiny.yaml", "--output_dir=/tmp/never-written",
                                 "--dataloader_pin_memory", value])
        assert args.dataloader_pin_memory is pinned


def test_config_values_are_checked_naming_the_file(tmp_path):
    (tmp_path / "bool.yaml").write_text(f"include: {ROOT / 'configs' / 'tiny.yaml'}\nsave_strategy: no\n")
    (tmp_path / "type.yaml").write_text(f"include: {ROOT / 'configs' / 'tiny.yaml'}\nlearning_rate: fast\n")
    (tmp_path / "choice.yaml").write_text(f"include: {ROOT / 'configs' / 'tiny.yaml'}\npooling: max\n")
    with pytest.raises(HfSpamError, match=r"bool\.yaml: save_strategy: YAML reads 'false' as a boolean"):
        parse_args(["--config", str(tmp_path / "bool.yaml"), "--output_dir", "x"])
    with pytest.raises(HfSpamError, match=r"type\.yaml: learning_rate: 'fast' is not a valid value"):
        parse_args(["--config", str(tmp_path / "type.yaml"), "--output_dir", "x"])
    with pytest.raises(HfSpamError, match=r"choice\.yaml: pooling: unknown value 'max'; expected one of last, first"):
        parse_args(["--config", str(tmp_path / "choice.yaml"), "--output_dir", "x"])  # argparse checks flags only
    with pytest.raises(HfSpamError, match="not a readable YAML file"):
        parse_args(["--config", str(tmp_path), "--output_dir", "x"])  # a folder


def test_cli_surfaces_are_one_line(tmp_path, bpe_dir, capsys):
    folder = save_model_folder(scaled_tiny_model(pooling="last_non_pad"), tmp_path / "model", bpe_dir=bpe_dir)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"one\ntwo\nthree\ncaf\xe9\nfive\n" * 2000)  # the decoder reads ahead: the line must be right
    cases = [
        (["predict", "--model", str(folder), "--device", "nonsense", "hi"], "not a device name"),
        (["predict", "--model", str(folder), "--file", str(bad)], f"{bad}:4: not UTF-8 text"),
    ]
    if not torch.cuda.is_available():
        cases.append((["predict", "--model", str(folder), "--device", "cuda", "hi"], "not available on this machine"))
    capsys.readouterr()  # what saving the folder printed
    for args, needle in cases:
        with pytest.raises(SystemExit) as info:
            cli_main(args)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    closed = subprocess.run([str(Path(sys.executable).with_name("hf-spam")), "predict", "--model", str(folder), "hi"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300,
                            preexec_fn=lambda: os.close(1))  # the program starts with its stdout closed
    assert closed.returncode == 2 and closed.stderr.strip() == "error: stdout is closed; predictions are written " \
        "there (redirect it to a file)"
    for script in ("run_experiments.py", "compare_lora.py"):
        result = run_script(script, ["--output_dir", str(bad)])
        assert result.returncode == 2 and result.stderr.strip() == f"error: --output_dir {bad}: exists and is not a " \
            "folder", script


def test_a_message_of_any_length_is_read(tmp_path):
    path = tmp_path / "long.tsv"
    path.write_text("ham\tok\nspam\t" + "win " * 50_000 + "\n", encoding="utf-8")  # 200,000 characters
    assert len(read_sms_file(path)["Text"][1]) == 200_000
