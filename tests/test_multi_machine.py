"""More than one process, for real, on CPU: FSDP2 over gloo (through accelerate's config and torchrun's ``--fsdp``)
against a DDP run of the same data and seed, and two "machines" on 127.0.0.1 (accelerate's multi-node config and
``torchrun --nnodes 2``) training the tiny model together. Each launch is the tiny model on 64 examples, 1 epoch."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_train

from hf_spam.arguments import parse_args
from hf_spam.errors import HfSpamError
from hf_spam.launch import check_fsdp

pytestmark = pytest.mark.slow

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
CORES = len(os.sched_getaffinity(0))
# Odd validation and test sizes: a sampler padding them to 2 x 8 would score some examples twice.
SIZES = {"train": 64, "validation": 15, "test": 31}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe(sms_file: Path, out: Path) -> list[str]:
    """The tiny model, every layer trained, every step's loss logged, the test split's predictions written."""
    return ["--config", "configs/tiny.yaml", "--trainable_layers", "all", "--data_file", str(sms_file),
            "--output_dir", str(out), "--max_train_samples", str(SIZES["train"]), "--max_eval_samples",
            str(SIZES["validation"]), "--max_test_samples", str(SIZES["test"]), "--num_train_epochs", "1",
            "--logging_steps", "1", "--eval_strategy", "no", "--do_predict", "true", "--disable_tqdm", "true"]


def trained(args: list[str], launcher: list[str], out: Path) -> Path:
    result = run_train(args, launcher=launcher, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out


def losses(folder: Path) -> list[tuple[float, float]]:
    """Each training step's (loss, gradient norm before clipping) from log_history.json."""
    history = json.loads((folder / "log_history.json").read_text())
    return [(h["loss"], h["grad_norm"]) for h in history if "loss" in h]


def predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, sms_file) -> Path:
    """The reference: 2 CPU processes with DDP (configs/accelerate/cpu_processes.yaml)."""
    out = tmp_path_factory.mktemp("ddp")
    return trained(recipe(sms_file, out), [*ACCELERATE, "--config_file", "configs/accelerate/cpu_processes.yaml",
                                           "--main_process_port", str(free_port())], out)


@pytest.fixture(scope="module", params=["accelerate_config", "torchrun_fsdp_flags"])
def fsdp_run(request, tmp_path_factory, sms_file) -> Path:
    """2 CPU processes with FSDP2: configs/accelerate/fsdp.yaml (its bf16 set to no, as DDP's), or torchrun with
    TrainingArguments' --fsdp --fsdp_config configs/fsdp.json."""
    out = tmp_path_factory.mktemp(request.param)
    args = recipe(sms_file, out)
    if request.param == "accelerate_config":
        launcher = [*ACCELERATE, "--config_file", "configs/accelerate/fsdp.yaml", "--num_processes", "2",
                    "--mixed_precision", "no", "--main_process_port", str(free_port())]
    else:
        launcher = [*TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port())]
        args += ["--fsdp", "--fsdp_config", "configs/fsdp.json"]
    return trained(args, launcher, out)


def test_fsdp_shards_the_parameters_between_the_ranks(fsdp_run: Path):
    log = (fsdp_run / "train.log").read_text()
    found = re.search(r"FSDP: the ranks hold ([\d,]+) \+ ([\d,]+) of ([\d,]+) parameters", log)
    assert found, log[-2000:]
    first, second, total = (int(n.replace(",", "")) for n in found.groups())
    assert first + second == total == json.loads((fsdp_run / "metrics.json").read_text())["total_parameters"]
    assert abs(first - total / 2) < 0.01 * total and abs(second - total / 2) < 0.01 * total  # about half each


def test_fsdp_steps_equal_the_ddp_run(fsdp_run: Path, ddp_run: Path):
    """The same losses and gradient norms step by step: a gradient summed instead of averaged over the ranks
    (pytorch#162338) doubles the norm, which Adam's updates alone would hide."""
    fsdp, ddp = losses(fsdp_run), losses(ddp_run)
    assert len(fsdp) == len(ddp) == SIZES["train"] // (2 * 8)
    for (loss, norm), (ddp_loss, ddp_norm) in zip(fsdp, ddp):
        assert loss == pytest.approx(ddp_loss, rel=1e-5) and norm == pytest.approx(ddp_norm, rel=1e-5)


