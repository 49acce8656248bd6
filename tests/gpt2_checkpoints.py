"""Tiny random GPT-2 checkpoints in both real formats, for tests (no pretrained weights on CI machines).

``write_hf_gpt2`` saves a transformers ``GPT2LMHeadModel`` with ``save_pretrained``;
``write_openai_tf_gpt2`` writes the same numbers as OpenAI's TensorFlow checkpoint with TensorFlow's
own ``SaveV2`` op and OpenAI's variable names, then reads every variable back with
``tf.train.load_variable``. transformers and TensorFlow are imported inside the functions so a test
module that needs only one of them does not pay for the other.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


def write_hf_gpt2(
    directory: str | Path,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_positions: int = 64,
    vocab_size: int = 50257,
    seed: int = 0,
    **config_kwargs: Any,
) -> Path:
    """Save a random ``GPT2LMHeadModel`` (safetensors + config.json) into ``directory``; returns it.

    The weights are drawn with a larger spread than GPT-2's init (biases and LayerNorm parameters
    included), so a wrong mapping of any tensor changes the logits visibly.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions, vocab_size=vocab_size,
        **config_kwargs,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "lm_head.weight":
                continue  # tied to wte
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory


def hf_state_dict(hf_model_or_state: Any) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors without the ``transformer.`` prefix, buffers and ``lm_head`` left out."""
    if isinstance(hf_model_or_state, (str, Path)):
        from safetensors.torch import load_file

        state = load_file(str(Path(hf_model_or_state) / "model.safetensors"))
    elif hasattr(hf_model_or_state, "state_dict"):
        state = hf_model_or_state.state_dict()
    else:
        state = dict(hf_model_or_state)
    out = {}
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        if name == "lm_head.weight" or re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", name):
            continue
        out[name] = value.detach().clone()
    return out


def openai_variable_name(hf_name: str) -> str:
    """``h.0.attn.c_attn.weight`` -> ``model/h0/attn/c_attn/w`` (OpenAI's names)."""
    parts = hf_name.split(".")
    if parts[0] in ("wte", "wpe"):
        return f"model/{parts[0]}"
    module, leaf = parts[:-1], parts[-1]
    short = ("g" if module[-1].startswith("ln_") else "w") if leaf == "weight" else "b"
    if module[0] == "h":
        module = [f"h{module[1]}", *module[2:]]
    return "model/" + "/".join([*module, short])


def write_openai_tf_gpt2(
    directory: str | Path,
    hf_model_or_state: Any,
    *,
    n_head: int | None = None,
    hparams_overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``hf_model_or_state`` (a ``GPT2LMHeadModel``, an HF state dict or an HF folder) as OpenAI's files.

    Produces ``hparams.json``, ``checkpoint``, ``model.ckpt.index`` and ``model.ckpt.data-00000-of-00001``
    with OpenAI's variable names and layouts (Conv1D weights ``[1, n_in, n_out]``). ``n_head`` is needed
    for a bare state dict; ``hparams_overrides`` lets a test write inconsistent sizes.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    if n_head is None:
        if hasattr(hf_model_or_state, "config"):
            n_head = hf_model_or_state.config.n_head
        elif isinstance(hf_model_or_state, (str, Path)):
            n_head = json.loads((Path(hf_model_or_state) / "config.json").read_text())["n_head"]
        else:
            raise ValueError("n_head is required when writing a bare state dict")
    state = hf_state_dict(hf_model_or_state)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    names, arrays = [], []
    for hf_name, tensor in state.items():
        array = tensor.detach().cpu().numpy().astype(np.float32)
        is_conv = hf_name.startswith("h.") and ".ln_" not in hf_name and hf_name.endswith(".weight")
        if is_conv:
            array = array[None, ...]  # OpenAI's Conv1D weights keep a leading 1
        names.append(openai_variable_name(hf_name))
        arrays.append(array)
    prefix = str(directory / "model.ckpt")
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
        tensors=[tf.constant(a) for a in arrays],
    )
    # Confirm TensorFlow reads back exactly what was written.
    for name, array in zip(names, arrays):
        if not np.array_equal(tf.train.load_variable(prefix, name), array):
            raise AssertionError(f"TensorFlow read back a different {name}")

    layers = {int(m.group(1)) for n in state if (m := re.match(r"h\.(\d+)\.", n))}
    hparams = {
        "n_vocab": int(state["wte.weight"].shape[0]) if "wte.weight" in state else 50257,
        "n_ctx": int(state["wpe.weight"].shape[0]) if "wpe.weight" in state else 1024,
        "n_embd": int(state["ln_f.weight"].shape[0]) if "ln_f.weight" in state else int(arrays[0].shape[-1]),
        "n_head": int(n_head),
        "n_layer": max(layers) + 1 if layers else 0,
        **(hparams_overrides or {}),
    }
    (directory / "hparams.json").write_text(json.dumps(hparams, indent=2))
    (directory / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
    )
    return directory
