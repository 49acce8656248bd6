"""Where a run computes: the processes a launcher started, their share of the CPU cores, and the device's name."""

from __future__ import annotations

import os
import platform

import torch
from transformers import TrainingArguments

# Environment variables that torchrun (and accelerate's multi-process launcher) or accelerate's
# one-process launcher set in the processes they start; both default OMP_NUM_THREADS to 1 there.
LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")


def configure_processes() -> None:
    """Before arguments are parsed: several processes without a GPU (torchrun, ``accelerate launch
    --multi_gpu``) need accelerate's CPU mode for a gloo process group, which only ``ACCELERATE_USE_CPU``
    turns on."""
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if "LOCAL_RANK" in os.environ and not (torch.cuda.is_available() or mps):
        os.environ["ACCELERATE_USE_CPU"] = "true"


def fsdp_enabled(args: TrainingArguments) -> bool:
    """Whether this run shards the model with FSDP (``--fsdp`` or an accelerate FSDP config)."""
    return bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def configure_cpu_threads(requested: int | None = None) -> int:
    """Give PyTorch this process's fair share of the CPU cores, and return the thread count.

    ``requested`` (``--cpu_threads``) wins; so does ``OMP_NUM_THREADS`` set by the user. Launchers set
    ``OMP_NUM_THREADS=1`` by default (``accelerate launch`` even for a single process), which would
    leave all cores but one idle: under a launcher, 1 counts as its default, not a choice.
    """
    omp = os.environ.get("OMP_NUM_THREADS", "")
    launched = any(v in os.environ for v in LAUNCHER_VARIABLES)
    if requested is None and omp.isdigit() and int(omp) > 0 and not (launched and omp == "1"):
        requested = int(omp)
    if requested is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        requested = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    torch.set_num_threads(requested)
    return requested


def describe_device(device: torch.device | str) -> str:
    """A short name of where a run computes (``NVIDIA H100 80GB HBM3``, ``CPU (x86_64, 2 threads)``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"