def test_fsdp_saves_the_whole_model_that_scores_like_ddp(fsdp_run: Path, ddp_run: Path):
    from transformers import AutoModelForSequenceClassification

    # the same files (not torch's FSDP modules named as the model's code), and the full model loads without hf_spam
    assert sorted(p.name for p in fsdp_run.iterdir()) == sorted(p.name for p in ddp_run.iterdir())
    fsdp, ddp = (AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
                 for folder in (fsdp_run, ddp_run))
    assert fsdp.num_parameters() == ddp.num_parameters() == 6_961_026
    ddp_weights = ddp.state_dict()
    for name, tensor in fsdp.state_dict().items():
        assert (tensor - ddp_weights[name]).abs().max() < 1e-5, name
    got, expected = (json.loads((f / "metrics.json").read_text()) for f in (fsdp_run, ddp_run))
    for split, size in SIZES.items():
        assert got[f"{split}_examples"] == size
        assert got[f"{split}_accuracy"] == expected[f"{split}_accuracy"]
        assert got[f"{split}_loss"] == pytest.approx(expected[f"{split}_loss"], rel=1e-4)
    assert [p["predicted"] for p in predictions(fsdp_run)] == [p["predicted"] for p in predictions(ddp_run)]
    assert len(predictions(fsdp_run)) == SIZES["test"]


def test_fsdp_cpu_offload_on_cpu_is_refused_in_one_line(tmp_path, monkeypatch):
    """What FSDP cannot do on CPU processes: offload the parameters to CPU memory (from --fsdp_config, or the
    FSDP_OFFLOAD_PARAMS that accelerate's fsdp_offload_params sets)."""
    config = tmp_path / "offload.json"
    config.write_text(json.dumps({"version": 2, "cpu_offload": True}))
    base = ["--config", "configs/tiny.yaml", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(HfSpamError, match=r"^FSDP CPU offload .*not possible on CPU processes"):
        check_fsdp(parse_args([*base, "--fsdp", "--fsdp_config", str(config)])[2])
    assert check_fsdp(parse_args([*base, "--fsdp", "--fsdp_config", "configs/fsdp.json"])[2])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(HfSpamError, match=r"^FSDP CPU offload"):
        check_fsdp(parse_args(base)[2])


def two_nodes(sms_file: Path, tmp_path: Path, launcher: str) -> list[tuple[subprocess.CompletedProcess, Path]]:
    """Two "machines" on 127.0.0.1, one process each, each with its own output folder, started together."""
    port, started = free_port(), []
    for rank in (0, 1):
        command = {
            "accelerate": [*ACCELERATE, "--config_file", "configs/accelerate/multi_node.yaml", "--machine_rank",
                           str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)],
            "torchrun": [*TORCHRUN, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                         "--master_addr", "127.0.0.1", "--master_port", str(port)],
        }[launcher]
        out = tmp_path / f"node{rank}"
        args = recipe(sms_file, out) + ["--logging_steps", "4"]
        started.append((subprocess.Popen([*command, str(ROOT / "scripts" / "train.py"), *args], cwd=ROOT, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"}), out))
    results = []
    for process, out in started:
        try:
            stdout, _ = process.communicate(timeout=300)
        finally:
            process.kill()
        results.append((subprocess.CompletedProcess(process.args, process.returncode, stdout, ""), out))
    return results


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_machines_train_together(tmp_path, sms_file, launcher):
    (first, main_folder), (second, other_folder) = two_nodes(sms_file, tmp_path, launcher)
    assert first.returncode == 0 and second.returncode == 0, first.stdout[-3000:] + second.stdout[-3000:]
    metrics = json.loads((main_folder / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert {split: metrics[f"{split}_examples"] for split in SIZES} == SIZES  # every example scored once
    assert len(predictions(main_folder)) == SIZES["test"]
    assert (main_folder / "model.safetensors").is_file()
    assert list(other_folder.iterdir()) == []  # one folder written: the second machine writes nothing
    # each machine runs one process, which takes all of the machine's cores (here the same CPU, as two nodes)
    threads = f"2 process(es) (1 on this machine), CPU ({os.uname().machine}, {CORES} threads), {CORES} PyTorch threads"
    for result in (first, second):
        assert threads in result.stdout, result.stdout[-2000:]
    assert metrics["cpu_threads"] == CORES
