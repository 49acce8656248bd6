"""Frozen-trunk feature caching: run the frozen bottom of the model once per example, not once per step.

With ``--trainable_layers last_block`` (the chapter's recipe) the embeddings and the first 11 of GPT-2
small's 12 blocks are frozen and dropout is 0, so every epoch and evaluation would recompute the same
states for the same texts. ``prepare_cached_training`` computes the frozen prefix's output once per
example (for ``last_layer``: everything before the head, pooled) and writes it, chunk by chunk, into one
safetensors file per split, keyed by a hash of the frozen weights, the tokenized data, the cut, the
arithmetic and the stored dtype (``--feature_dtype``). Training reads the rows it needs from the
memory-mapped file and hands the pages back after use, so memory stays flat whatever the data's size.
``FrozenTrunkSuffix`` is the trainable top, sharing its parameters with the full model (which is what
gets saved). Training follows the uncached trajectory up to float rounding (float32 features).

It does not apply to ``all``/``lora`` (nothing frozen), dropout > 0 (the prefix is random), or ``last``
pooling with dynamic padding (the position it reads depends on each batch's padding).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.utils import are_progress_bars_disabled
from datasets.utils import tqdm as progress
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .errors import HfSpamError
from .files import atomic_path
from .modeling_gpt import GPTSpamForSequenceClassification, pool_hidden_states
from .tokenization import PAD_TOKEN_ID

logger = logging.getLogger("hf_spam")

# Bump when the stored layout or the computation changes, so old cache files are never reused.
CACHE_FORMAT_VERSION = 2
FEATURE_COLUMN = "hidden_states"
ROW_COLUMN = "feature_row"  # the index datasets' pointer into the feature files
# The stored dtype: safetensors' name and the bytes per value.
FEATURE_DTYPES = {"float32": (torch.float32, "F32"), "bfloat16": (torch.bfloat16, "BF16"),
                  "float16": (torch.float16, "F16")}
# Each chunk of examples (TOKENS_PER_CHUNK tokens: 25 MB of GPT-2-small float32 states) is sorted by
# length and run in passes of at most TOKENS_PER_PASS padded tokens in which padding adds at most
# MAX_PADDING_WASTE to the real tokens.
TOKENS_PER_CHUNK = 8192
TOKENS_PER_PASS = 2048
MAX_PADDING_WASTE = 0.10
# Read pages of a feature file are handed back with this margin on each side (see FeatureFile.states).
RELEASE_MARGIN_BYTES = 2**20
# Kept free beside a new cache: the disk check refuses a cache that would leave less.
DISK_MARGIN_BYTES = 2**30


def frozen_prefix_length(model: GPTSpamForSequenceClassification, trainable_layers: str) -> int | None:
    """Blocks frozen below the trainable top (``n_layers`` for ``last_layer``), or ``None`` if nothing is."""
    n = len(model.gpt.trf_blocks)
    return {"last_layer": n, "last_block": n - 1, "last_two_blocks": n - 2}.get(trainable_layers)


def _frozen_modules(model: GPTSpamForSequenceClassification, k: int) -> list[tuple[str, nn.Module]]:
    gpt = model.gpt
    mods = [("tok_emb", gpt.tok_emb), ("pos_emb", gpt.pos_emb), *((f"trf_blocks.{i}", gpt.trf_blocks[i])
                                                                  for i in range(k))]
    return mods + ([("final_norm", gpt.final_norm)] if k >= len(gpt.trf_blocks) else [])


def caching_blocker(model: GPTSpamForSequenceClassification, trainable_layers: str, padding: str) -> str | None:
    """Why the frozen-trunk cache cannot be used for this run, or ``None`` when it can."""
    k = frozen_prefix_length(model, trainable_layers)
    if k is None:
        return f"--trainable_layers {trainable_layers} trains the whole trunk"
    if k < 0:
        return "the model has fewer blocks than --trainable_layers trains"
    if model.config.drop_rate > 0:
        return f"--drop_rate {model.config.drop_rate} makes the frozen trunk's output random"
    if model.config.pooling == "last" and padding == "dynamic":
        return "--pooling last with --padding dynamic reads a padding position that depends on the batch"
    if any(p.requires_grad for _, m in _frozen_modules(model, k) for p in m.parameters()):
        return "part of the frozen prefix is trainable"
    return None


def frozen_weights_hash(model: GPTSpamForSequenceClassification, k: int) -> str:
    """blake2b of every tensor the frozen prefix computes with (names, shapes, dtypes, bytes) and the
    config values that change what it computes."""
    h = hashlib.blake2b(digest_size=20)
    for prefix, module in _frozen_modules(model, k):
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{prefix}.{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    cfg = model.config
    h.update(f"causal={cfg.causal}|heads={cfg.n_heads}|eps={cfg.layer_norm_eps}|".encode())
    if k >= len(model.gpt.trf_blocks):
        h.update(f"pooling={cfg.pooling}".encode())
    return h.hexdigest()


def _batches(ds: datasets.Dataset, columns: list[str], size: int = 4096) -> Any:
    """The given columns, ``size`` rows at a time (Python lists): never a whole column in memory."""
    return ds.select_columns(columns).with_format(None).iter(batch_size=size)


def dataset_content_hash(ds: datasets.Dataset,
                         columns: tuple[str, ...] = ("input_ids", "attention_mask", "labels")) -> str:
    """Hash of the columns the cache is built from and carries (token ids, masks, labels), read in batches."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"rows={len(ds)}|".encode())
    for col in (c for c in columns if c in ds.column_names):
        h.update(f"{col}|".encode())
        for batch in _batches(ds, [col]):
            values = batch[col]
            if values and isinstance(values[0], (list, tuple, np.ndarray)):
                h.update(np.fromiter(map(len, values), dtype=np.int64, count=len(values)).tobytes())
                h.update(np.fromiter((x for v in values for x in v), dtype=np.int64).tobytes())
            else:
                h.update(np.asarray(values, dtype=np.int64).tobytes())
    return h.hexdigest()


