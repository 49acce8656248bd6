"""End-to-end training with scripts/train.py: the acceptance run, launchers and threads, errors, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_train

from hf_spam.arguments import parse_args
from hf_spam.errors import HfSpamError


def test_tiny_config_trains_and_writes_everything(tiny_run: Path):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "test_f1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test_accuracy"] >= 0.90
    assert (metrics["train_examples"], metrics["validation_examples"], metrics["test_examples"]) == (1045, 149, 300)
    for name in ("loss-plot.png", "loss-plot.pdf", "accuracy-plot.png", "accuracy-plot.pdf", "model.safetensors",
                 "config.json", "train.log", "log_history.json"):
        assert (tiny_run / name).is_file() and (tiny_run / name).stat().st_size > 0, name
    log = (tiny_run / "train.log").read_text()
    assert "Trainable parameters" in log and "eval_accuracy" in log
    assert "1 process(es)" in log and f"{len(os.sched_getaffinity(0))} PyTorch threads each" in log
    # the chapter's evaluation every 50 steps: 1045 // 8 = 130 steps per epoch, 5 epochs
    history = json.loads((tiny_run / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == list(range(50, 651, 50))
    assert len([h for h in history if "epoch_train_accuracy" in h]) == 5


def test_a_run_warns_of_nothing_it_could_avoid(tmp_path, sms_file):
    """--activation_checkpointing (transformers 5's name: no FutureWarning) and, with no accelerator, memory that
    is not pinned (no pin_memory warning) unless --dataloader_pin_memory asks for it."""
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir", str(tmp_path),
                        "--max_steps", "4", "--eval_steps", "2", "--activation_checkpointing", "true",
                        "--disable_tqdm", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FutureWarning" not in result.stderr and "pin_memory" not in result.stderr, result.stderr[-3000:]


def test_saved_folder_classifies_the_chapter_examples(tiny_run: Path):
    from hf_spam.predict import SpamClassifier

    clf = SpamClassifier.from_pretrained(tiny_run)
    out = clf.predict([
        "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
        "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    ])
    assert [o["label"] for o in out] == ["spam", "ham"]


ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
CORES = len(os.sched_getaffinity(0))


def test_accelerate_launch_single_process_uses_every_core(tmp_path, sms_file):
    # accelerate sets OMP_NUM_THREADS=1 in the process it starts; the script takes the cores back.
    result = run_train(
        ["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir", str(tmp_path),
         "--max_steps", "20", "--eval_steps", "10"],
        launcher=[*ACCELERATE, "--config_file", "configs/accelerate/one_process.yaml"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_processes"] == 1 and metrics["test_examples"] == 300
    assert metrics["cpu_threads"] == CORES
    # ... unless the user chose: --cpu_threads wins, and so does OMP_NUM_THREADS outside a launcher
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir",
                        str(tmp_path / "one"), "--max_steps", "2", "--eval_strategy", "no"],
                       env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and json.loads((tmp_path / "one" / "metrics.json").read_text())["cpu_threads"] == 1


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate_multi_gpu", "accelerate_config"])
def test_two_cpu_processes_count_every_example_once(tmp_path, sms_file, tiny_run, launcher):
    port = {"torchrun": "29517", "accelerate_multi_gpu": "29518", "accelerate_config": "29519"}[launcher]
    command = {
        "torchrun": [*TORCHRUN, "--nproc_per_node", "2", "--master_port", port],
        "accelerate_multi_gpu": [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port],
        "accelerate_config": [*ACCELERATE, "--config_file", "configs/accelerate/cpu_processes.yaml",
                              "--main_process_port", port],
    }[launcher]
    args = ["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir", str(tmp_path)]
    if launcher != "torchrun":
        args += ["--num_train_epochs", "1"]  # the whole recipe once (torchrun) is enough; the others: the wiring
    result = run_train(args, launcher=command)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((tmp_path / "metrics.json").read_text())
    assert ddp["num_processes"] == 2 and ddp["cpu_threads"] == max(1, CORES // 2)
    # 149 and 300 are not divisible by 2 x 8: sampler padding would add duplicates if not dropped
    assert (ddp["train_examples"], ddp["validation_examples"], ddp["test_examples"]) == (1045, 149, 300)
    if launcher == "torchrun":  # twice the global batch, half the steps: the same recipe within noise
        single = json.loads((tiny_run / "metrics.json").read_text())
        assert ddp["test_accuracy"] >= 0.85
        assert abs(ddp["test_accuracy"] - single["test_accuracy"]) <= 0.06


def test_errors_under_accelerate_launch_quiet_are_one_line(tmp_path):
    result = run_train(["--config", "configs/tiny.yaml", "--output_dir", str(tmp_path), "--pooling", "max"],
                       launcher=[*ACCELERATE, "--quiet", "--config_file", "configs/accelerate/one_process.yaml"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: --pooling: unknown value 'max'; expected one of last, "
                                                  "first, last_non_pad, mean"]


def test_pretrained_weights_unavailable_is_one_clear_line(tmp_path, sms_file):
    result = run_train(["--config", "configs/seed.yaml", "--data_file", str(sms_file), "--output_dir", str(tmp_path)],
                       env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: openai-community/gpt2: ") and result.returncode == 3
    assert "--weights random" in lines[-1] and "--model_name_or_path" in lines[-1]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model.safetensors").exists()  # never a silent fallback to random weights


def test_unknown_yaml_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_size: tiny\nweights: random\nlearnig_rate: 0.1\n")
    with pytest.raises(HfSpamError, match=r"bad\.yaml: unknown key 'learnig_rate'"):
        parse_args(["--config", str(bad), "--output_dir", str(tmp_path)])
    result = run_train(["--config", str(bad), "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model_size", "gpt2-huge"], "model_size"),
        (["--trainable_layers", "some"], "--trainable_layers"),
        (["--pooling", "max"], "--pooling"),
        (["--padding", "left"], "--padding"),
        (["--max_length", "-1"], "--max_length: expected a positive number"),
        (["--cpu_threads", "0"], "--cpu_threads"),
        (["--drop_rate", "1.5"], "--drop_rate"),
        (["--learning_rate", "fast"], "--learning_rate.*: invalid float value"),
        (["--hubtoken", "hf_secret"], "unknown argument\\(s\\): --hubtoken$"),  # the value may be a token
        (["--weights", "pretrained", "--model_size", "tiny"], "tiny has no pretrained weights"),
    ],
)
def test_bad_choices_are_refused(tmp_path, flags, message):
    with pytest.raises(HfSpamError, match=message):
        parse_args(["--config", "configs/tiny.yaml", "--output_dir", str(tmp_path), *flags])


def test_output_dir_is_required_and_help_needs_nothing(tmp_path):
    with pytest.raises(HfSpamError, match="--output_dir: required"):
        parse_args(["--config", "configs/tiny.yaml"])
    result = run_train(["--config", "configs/tiny.yaml"])
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --output_dir: required")


def test_command_line_flags_override_the_config(tmp_path):
    model_args, data_args, training_args = parse_args(
        ["--config", str(ROOT / "configs/seed.yaml"), "--output_dir", str(tmp_path), "--learning_rate", "1e-4",
         "--pooling", "last_non_pad"]
    )
    assert training_args.learning_rate == 1e-4 and model_args.pooling == "last_non_pad"
    assert training_args.weight_decay == 0.1 and training_args.per_device_train_batch_size == 8
    assert model_args.trainable_layers == "last_block" and data_args.padding == "longest_train"


def _wait_for(path_glob: str, folder: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if list(folder.glob(path_glob)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {path_glob} appeared: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{path_glob} did not appear in {timeout} s")


def test_resume_after_sigkill_gives_the_same_final_metrics(tmp_path, sms_file):
    common = ["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--num_train_epochs", "2",
              "--save_strategy", "steps", "--save_steps", "40", "--save_total_limit", "2", "--eval_steps", "40",
              "--logging_steps", "40"]
    straight = tmp_path / "straight"
    result = run_train([*common, "--output_dir", str(straight)])
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "scripts/train.py"), *common, "--output_dir", str(killed)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # checkpoint-160 is in the middle of epoch 2 (130 steps per epoch): kill right after it is written
        _wait_for("checkpoint-160/trainer_state.json", killed, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    # a half-written newer checkpoint may exist; Trainer resumes from the newest complete one
    resumed = run_train([*common, "--output_dir", str(killed), "--resume_from_checkpoint", "true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "test_f1", "test_loss"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert len(list(killed.glob("checkpoint-*"))) <= 2  # save_total_limit


def test_help_lists_every_flag_from_any_folder(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--trainable_layers" in result.stdout and "--num_train_epochs" in result.stdout


SAVE_SCRIPT = """
import sys, torch
from hf_spam.hub import save_model_folder
from hf_spam.modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
model = GPTSpamForSequenceClassification(GPTSpamConfig(emb_dim=384, n_layers=6, n_heads=6))
print("saving", flush=True)
for _ in range(3):
    save_model_folder(model, sys.argv[1])
"""


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8])
def test_kill_during_final_save_never_leaves_a_half_written_file(tmp_path, delay):
    from safetensors import safe_open

    out = tmp_path / "model"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    # whatever made it under the final names is complete
    if (out / "model.safetensors").exists():
        with safe_open(out / "model.safetensors", "pt") as f:
            assert all(f.get_tensor(k).numel() > 0 for k in f.keys())
    if (out / "config.json").exists():
        json.loads((out / "config.json").read_text())
        assert (out / "model.safetensors").exists()  # config.json is moved in last
    if out.exists():
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
