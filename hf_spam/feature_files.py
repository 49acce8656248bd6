"""The frozen-trunk feature cache's files: one safetensors file per split, written and read with the
safetensors library a chunk of rows at a time (memory stays flat whatever the data's size), and listed or
cleared by ``hf-spam cache``. ``hf_spam.feature_cache`` decides what is cached and trains on it."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.utils import are_progress_bars_disabled
from datasets.utils import tqdm as progress
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import atomic_path
from .memory import release_freed_memory
from .modeling_gpt import GPTSpamForSequenceClassification
from .tokenization import PAD_TOKEN_ID, length_batches

# Bump when the stored layout or the computation changes, so old cache files are never reused.
CACHE_FORMAT_VERSION = 3
FEATURE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Each chunk of examples (TOKENS_PER_CHUNK tokens: 25 MB of GPT-2-small float32 states) runs in length-sorted
# passes of at most TOKENS_PER_PASS padded tokens (``tokenization.length_batches``).
TOKENS_PER_CHUNK = 8192
TOKENS_PER_PASS = 2048


def batches(ds: datasets.Dataset, columns: list[str], size: int = 4096) -> Any:
    """The given columns, ``size`` rows at a time (Python lists): never a whole column in memory."""
    return ds.select_columns(columns).with_format(None).iter(batch_size=size)


def stored_lengths(model: GPTSpamForSequenceClassification, ds: datasets.Dataset,
                   keep_padding: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the positions stored (every position with ``keep_padding``, else the real ones) and the real
    tokens among them, counted on the inputs as the model shapes them (an empty text is one token)."""
    kept, real = [], []
    for batch in batches(ds, ["attention_mask"]):
        masks = batch["attention_mask"]
        mask = torch.zeros((len(masks), max(map(len, masks), default=0)), dtype=torch.long)
        for i, m in enumerate(masks):
            mask[i, : len(m)] = torch.as_tensor(m, dtype=torch.long)
        ones = model.trained_shape(torch.zeros_like(mask), mask)[1].sum(dim=1).numpy()
        kept.append(np.fromiter(map(len, masks), dtype=np.int64, count=len(masks)) if keep_padding else ones)
        real.append(ones)
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(kept) if kept else empty), (np.concatenate(real) if real else empty)


def feature_bytes(positions: int, rows: int, dim: int, feature_dtype: str) -> int:
    """Bytes of one feature file: the states plus three small per-row arrays (and the header)."""
    return positions * dim * FEATURE_DTYPES[feature_dtype].itemsize + rows * 24 + 4096


