"""ONNX: a saved classifier as one graph (trunk, pooling, head), checked with onnxruntime, optionally int8.

optimum does not know this custom architecture, so the graph comes from ``torch.onnx.export`` (the
``torch.export``-based exporter) of the model's own ``forward``, which shapes its inputs as in training
(``trained_shape``: the cut, the padding ``last`` pooling reads, an empty text) inside the graph, so batch
and sequence axes stay dynamic and every caller gets the trained behaviour.
onnxruntime and the exporter's dependencies are the ``onnx`` extra: ``pip install "hf-spam[onnx]"``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .arithmetic import Arithmetic
from .errors import HfSpamError, UnavailableError, one_line
from .files import atomic_path
from .modeling_gpt import GPTSpamConfig, GPTSpamForSequenceClassification
from .predict import Logits, SpamClassifier
from .tokenization import PAD_TOKEN_ID, get_encoding

ONNX_HINT = 'needs the onnx extra: pip install "hf-spam[onnx]"'
PARITY_ATOL = 1e-4


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's and quantiser's chatter (warnings, log lines about packages we do not use) kept out of
    the command's output; their errors still surface."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "root")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _onnxruntime() -> Any:
    try:
        import onnxruntime  # optional: only for ONNX export and serving
    except ImportError:
        raise UnavailableError(f"onnxruntime {ONNX_HINT}") from None
    return onnxruntime


class _Logits(nn.Module):
    """What the ONNX graph computes: the model's own ``forward`` (inputs shaped as trained), logits only."""

    def __init__(self, model: GPTSpamForSequenceClassification):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def onnx_classifier(onnx_file: str | os.PathLike, folder: str | os.PathLike,
                    threads: int | None = None) -> SpamClassifier:
    """A ``SpamClassifier`` whose logits come from an exported ONNX file run by onnxruntime: the same tokenizer,
    batching and labels, from the model folder's config and tokenizer files, without the PyTorch weights."""
    session = OnnxSession(onnx_file, threads)
    quantised = session.session.get_modelmeta().producer_name == "onnx.quantize"  # onnxruntime's quantiser wrote it
    arithmetic = Arithmetic("int8", "the ONNX file", "weights quantised by onnxruntime") if quantised else \
        Arithmetic("float32", "the ONNX file", "exported in float32")
    return SpamClassifier(session.torch_logits, GPTSpamConfig.from_pretrained(folder), get_encoding(folder),
                          model_bytes=Path(onnx_file).stat().st_size, arithmetic=arithmetic)


def export_onnx(folder: str | os.PathLike, output: str | os.PathLike,
                check_texts: Sequence[str]) -> dict[str, Any]:
    """Export the classifier in ``folder`` to ``output`` and check it: onnxruntime's logits on ``check_texts``
    (batched, with right padding) within ``PARITY_ATOL`` of PyTorch's, else an ``HfSpamError`` and no file."""
    clf = SpamClassifier.from_pretrained(folder, device="cpu")
    graph = _Logits(clf.model).eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=clf.model.config.context_length)
    example = torch.tensor([[464, 3290, 318, 257, 1332], [33, 1268, 25474, 50256, 50256]])
    output = Path(output)
    with atomic_path(output) as tmp:
        try:
            with torch.no_grad(), _quiet():
                program = torch.onnx.export(
                    graph, (example, (example != 50256).long()), dynamo=True, verbose=False,
                    input_names=["input_ids", "attention_mask"], output_names=["logits"],
                    dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
        except ImportError:
            raise UnavailableError(f"ONNX export {ONNX_HINT}") from None
        program.save(str(tmp))
        diff = max_logit_difference(clf, OnnxSession(tmp).torch_logits, check_texts)
        if not diff <= PARITY_ATOL:
            raise HfSpamError(f"{output}: onnxruntime's logits differ from PyTorch's by {diff:.2g} (more than "
                              f"{PARITY_ATOL:g}); the export is not kept")
    return {"file": str(output), "max_abs_diff": diff, "texts": len(check_texts),
            "bytes": output.stat().st_size}


class OnnxSession:
    """An onnxruntime session of an exported classifier: ``logits(input_ids, attention_mask)`` on numpy arrays."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own errors for a missing or damaged file
            raise HfSpamError(f"{path}: not a readable ONNX model ({one_line(err)[:200]}); export one with "
                              "hf-spam export") from None

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def torch_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.logits(input_ids.numpy(), attention_mask.numpy()))


def max_logit_difference(clf: SpamClassifier, other: Logits, texts: Sequence[str], batch_size: int = 16) -> float:
    """The largest difference between ``clf``'s logits and ``other``'s (an export: onnxruntime, transformers' GPT-2)
    over ``texts``, in batches padded to their longest text (the export must shape them itself)."""
    ids = clf.encode(texts)
    worst = 0.0
    for start in range(0, len(ids), batch_size):
        rows = ids[start : start + batch_size]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [PAD_TOKEN_ID] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        expected = clf.logits(input_ids, mask).numpy()
        worst = max(worst, float(np.abs(other(input_ids, mask).numpy() - expected).max()))
    return worst


def quantize_int8(source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """onnxruntime's dynamic int8 quantisation of the weights (activations stay float)."""
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional extra, like onnxruntime itself

    with atomic_path(output) as tmp, _quiet():
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
    return Path(output)
