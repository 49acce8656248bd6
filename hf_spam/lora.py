"""LoRA fine-tuning of the classifier with peft: wrap, save the adapter, merge, load.

The chapter's appendix E adds a low-rank update to every ``nn.Linear``. Here peft does it: every
Linear of the transformer blocks (query/key/value/output projections and both feed-forward
layers) gets a rank-``r`` update, and the new 2-way ``out_head`` is trained in full. peft keeps a
classification head trainable on its own only when it is named ``classifier`` or ``score``, so
``out_head`` is listed in ``modules_to_save`` (without that it would be silently frozen and not
saved). peft scales the update by ``lora_alpha / r``; the chapter scales it by ``alpha`` alone, so
the chapter's ``rank=16, alpha=16`` is peft's ``r=16, lora_alpha=256``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .modeling_gpt import GPTSpamForSequenceClassification, count_parameters

logger = logging.getLogger("hf_spam")

# Every nn.Linear inside the transformer blocks, and nothing else (peft matches a string
# target_modules as a full-name regex): att.W_query/W_key/W_value/out_proj, ff.layers.0/2.
LORA_TARGET_MODULES = r".*\.trf_blocks\.\d+\.(att\.(W_query|W_key|W_value|out_proj)|ff\.layers\.(0|2))"
# The classification head: trained in full and saved with the adapter.
LORA_MODULES_TO_SAVE = ["out_head"]


class LoraError(ValueError):
    """A bad LoRA setting or an adapter folder that does not fit the model."""


def peft_alpha_for_chapter(rank: int, chapter_alpha: float) -> float:
    """peft's ``lora_alpha`` giving the same update scale as the chapter's ``alpha`` (which is not divided by r)."""
    return float(chapter_alpha) * rank


def check_lora_settings(rank: int, alpha: float, dropout: float) -> None:
    """Refuse a LoRA rank, alpha or dropout that peft would reject or that makes no sense."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoraError(f"--lora_rank: expected a positive integer, got {rank!r}")
    if not alpha > 0:
        raise LoraError(f"--lora_alpha: expected a positive number, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise LoraError(f"--lora_dropout: expected a value in [0, 1), got {dropout!r}")


def lora_config(rank: int, alpha: float, dropout: float = 0.0) -> Any:
    """The ``peft.LoraConfig`` used for the classifier (sequence classification, blocks' Linears, full head)."""
    from peft import LoraConfig

    check_lora_settings(rank, alpha, dropout)
    return LoraConfig(
        task_type="SEQ_CLS",
        r=int(rank),
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=LORA_TARGET_MODULES,
        modules_to_save=list(LORA_MODULES_TO_SAVE),
        bias="none",
    )


def apply_lora(
    model: GPTSpamForSequenceClassification, rank: int = 16, alpha: float = 16.0, dropout: float = 0.0
) -> Any:
    """Wrap ``model`` in a peft LoRA model: only the LoRA matrices and the head stay trainable.

    The returned ``PeftModelForSequenceClassification`` works with ``Trainer`` like the plain model
    (Trainer reads the label names and forward signature of the wrapped model). Note that peft
    injects the LoRA layers into ``model`` in place.
    """
    from peft import get_peft_model

    config = lora_config(rank, alpha, dropout)
    base_total = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        # peft asks the model `is_gradient_checkpointing`, which transformers 5 flags as deprecated.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    lora_params = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
    trainable, total = count_parameters(peft_model)
    n_targets = sum(1 for n, _ in peft_model.named_modules() if n.endswith(".lora_A"))
    if n_targets == 0:  # pragma: no cover - guards against a renamed module
        raise LoraError("LoRA: no Linear layer of the transformer blocks matched the target modules")
    logger.info(
        "LoRA r=%d, alpha=%g (update scale alpha/r = %g) on %d Linear layers: %s LoRA parameters added to %s; "
        "trainable %s of %s (%.2f%%)",
        rank, alpha, alpha / rank, n_targets, f"{lora_params:,}", f"{base_total:,}", f"{trainable:,}",
        f"{total:,}", 100 * trainable / total,
    )
    return peft_model


def _is_peft_model(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_lora(peft_model: Any) -> GPTSpamForSequenceClassification:
    """A plain classifier with the LoRA updates folded into its weights; ``peft_model`` is left as it was."""
    if not _is_peft_model(peft_model):
        raise LoraError(f"merge_lora: expected a peft model, got {type(peft_model).__name__}")
    merged = copy.deepcopy(peft_model).merge_and_unload()
    if not isinstance(merged, GPTSpamForSequenceClassification):  # pragma: no cover - peft contract
        raise LoraError(f"merge_lora: merging gave a {type(merged).__name__}, expected the classifier")
    for p in merged.parameters():
        p.requires_grad = True
    merged.eval()
    return merged


def save_adapter(peft_model: Any, adapter_dir: str | os.PathLike) -> Path:
    """Save the adapter in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``, head included).

    Written to a temporary folder beside ``adapter_dir`` and moved into place, so an interrupted
    save never leaves half an adapter.
    """
    if not _is_peft_model(peft_model):
        raise LoraError(f"save_adapter: expected a peft model, got {type(peft_model).__name__}")
    adapter_dir = Path(adapter_dir)
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=adapter_dir.parent, prefix=f".{adapter_dir.name}."))
    try:
        # save_embedding_layers=False: the embeddings are never trained here, and "auto" would ask the
        # Hub whether the base model's vocabulary changed.
        peft_model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (tmp / name).is_file():  # pragma: no cover - peft contract
                raise LoraError(f"{adapter_dir}: peft did not write {name}")
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        os.replace(tmp, adapter_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return adapter_dir


def save_adapter_and_merge(peft_model: Any, adapter_dir: str | os.PathLike) -> GPTSpamForSequenceClassification:
    """Save the adapter to ``adapter_dir`` and return the merged plain classifier (to save as the model folder)."""
    save_adapter(peft_model, adapter_dir)
    return merge_lora(peft_model)


def load_adapter(
    base_model: GPTSpamForSequenceClassification | str | os.PathLike,
    adapter_dir: str | os.PathLike,
    *,
    is_trainable: bool = False,
) -> Any:
    """Put a saved adapter onto its base model: a ``GPTSpamForSequenceClassification`` or a saved model folder.

    The base must be the model the adapter was trained on (the same pretrained or seeded random
    weights), not the merged folder, which already holds the update. Call ``.merge_and_unload()``
    on the result for a plain model.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise LoraError(f"{adapter_dir}: no adapter_config.json; expected a folder written by save_adapter")
    if isinstance(base_model, (str, os.PathLike)):
        folder = Path(base_model)
        if not (folder / "config.json").is_file():
            raise LoraError(f"{folder}: no config.json; expected a saved GPTSpamForSequenceClassification folder")
        base_model = GPTSpamForSequenceClassification.from_pretrained(folder)
    if not isinstance(base_model, GPTSpamForSequenceClassification):
        raise LoraError(f"load_adapter: expected a GPTSpamForSequenceClassification, got {type(base_model).__name__}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            model = PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)
        except RuntimeError as err:  # shape mismatch: an adapter from another model size
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LoraError(f"{adapter_dir}: adapter does not fit the base model ({first_line})") from None
    return model


def lora_parameter_count(config: Any, rank: int) -> int:
    """LoRA parameters that ``apply_lora`` adds at ``rank`` for a model config: r * (in + out) per target Linear."""
    d = config.emb_dim
    per_block = 4 * rank * (d + d) + rank * (d + 4 * d) + rank * (4 * d + d)
    return config.n_layers * per_block