def _chunk_states(ids_list: list[list[int]], masks: list[list[int]], kept: np.ndarray,
                  model: GPTSpamForSequenceClassification, k: int, device: torch.device,
                  dtype: torch.dtype | None) -> list[torch.Tensor]:
    """The states of a chunk's rows in their order, each row cut to its stored positions (``kept``); ``[d]`` per
    row when the prefix pools."""
    out: list[Any] = [None] * len(ids_list)
    for group in length_batches(kept.tolist(), len(ids_list), TOKENS_PER_PASS):
        width = int(kept[group[0]])
        ids = torch.full((len(group), width), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, idx in enumerate(group):
            n = int(kept[idx])
            ids[r, :n] = torch.as_tensor(ids_list[idx][:n])
            mask[r, :n] = torch.as_tensor(masks[idx][:n])
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            states = model.trunk_states(ids.to(device), mask.to(device), k).float().cpu()
        for r, idx in enumerate(group):
            out[idx] = states[r] if states.dim() == 2 else states[r, : int(kept[idx])]
    return out


def write_features(model: GPTSpamForSequenceClassification, dataset: datasets.Dataset, k: int, path: str | Path, *,
                   device: torch.device | str = "cpu", dtype: torch.dtype | None = None, keep_padding: bool = True,
                   feature_dtype: str = "float32", desc: str = "Frozen-trunk features",
                   lengths: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Compute the frozen prefix's states of every row of ``dataset`` and write them to ``path``: one safetensors
    file (``states`` ``[positions, d]`` in ``feature_dtype``, per-row ``offsets``, ``lengths``, ``real``). The
    states go to a raw file a chunk at a time, and safetensors writes the file from a memory map of it (twice the
    disk for a moment, never the data in memory); ``atomic_path`` renames it into place when complete.
    ``lengths``: ``stored_lengths``' answer, when the caller has it already."""
    path, device = Path(path), torch.device(device)
    kept, real = lengths if lengths is not None else stored_lengths(model, dataset, keep_padding)
    pooled, d, n = k >= len(model.gpt.trf_blocks), model.config.emb_dim, len(dataset)
    torch_dtype = FEATURE_DTYPES[feature_dtype]
    positions = n if pooled else int(kept.sum())
    offsets = np.arange(n, dtype=np.int64) if pooled else np.concatenate([[0], np.cumsum(kept)[:-1]]).astype(np.int64)
    metadata = {"format": "hf-spam frozen-trunk features", "version": str(CACHE_FORMAT_VERSION),
                "feature_dtype": feature_dtype, "pooled": str(pooled).lower(), "frozen_blocks": str(k),
                "rows": str(n), "description": desc}
    chunk = int(min(1024, max(32, TOKENS_PER_CHUNK * n / max(1, positions))))
    was_training, raw = model.training, path.with_name(f".{path.name}.states.tmp")  # a leftover for `cache clear`
    model.eval()
    try:
        with atomic_path(path) as tmp:
            with open(raw, "wb") as f, torch.inference_mode(), \
                    progress(total=n, desc=desc, unit=" examples", disable=are_progress_bars_disabled()) as bar:
                start = 0
                for batch in batches(dataset, ["input_ids", "attention_mask"], chunk):
                    rows = len(batch["input_ids"])
                    states = _chunk_states(batch["input_ids"], batch["attention_mask"], kept[start: start + rows],
                                           model, k, device, dtype)
                    block = torch.stack(states) if pooled else torch.cat(states)
                    f.write(block.to(torch_dtype).contiguous().view(torch.uint8).numpy().tobytes())
                    start += rows
                    bar.update(rows)
                    release_freed_memory()
            mapped = torch.from_file(str(raw), shared=False, size=positions * d, dtype=torch_dtype) if positions \
                else torch.zeros(0, dtype=torch_dtype)
            per_row = {"offsets": offsets, "lengths": kept, "real": real}
            save_file({"states": mapped.view(positions, d),
                       **{key: torch.from_numpy(array.astype(np.int64)) for key, array in per_row.items()}},
                      tmp, metadata=metadata)
            del mapped
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
    finally:
        raw.unlink(missing_ok=True)
        model.train(was_training)
    return path


class FeatureFile:
    """One split's cached features, read with safetensors a batch of rows at a time (``safe_open`` and
    ``get_slice`` read only the rows asked for), so reading a file of any size keeps memory flat."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with safe_open(self.path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("version") != str(CACHE_FORMAT_VERSION):
                raise ValueError(f"format version {meta.get('version')}")
            self.offsets, self.lengths, self.real = (f.get_tensor(k).numpy() for k in ("offsets", "lengths", "real"))
            self.dim = f.get_slice("states").get_shape()[1]
        self.metadata, self.pooled = meta, meta["pooled"] == "true"

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, rows: list[int]) -> list[torch.Tensor]:
        """Rows as float32: ``[positions, d]`` each, or ``[d]`` when the prefix pools."""
        with safe_open(self.path, framework="pt") as f:
            states = f.get_slice("states")
            out = [states[int(self.offsets[r]): int(self.offsets[r]) + (1 if self.pooled else int(self.lengths[r]))]
                   .float() for r in rows]
        return [x[0] for x in out] if self.pooled else out

    def states(self, row: int) -> torch.Tensor:
        """Row ``row`` as float32: ``[positions, d]``, or ``[d]`` when the prefix pools."""
        return self.rows([row])[0]


def open_features(path: Path, rows: int) -> FeatureFile | None:
    """The feature file at ``path`` if it opens and holds ``rows`` rows; ``None`` if it is damaged (a kill or a
    full disk can leave a truncated one) or of another format."""
    try:
        features = FeatureFile(path)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None
    return features if len(features) == rows else None


def list_feature_caches(cache_dir: str | Path) -> list[dict[str, Any]]:
    """The files in a feature cache folder, newest first: path, bytes, modification time, and what a feature
    file says it holds (``kind`` is ``leftover`` for unfinished, damaged or older-format files)."""
    folder, found = Path(cache_dir), []
    for path in folder.iterdir() if folder.is_dir() else []:
        if not path.is_file() or not (path.suffix in (".safetensors", ".arrow") or path.name.endswith(".tmp")):
            continue
        try:
            meta = FeatureFile(path).metadata if path.suffix == ".safetensors" else {}
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            meta = {}
        stat = path.stat()
        found.append({"path": path, "bytes": stat.st_size, "modified": stat.st_mtime, "rows": meta.get("rows"),
                      "feature_dtype": meta.get("feature_dtype"), "kind": "features" if meta else "leftover"})
    return sorted(found, key=lambda entry: entry["modified"], reverse=True)


def clear_feature_caches(cache_dir: str | Path) -> list[dict[str, Any]]:
    """Remove every file ``list_feature_caches`` finds; returns them."""
    found = list_feature_caches(cache_dir)
    for entry in found:
        entry["path"].unlink(missing_ok=True)
    return found