def cache_key(weights_hash: str, data_hash: str, k: int, dtype: torch.dtype | None, keep_padding: bool,
              feature_dtype: str = "float32") -> str:
    """Same frozen weights, same tokenized data, same cut, same arithmetic, same stored positions and dtype."""
    text = (f"v{CACHE_FORMAT_VERSION}|{weights_hash}|{data_hash}|k={k}|store={feature_dtype}|autocast={dtype}"
            f"|positions={'all' if keep_padding else 'real'}")
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def prefix_states(model: GPTSpamForSequenceClassification, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  k: int) -> torch.Tensor:
    """The frozen prefix's output, exactly as ``forward`` computes it: ``[b, t, d]`` after
    ``trf_blocks[:k]``, or for ``k == n_layers`` the pooled, final-normed ``[b, d]`` the head reads."""
    gpt = model.gpt
    hidden = gpt.run_blocks(gpt.embed(input_ids), model.trunk_attention_mask(attention_mask), 0, k)
    if k >= len(gpt.trf_blocks):
        return pool_hidden_states(gpt.final_norm(hidden), attention_mask, model.config.pooling)
    return hidden


def release_freed_memory() -> None:
    """Hand memory freed by a chunk back to the OS: glibc keeps it otherwise, and training would start
    on a fragmented, larger heap."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or no glibc
            pass


def stored_lengths(ds: datasets.Dataset, keep_padding: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the positions stored (every position with ``keep_padding``, else the real tokens; at least
    one) and the real tokens among them."""
    kept, real = [], []
    for batch in _batches(ds, ["attention_mask"]):
        masks = batch["attention_mask"]
        ones = np.fromiter(map(sum, masks), dtype=np.int64, count=len(masks))
        kept.append(np.fromiter(map(len, masks), dtype=np.int64, count=len(masks)) if keep_padding
                    else np.maximum(ones, 1))
        real.append(ones)
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(kept) if kept else empty), (np.concatenate(real) if real else empty)


def feature_bytes(positions: int, rows: int, dim: int, feature_dtype: str) -> int:
    """Bytes of one feature file: the states plus three small per-row arrays (and the header)."""
    return positions * dim * FEATURE_DTYPES[feature_dtype][0].itemsize + rows * 16 + 4096


