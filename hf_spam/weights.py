"""GPT-2's pretrained weights in the chapter's ``GPTModel``, and the models the recipe starts from.

transformers reads Hugging Face checkpoints (Hub download, cache, offline mode, shards, safetensors or
``pytorch_model.bin`` with ``weights_only``); what is ours is the name mapping, nanoGPT-style: Conv1D
weights transposed, the fused ``c_attn`` split into query/key/value, ``ln_*`` to ``scale``/``shift``, the
output head tied to the token embedding. OpenAI's TensorFlow checkpoint maps through the same function
(``hf_spam.openai_tf``). Every tensor is accounted for: a missing, unexpected or misshaped one is an
error naming it, never a silently random weight.
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

from .arguments import ModelArguments, is_trained_classifier
from .errors import HfSpamError, UnavailableError, one_line
from .files import is_hub_id
from .modeling_gpt import GPTModel, GPTSpamConfig, GPTSpamForSequenceClassification, resolve_model_size

# The Hub checkpoint of each GPT-2 size, and the names users (and the chapter) give the sizes.
HUB_IDS = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
# Attention buffers that older transformers saved with GPT-2's weights; they are not parameters.
OLD_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
WEIGHTS_HINT = ("use a local copy instead: a folder with config.json + model.safetensors, or OpenAI's "
                "hparams.json + model.ckpt.*")


def hub_id(name: str) -> str:
    """The Hub repository for a size name or alias (``124M``, ``gpt2``, ``gpt2-xl`` ...); other names as given."""
    try:
        return HUB_IDS.get(resolve_model_size(name), name)
    except ValueError:
        return name


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


_LINEAR_NAMES = (("att.out_proj", "attn.c_proj"), ("ff.layers.0", "mlp.c_fc"), ("ff.layers.2", "mlp.c_proj"))


def hf_to_chapter(tensors: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """GPT-2 tensors (HF names without ``transformer.``) in the chapter's names, in ``GPTModel`` order.

    Empties ``tensors`` as it goes, so each source tensor is freed once converted (peak memory near one
    copy of the model). ``.contiguous()`` so that safetensors can save the results.
    """
    def get(name: str) -> torch.Tensor:
        return tensors.pop(name).to(torch.float32)

    wte = get("wte.weight").contiguous()
    sd = {"tok_emb.weight": wte, "pos_emb.weight": get("wpe.weight").contiguous()}
    for i in range(n_layers):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        q, k, v = get(h + "attn.c_attn.weight").chunk(3, dim=1)  # Conv1D: y = x @ W, W is [in, 3 * out]
        qb, kb, vb = get(h + "attn.c_attn.bias").chunk(3)
        for proj, w, bias in (("W_query", q, qb), ("W_key", k, kb), ("W_value", v, vb)):
            sd[f"{b}att.{proj}.weight"], sd[f"{b}att.{proj}.bias"] = w.T.contiguous(), bias.contiguous()
        for ours, theirs in _LINEAR_NAMES:
            sd[f"{b}{ours}.weight"] = get(f"{h}{theirs}.weight").T.contiguous()
            sd[f"{b}{ours}.bias"] = get(f"{h}{theirs}.bias").contiguous()
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            sd[f"{b}{ours}.scale"], sd[f"{b}{ours}.shift"] = get(f"{h}{theirs}.weight"), get(f"{h}{theirs}.bias")
    sd["final_norm.scale"], sd["final_norm.shift"] = get("ln_f.weight"), get("ln_f.bias")
    sd["out_head.weight"] = wte  # GPT-2 ties its output head to the token embedding
    return sd


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
            from .openai_tf import load_openai_gpt2  # here, not at the top: that module builds on this one

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


def build_model(model_args: ModelArguments, padded_length: int | None = None, seed: int = 123,
                labels: list[str] | None = None) -> GPTSpamForSequenceClassification:
    """The classifier the recipe trains: GPT-2's weights (or random ones) and a new ``out_head`` with one
    output per label (default ham, spam) created right after ``torch.manual_seed(seed)`` (the chapter's 123),
    or a classifier folder this recipe saved (``--model_name_or_path TRAINED_DIR``), as it was trained.

    ``config.padded_length`` is the fixed length of the training inputs, if any: prediction with ``last``
    pooling pads to it. (Not ``max_length``: transformers treats that name as a generation setting.)
    """
    if is_trained_classifier(model_args.model_name_or_path):  # a folder this recipe wrote: as it was trained
        return GPTSpamForSequenceClassification.from_pretrained(model_args.model_name_or_path)
    extra = {"pooling": model_args.pooling, "drop_rate": model_args.drop_rate,
             "causal": not model_args.disable_causal_mask, "padded_length": padded_length}
    if labels is not None:
        extra.update(id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    if model_args.weights == "random":
        torch.manual_seed(seed)
        model = GPTSpamForSequenceClassification(GPTSpamConfig.from_preset(model_args.model_size, **extra))
    else:
        try:
            sizes, state_dict = load_gpt2_state_dict(model_args.model_name_or_path or HUB_IDS[model_args.model_size])
        except UnavailableError as err:
            raise UnavailableError(f"{err} (--model_name_or_path LOCAL_DIR), or train from random weights "
                                   "(--weights random)") from None
        with torch.device("meta"):
            model = GPTSpamForSequenceClassification(GPTSpamConfig(**sizes, **extra))
        del state_dict["out_head.weight"]  # tied to tok_emb in GPT-2; the classifier gets its own head
        missing, unexpected = model.gpt.load_state_dict(state_dict, strict=False, assign=True)
        if unexpected or [k for k in missing if not k.startswith("out_head.")]:  # guards model changes
            raise HfSpamError(f"weights do not fit the classifier (missing {missing}, unexpected {unexpected})")
    torch.manual_seed(seed)
    model.gpt.out_head = torch.nn.Linear(model.config.emb_dim, model.config.num_labels)
    return model


# GPT-2's width -> heads (the head count is not visible in the weights).
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1600: 25}


def load_chapter_classifier(path: str | os.PathLike,
                            config: GPTSpamConfig | None = None) -> GPTSpamForSequenceClassification:
    """The chapter's fine-tuned ``review_classifier.pth`` as a ``GPTSpamForSequenceClassification``.

    Read with ``torch.load(weights_only=True)`` and loaded strictly in the chapter's names. The chapter
    registers each block's causal mask as a persistent buffer (``trf_blocks.i.att.mask``): those are
    checked to be the causal mask, then dropped (this model applies causality itself). Without ``config``
    the sizes are inferred from the tensors (the head count from GPT-2's standard widths).
    """
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HfSpamError(f"{path}: no such file (expected the chapter's review_classifier.pth)") from None
    except Exception as err:  # pickle, zip or EOF errors of a foreign, truncated or malicious file
        raise HfSpamError(f"{path}: not a state dict readable with torch.load(weights_only=True) "
                          f"({one_line(err)[:200]})") from None
    if not isinstance(sd, dict):
        raise HfSpamError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    sd = {k.removeprefix("gpt."): v for k, v in sd.items()}  # a whole classifier object's state, or its GPT's
    for key in [k for k in sd if k.endswith(".att.mask")]:
        mask = sd.pop(key)
        n = mask.shape[-1]
        if mask.dim() != 2 or not torch.equal(mask.bool(), torch.ones(n, n, dtype=torch.bool).triu(1)):
            raise HfSpamError(f"{path}: buffer {key!r} is not the chapter's causal mask")
    if config is None:
        try:
            (vocab, emb), ctx, labels = sd["tok_emb.weight"].shape, sd["pos_emb.weight"].shape[0], \
                sd["out_head.weight"].shape[0]
        except (KeyError, ValueError) as err:
            raise HfSpamError(f"{path}: not a chapter GPT state dict (no usable {err})") from None
        if emb not in _HEADS_BY_WIDTH:
            raise HfSpamError(f"{path}: width {emb} is not a GPT-2 size; pass a GPTSpamConfig with its n_heads")
        layers = len({k.split(".")[1] for k in sd if k.startswith("trf_blocks.")})
        config = GPTSpamConfig(vocab_size=vocab, context_length=ctx, emb_dim=emb, n_heads=_HEADS_BY_WIDTH[emb],
                               n_layers=layers, qkv_bias="trf_blocks.0.att.W_query.bias" in sd, num_labels=labels)
    model = GPTSpamForSequenceClassification(config)
    expected = model.gpt.state_dict()
    for key in [*expected, *sd]:
        if key not in sd or key not in expected:
            raise HfSpamError(f"{path}: {'missing' if key not in sd else 'unexpected'} tensor {key!r} "
                              f"(emb_dim={config.emb_dim}, n_layers={config.n_layers}, num_labels={config.num_labels})")
        if sd[key].shape != expected[key].shape:
            raise HfSpamError(f"{path}: tensor {key!r} has shape {list(sd[key].shape)}, expected "
                              f"{list(expected[key].shape)} (num_labels={config.num_labels})")
    model.gpt.load_state_dict(sd, strict=True)
    return model.eval()
