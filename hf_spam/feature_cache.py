"""Frozen-trunk feature caching: run the frozen bottom of the model once per example, not once per step.

With ``--trainable_layers last_block`` (the chapter's recipe) the embeddings and the first 11 of GPT-2
small's 12 blocks are frozen and dropout is 0, so every epoch and evaluation would recompute the same
states for the same texts. ``prepare_cached_training`` computes the frozen prefix's output once per
example (for ``last_layer``: everything before the head, pooled) and writes it, chunk by chunk, into one
safetensors file per split, keyed by a hash of the frozen weights, the tokenized data, the cut, the
arithmetic and the stored dtype (``--feature_dtype``); ``hf_spam.feature_files`` writes and reads them a
chunk at a time, so memory stays flat whatever the data's size.
``FrozenTrunkSuffix`` is the trainable top, sharing its parameters with the full model (which is what
gets saved). Training follows the uncached trajectory up to float rounding (float32 features).

It does not apply to ``all``/``lora`` (nothing frozen), dropout > 0 (the prefix is random), or ``last``
pooling with dynamic padding (the position it reads depends on each batch's padding).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .arithmetic import native_bf16
from .errors import HfSpamError
from .feature_files import (
    CACHE_FORMAT_VERSION,
    FeatureFile,
    batches,
    feature_bytes,
    open_features,
    stored_lengths,
    write_features,
)
from .memory import release_freed_memory
from .modeling_gpt import GPTSpamForSequenceClassification

logger = logging.getLogger("hf_spam")

# Bump when the stored layout or the computation changes, so old cache files are never reused.
FEATURE_COLUMN = "hidden_states"
ROW_COLUMN = "feature_row"  # the index datasets' pointer into the feature files
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


def dataset_content_hash(ds: datasets.Dataset,
                         columns: tuple[str, ...] = ("input_ids", "attention_mask", "labels")) -> str:
    """Hash of the columns the cache is built from and carries (token ids, masks, labels), read in batches."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"rows={len(ds)}|".encode())
    for col in (c for c in columns if c in ds.column_names):
        h.update(f"{col}|".encode())
        for batch in batches(ds, [col]):
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
        """``--activation_checkpointing``: the trainable blocks run inside the full model's ``run_blocks``."""
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

    def read(self, rows: list[int]) -> list[tuple[torch.Tensor, int]]:
        """Examples' states and their numbers of real tokens, in order (one read per file)."""
        files = np.searchsorted(self.starts, rows, side="right") - 1
        out: list[Any] = [None] * len(rows)
        for i in np.unique(files):
            where = np.flatnonzero(files == i)
            local = [rows[j] - int(self.starts[i]) for j in where]
            for j, row, states in zip(where, local, self.files[i].rows(local)):
                out[j] = (states, int(self.files[i].real[row]))
        return out

    def states(self, row: int) -> tuple[torch.Tensor, int]:
        """One example's states and its number of real tokens."""
        return self.read([row])[0]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = self.read([int(f[ROW_COLUMN]) for f in features])
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
    computed: list[str] = field(default_factory=list)  # the splits whose features this call computed (else read)

    def states(self, split: str, i: int) -> torch.Tensor:
        """Example ``i`` of ``split``: its cached states (float32)."""
        return self.collator.states(int(self.datasets[split][i][ROW_COLUMN]))[0]


def trunk_arithmetic(dtype: torch.dtype | None, device: torch.device) -> str:
    """What the frozen trunk computes in, for the log: float32, or an autocast and whether ``device`` has it
    natively."""
    if dtype is None:
        return "float32"
    if dtype != torch.bfloat16:
        return f"{str(dtype).removeprefix('torch.')} autocast"
    native, why = native_bf16(device)
    return f"bfloat16 autocast ({why}{'' if native else ': emulated, likely slower than float32'})"


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
    keep_padding = full_model.config.fixed_length is not None  # only a fixed length reads padded positions
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
            lengths = {s: stored_lengths(full_model, tokenized[s], keep_padding) for s in missing}  # one pass per split
            if missing:  # the largest split counts twice: its raw states sit beside the file while it is written
                sizes = [feature_bytes(len(kept) if pooled else int(kept.sum()), len(kept), full_model.config.emb_dim,
                                       feature_dtype) for kept, _ in lengths.values()]
                _disk_check(cache_dir, sum(sizes) + max(sizes), feature_dtype)
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
    logger.info("Frozen-trunk feature cache: embeddings + %d %s run once per example in %s (%s) in %.1f s; %.0f MB "
                "(stored as %s) in %s", k, "blocks" if not pooled else "blocks + final norm + pooling",
                trunk_arithmetic(dtype, device), f"computed: {', '.join(computed)}" if computed else "read from cache",
                time.time() - started, size_mb, feature_dtype, cache_dir)
    collator = FeatureCollator([opened[s] for s in tokenized])
    return CachedTraining(FrozenTrunkSuffix(full_model, k), datasets.DatasetDict(indexes), collator, k, files,
                          computed)
