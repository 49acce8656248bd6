"""Shared test set-up: offline Hub, real files from ../shared, small helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the recipe and runner scripts, importable by tests as modules
sys.path.insert(0, str(ROOT / "benchmarks"))  # chapter_baseline: the book's own model code, the reference
SHARED = Path(os.environ.get("HF_SPAM_SHARED", ROOT.parent / "shared"))
SMS_FILE = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
BPE_DIR = SHARED / "data" / "gpt2-bpe"

# Every test runs offline and reads GPT-2's BPE files from ../shared (never copied here).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_SPAM_BPE_DIR"] = str(BPE_DIR)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sms_file() -> Path:
    if not SMS_FILE.is_file():
        pytest.fail(f"{SMS_FILE}: the real SMS Spam Collection from ../shared is required")
    return SMS_FILE


@pytest.fixture(scope="session")
def bpe_dir() -> Path:
    return BPE_DIR


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def run_train(args: list[str], *, launcher: list[str] | None = None, timeout: int = 600, env: dict | None = None):
    """Run scripts/train.py in a subprocess (optionally under ``accelerate launch``); returns the result."""
    import subprocess
    import sys

    cmd = (launcher or [sys.executable]) + [str(ROOT / "scripts" / "train.py"), *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, sms_file) -> Path:
    """One real training run of configs/tiny.yaml on the real data, shared by the tests that need
    a trained model folder (the acceptance command of the core pipeline)."""
    out = tmp_path_factory.mktemp("tiny_run")
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir", str(out)])
    if result.returncode != 0:
        pytest.fail(f"tiny run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return out


def peft_alpha_for_chapter(rank: int, chapter_alpha: float) -> float:
    """peft's ``lora_alpha`` with the update scale of the chapter's ``alpha`` (appendix E does not divide it by r)."""
    return float(chapter_alpha) * rank


def scaled_tiny_model(seed: int = 0, **config):
    """A random tiny classifier whose head is scaled up, so spam probabilities differ between texts."""
    import torch

    from hf_spam import GPTSpamConfig, GPTSpamForSequenceClassification

    torch.manual_seed(seed)
    model = GPTSpamForSequenceClassification(GPTSpamConfig.from_preset("tiny", **config)).eval()
    with torch.no_grad():
        model.gpt.out_head.weight.mul_(10.0)
    return model
