"""The last faults that ended in a traceback or a silent mistake: a full disk (or an I/O or permission error) while
the model is saved, a model that cannot fit the output disk, labels that differ only by white space, negative step
counts."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_train, scaled_tiny_model
from safetensors import SafetensorError

from hf_spam.arguments import parse_args
from hf_spam.errors import FileSystemError, HfSpamError, run_main
from hf_spam.hub import FOLDER_MARGIN_BYTES, check_room_for_model_folder, model_folder_bytes, save_model_folder
from hf_spam.sources import load_data

MODEL_FILES = {"model.safetensors", "config.json", "README.md", "tokenizer.json", "modeling_gpt.py"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 12 MB file system (tmpfs), where this process may mount one (root, as in CI); skipped elsewhere."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def one_error_line(capsys: pytest.CaptureFixture, main) -> tuple[int, str]:
    """Run ``main`` as the scripts do (``run_main``): the exit status and the one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Writing model shards")]
    assert len(lines) == 1 and "Traceback" not in err, lines  # transformers' progress bar aside
    return exit_info.value.code, lines[0]


def test_a_full_disk_while_saving_is_one_line_and_the_old_model_stays_whole(small_disk, bpe_dir, capsys):
    """A real ENOSPC (safetensors raises it as SafetensorError, without errno): one line, exit 1, and the model
    folder holds the earlier model, whole, with no staging folder left."""
    folder = small_disk / "run"
    small = scaled_tiny_model(seed=1, emb_dim=16, n_layers=1, n_heads=2)  # ~7 MB with the tokenizer: fits
    save_model_folder(small, folder, bpe_dir=bpe_dir)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert MODEL_FILES <= set(before)
    with pytest.raises(FileSystemError, match=r"No space left on device: SafetensorError") as raised:
        save_model_folder(scaled_tiny_model(), folder, bpe_dir=bpe_dir)  # ~28 MB of weights: does not fit
    assert raised.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # whole: the earlier model, untouched

    status, line = one_error_line(capsys, lambda: save_model_folder(scaled_tiny_model(), folder, bpe_dir=bpe_dir))
    assert status == 1
    assert line == f"error: {folder}: the model could not be saved (No space left on device: SafetensorError); " \
                   "nothing of it was left there"
    from hf_spam import GPTSpamForSequenceClassification

    reloaded = GPTSpamForSequenceClassification.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), small.state_dict().values()))


@pytest.mark.parametrize("failure", [
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    OSError(errno.EIO, "Input/output error"),
    PermissionError(errno.EACCES, "Permission denied"),
], ids=["safetensors_enospc", "eio", "eacces"])
def test_any_file_system_failure_while_saving_is_one_line_and_no_model(failure, tmp_path, bpe_dir, capsys,
                                                                        monkeypatch):
    """The same where no tmpfs can be mounted, and for EIO and EACCES: the third-party writer transformers calls
    (safetensors' save_file) raises what it raises on such a disk."""
    import transformers.modeling_utils

    def failing_save_file(*args, **kwargs):
        raise failure

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", failing_save_file)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log_history.json").write_text("[]\n")  # what a run wrote before saving: kept
    status, line = one_error_line(capsys, lambda: save_model_folder(scaled_tiny_model(), folder, bpe_dir=bpe_dir))
    assert status == 1 and line.startswith(f"error: {folder}: the model could not be saved (")
    assert sorted(p.name for p in folder.iterdir()) == ["log_history.json"]  # absent: no model file, no staging


