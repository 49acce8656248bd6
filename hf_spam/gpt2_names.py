"""GPT-2's tensors under three names: the chapter's ``GPTModel``'s, Hugging Face's and OpenAI's TensorFlow's.

One table maps the chapter's names to Hugging Face's; the weight conversion, the expected shapes and the
cross-check script's table derive from it, and OpenAI's names from Hugging Face's.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import HfSpamError

WEIGHTS_HINT = ("use a local copy instead: a folder with config.json + model.safetensors, or OpenAI's "
                "hparams.json + model.ckpt.*")

# Chapter name -> Hugging Face name (without ``transformer.``); GPT-2 ties its output head to the token embedding.
EMBEDDINGS = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight"}
FINAL = {"final_norm.scale": "ln_f.weight", "final_norm.shift": "ln_f.bias", "out_head.weight": "wte.weight"}
# Each block's modules; the chapter's query, key and value are the thirds of Hugging Face's fused c_attn.
BLOCK_MODULES = {"att.W_query": "attn.c_attn", "att.W_key": "attn.c_attn", "att.W_value": "attn.c_attn",
                 "att.out_proj": "attn.c_proj", "ff.layers.0": "mlp.c_fc", "ff.layers.2": "mlp.c_proj",
                 "norm1": "ln_1", "norm2": "ln_2"}
LEAVES = {"weight": "weight", "bias": "bias", "scale": "weight", "shift": "bias"}


def chapter_to_hf(n_layers: int) -> dict[str, str]:
    """Every parameter of the chapter's ``GPTModel`` (in its order) -> the Hugging Face tensor it comes from."""
    blocks = {f"trf_blocks.{i}.{ours}.{leaf}": f"h.{i}.{theirs}.{LEAVES[leaf]}" for i in range(n_layers)
              for ours, theirs in BLOCK_MODULES.items()
              for leaf in (("scale", "shift") if theirs.startswith("ln_") else ("weight", "bias"))}
    return {**EMBEDDINGS, **blocks, **FINAL}


def hf_to_chapter(tensors: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """GPT-2 tensors (HF names without ``transformer.``) in the chapter's names and ``GPTModel``'s order; empties
    ``tensors`` as it goes (peak memory near one copy of the model), ``.contiguous()`` for safetensors."""
    names = chapter_to_hf(n_layers)
    targets: dict[str, list[str]] = {}  # HF tensor -> the chapter tensors made from it
    for key, source in names.items():
        targets.setdefault(source, []).append(key)
    sd: dict[str, torch.Tensor] = {}
    for source, keys in targets.items():
        tensor = tensors.pop(source).to(torch.float32)  # c_attn: query, key, value; wte: also the tied head
        parts = tensor.chunk(3, dim=-1) if ".c_attn." in source else [tensor.contiguous()] * len(keys)
        for key, part in zip(keys, parts):
            sd[key] = (part.T if part.dim() == 2 and source.startswith("h.") else part).contiguous()  # Conv1D: x @ W
    return {key: sd[key] for key in names}


def gpt2_shapes(sizes: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every GPT-2 tensor (HF names without ``transformer.``) and its shape; Conv1D weights are ``[n_in, n_out]``."""
    e = sizes["emb_dim"]
    dims = {"wte": (sizes["vocab_size"], e), "wpe": (sizes["context_length"], e), "attn.c_attn": (e, 3 * e),
            "attn.c_proj": (e, e), "mlp.c_fc": (e, 4 * e), "mlp.c_proj": (4 * e, e)}  # LayerNorms: [e]
    shapes = {}
    for name in chapter_to_hf(sizes["n_layers"]).values():
        module, leaf = (name.split(".", 2)[2] if name.startswith("h.") else name).rsplit(".", 1)
        n_in, n_out = dims.get(module, (e, e))
        shapes[name] = (n_in, n_out) if leaf == "weight" and not module.startswith("ln_") else (n_out,)
    return shapes


def openai_name(hf_name: str) -> str:
    """OpenAI's variable name of a GPT-2 tensor (``h.0.ln_1.weight`` -> ``model/h0/ln_1/g``)."""
    *module, leaf = hf_name.split(".")
    if module[0] in ("wte", "wpe"):
        return f"model/{module[0]}"
    short = ("g" if module[-1].startswith("ln_") else "w") if leaf == "weight" else "b"
    if module[0] == "h":
        module = [f"h{module[1]}", *module[2:]]
    return "model/" + "/".join([*module, short])


def checked_sizes(vocab: Any, ctx: Any, emb: Any, heads: Any, layers: Any, eps: Any, source: str) -> dict[str, Any]:
    """``GPTSpamConfig`` size kwargs, after checking each is a positive number and the heads divide the width."""
    values = {"vocab_size": vocab, "context_length": ctx, "emb_dim": emb, "n_heads": heads, "n_layers": layers}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise HfSpamError(f"{source}: {name} must be a positive integer, got {value!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise HfSpamError(f"{source}: layer_norm_epsilon must be a positive number, got {eps!r}")
    if emb % heads:
        raise HfSpamError(f"{source}: the width {emb} is not divisible by the {heads} heads")
    return {**values, "layer_norm_eps": float(eps), "qkv_bias": True}