def _chunk_states(ids_list: list[list[int]], masks: list[list[int]], kept: np.ndarray,
                  model: GPTSpamForSequenceClassification, k: int, device: torch.device,
                  dtype: torch.dtype | None) -> list[torch.Tensor]:
    """The states of a chunk's rows in their order: run sorted by length, in passes of similar lengths,
    each row cut to its stored positions (``kept``); ``[d]`` per row when the prefix pools."""
    order = sorted(range(len(ids_list)), key=lambda i: kept[i])
    out: list[Any] = [None] * len(ids_list)
    i = 0
    while i < len(order):
        j, real = i + 1, int(kept[order[i]])
        while j < len(order) and (j + 1 - i) * kept[order[j]] <= min(TOKENS_PER_PASS, (1 + MAX_PADDING_WASTE)
                                                                     * (real + kept[order[j]])):
            real += int(kept[order[j]])
            j += 1
        group, width = order[i:j], int(kept[order[j - 1]])
        ids = torch.full((len(group), width), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, idx in enumerate(group):
            n = int(kept[idx])
            ids[r, :n] = torch.as_tensor(ids_list[idx][:n])
            mask[r, :n] = torch.as_tensor(masks[idx][:n])
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            states = prefix_states(model, ids.to(device), mask.to(device), k).float().cpu()
        for r, idx in enumerate(group):
            out[idx] = states[r] if states.dim() == 2 else states[r, : int(kept[idx])]
        i = j
    return out


def _header(entries: list[tuple[str, str, list[int], int]], metadata: dict[str, str]) -> bytes:
    """A safetensors header for tensors laid out one after another in ``entries`` order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_features(model: GPTSpamForSequenceClassification, dataset: datasets.Dataset, k: int, path: str | Path, *,
                   device: torch.device | str = "cpu", dtype: torch.dtype | None = None, keep_padding: bool = True,
                   feature_dtype: str = "float32", desc: str = "Frozen-trunk features",
                   lengths: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Compute the frozen prefix's states of every row of ``dataset`` and write them to ``path``: one
    safetensors file (``states`` ``[positions, d]`` in ``feature_dtype``, per-row ``offsets``, ``lengths``,
    ``real``), written a chunk at a time to a temporary file that is renamed into place when complete (the
    file is closed, hence complete, before ``atomic_path`` renames it). ``lengths``: ``stored_lengths``' answer,
    when the caller has it already."""
    path, device = Path(path), torch.device(device)
    kept, real = lengths if lengths is not None else stored_lengths(dataset, keep_padding)
    pooled, d, n = k >= len(model.gpt.trf_blocks), model.config.emb_dim, len(dataset)
    torch_dtype, name = FEATURE_DTYPES[feature_dtype]
    positions = n if pooled else int(kept.sum())
    offsets = np.arange(n, dtype=np.int64) if pooled else np.concatenate([[0], np.cumsum(kept)[:-1]]).astype(np.int64)
    entries = [("states", name, [positions, d], positions * d * torch_dtype.itemsize),
               *((key, "I64", [n], 8 * n) for key in ("offsets", "lengths", "real"))]
    metadata = {"format": "hf-spam frozen-trunk features", "version": str(CACHE_FORMAT_VERSION),
                "feature_dtype": feature_dtype, "pooled": str(pooled).lower(), "frozen_blocks": str(k),
                "rows": str(n), "dim": str(d), "description": desc}
    chunk = int(min(1024, max(32, TOKENS_PER_CHUNK * n / max(1, positions))))
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f, torch.inference_mode(), \
                progress(total=n, desc=desc, unit=" examples", disable=are_progress_bars_disabled()) as bar:
            f.write(_header(entries, metadata))
            start = 0
            for batch in _batches(dataset, ["input_ids", "attention_mask"], chunk):
                rows = len(batch["input_ids"])
                states = _chunk_states(batch["input_ids"], batch["attention_mask"], kept[start: start + rows],
                                       model, k, device, dtype)
                block = torch.stack(states) if pooled else torch.cat(states)
                f.write(block.to(torch_dtype).contiguous().view(torch.uint8).numpy().tobytes())
                start += rows
                bar.update(rows)
                release_freed_memory()
            for array in (offsets, kept, real):
                f.write(array.astype("<i8").tobytes())
            f.flush()
            os.fsync(f.fileno())
    finally:
        model.train(was_training)
    return path


class FeatureFile:
    """One split's cached features, memory-mapped: a row is read when a batch needs it, and the pages it came
    from are handed back at once (they stay in the OS's page cache, shared and reclaimable, but not in this
    process's memory), so reading a file of any size keeps memory flat."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (length,) = struct.unpack("<Q", f.read(8))
            if not 0 < length < min(size, 2**20):
                raise ValueError("bad header length")
            header = json.loads(f.read(length))
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        meta = header["__metadata__"]
        if meta.get("version") != str(CACHE_FORMAT_VERSION):
            raise ValueError(f"format version {meta.get('version')}")
        base = 8 + length
        if size != base + max(v["data_offsets"][1] for key, v in header.items() if key != "__metadata__"):
            raise ValueError("truncated")
        self.metadata, self.pooled, self.dim = meta, meta["pooled"] == "true", int(meta["dim"])
        self.torch_dtype = FEATURE_DTYPES[meta["feature_dtype"]][0]
        self._states = base + header["states"]["data_offsets"][0]
        self.offsets, self.lengths, self.real = (
            np.frombuffer(self._mm, dtype="<i8", count=int(meta["rows"]), offset=base + header[key]["data_offsets"][0])
            .astype(np.int64) for key in ("offsets", "lengths", "real"))
        self._release = hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")

    def __len__(self) -> int:
        return len(self.lengths)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the file (a mapping does not pickle)
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._open()

    def states(self, row: int) -> torch.Tensor:
        """Row ``row`` as float32: ``[positions, d]``, or ``[d]`` when the prefix pools."""
        positions = 1 if self.pooled else int(self.lengths[row])
        nbytes = positions * self.dim * self.torch_dtype.itemsize
        start = self._states + int(self.offsets[row]) * self.dim * self.torch_dtype.itemsize
        raw = np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=start).copy()
        values = torch.from_numpy(raw).view(self.torch_dtype).float()
        if self._release and nbytes:  # a clean, read-only mapping: a later read faults the pages back in
            # The kernel maps pages around a faulting one too ("fault-around", 64 KiB): release a margin.
            first = max(0, start - RELEASE_MARGIN_BYTES)
            first -= first % mmap.PAGESIZE
            last = min(len(self._mm), start + nbytes + RELEASE_MARGIN_BYTES)
            self._mm.madvise(mmap.MADV_DONTNEED, first, last - first)
        return values if self.pooled else values.reshape(positions, self.dim)


def open_features(path: Path, rows: int) -> FeatureFile | None:
    """The feature file at ``path`` if it opens and holds ``rows`` rows; ``None`` if it is damaged (a kill or a
    full disk can leave a truncated one) or of another format."""
    try:
        features = FeatureFile(path)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return features if len(features) == rows else None


class FrozenTrunkSuffix(nn.Module):
    """The trainable top of a ``GPTSpamForSequenceClassification``, fed cached frozen-prefix states.

    Holds (and so trains, checkpoints and resumes) only ``trf_blocks[k:]``, ``final_norm`` and ``out_head``:
    the full model's own modules, registered under its own names (``gpt.trf_blocks.11...``) and in its
    order, so Trainer picks the same weight-decay groups and a checkpoint of either path resumes in the
    other. The forward is the full model's code (``logits_from_block``, ``compute_loss``).
    """

    accepts_loss_kwargs = False  # the loss is a batch mean, not normalised by num_items_in_batch

    def __init__(self, full_model: GPTSpamForSequenceClassification, k: int):
        super().__init__()
        object.__setattr__(self, "full_model", full_model)  # not a submodule: the trunk stays out of checkpoints
        self.k = k
        blocks = nn.Module()
        for i in range(k, len(full_model.gpt.trf_blocks)):
            blocks.add_module(str(i), full_model.gpt.trf_blocks[i])
        self.gpt = nn.Module()
        self.gpt.trf_blocks, self.gpt.final_norm, self.gpt.out_head = (blocks, full_model.gpt.final_norm,
                                                                       full_model.gpt.out_head)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """``--gradient_checkpointing``: the trainable blocks run inside the full model's ``run_blocks``."""
        self.full_model.activation_checkpointing_enable(**kwargs)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, length: torch.Tensor | None = None,
                feature_row: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """``hidden_states``: cached ``[b, t, d]`` block outputs (``[b, d]`` pooled for ``last_layer``).
        ``length`` and ``feature_row`` are unused; they are named so Trainer keeps the columns its
        length-grouped sampler and ``FeatureCollator`` read."""
        full = self.full_model
        if hidden_states.dim() == 2:
            logits = self.gpt.out_head(hidden_states)
        else:
            logits = full.logits_from_block(hidden_states, attention_mask, self.k)
        return SequenceClassifierOutput(loss=full.compute_loss(logits, labels), logits=logits)


class FeatureCollator:
    """Batch cached features: read each example's states (``feature_row`` counts through ``files`` in order),
    right-pad them (zeros) and the attention mask (0s) to the longest example. Padding sits right of every
    real token, so (causal or masked) no real token sees it."""

    def __init__(self, files: list[FeatureFile]):
        self.files = files
        self.starts = np.cumsum([0, *map(len, files)])

    def states(self, row: int) -> tuple[torch.Tensor, int]:
        """One example's states and its number of real tokens."""
        i = int(np.searchsorted(self.starts, row, side="right")) - 1
        file, local = self.files[i], row - int(self.starts[i])
        return file.states(local), int(file.real[local])

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self.states(int(f[ROW_COLUMN])) for f in features]
        batch = {"labels": torch.tensor([int(f["labels"]) for f in features])} if "labels" in features[0] else {}
        if rows[0][0].dim() == 1:
            return {FEATURE_COLUMN: torch.stack([s for s, _ in rows]), **batch}
        longest = max(s.shape[0] for s, _ in rows)
        hidden = torch.zeros((len(rows), longest, rows[0][0].shape[1]))
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (s, real) in enumerate(rows):
            hidden[i, : s.shape[0]] = s
            mask[i, : min(real, s.shape[0])] = 1
        return {FEATURE_COLUMN: hidden, "attention_mask": mask, **batch}


