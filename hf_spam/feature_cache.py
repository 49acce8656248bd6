"""Frozen-trunk feature caching: run the frozen bottom of the model once per example, not once per step.

With ``--trainable_layers last_block`` (the chapter's recipe) the embeddings and the first 11 of GPT-2
small's 12 blocks are frozen and dropout is 0, so every epoch and evaluation would recompute the same
states for the same texts. ``prepare_cached_training`` computes the frozen prefix's output once per
example (for ``last_layer``: everything before the head, pooled), stores it as a ``datasets`` Arrow file
(memory-mapped, on disk) keyed by a hash of the frozen weights, the tokenized data, the cut and the
arithmetic, and returns ``FrozenTrunkSuffix``: the trainable top, sharing its parameters with the full
model (which is what gets saved). Training follows the uncached trajectory up to float rounding.

It does not apply to ``all``/``lora`` (nothing frozen), dropout > 0 (the prefix is random), or ``last``
pooling with dynamic padding (the position it reads depends on each batch's padding).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .modeling_gpt import GPTSpamForSequenceClassification, pool_hidden_states
from .tokenization import PAD_TOKEN_ID

logger = logging.getLogger("hf_spam")

# Bump when the stored layout or the computation changes, so old cache files are never reused.
CACHE_FORMAT_VERSION = 1
FEATURE_COLUMN = "hidden_states"
# Each chunk of examples (TOKENS_PER_CHUNK tokens: 25 MB of GPT-2-small float32 states; larger chunks
# fragment the heap, +500 MB measured at 32k tokens) is sorted by length and run in passes of at most
# TOKENS_PER_PASS padded tokens in which padding adds at most MAX_PADDING_WASTE to the real tokens.
TOKENS_PER_CHUNK = 8192
TOKENS_PER_PASS = 2048
MAX_PADDING_WASTE = 0.10


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
    """Hash of the columns the cache is built from and carries (token ids, masks, labels)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"rows={len(ds)}|".encode())
    for col in (c for c in columns if c in ds.column_names):
        values = list(ds[col])
        if values and isinstance(values[0], (list, tuple, np.ndarray)):
            lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
            flat = np.fromiter((x for v in values for x in v), dtype=np.int64, count=int(lengths.sum()))
            h.update(f"{col}|list|".encode() + lengths.tobytes() + flat.tobytes())
        else:
            h.update(f"{col}|".encode() + np.asarray(values, dtype=np.int64).tobytes())
    return h.hexdigest()


