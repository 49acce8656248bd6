"""Frozen-trunk feature caching: run the frozen bottom of the model once per example, not once per step.

With ``--trainable_layers last_block`` (the chapter's recipe) the embeddings and the first 11 of
GPT-2 small's 12 blocks are frozen and dropout is 0, so every epoch and every evaluation would
recompute the same outputs for the same texts. ``prepare_cached_training`` computes the output
of the frozen prefix (embeddings + ``trf_blocks[:k]``; for ``last_layer`` everything before the
head, pooled) once per example, stores it on disk as a ``datasets`` Arrow file keyed by a hash of
the frozen weights, the tokenized data, ``k`` and the dtypes, and returns a small module
(``FrozenTrunkSuffix``) that trains and evaluates only the trainable top on those states. The
suffix shares its parameters with the full model, so the full model is what gets trained and
saved. The training trajectory is the one of the uncached model, up to float rounding.

Where it does not apply (``all``, ``lora``, dropout > 0, or ``last`` pooling with dynamic
padding, whose read position depends on each batch's padding) training runs uncached.
"""

from __future__ import annotations

import hashlib
import logging
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
CACHEABLE_LAYERS = ("last_layer", "last_block", "last_two_blocks")
FEATURE_COLUMN = "hidden_states"
# The cache computation sorts each chunk of examples by length and runs passes of at most
# TOKENS_PER_PASS padded tokens in which padding adds at most MAX_PADDING_WASTE to the real tokens.
# Chunks of TOKENS_PER_CHUNK tokens (25 MB of GPT-2-small float32 states) keep peak memory low:
# larger ones fragment the heap (measured: +500 MB for 32k-token chunks at 120-token padding).
TOKENS_PER_PASS = 2048
MAX_PADDING_WASTE = 0.10
TOKENS_PER_CHUNK = 8192


# --------------------------------------------------------------------------------------------
# When caching applies
# --------------------------------------------------------------------------------------------


def frozen_prefix_length(model: GPTSpamForSequenceClassification, trainable_layers: str) -> int | None:
    """How many blocks are frozen below the trainable top (``n_layers`` for ``last_layer``: the
    whole trunk), or ``None`` when the choice leaves nothing frozen to cache."""
    n = len(model.gpt.trf_blocks)
    return {"last_layer": n, "last_block": n - 1, "last_two_blocks": n - 2}.get(trainable_layers)


def caching_blocker(model: GPTSpamForSequenceClassification, trainable_layers: str, padding: str) -> str | None:
    """Why the frozen-trunk cache cannot be used for this run, or ``None`` when it can."""
    if trainable_layers not in CACHEABLE_LAYERS:
        return f"--trainable_layers {trainable_layers} trains the whole trunk"
    if model.config.drop_rate > 0:
        return f"--drop_rate {model.config.drop_rate} makes the frozen trunk's output random"
    k = frozen_prefix_length(model, trainable_layers)
    if k is None or k < 0:
        return "the model has fewer blocks than --trainable_layers trains"
    if model.config.pooling == "last" and padding == "dynamic":
        # `last` reads the last padded position, whose state depends on how far each batch is padded.
        return "--pooling last with --padding dynamic reads a padding position that depends on the batch"
    if any(p.requires_grad for p in _frozen_parameters(model, k)):
        return "part of the frozen prefix is trainable"
    return None


def _frozen_modules(model: GPTSpamForSequenceClassification, k: int) -> list[tuple[str, nn.Module]]:
    gpt = model.gpt
    mods: list[tuple[str, nn.Module]] = [("tok_emb", gpt.tok_emb), ("pos_emb", gpt.pos_emb)]
    mods += [(f"trf_blocks.{i}", gpt.trf_blocks[i]) for i in range(k)]
    if k >= len(gpt.trf_blocks):
        mods.append(("final_norm", gpt.final_norm))
    return mods


def _frozen_parameters(model: GPTSpamForSequenceClassification, k: int) -> list[torch.Tensor]:
    return [p for _, m in _frozen_modules(model, k) for p in m.parameters()]


# --------------------------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------------------------


