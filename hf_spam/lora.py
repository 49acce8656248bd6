"""LoRA with peft: every Linear layer of the transformer blocks gets a low-rank update, the new head
trains in full.

peft keeps a classification head trainable (and saved) on its own only when it is named ``classifier``
or ``score``, so ``out_head`` is listed in ``modules_to_save``. peft scales the update by
``lora_alpha / r``; the chapter's appendix E scales it by ``alpha`` alone, so the chapter's
``rank=16, alpha=16`` is peft's ``r=16, lora_alpha=256`` (alpha times r).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model

from .modeling_gpt import GPTSpamForSequenceClassification

# Every nn.Linear inside the blocks and nothing else (a string is a full-name regex for peft):
# att.W_query/W_key/W_value/out_proj and ff.layers.0/2.
TARGET_MODULES = r".*\.trf_blocks\.\d+\.(att\.(W_query|W_key|W_value|out_proj)|ff\.layers\.(0|2))"


def apply_lora(model: GPTSpamForSequenceClassification, rank: int = 16, alpha: float = 16.0,
               dropout: float = 0.0) -> PeftModel:
    """Wrap ``model`` (in place) in a peft LoRA model: only the LoRA matrices and the head stay trainable."""
    config = LoraConfig(task_type="SEQ_CLS", r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=TARGET_MODULES, modules_to_save=["out_head"], bias="none")
    with warnings.catch_warnings():  # peft asks `is_gradient_checkpointing`, which transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def save_adapter_and_merge(peft_model: PeftModel, adapter_dir: str | os.PathLike) -> GPTSpamForSequenceClassification:
    """Save the adapter in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``, head
    included) to ``adapter_dir`` with its base model in ``adapter_dir/base`` (a model folder with remote
    code, so plain peft loads the pair: ``PeftModel.from_pretrained(AutoModelForSequenceClassification
    .from_pretrained(BASE, trust_remote_code=True), ADAPTER)``), and return a plain classifier with the update
    merged into its weights.

    Written to a temporary folder beside ``adapter_dir`` and renamed, so a kill never leaves half an
    adapter; ``peft_model`` itself is left as it was (merging and unloading work on copies).
    """
    adapter_dir = Path(adapter_dir)
    tmp = Path(tempfile.mkdtemp(dir=adapter_dir.parent, prefix=f".{adapter_dir.name}."))
    try:
        # save_embedding_layers=False: the embeddings never train here, and "auto" would ask the Hub.
        peft_model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        copy.deepcopy(peft_model).unload().save_pretrained(tmp / "base")  # the head is the adapter's anyway
        if adapter_dir.is_symlink():  # replaced, never followed
            adapter_dir.unlink()
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(tmp, adapter_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    for p in merged.parameters():
        p.requires_grad = True
    return merged.eval()