@dataclass
class CachedTraining:
    """What the Trainer trains on when the cache applies: the suffix model, per split a small dataset of
    pointers into the feature files (``feature_row``, ``labels``, ``length``), and the collator."""

    model: FrozenTrunkSuffix
    datasets: datasets.DatasetDict
    collator: FeatureCollator
    k: int
    cache_files: dict[str, Path]

    def states(self, split: str, i: int) -> torch.Tensor:
        """Example ``i`` of ``split``: its cached states (float32)."""
        return self.collator.states(int(self.datasets[split][i][ROW_COLUMN]))[0]


def _disk_check(cache_dir: Path, needed: int, feature_dtype: str) -> None:
    """Stop before a cache that would not fit, saying how to go on; log the size either way."""
    free = shutil.disk_usage(cache_dir).free
    logger.info("Frozen-trunk feature cache: writing about %.2f GB (%s) to %s, %.1f GB free", needed / 1e9,
                feature_dtype, cache_dir, free / 1e9)
    if needed + DISK_MARGIN_BYTES > free:
        half = " --feature_dtype bfloat16 (half the size)," if feature_dtype == "float32" else ""
        raise HfSpamError(f"frozen-trunk feature cache: needs about {needed / 1e9:.1f} GB in {cache_dir} but "
                          f"{free / 1e9:.1f} GB is free; pass --cache_features false (no cache, slower),{half} or "
                          "--feature_cache_dir on a disk with room (hf-spam cache clear removes old caches)")