def frozen_weights_hash(model: GPTSpamForSequenceClassification, k: int) -> str:
    """blake2b of every tensor the frozen prefix computes with (names, shapes, dtypes, bytes)."""
    h = hashlib.blake2b(digest_size=20)
    for prefix, module in _frozen_modules(model, k):
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{prefix}.{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place, no copy
    cfg = model.config
    # The config values that change what the frozen prefix computes.
    h.update(f"causal={cfg.causal}|heads={cfg.n_heads}|eps={cfg.layer_norm_eps}|".encode())
    if k >= len(model.gpt.trf_blocks):
        h.update(f"pooling={cfg.pooling}".encode())
    return h.hexdigest()


def dataset_content_hash(
    ds: datasets.Dataset, columns: tuple[str, ...] = ("input_ids", "attention_mask", "labels")
) -> str:
    """Hash of the columns the cache is built from and carries (token ids, masks, labels)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"rows={len(ds)}|".encode())
    for col in columns:
        if col not in ds.column_names:
            continue
        values = list(ds[col])  # datasets 4+ returns a lazy Column
        if values and isinstance(values[0], (list, tuple, np.ndarray)):
            lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
            flat = np.fromiter((x for v in values for x in v), dtype=np.int64, count=int(lengths.sum()))
            h.update(f"{col}|list|".encode() + lengths.tobytes() + flat.tobytes())
        else:
            h.update(f"{col}|".encode() + np.asarray(values, dtype=np.int64).tobytes())
    return h.hexdigest()


def autocast_dtype(training_args: Any) -> torch.dtype | None:
    """The autocast dtype Trainer/Accelerate will train with (``--bf16``/``--fp16``), or ``None``."""
    if getattr(training_args, "bf16", False):
        return torch.bfloat16
    if getattr(training_args, "fp16", False):
        return torch.float16
    return None


def cache_key(
    weights_hash: str, data_hash: str, k: int, compute_dtype: torch.dtype | None, keep_padding: bool = True
) -> str:
    """The cache file's key: same weights, same tokenized data, same cut, same arithmetic, same layout."""
    positions = "all" if keep_padding else "real"
    text = (f"v{CACHE_FORMAT_VERSION}|{weights_hash}|{data_hash}|k={k}|store=float32|autocast={compute_dtype}"
            f"|positions={positions}")
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# Computing the features
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def prefix_states(
    model: GPTSpamForSequenceClassification, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int
) -> torch.Tensor:
    """The frozen prefix's output: ``[b, t, d]`` after ``trf_blocks[:k]``, or for ``k == n_layers``
    the pooled, final-normed ``[b, d]`` that the head reads. Exactly what ``forward`` computes there."""
    gpt = model.gpt
    hidden = gpt.run_blocks(gpt.embed(input_ids), model.trunk_attention_mask(attention_mask), 0, k)
    if k >= len(gpt.trf_blocks):
        return pool_hidden_states(gpt.final_norm(hidden), attention_mask, model.config.pooling)
    return hidden


def _features_for_batch(
    batch: dict[str, list],
    model: GPTSpamForSequenceClassification,
    k: int,
    device: torch.device,
    dtype: torch.dtype | None,
    keep_padding: bool,
) -> dict[str, list]:
    """``datasets.map`` function: sort the chunk by length, run it in passes of similar lengths (at
    most ``TOKENS_PER_PASS`` padded tokens), return float32 states in the original order. With
    ``keep_padding`` each example keeps every position of its row (``last`` pooling reads a padded
    one); otherwise only its real tokens (all that right padding lets the other poolings see)."""
    ids_list, masks = batch["input_ids"], batch["attention_mask"]
    # Positions computed and kept per example; the rest of a row (right padding) is never read.
    kept = [len(x) if keep_padding else max(1, sum(m)) for x, m in zip(ids_list, masks)]
    order = sorted(range(len(ids_list)), key=lambda i: kept[i])
    out: list[Any] = [None] * len(ids_list)
    i = 0
    while i < len(order):
        j = i + 1
        real = kept[order[i]]
        while j < len(order):
            width = kept[order[j]]  # sorted ascending: the widest so far
            if (j + 1 - i) * width > min(TOKENS_PER_PASS, (1 + MAX_PADDING_WASTE) * (real + width)):
                break
            real += width
            j += 1
        group = order[i:j]
        width = kept[group[-1]]
        ids = torch.full((len(group), width), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, idx in enumerate(group):
            row_ids, row_mask = ids_list[idx][: kept[idx]], masks[idx][: kept[idx]]
            ids[r, : len(row_ids)] = torch.as_tensor(row_ids, dtype=torch.long)
            mask[r, : len(row_mask)] = torch.as_tensor(row_mask, dtype=torch.long)
        with _autocast(device, dtype):
            states = prefix_states(model, ids.to(device), mask.to(device), k)
        states = states.float().cpu().numpy()
        for r, idx in enumerate(group):
            out[idx] = states[r] if states.ndim == 2 else states[r, : kept[idx]]
        i = j
    _release_freed_memory()
    # (An empty text keeps one padding position, masked, like the padding collator gives it.)
    trimmed = [list(m[:n]) + [0] * (n - len(m[:n])) for m, n in zip(masks, kept)]
    return {FEATURE_COLUMN: out, "attention_mask": trimmed, "length": kept}


def _release_freed_memory() -> None:
    """Hand memory freed by the last chunk back to the OS (glibc keeps it in its arenas otherwise,
    and the training that follows would start with a fragmented, larger heap)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # musl or no glibc
        return None


_LIBC = _load_libc()


def compute_features(
    model: GPTSpamForSequenceClassification,
    dataset: datasets.Dataset,
    k: int,
    cache_file: str | Path,
    *,
    device: torch.device | str = "cpu",
    compute_dtype: torch.dtype | None = None,
    keep_padding: bool = True,
    fingerprint: str | None = None,
    desc: str = "Frozen-trunk features",
) -> datasets.Dataset:
    """``dataset`` with ``input_ids`` replaced by the frozen prefix's states (column
    ``hidden_states``) and a ``length`` column, read from ``cache_file`` when it exists, else computed
    and written there (atomically, by ``datasets``). The caller chooses ``cache_file`` from a key."""
    device = torch.device(device)
    d = model.config.emb_dim
    pooled = k >= len(model.gpt.trf_blocks)
    features = datasets.Features({
        **{name: feat for name, feat in dataset.features.items() if name != "input_ids"},
        FEATURE_COLUMN: datasets.List(datasets.Value("float32"), length=d) if pooled
        else datasets.Array2D(shape=(None, d), dtype="float32"),
        "length": datasets.Value("int32"),
    })
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    lengths = [len(x) for x in dataset["input_ids"]]
    chunk = int(min(1024, max(32, TOKENS_PER_CHUNK * len(lengths) / max(1, sum(lengths)))))
    was_training = model.training
    model.eval()  # dropout is 0 anyway; eval() also keeps any future train-only behaviour out
    try:
        with torch.inference_mode():
            # Rows of up to 1024 x 768 floats: keep Arrow's write buffer small (memory), 64 rows.
            out = dataset.map(
                _features_for_batch,
                fn_kwargs={"model": model, "k": k, "device": device, "dtype": compute_dtype,
                           "keep_padding": keep_padding},
                batched=True,
                batch_size=chunk,
                writer_batch_size=64,
                remove_columns=["input_ids"],
                features=features,
                cache_file_name=str(cache_file),
                load_from_cache_file=True,
                new_fingerprint=fingerprint or cache_file.stem.split("-")[-1][:32],
                desc=desc,
            )
    finally:
        model.train(was_training)
        _release_freed_memory()
    return out.with_format("numpy")


# --------------------------------------------------------------------------------------------
# Training on the features
# --------------------------------------------------------------------------------------------


class FrozenTrunkSuffix(nn.Module):
    """The trainable top of a ``GPTSpamForSequenceClassification``, fed cached frozen-prefix states.

    Registers (and so trains, checkpoints and resumes) only ``trf_blocks[k:]``, ``final_norm`` and
    ``out_head`` of the full model; these are the same module objects, so every update lands in
    the full model, which is what gets saved. They are registered under the full model's own names
    (``gpt.trf_blocks.11...``, ``gpt.final_norm...``, ``gpt.out_head...``) and in its order, so
    Trainer picks the same weight-decay groups, and a Trainer checkpoint of either path (cached or
    not) resumes in the other. The forward is the full model's own code (``logits_from_block``,
    ``compute_loss``), so losses equal the uncached model's.
    """

    # Our loss is a mean over the batch; Trainer must not expect it normalised by num_items_in_batch.
    accepts_loss_kwargs = False

    def __init__(self, full_model: GPTSpamForSequenceClassification, k: int):
        super().__init__()
        # A plain attribute, not a submodule: the frozen trunk stays out of checkpoints and DDP.
        object.__setattr__(self, "full_model", full_model)
        self.k = k
        source = full_model.gpt
        blocks = nn.Module()
        for i in range(k, len(source.trf_blocks)):
            blocks.add_module(str(i), source.trf_blocks[i])  # keeps the block's index in its name
        self.gpt = nn.Module()
        self.gpt.trf_blocks = blocks
        self.gpt.final_norm = source.final_norm
        self.gpt.out_head = source.out_head

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        length: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """``hidden_states``: ``[b, t, d]`` cached block outputs (``[b, d]`` pooled for ``last_layer``).
        ``length`` is unused; it is named so Trainer keeps the column its length-grouped sampler reads."""
        full = self.full_model
        if hidden_states.dim() == 2:
            logits = self.gpt.out_head(hidden_states)
        else:
            logits = full.logits_from_block(hidden_states, attention_mask, self.k)
        return SequenceClassifierOutput(loss=full.compute_loss(logits, labels), logits=logits)


@dataclass
class FeatureCollator:
    """Batch cached features: right-pad ``hidden_states`` (zeros) and ``attention_mask`` (0s) to the
    longest example. Padded positions sit to the right of every real token, so under the causal
    mask (or the padding mask without it) no real token sees them, as in the uncached model."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        states = [torch.as_tensor(np.asarray(f[FEATURE_COLUMN], dtype=np.float32)) for f in features]
        batch: dict[str, torch.Tensor] = {}
        if states[0].dim() == 1:
            batch[FEATURE_COLUMN] = torch.stack(states)
        else:
            longest = max(s.shape[0] for s in states)
            hidden = torch.zeros((len(states), longest, states[0].shape[1]), dtype=torch.float32)
            mask = torch.zeros((len(states), longest), dtype=torch.long)
            for i, (s, f) in enumerate(zip(states, features)):
                hidden[i, : s.shape[0]] = s
                if "attention_mask" in f:
                    mask[i, : s.shape[0]] = torch.as_tensor(np.asarray(f["attention_mask"]), dtype=torch.long)
                else:
                    mask[i, : s.shape[0]] = 1
            batch[FEATURE_COLUMN] = hidden
            batch["attention_mask"] = mask
        label_key = "labels" if "labels" in features[0] else "label" if "label" in features[0] else None
        if label_key is not None:
            batch["labels"] = torch.tensor([int(f[label_key]) for f in features], dtype=torch.long)
        return batch