def test_a_model_the_output_disk_cannot_hold_stops_before_training(small_disk, sms_file):
    """On a real 12 MB disk, the tiny model (28 MB of weights) is refused before any training step."""
    out = small_disk / "run"
    result = run_train(["--config", "configs/tiny.yaml", "--data_file", str(sms_file), "--output_dir", str(out),
                        "--disable_tqdm", "true"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    needed = model_folder_bytes(scaled_tiny_model()) / 2**20
    assert result.stderr.strip().splitlines() == [
        f"error: --output_dir {out}: the model folder needs about {needed:,.0f} MB and 12 MB is free there; free "
        "some space or choose another --output_dir"]
    assert not (out / "log_history.json").exists() and not (out / "model.safetensors").exists()


def test_the_free_space_estimate(tmp_path, monkeypatch):
    """Parameter bytes plus a margin (twice the weights with a LoRA adapter folder), against shutil.disk_usage."""
    model = scaled_tiny_model()
    weights = sum(p.numel() for p in model.parameters()) * 4
    assert model_folder_bytes(model) == weights + FOLDER_MARGIN_BYTES
    assert model_folder_bytes(model, adapter=True) == 2 * weights + FOLDER_MARGIN_BYTES
    real = shutil.disk_usage

    def disk_with(free: int):
        return lambda path: real(path)._replace(free=free)

    monkeypatch.setattr(shutil, "disk_usage", disk_with(weights + FOLDER_MARGIN_BYTES))
    check_room_for_model_folder(tmp_path, model)  # just enough
    with pytest.raises(ValueError, match=r"needs about .* MB and .* MB is free there"):
        check_room_for_model_folder(tmp_path, model, adapter=True)
    monkeypatch.setattr(shutil, "disk_usage", disk_with(weights))
    with pytest.raises(ValueError, match=rf"^--output_dir {tmp_path}: the model folder needs about"):
        check_room_for_model_folder(tmp_path, model)


def test_labels_that_differ_only_by_white_space_are_one_class(tmp_path):
    rows = [("Free prize, call now", "spam"), ("WIN cash today", "spam "), ("URGENT: claim your reward", " spam"),
            ("See you at 7?", "ham"), ("Dinner tonight", "ham\t"), ("Running late, sorry", " ham ")] * 10
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[:6], columns=["text", "label"]).to_csv(tmp_path / "test.csv", index=False)
    _, data_args, _ = parse_args(["--train_file", str(tmp_path / "train.csv"), "--test_file",
                                  str(tmp_path / "test.csv"), "--label_names", "ham ", "spam", "--output_dir",
                                  str(tmp_path / "out")])
    splits, info = load_data(**data_args.source_settings)
    assert info["labels"] == ["ham", "spam"]
    assert splits["train"].features["label"].names == ["ham", "spam"]
    assert splits["test"]["label"] == [1, 1, 1, 0, 0, 0]  # the test file's padded labels: known, the same classes


@pytest.mark.parametrize("flag, value, message", [
    ("--eval_steps", "-5", "--eval_steps: expected a number of steps >= 0 (or a share of the training steps below 1)"
                           ", got -5"),
    ("--save_steps", "-1", "--save_steps: expected a number of steps >= 0"),
    ("--logging_steps", "-0.5", "--logging_steps: expected a number of steps >= 0"),
    ("--max_steps", "-2", "--max_steps: expected a positive number of steps, or -1 for --num_train_epochs, got -2"),
])
def test_negative_step_counts_are_refused(flag, value, message, tmp_path):
    with pytest.raises(HfSpamError) as raised:
        parse_args(["--config", "configs/tiny.yaml", "--output_dir", str(tmp_path), flag, value])
    assert str(raised.value).startswith(message)
    assert parse_args(["--config", "configs/tiny.yaml", "--output_dir", str(tmp_path), "--max_steps", "-1",
                       "--eval_steps", "0.25"])[2].eval_steps == 0.25  # -1 (epochs decide) and shares still work


def test_a_negative_step_count_is_one_line_and_exit_2(tmp_path):
    result = run_train(["--config", "configs/tiny.yaml", "--output_dir", str(tmp_path), "--eval_steps", "-5"])
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --eval_steps: expected a number of steps >= 0 (or a share of the training steps below 1), got -5"]
