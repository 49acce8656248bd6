"""Where a run computes: the processes a launcher started, their share of the CPU cores, and the device's name."""

from __future__ import annotations

import logging
import os
import platform
import sys
from typing import Any

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback, TrainingArguments

from .errors import HfSpamError

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


def check_fsdp(args: TrainingArguments) -> bool:
    """Whether this run uses FSDP, after refusing what FSDP cannot do on CPU processes: offloading parameters
    to CPU memory (they are there already; torch's offload policy then asks for an accelerator)."""
    if not fsdp_enabled(args):
        return False
    offload = (os.environ.get("FSDP_OFFLOAD_PARAMS", "").lower() in ("1", "true")
               or bool((args.fsdp_plugin_args or {}).get("cpu_offload")))
    if offload and args.device.type == "cpu":
        raise HfSpamError("FSDP CPU offload (fsdp_offload_params / --fsdp offload / fsdp_config cpu_offload): not "
                          "possible on CPU processes, whose parameters are in CPU memory already; turn it off")
    return True


def allow_fsdp_on_cpu(args: TrainingArguments) -> None:
    """Before the Trainer builds its ``Accelerator``: let FSDP shard over CPU processes (gloo).

    accelerate takes an FSDP plugin only for accelerator process groups; on CPU processes its state says
    ``MULTI_CPU`` and the plugin is dropped without a word (the run is DDP). PyTorch's FSDP2 itself runs on a
    CPU mesh, so the CPU state is handed to accelerate's FSDP branch, which then records ``FSDP``.
    """
    state = PartialState._shared_state  # noqa: SLF001 - accelerate keeps this state in a shared dict
    if fsdp_enabled(args) and state.get("distributed_type") == DistributedType.MULTI_CPU:
        state["distributed_type"] = DistributedType.MULTI_GPU  # the branch that turns a plugin into FSDP


def local_parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    """``(held here, in all)``: the elements of this process's shards of the model's parameters (a sharded
    ``DTensor`` counts its local piece, any other tensor all of it), and the full model's count."""
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
    return held, sum(p.numel() for p in model.parameters())


class FsdpShardsCallback(TrainerCallback):
    """When training starts under FSDP, log what each rank holds: ``FSDP: this rank holds N of M parameters``
    (every rank, on its own stdout), and on the main process one line with every rank's share."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        held, total = local_parameter_count(model)
        shares: list[Any] = [None] * args.world_size
        torch.distributed.all_gather_object(shares, held)
        sys.stdout.write(f"FSDP: rank {args.process_index} holds {held:,} of {total:,} parameters\n")
        sys.stdout.flush()
        logging.getLogger("hf_spam").info("FSDP: the ranks hold %s of %s parameters", " + ".join(
            f"{n:,}" for n in shares), f"{total:,}")
        return control


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


def describe_processes(args: TrainingArguments, threads: int) -> str:
    """The run's processes, where they compute and their threads: ``2 process(es) (1 on this machine), CPU (x86_64,
    2 threads), 2 PyTorch threads each``; the machine's share is named when the run spans several."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size))
    here = f" ({local} on this machine)" if local != args.world_size else ""
    return f"{args.world_size} process(es){here}, {describe_device(args.device)}, {threads} PyTorch threads each"


def describe_device(device: torch.device | str) -> str:
    """A short name of where a run computes (``NVIDIA H100 80GB HBM3``, ``CPU (x86_64, 2 threads)``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"
