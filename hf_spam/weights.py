"""GPT-2's pretrained weights in the chapter's ``GPTModel``.

transformers reads Hugging Face checkpoints (Hub download, cache, offline mode, shards, safetensors or
``pytorch_model.bin`` with ``weights_only``); what is ours is the name mapping (``hf_spam.gpt2_names``),
which OpenAI's TensorFlow checkpoint (``hf_spam.openai_tf``) goes through too. Every tensor is accounted
for: a missing, unexpected or misshaped one is an error naming it, never a silently random weight.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from .errors import HfSpamError, UnavailableError, one_line
from .files import is_hub_id
from .gpt2_names import WEIGHTS_HINT, checked_sizes, hf_to_chapter
from .modeling_gpt import GPTModel, GPTSpamConfig, resolve_model_size
from .openai_tf import load_openai_gpt2

# The Hub checkpoint of each GPT-2 size, and the names users (and the chapter) give the sizes.
HUB_IDS = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
# Attention buffers that older transformers saved with GPT-2's weights; they are not parameters.
OLD_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")


def hub_id(name: str) -> str:
    """The Hub repository for a size name or alias (``124M``, ``gpt2``, ``gpt2-xl`` ...); other names as given."""
    try:
        return HUB_IDS.get(resolve_model_size(name), name)
    except ValueError:
        return name


def _gpt2_sizes(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Sizes from a Hugging Face GPT-2 ``config.json``; variants the chapter's architecture lacks are refused."""
    where = f"{source}/config.json"
    if config.get("model_type", "gpt2") != "gpt2":
        raise HfSpamError(f"{where}: model_type {config.get('model_type')!r} is not GPT-2 (expected 'gpt2')")
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise HfSpamError(f"{where}: activation_function {config['activation_function']!r} is not GPT-2's tanh "
                          "GELU ('gelu_new')")
    emb = config.get("n_embd")
    if config.get("n_inner") not in (None, 4 * emb if isinstance(emb, int) else None):
        raise HfSpamError(f"{where}: n_inner {config['n_inner']!r} differs from 4 * n_embd")
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("scale_attn_weights") is False:
        raise HfSpamError(f"{where}: attention scaling differs from GPT-2's (scale_attn_* fields)")
    if config.get("add_cross_attention"):
        raise HfSpamError(f"{where}: add_cross_attention is set; only decoder-only GPT-2 is supported")
    return checked_sizes(config.get("vocab_size"), config.get("n_positions", config.get("n_ctx")), emb,
                         config.get("n_head"), config.get("n_layer"), config.get("layer_norm_epsilon", 1e-5), where)


def load_hf_gpt2(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 revision: str | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config sizes, chapter state dict) of a Hugging Face GPT-2: a local folder or a Hub id."""
    source = str(source)
    local = Path(source).is_dir()
    common = {"cache_dir": cache_dir, "revision": revision}
    try:
        config, _ = GPT2Config.get_config_dict(source, **common)
    except Exception as err:  # transformers wraps Hub, network and offline failures in OSError and others
        where = "" if source in HUB_IDS.values() or local else "not a local folder, and "
        raise UnavailableError(f"{source}: {where}cannot get GPT-2 weights from the Hugging Face Hub "
                               f"({one_line(err)[:200]}); {WEIGHTS_HINT}") from None
    sizes = _gpt2_sizes(config, source)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its load report would list what is checked, and said, below
    hf_logging.disable_progress_bar()
    try:
        # tie_word_embeddings=False: an lm_head in the file loads as itself, so an untied one shows below.
        model, info = GPT2LMHeadModel.from_pretrained(
            source, **common, dtype=torch.float32, tie_word_embeddings=False, ignore_mismatched_sizes=True,
            output_loading_info=True)
    except OSError as err:  # no weights file (locally or in the cache), or the download failed
        raise (HfSpamError if local else UnavailableError)(
            f"{source}: cannot get GPT-2 weights ({one_line(err)[:200]}); {WEIGHTS_HINT}") from None
    except pickle.UnpicklingError:
        raise HfSpamError(f"{source}: refused to load pytorch_model.bin: the file holds more than tensors "
                          "(read with torch.load(weights_only=True))") from None
    except Exception as err:  # safetensors' own errors for a truncated or corrupt file
        raise HfSpamError(f"{source}: unreadable weights file ({one_line(err)}); it may be truncated or corrupt: "
                          "delete it and download again") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    described = (f"width {sizes['emb_dim']}, {sizes['n_layers']} layers, context {sizes['context_length']} in "
                 "config.json")
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "shape")):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info[key]
                       if k != "lm_head.weight" and not OLD_BUFFERS.search(str(k)))
        if names and key == "mismatched_keys":
            name, found, expected = next(k for k in info[key] if k[0] == names[0])
            raise HfSpamError(f"{source}: tensor {name!r} has shape {list(found)}, expected {list(expected)} "
                              f"({described})")
        if names:
            raise HfSpamError(f"{source}: {what} tensor {names[0]!r} ({len(names)} in all; {described})")
    state = model.state_dict()
    del model
    if "lm_head.weight" not in info["missing_keys"] and not torch.equal(state["lm_head.weight"],
                                                                        state["transformer.wte.weight"]):
        raise HfSpamError(f"{source}: tensor 'lm_head.weight' differs from 'wte.weight'; GPT-2's output head is "
                          "tied to the token embedding and an untied head is not supported")
    tensors = {k.removeprefix("transformer."): state.pop(k) for k in list(state) if k != "lm_head.weight"}
    return sizes, hf_to_chapter(tensors, sizes["n_layers"])


def load_gpt2_state_dict(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                         revision: str | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config sizes, chapter state dict) from a Hub id or alias (``openai-community/gpt2``, ``124M`` ...),
    a local Hugging Face folder, or a local folder of OpenAI's TensorFlow files."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return load_hf_gpt2(path, cache_dir=cache_dir, revision=revision)
        if (path / "hparams.json").is_file():
            return load_openai_gpt2(path)
        raise HfSpamError(f"{path}: not a GPT-2 checkpoint folder: expected config.json + model.safetensors (or "
                          "pytorch_model.bin) from Hugging Face, or OpenAI's hparams.json + model.ckpt.index + "
                          "model.ckpt.data-00000-of-00001")
    if path.exists():
        raise HfSpamError(f"{path}: expected a checkpoint folder or a Hub id, got a file")
    if not is_hub_id(hub_id(str(source))):
        raise HfSpamError(f"{source}: no such folder (expected a GPT-2 checkpoint folder or a Hub id)")
    return load_hf_gpt2(hub_id(str(source)), cache_dir=cache_dir, revision=revision)


def gpt_from_state_dict(sizes: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> GPTModel:
    """The chapter's ``GPTModel`` language model (head tied to ``tok_emb``, eval mode) holding ``state_dict``."""
    with torch.device("meta"):  # no random init of weights that are replaced right away
        model = GPTModel(GPTSpamConfig(**sizes))
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.out_head.weight = model.tok_emb.weight
    return model.eval()


def load_gpt2(source: str | os.PathLike, **kwargs: Any) -> GPTModel:
    """Pretrained GPT-2 as the chapter's ``GPTModel``: ``model(ids)`` gives ``[batch, tokens, vocab]`` logits."""
    return gpt_from_state_dict(*load_gpt2_state_dict(source, **kwargs))