def prepare_cached_training(full_model: GPTSpamForSequenceClassification, tokenized: datasets.DatasetDict, *,
                            trainable_layers: str, padding: str, training_args: Any, cache_dir: str | Path,
                            feature_dtype: str = "float32") -> CachedTraining | None:
    """Compute (or read) the frozen prefix's states of every split and build the suffix model; ``None``
    (reason logged) when caching does not apply or the cache location cannot be written. With several
    processes, the main process of each machine writes the cache first and the others read it."""
    reason = caching_blocker(full_model, trainable_layers, padding)
    if reason is not None:
        logger.info("Frozen-trunk feature cache not used: %s", reason)
        return None
    started, cache_dir = time.time(), Path(cache_dir)
    k = frozen_prefix_length(full_model, trainable_layers)
    device = torch.device(training_args.device)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None
    full_model.to(device)
    weights_hash = frozen_weights_hash(full_model, k)
    keep_padding = full_model.config.pooling == "last"  # only `last` reads a padded position
    pooled = k >= len(full_model.gpt.trf_blocks)
    files, opened, computed = {}, {}, []
    with training_args.main_process_first(local=True, desc="frozen-trunk features"):
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            for split, ds in tokenized.items():
                key = cache_key(weights_hash, dataset_content_hash(ds), k, dtype, keep_padding, feature_dtype)
                files[split] = cache_dir / f"{split}-{key}.safetensors"
                if files[split].is_file() and open_features(files[split], len(ds)) is None:
                    logger.warning("%s: damaged frozen-trunk feature cache file; computing it again", files[split])
                    files[split].unlink()
            missing = [s for s in tokenized if not files[s].is_file()]
            lengths = {s: stored_lengths(tokenized[s], keep_padding) for s in missing}  # one pass per split
            if missing:
                _disk_check(cache_dir, sum(feature_bytes(len(kept) if pooled else int(kept.sum()), len(kept),
                                                         full_model.config.emb_dim, feature_dtype)
                                           for kept, _ in lengths.values()), feature_dtype)
            for split in missing:
                write_features(full_model, tokenized[split], k, files[split], device=device, dtype=dtype,
                               keep_padding=keep_padding, feature_dtype=feature_dtype,
                               desc=f"Frozen-trunk features ({split})", lengths=lengths[split])
                computed.append(split)
        except OSError as err:  # an unwritable or full cache location: train without the cache
            logger.warning("Frozen-trunk feature cache not used: cannot write %s (%s)", cache_dir,
                           err.strerror or type(err).__name__)
            return None
        finally:
            release_freed_memory()
    for split, ds in tokenized.items():
        opened[split] = open_features(files[split], len(ds))
        if opened[split] is None:
            raise HfSpamError(f"{files[split]}: the frozen-trunk features just written cannot be read back")
    indexes, start = {}, 0
    for split, ds in tokenized.items():
        n = len(ds)
        columns = {ROW_COLUMN: np.arange(start, start + n, dtype=np.int64), "length": opened[split].lengths}
        if "labels" in ds.column_names:
            columns["labels"] = np.asarray(ds["labels"], dtype=np.int64)
        indexes[split], start = datasets.Dataset.from_dict(columns), start + n
    size_mb = sum(f.stat().st_size for f in files.values()) / 2**20
    logger.info("Frozen-trunk feature cache: embeddings + %d %s run once per example (%s) in %.1f s; %.0f MB (%s) "
                "in %s", k, "blocks" if not pooled else "blocks + final norm + pooling",
                f"computed: {', '.join(computed)}" if computed else "read from cache", time.time() - started, size_mb,
                feature_dtype, cache_dir)
    collator = FeatureCollator([opened[s] for s in tokenized])
    return CachedTraining(FrozenTrunkSuffix(full_model, k), datasets.DatasetDict(indexes), collator, k, files)


def list_feature_caches(cache_dir: str | Path) -> list[dict[str, Any]]:
    """The files in a feature cache folder, newest first: path, bytes, modification time, and what a feature
    file says it holds (``kind`` is ``leftover`` for unfinished, damaged or older-format files)."""
    folder, found = Path(cache_dir), []
    for path in folder.iterdir() if folder.is_dir() else []:
        if not path.is_file() or not (path.suffix in (".safetensors", ".arrow") or path.name.endswith(".tmp")):
            continue
        try:
            meta = FeatureFile(path).metadata if path.suffix == ".safetensors" else {}
        except (OSError, ValueError, KeyError, TypeError, struct.error):
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
