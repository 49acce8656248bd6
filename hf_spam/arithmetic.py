"""Which arithmetic a model runs in (float32, bfloat16, int8), chosen from what the processor has.

``choose_dtype`` is the one place that reads the CPU's flags and decides: ``auto`` is bfloat16 where the
processor computes it natively (``avx512_bf16`` or AMX, as PyTorch's own CPU detection reports; on CUDA
``torch.cuda.is_bf16_supported()``) and float32 otherwise; int8 is never chosen, only asked for, and its kernels
(PyTorch's quantized engine) are chosen by the flags too: oneDNN where the CPU has AMX tiles (``amx_int8``),
PyTorch's default (``x86``: FBGEMM's AVX2/AVX-512/VNNI kernels) elsewhere. ``convert_model`` turns a model into the
chosen arithmetic, in place: bfloat16 weights (faster than bf16 autocast in ``benchmarks/bench_inference.py``), or
PyTorch's dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations quantised per batch; CPU
only). The benchmark measures every choice on the machine at hand; the README has its table.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import HfSpamError, UnavailableError

logger = logging.getLogger("hf_spam")

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "int8")  # what the command line offers
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "qint8": "int8"}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # Linux's names of the CPU features that compute bf16 natively
ONEDNN_INT8_FLAGS = ("amx_int8",)  # where oneDNN's int8 kernels (AMX tiles) beat FBGEMM's (bench_inference.py)
KNOWN_FLAGS = (*NATIVE_BF16_FLAGS, *ONEDNN_INT8_FLAGS, "avx512_vnni")  # what ``cpu_flags`` can report


@dataclass(frozen=True)
class Arithmetic:
    """What a classifier computes in (``dtype``: float32, bfloat16, int8 or float16), what was asked and why."""

    dtype: str
    requested: str
    reason: str
    engine: str | None = None  # int8: PyTorch's quantized engine whose kernels run the Linear layers

    def info(self) -> dict[str, str]:
        """``dtype``, ``dtype_requested``, ``dtype_reason`` (and int8's ``dtype_engine``): what ``/info`` reports."""
        return {("dtype" if k == "dtype" else f"dtype_{k}"): v for k, v in asdict(self).items() if v is not None}


FLOAT32 = Arithmetic("float32", "float32", "the model's own weights")


def cpu_flags() -> frozenset[str]:
    """Which of ``KNOWN_FLAGS`` this CPU has, as PyTorch's own CPU detection (cpuinfo, on every OS) reports them:
    ``avx512_bf16``, ``avx512_vnni``, and ``amx_bf16``/``amx_int8`` for AMX tiles (every AMX processor so far
    computes both on them)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    checks = {"avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None), "amx_bf16": amx, "amx_int8": amx,
              "avx512_vnni": getattr(torch.cpu, "_is_vnni_supported", None)}
    return frozenset(name for name, supported in checks.items() if supported is not None and supported())


def native_bf16(device: str | torch.device = "cpu", flags: Iterable[str] | None = None) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively, and the evidence (the CPU's flags, or CUDA's answer)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return (True, f"{name} supports bf16") if torch.cuda.is_bf16_supported() else (False, f"{name} has no bf16")
    if device.type != "cpu":
        return False, f"bf16 is not known to be native on {device.type}"
    have = sorted(set(cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS))
    if have:
        return True, f"the CPU has {', '.join(have)}"
    return False, f"the CPU has neither {' nor '.join(NATIVE_BF16_FLAGS)}"


def int8_engine(flags: Iterable[str] | None = None) -> tuple[str, str]:
    """PyTorch's quantized engine for int8 on this CPU (``flags``: default ``cpu_flags()``), and why: ``onednn``
    where the CPU has ``amx_int8`` (and this torch has the engine), else PyTorch's default engine."""
    have = sorted(set(cpu_flags() if flags is None else flags) & set(ONEDNN_INT8_FLAGS))
    default = torch.backends.quantized.engine
    if have and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn", f"oneDNN's kernels, since the CPU has {', '.join(have)}"
    return default, f"PyTorch's default engine ({default}), since the CPU has no {' or '.join(ONEDNN_INT8_FLAGS)}"


def choose_dtype(requested: str | None, device: str | torch.device = "cpu",
                 flags: Iterable[str] | None = None) -> Arithmetic:
    """The arithmetic for ``requested`` (``None``: float32) on ``device``: ``auto`` is bfloat16 where ``device``
    computes it natively (``flags``: the CPU's, default ``cpu_flags()``), else float32; int8 with the engine
    ``int8_engine`` picks. Refused in one line: an unknown name, int8 off the CPU, float16 on the CPU."""
    name = ALIASES.get(requested, requested) if requested is not None else "float32"
    if name not in (*DTYPE_CHOICES, "float16"):
        raise HfSpamError(f"--dtype {requested}: unknown; expected one of {', '.join(DTYPE_CHOICES)}")
    device = torch.device(device)
    if name == "int8" and device.type != "cpu":
        raise HfSpamError(f"--dtype int8: PyTorch's dynamic int8 quantisation runs on the CPU, not {device.type}; "
                          "use --device cpu, or --dtype bfloat16 on the GPU")
    if name == "float16" and device.type == "cpu":
        raise HfSpamError("dtype: float16 needs a GPU; use bfloat16 on the CPU")
    if name == "int8":
        engine, why = int8_engine(flags)
        return Arithmetic(name, name, f"asked for; {why}", engine)
    if name != "auto":
        return FLOAT32 if name == "float32" else Arithmetic(name, name, "asked for")
    native, why = native_bf16(device, flags)
    chosen = Arithmetic("bfloat16" if native else "float32", "auto", f"{why} ({device.type})")
    logger.info("--dtype auto: %s, since %s", chosen.dtype, chosen.reason)
    return chosen


def _conv1d_as_linear(model: nn.Module) -> None:
    """transformers' ``Conv1D`` layers (native GPT-2: ``x @ W + b``) replaced by equal ``nn.Linear`` ones."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1], device=child.weight.device,
                                   dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)


def quantize_int8(model: nn.Module, engine: str | None = None) -> nn.Module:
    """``model`` (on the CPU) with every ``nn.Linear`` dynamically quantised to int8, in place, its weights packed
    for ``engine`` (PyTorch's quantized engine; default ``int8_engine()``'s). The packed weights carry their
    engine's kernels, so the global setting is restored afterwards."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:  # a torch that has moved it out to torchao
        raise UnavailableError(f"--dtype int8: torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic"
                               "; use an ONNX export (hf-spam export --quantize int8, serve --backend onnx)") from None
    _conv1d_as_linear(model)
    engine = engine or int8_engine()[0]
    previous = torch.backends.quantized.engine
    with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao; it is in torch 2.13
        warnings.filterwarnings("ignore", r"torch\.ao\.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", r"torch\.quantize_per_tensor.* deprecated", UserWarning)
        try:
            torch.backends.quantized.engine = engine
            return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
        finally:
            torch.backends.quantized.engine = previous


def convert_model(model: nn.Module, arithmetic: Arithmetic) -> tuple[nn.Module, torch.dtype | None]:
    """``model`` in ``arithmetic``, converted in place (bfloat16 weights, or int8 Linear layers), and the autocast
    dtype its forward runs under (float16 only; ``None`` otherwise)."""
    if arithmetic.dtype == "bfloat16":
        return model.to(torch.bfloat16), None
    if arithmetic.dtype == "int8":
        return quantize_int8(model, arithmetic.engine), None
    return model, torch.float16 if arithmetic.dtype == "float16" else None


def model_bytes(model: nn.Module) -> int:
    """Bytes of the weights: parameters, plus the int8 weights and biases quantised Linear layers pack away."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            weight, bias = module.weight(), module.bias()
            total += weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None
                                                                else 0)
    return total
