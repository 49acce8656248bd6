"""Shared test set-up: offline Hub, real files from ../shared, small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