@dataclass
class CachedTraining:
    """What ``training.run`` trains on when the cache applies."""

    model: FrozenTrunkSuffix
    datasets: datasets.DatasetDict
    collator: FeatureCollator
    k: int
    cache_files: dict[str, Path]
    seconds: float


def default_feature_cache_dir(data_cache_dir: str | Path | None = None) -> Path:
    """``DATA_CACHE_DIR/features`` (default ``~/.cache/hf_spam/features`` or ``$HF_SPAM_CACHE/features``)."""
    from .data import default_cache_dir

    return (Path(data_cache_dir) if data_cache_dir else default_cache_dir()) / "features"


def prepare_cached_training(
    full_model: GPTSpamForSequenceClassification,
    tokenized: datasets.DatasetDict,
    *,
    trainable_layers: str,
    padding: str,
    training_args: Any,
    cache_dir: str | Path,
) -> CachedTraining | None:
    """Compute (or load) the frozen prefix's states for every split and build the suffix model;
    ``None`` (with the reason logged) when caching does not apply. With several processes the
    main process computes and writes the cache first; the others then read it."""
    reason = caching_blocker(full_model, trainable_layers, padding)
    if reason is not None:
        logger.info("Frozen-trunk feature cache not used: %s", reason)
        return None
    started = time.time()
    k = frozen_prefix_length(full_model, trainable_layers)
    assert k is not None  # caching_blocker checked it
    device = torch.device(training_args.device)
    dtype = autocast_dtype(training_args)
    full_model.to(device)
    weights_hash = frozen_weights_hash(full_model, k)
    # Only `last` pooling reads a padded position; the others see real tokens only (right padding).
    keep_padding = full_model.config.pooling == "last"
    cache_dir = Path(cache_dir)
    out: dict[str, datasets.Dataset] = {}
    files: dict[str, Path] = {}
    hits = []
    with training_args.main_process_first(local=True, desc="frozen-trunk features"):
        for split, ds in tokenized.items():
            key = cache_key(weights_hash, dataset_content_hash(ds), k, dtype, keep_padding)
            files[split] = cache_dir / f"{split}-{key}.arrow"
            hits.append(files[split].is_file())
            out[split] = compute_features(
                full_model, ds, k, files[split], device=device, compute_dtype=dtype, keep_padding=keep_padding,
                fingerprint=key,
                desc=f"Frozen-trunk features ({split})",
            )
    seconds = time.time() - started
    what = "blocks" if k < len(full_model.gpt.trf_blocks) else "blocks + final norm + pooling"
    size_mb = sum(f.stat().st_size for f in files.values() if f.is_file()) / 2**20
    logger.info(
        "Frozen-trunk feature cache: embeddings + %d %s run once per example (%s) in %.1f s; %.0f MB in %s",
        k, what, "read from cache" if all(hits) else "computed", seconds, size_mb, cache_dir,
    )
    return CachedTraining(
        model=FrozenTrunkSuffix(full_model, k), datasets=datasets.DatasetDict(out), collator=FeatureCollator(),
        k=k, cache_files=files, seconds=seconds,
    )