def cache_key(weights_hash: str, data_hash: str, k: int, dtype: torch.dtype | None, keep_padding: bool) -> str:
    """Same frozen weights, same tokenized data, same cut, same arithmetic, same stored positions."""
    text = (f"v{CACHE_FORMAT_VERSION}|{weights_hash}|{data_hash}|k={k}|store=float32|autocast={dtype}"
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


def _features_for_batch(batch: dict[str, list], model: GPTSpamForSequenceClassification, k: int,
                        device: torch.device, dtype: torch.dtype | None, keep_padding: bool) -> dict[str, list]:
    """``datasets.map`` function: run a chunk sorted by length in passes of similar lengths and return
    float32 states in the original order. With ``keep_padding`` every position of a row is kept (``last``
    pooling reads a padded one); otherwise only the real tokens, all that right padding lets the others see."""
    ids_list, masks = batch["input_ids"], batch["attention_mask"]
    kept = [len(x) if keep_padding else max(1, sum(m)) for x, m in zip(ids_list, masks)]
    order = sorted(range(len(ids_list)), key=lambda i: kept[i])
    out: list[Any] = [None] * len(ids_list)
    i = 0
    while i < len(order):
        j, real = i + 1, kept[order[i]]
        while j < len(order) and (j + 1 - i) * kept[order[j]] <= min(TOKENS_PER_PASS, (1 + MAX_PADDING_WASTE)
                                                                     * (real + kept[order[j]])):
            real += kept[order[j]]
            j += 1
        group, width = order[i:j], kept[order[j - 1]]
        ids = torch.full((len(group), width), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, idx in enumerate(group):
            ids[r, : kept[idx]] = torch.as_tensor(ids_list[idx][: kept[idx]])
            mask[r, : kept[idx]] = torch.as_tensor(masks[idx][: kept[idx]])
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            states = prefix_states(model, ids.to(device), mask.to(device), k).float().cpu().numpy()
        for r, idx in enumerate(group):
            out[idx] = states[r] if states.ndim == 2 else states[r, : kept[idx]]
        i = j
    release_freed_memory()
    # An empty text keeps one padding position, masked, as the padding collator gives it.
    trimmed = [list(m[:n]) + [0] * (n - len(m[:n])) for m, n in zip(masks, kept)]
    return {FEATURE_COLUMN: out, "attention_mask": trimmed, "length": kept}


def compute_features(model: GPTSpamForSequenceClassification, dataset: datasets.Dataset, k: int,
                     cache_file: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                     keep_padding: bool = True, desc: str = "Frozen-trunk features") -> datasets.Dataset:
    """``dataset`` with ``input_ids`` replaced by the frozen prefix's states (``hidden_states``) and a
    ``length`` column: read from ``cache_file`` when it exists, else computed and written there (atomically,
    by ``datasets``)."""
    d, pooled = model.config.emb_dim, k >= len(model.gpt.trf_blocks)
    features = datasets.Features({
        **{name: feat for name, feat in dataset.features.items() if name != "input_ids"},
        FEATURE_COLUMN: datasets.List(datasets.Value("float32"), length=d) if pooled
        else datasets.Array2D(shape=(None, d), dtype="float32"),
        "length": datasets.Value("int32"),
    })
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    if cache_file.is_file() and not _readable(cache_file, len(dataset)):
        logger.warning("%s: damaged frozen-trunk feature cache file; computing it again", cache_file)
        cache_file.unlink()
    tokens = sum(len(x) for x in dataset["input_ids"])
    chunk = int(min(1024, max(32, TOKENS_PER_CHUNK * len(dataset) / max(1, tokens))))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = dataset.map(
                _features_for_batch, batched=True, batch_size=chunk, writer_batch_size=64, features=features,
                fn_kwargs={"model": model, "k": k, "device": torch.device(device), "dtype": dtype,
                           "keep_padding": keep_padding},
                remove_columns=["input_ids"], cache_file_name=str(cache_file), load_from_cache_file=True,
                new_fingerprint=cache_file.stem.rsplit("-", 1)[-1][:32], desc=desc)
    finally:
        model.train(was_training)
        release_freed_memory()
    return out.with_format("numpy")


def _readable(cache_file: Path, rows: int) -> bool:
    """Whether a cached features file opens and holds ``rows`` complete rows (a kill or a full disk can leave
    a truncated one)."""
    try:
        cached = datasets.Dataset.from_file(str(cache_file))
        return len(cached) == rows and len(cached[rows - 1][FEATURE_COLUMN]) > 0
    except Exception:  # pyarrow and datasets raise several types for a damaged file
        return False


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
                labels: torch.Tensor | None = None, length: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """``hidden_states``: cached ``[b, t, d]`` block outputs (``[b, d]`` pooled for ``last_layer``).
        ``length`` is unused; it is named so Trainer keeps the column its length-grouped sampler reads."""
        full = self.full_model
        if hidden_states.dim() == 2:
            logits = self.gpt.out_head(hidden_states)
        else:
            logits = full.logits_from_block(hidden_states, attention_mask, self.k)
        return SequenceClassifierOutput(loss=full.compute_loss(logits, labels), logits=logits)


class FeatureCollator:
    """Batch cached features: right-pad ``hidden_states`` (zeros) and ``attention_mask`` (0s) to the
    longest example. Padding sits right of every real token, so (causal or masked) no real token sees it."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        states = [torch.as_tensor(np.asarray(f[FEATURE_COLUMN], dtype=np.float32)) for f in features]
        batch = {"labels": torch.tensor([int(f["labels"]) for f in features])} if "labels" in features[0] else {}
        if states[0].dim() == 1:
            return {FEATURE_COLUMN: torch.stack(states), **batch}
        longest = max(s.shape[0] for s in states)
        hidden = torch.zeros((len(states), longest, states[0].shape[1]))
        mask = torch.zeros((len(states), longest), dtype=torch.long)
        for i, (s, f) in enumerate(zip(states, features)):
            hidden[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = torch.as_tensor(np.asarray(f["attention_mask"]))
        return {FEATURE_COLUMN: hidden, "attention_mask": mask, **batch}


@dataclass
class CachedTraining:
    """What the Trainer trains on when the cache applies."""

    model: FrozenTrunkSuffix
    datasets: datasets.DatasetDict
    collator: FeatureCollator
    k: int
    cache_files: dict[str, Path]


def prepare_cached_training(full_model: GPTSpamForSequenceClassification, tokenized: datasets.DatasetDict, *,
                            trainable_layers: str, padding: str, training_args: Any,
                            cache_dir: str | Path) -> CachedTraining | None:
    """Compute (or read) the frozen prefix's states of every split and build the suffix model; ``None``
    (reason logged) when caching does not apply. With several processes, the main process of each machine
    writes the cache first and the others read it."""
    reason = caching_blocker(full_model, trainable_layers, padding)
    if reason is not None:
        logger.info("Frozen-trunk feature cache not used: %s", reason)
        return None
    started = time.time()
    k = frozen_prefix_length(full_model, trainable_layers)
    device = torch.device(training_args.device)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None
    full_model.to(device)
    weights_hash = frozen_weights_hash(full_model, k)
    keep_padding = full_model.config.pooling == "last"  # only `last` reads a padded position
    out, files, hits = {}, {}, []
    with training_args.main_process_first(local=True, desc="frozen-trunk features"):
        for split, ds in tokenized.items():
            key = cache_key(weights_hash, dataset_content_hash(ds), k, dtype, keep_padding)
            files[split] = Path(cache_dir) / f"{split}-{key}.arrow"
            hits.append(files[split].is_file())
            try:
                out[split] = compute_features(full_model, ds, k, files[split], device=device, dtype=dtype,
                                              keep_padding=keep_padding, desc=f"Frozen-trunk features ({split})")
            except OSError as err:  # an unwritable or full cache location: train without the cache
                logger.warning("Frozen-trunk feature cache not used: cannot write %s (%s)", cache_dir,
                               err.strerror or type(err).__name__)
                return None
    size_mb = sum(f.stat().st_size for f in files.values() if f.is_file()) / 2**20
    logger.info("Frozen-trunk feature cache: embeddings + %d %s run once per example (%s) in %.1f s; %.0f MB in %s",
                k, "blocks" if k < len(full_model.gpt.trf_blocks) else "blocks + final norm + pooling",
                "read from cache" if all(hits) else "computed", time.time() - started, size_mb, cache_dir)
    return CachedTraining(FrozenTrunkSuffix(full_model, k), datasets.DatasetDict(out), FeatureCollator(), k, files)
