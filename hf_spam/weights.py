"""GPT-2's pretrained weights in the chapter's ``GPTModel``: Hugging Face checkpoints and OpenAI's TF files.

Two sources hold the same numbers: the Hugging Face Hub (``openai-community/gpt2`` ..., safetensors,
Conv1D weights stored ``[n_in, n_out]``) and OpenAI's original TensorFlow checkpoint (which the chapter
downloads; Conv1D weights stored ``[1, n_in, n_out]``). Both are read into one intermediate form (HF's
tensor names, no ``transformer.`` prefix), checked tensor by tensor against the sizes in
``config.json``/``hparams.json``, and mapped to the chapter's parameter names. Every tensor is accounted
for: a missing, unexpected or wrongly shaped one is a ``WeightsError`` that names the file and tensor.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .modeling_gpt import GPTModel, GPTSpamConfig, GPTSpamForSequenceClassification


class WeightsError(ValueError):
    """A checkpoint that cannot be used (missing/unexpected/misshaped tensor, corrupt file); names file and tensor."""


class WeightsUnavailableError(RuntimeError):
    """The weights cannot be obtained here (offline, no local copy, missing TensorFlow)."""


# What a user who cannot download can pass instead (the CLI options of train/sanity scripts).
WEIGHTS_HINT = (
    "pass --model_name_or_path LOCAL_DIR (a folder with config.json + model.safetensors, or OpenAI's "
    "hparams.json + model.ckpt.*) or --weights random"
)
TF_INSTALL_HINT = 'reading OpenAI\'s TensorFlow checkpoint needs TensorFlow: pip install "hf-spam[tf]"'

# OpenAI's size names and the Hugging Face repositories that hold the same weights.
OPENAI_TO_HUB = {
    "124M": "openai-community/gpt2",
    "355M": "openai-community/gpt2-medium",
    "774M": "openai-community/gpt2-large",
    "1558M": "openai-community/gpt2-xl",
}
HUB_ALIASES: dict[str, str] = {
    **{hub: hub for hub in OPENAI_TO_HUB.values()},
    **OPENAI_TO_HUB,
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HUB_FILES = ("config.json", "model.safetensors")
HUB_FALLBACK_FILE = "pytorch_model.bin"

OPENAI_BASE_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/models/{size}/",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/{size}/",
)
OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
OPENAI_EXPECTED = "OpenAI's checkpoint: hparams.json, checkpoint, model.ckpt.index, model.ckpt.data-00000-of-00001"
CACHE_ENV = "HF_SPAM_CACHE"
DEFAULT_LAYER_NORM_EPS = 1e-5  # GPT-2's value, also hard-coded in OpenAI's model code

# Attention buffers that old transformers versions saved with the weights; they are not parameters.
_HF_BUFFER_RE = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[\w.-]+")


# --------------------------------------------------------------------------------------------------
# Sizes and expected tensors
# --------------------------------------------------------------------------------------------------


def _int_field(data: Mapping[str, Any], key: str, path: Path, *alternatives: str) -> int:
    for name in (key, *alternatives):
        if name in data and data[name] is not None:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise WeightsError(f"{path}: field {name!r} must be a positive integer, got {value!r}")
            return value
    raise WeightsError(f"{path}: missing field {key!r} (a GPT-2 size)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: not a readable JSON file ({_one_line(err)})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _sizes(vocab: int, ctx: int, emb: int, heads: int, layers: int, eps: float, path: Path) -> dict[str, Any]:
    if emb % heads != 0:
        raise WeightsError(f"{path}: the embedding width {emb} is not divisible by the {heads} heads")
    return {
        "vocab_size": vocab,
        "context_length": ctx,
        "emb_dim": emb,
        "n_heads": heads,
        "n_layers": layers,
        "layer_norm_eps": eps,
        "qkv_bias": True,
    }


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """``GPTSpamConfig`` size kwargs from a Hugging Face GPT-2 ``config.json``; rejects non-GPT-2 variants."""
    path = Path(path)
    data = _read_json(path)
    model_type = data.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise WeightsError(f"{path}: model_type {model_type!r} is not GPT-2 (expected 'gpt2')")
    emb = _int_field(data, "n_embd", path)
    # Features of the HF class that the chapter's architecture does not have: refuse, never approximate.
    act = data.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise WeightsError(f"{path}: activation_function {act!r} is not GPT-2's tanh GELU ('gelu_new')")
    if data.get("n_inner") not in (None, 4 * emb):
        raise WeightsError(f"{path}: n_inner {data['n_inner']!r} differs from 4 * n_embd = {4 * emb}")
    if data.get("scale_attn_by_inverse_layer_idx") or data.get("scale_attn_weights") is False:
        raise WeightsError(f"{path}: attention scaling differs from GPT-2's (scale_attn_* fields)")
    if data.get("add_cross_attention"):
        raise WeightsError(f"{path}: add_cross_attention is set; only decoder-only GPT-2 is supported")
    eps = data.get("layer_norm_epsilon", DEFAULT_LAYER_NORM_EPS)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise WeightsError(f"{path}: field 'layer_norm_epsilon' must be a positive number, got {eps!r}")
    return _sizes(
        _int_field(data, "vocab_size", path),
        _int_field(data, "n_positions", path, "n_ctx"),
        emb,
        _int_field(data, "n_head", path),
        _int_field(data, "n_layer", path),
        float(eps),
        path,
    )


def read_openai_hparams(path: str | os.PathLike) -> dict[str, Any]:
    """``GPTSpamConfig`` size kwargs from OpenAI's ``hparams.json`` (``n_vocab, n_ctx, n_embd, n_head, n_layer``)."""
    path = Path(path)
    data = _read_json(path)
    return _sizes(
        _int_field(data, "n_vocab", path),
        _int_field(data, "n_ctx", path),
        _int_field(data, "n_embd", path),
        _int_field(data, "n_head", path),
        _int_field(data, "n_layer", path),
        DEFAULT_LAYER_NORM_EPS,
        path,
    )


def _describe_sizes(sizes: Mapping[str, Any], source: str) -> str:
    return (
        f"vocab {sizes['vocab_size']}, context {sizes['context_length']}, width {sizes['emb_dim']}, "
        f"{sizes['n_heads']} heads, {sizes['n_layers']} layers in {source}"
    )


def expected_hf_shapes(sizes: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every GPT-2 tensor (HF names without ``transformer.``) and its shape; Conv1D weights are ``[n_in, n_out]``."""
    e, v, c = sizes["emb_dim"], sizes["vocab_size"], sizes["context_length"]
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (v, e), "wpe.weight": (c, e)}
    for i in range(sizes["n_layers"]):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (e,), p + "ln_1.bias": (e,),
            p + "attn.c_attn.weight": (e, 3 * e), p + "attn.c_attn.bias": (3 * e,),
            p + "attn.c_proj.weight": (e, e), p + "attn.c_proj.bias": (e,),
            p + "ln_2.weight": (e,), p + "ln_2.bias": (e,),
            p + "mlp.c_fc.weight": (e, 4 * e), p + "mlp.c_fc.bias": (4 * e,),
            p + "mlp.c_proj.weight": (4 * e, e), p + "mlp.c_proj.bias": (e,),
        })
    shapes.update({"ln_f.weight": (e,), "ln_f.bias": (e,)})
    return shapes


def openai_name(hf_name: str) -> str:
    """OpenAI's variable name for an HF tensor name (``h.0.ln_1.weight`` -> ``model/h0/ln_1/g``)."""
    parts = hf_name.split(".")
    if parts[0] in ("wte", "wpe"):
        return f"model/{parts[0]}"
    leaf = parts[-1]
    module = parts[:-1]
    is_norm = module[-1].startswith("ln_")
    short = ("g" if is_norm else "w") if leaf == "weight" else "b"
    if module[0] == "h":
        module = [f"h{module[1]}", *module[2:]]
    return "model/" + "/".join([*module, short])


def expected_openai_shapes(sizes: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every variable of OpenAI's checkpoint and its shape (Conv1D weights keep a leading 1)."""
    out = {}
    for name, shape in expected_hf_shapes(sizes).items():
        conv = name.startswith("h.") and len(shape) == 2
        out[openai_name(name)] = (1, *shape) if conv else shape
    return out


def _check_tensors(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    file: Path,
    sizes_desc: str,
    display: Callable[[str], str] = str,
) -> None:
    """Raise ``WeightsError`` for the first missing, unexpected or wrongly shaped tensor."""
    for name, shape in expected.items():
        if name not in found:
            raise WeightsError(f"{file}: missing tensor {display(name)!r} (expected shape {list(shape)}; {sizes_desc})")
    for name in found:
        if name not in expected:
            raise WeightsError(f"{file}: unexpected tensor {display(name)!r} (not part of a GPT-2 with {sizes_desc})")
    for name, shape in expected.items():
        if tuple(found[name]) != tuple(shape):
            raise WeightsError(
                f"{file}: tensor {display(name)!r} has shape {list(found[name])}, expected {list(shape)} ({sizes_desc})"
            )


def _hf_to_chapter(tensors: dict[str, torch.Tensor], sizes: Mapping[str, Any], file: Path,
                   display: Callable[[str], str] = str) -> dict[str, torch.Tensor]:
    """Map validated HF-named tensors to the chapter's names, in ``GPTModel.state_dict()`` order.

    Conv1D weights (``y = x @ W``) become ``nn.Linear`` weights (``y = x @ W.T``) by transposing; the
    fused query/key/value projection is split in three. ``.contiguous()`` so safetensors can save them.
    Takes ownership of ``tensors`` (a dict it empties), so each source tensor is freed once converted:
    peak memory stays near one copy of the model (6 GB for gpt2-xl), not two.
    """
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise WeightsError(f"{file}: tensor {display(name)!r} has dtype {t.dtype}, expected floating point")

    def get(name: str) -> torch.Tensor:
        return tensors.pop(name).to(torch.float32)

    e = sizes["emb_dim"]
    wte = get("wte.weight").contiguous()
    sd: dict[str, torch.Tensor] = {"tok_emb.weight": wte, "pos_emb.weight": get("wpe.weight").contiguous()}
    for i in range(sizes["n_layers"]):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        qkv_w = torch.split(get(h + "attn.c_attn.weight"), e, dim=1)
        qkv_b = torch.split(get(h + "attn.c_attn.bias"), e, dim=0)
        for j, proj in enumerate(("W_query", "W_key", "W_value")):
            sd[f"{b}att.{proj}.weight"] = qkv_w[j].T.contiguous()
            sd[f"{b}att.{proj}.bias"] = qkv_b[j].contiguous()
        sd[b + "att.out_proj.weight"] = get(h + "attn.c_proj.weight").T.contiguous()
        sd[b + "att.out_proj.bias"] = get(h + "attn.c_proj.bias").contiguous()
        sd[b + "ff.layers.0.weight"] = get(h + "mlp.c_fc.weight").T.contiguous()
        sd[b + "ff.layers.0.bias"] = get(h + "mlp.c_fc.bias").contiguous()
        sd[b + "ff.layers.2.weight"] = get(h + "mlp.c_proj.weight").T.contiguous()
        sd[b + "ff.layers.2.bias"] = get(h + "mlp.c_proj.bias").contiguous()
        sd[b + "norm1.scale"] = get(h + "ln_1.weight").contiguous()
        sd[b + "norm1.shift"] = get(h + "ln_1.bias").contiguous()
        sd[b + "norm2.scale"] = get(h + "ln_2.weight").contiguous()
        sd[b + "norm2.shift"] = get(h + "ln_2.bias").contiguous()
    sd["final_norm.scale"] = get("ln_f.weight").contiguous()
    sd["final_norm.shift"] = get("ln_f.bias").contiguous()
    sd["out_head.weight"] = wte  # GPT-2 ties its output head to the token embedding
    return sd


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


# --------------------------------------------------------------------------------------------------
# Hugging Face checkpoints
# --------------------------------------------------------------------------------------------------


def _read_safetensors(path: Path, only_shapes: bool = False) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if only_shapes:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError and OSError variants
        raise WeightsError(
            f"{path}: unreadable safetensors file ({_one_line(err)}); it may be truncated or corrupt: "
            "delete it and download again"
        ) from None


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        # weights_only: a .bin is a pickle; never run code from a downloaded file.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path}: refused to load: the file holds more than tensors (torch.load weights_only=True: "
            f"{_one_line(err)})"
        ) from None
    except Exception as err:  # zip/pickle/EOF errors of a truncated or foreign file
        raise WeightsError(
            f"{path}: unreadable PyTorch checkpoint ({_one_line(err)}); it may be truncated or corrupt"
        ) from None
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: entry {key!r} is not a named tensor")
    return dict(obj)


def _hf_weight_files(folder: Path) -> tuple[Path, list[Path], bool]:
    """(file to name in messages, files to read, is_safetensors) for an HF folder."""
    single = folder / "model.safetensors"
    if single.is_file():
        return single, [single], True
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: missing or empty 'weight_map'")
        shards = sorted({folder / str(v) for v in weight_map.values()})
        for shard in shards:
            if not shard.is_file():
                raise WeightsError(f"{index}: shard {shard.name} is missing from {folder}")
        return index, shards, True
    binary = folder / HUB_FALLBACK_FILE
    if binary.is_file():
        return binary, [binary], False
    raise WeightsError(f"{folder}: no model.safetensors or pytorch_model.bin beside config.json")


def _load_hf_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config_path = folder / "config.json"
    sizes = read_hf_config(config_path)
    file, files, is_st = _hf_weight_files(folder)
    sizes_desc = _describe_sizes(sizes, "config.json")

    raw_shapes: dict[str, tuple[int, ...]] = {}
    raw: dict[str, torch.Tensor] = {}
    if is_st:
        # Check names and shapes from the headers first: a wrong file fails before gigabytes are read.
        for f in files:
            raw_shapes.update(_read_safetensors(f, only_shapes=True))
    else:
        raw = _read_torch_bin(files[0])
        raw_shapes = {k: tuple(v.shape) for k, v in raw.items()}

    # HF keys may carry the ``transformer.`` prefix (GPT2LMHeadModel) or not (GPT2Model, the Hub's files).
    canonical: dict[str, str] = {}  # canonical name -> key in the file
    lm_head_key = None
    for key in raw_shapes:
        name = key.removeprefix("transformer.")
        if _HF_BUFFER_RE.fullmatch(name):
            continue
        if name == "lm_head.weight":
            lm_head_key = key
            continue
        if name in canonical:
            raise WeightsError(f"{file}: tensor {name!r} appears twice ({canonical[name]!r} and {key!r})")
        canonical[name] = key
    prefix = "transformer." if any(k.startswith("transformer.") for k in raw_shapes) else ""

    def display(name: str) -> str:
        return canonical.get(name, prefix + name)

    expected = expected_hf_shapes(sizes)
    _check_tensors({n: raw_shapes[k] for n, k in canonical.items()}, expected, file, sizes_desc, display)
    if lm_head_key is not None and tuple(raw_shapes[lm_head_key]) != expected["wte.weight"]:
        raise WeightsError(
            f"{file}: tensor {lm_head_key!r} has shape {list(raw_shapes[lm_head_key])}, "
            f"expected {list(expected['wte.weight'])} ({sizes_desc})"
        )

    if is_st:
        for f in files:
            raw.update(_read_safetensors(f))
    if lm_head_key is not None and not torch.equal(raw[lm_head_key], raw[canonical["wte.weight"]]):
        raise WeightsError(
            f"{file}: tensor {lm_head_key!r} differs from {display('wte.weight')!r}; GPT-2's output head is tied "
            "to the token embedding and an untied head is not supported"
        )
    tensors = {n: raw.pop(k) for n, k in canonical.items()}
    del raw  # buffers and lm_head: not needed, and the conversion below frees the rest as it goes
    return sizes, _hf_to_chapter(tensors, sizes, file, display)


def _env_offline() -> bool:
    # Read at call time as well: huggingface_hub reads HF_HUB_OFFLINE only when it is imported.
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_failure(repo_id: str, err: BaseException) -> WeightsUnavailableError:
    """A one-line, secret-free reason (Hub messages can be long; only the error type is trusted)."""
    from huggingface_hub import errors

    if isinstance(err, errors.LocalEntryNotFoundError):
        reason = "offline (HF_HUB_OFFLINE) or unreachable, and not in the Hugging Face cache"
    elif isinstance(err, errors.GatedRepoError):
        reason = "the repository is gated: accept its terms and log in"
    elif isinstance(err, errors.RepositoryNotFoundError):
        reason = "no such repository (or it is private)"
    elif isinstance(err, (errors.EntryNotFoundError, errors.RevisionNotFoundError)):
        reason = "the repository has no GPT-2 weights at this revision"
    elif isinstance(err, errors.HFValidationError):
        reason = "not a local folder and not a valid Hub repository id"
    else:
        reason = f"download failed ({type(err).__name__})"
    where = "" if repo_id in HUB_ALIASES.values() else "not a local folder, and "
    return WeightsUnavailableError(
        f"{repo_id}: {where}cannot get GPT-2 weights from the Hugging Face Hub: {reason}; {WEIGHTS_HINT}"
    )


def download_hf_gpt2(
    repo_id: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None
) -> Path:
    """Local snapshot folder of a Hub GPT-2 (``config.json`` + ``model.safetensors``, else ``pytorch_model.bin``).

    Uses (and fills) the Hugging Face cache and honours ``HF_HUB_OFFLINE``. Raises ``WeightsUnavailableError``.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    repo_id = HUB_ALIASES.get(repo_id, repo_id)
    offline = _env_offline()
    common = {"cache_dir": cache_dir, "revision": revision, "local_files_only": offline}
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(HUB_FILES), **common))
        if not (folder / "config.json").is_file():
            raise WeightsUnavailableError(f"{repo_id}: the Hub repository has no config.json; {WEIGHTS_HINT}")
        if not (folder / "model.safetensors").is_file():
            folder = Path(hf_hub_download(repo_id, HUB_FALLBACK_FILE, **common)).parent
    except WeightsUnavailableError:
        raise
    except Exception as err:  # network, offline and Hub errors: all mean "not available here"
        raise _hub_failure(repo_id, err) from None
    return folder


def load_hf_checkpoint(
    folder_or_id: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config kwargs, chapter state dict) from a Hugging Face GPT-2 folder or Hub id."""
    path = Path(folder_or_id).expanduser()
    if not path.is_dir():
        if isinstance(folder_or_id, os.PathLike) or not _looks_like_hub_id(str(folder_or_id)):
            raise WeightsError(f"{folder_or_id}: no such folder (expected a GPT-2 checkpoint folder or a Hub id)")
        path = download_hf_gpt2(str(folder_or_id), cache_dir=cache_dir, revision=revision)
    if not (path / "config.json").is_file():
        raise WeightsError(
            f"{path}: no config.json (expected a Hugging Face GPT-2 folder: config.json + model.safetensors)"
        )
    return _load_hf_folder(path)


# --------------------------------------------------------------------------------------------------
# OpenAI's TensorFlow checkpoint
# --------------------------------------------------------------------------------------------------


def _import_tensorflow(folder: Path) -> Any:
    # TF's import chatter is not for our users; oneDNN only changes maths, and reading a checkpoint does none.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError:
        raise WeightsUnavailableError(f"{folder}: {TF_INSTALL_HINT}, or {WEIGHTS_HINT}") from None
    return tf


def _tf_prefix(folder: Path, tf: Any) -> Path:
    """The checkpoint prefix (``.../model.ckpt``): from the ``checkpoint`` file, else the only ``*.index``."""
    latest = None
    if (folder / "checkpoint").is_file():
        try:
            latest = tf.train.latest_checkpoint(str(folder))
        except Exception:  # a damaged 'checkpoint' text file: fall back to the index files
            latest = None
    if latest and Path(latest + ".index").is_file():
        return Path(latest)
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if not indexes:
        raise WeightsError(f"{folder}: no model.ckpt.index ({OPENAI_EXPECTED})")
    raise WeightsError(f"{folder}: several *.index files and no usable 'checkpoint' file naming one of them")


def load_openai_tf_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config kwargs, chapter state dict) from OpenAI's GPT-2 folder (``hparams.json`` + ``model.ckpt.*``).

    Needs TensorFlow (the optional ``tf`` extra); reads with ``tf.train.load_checkpoint`` (what
    ``tf.train.load_variable`` uses), checking every variable name and shape before reading data.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such folder (expected OpenAI's GPT-2 files: hparams.json, model.ckpt.*)")
    hparams = folder / "hparams.json"
    if not hparams.is_file():
        raise WeightsError(f"{folder}: no hparams.json (expected OpenAI's GPT-2 files: hparams.json, model.ckpt.*)")
    sizes = read_openai_hparams(hparams)
    if not any(folder.glob("*.index")):  # before the slow TensorFlow import
        raise WeightsError(f"{folder}: no model.ckpt.index ({OPENAI_EXPECTED})")
    tf = _import_tensorflow(folder)
    prefix = _tf_prefix(folder, tf)
    index_file = Path(str(prefix) + ".index")
    data_files = sorted(folder.glob(prefix.name + ".data-*"))
    if not data_files:
        raise WeightsError(f"{folder}: no {prefix.name}.data-00000-of-00001 beside {index_file.name}")
    data_file = data_files[0] if len(data_files) == 1 else Path(str(prefix) + ".data-*")
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        found = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    except Exception as err:  # tf.errors.* (DataLoss, NotFound ...) for a damaged index
        raise WeightsError(f"{index_file}: unreadable TensorFlow checkpoint index ({_one_line(err)})") from None
    sizes_desc = _describe_sizes(sizes, "hparams.json")
    _check_tensors(found, expected_openai_shapes(sizes), index_file, sizes_desc)

    hf_names = {openai_name(hf): hf for hf in expected_hf_shapes(sizes)}  # the names just checked
    tensors: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    for name in found:
        try:
            array = reader.get_tensor(name)
        except Exception as err:  # truncated data file: IndexError/DataLossError from the reader
            raise WeightsError(
                f"{data_file}: cannot read tensor {name!r} ({_one_line(err)}); the file may be truncated or "
                "corrupt: delete the folder and download again"
            ) from None
        hf_name = hf_names[name]
        t = torch.from_numpy(array if array.flags.writeable else array.copy())
        tensors[hf_name] = t.squeeze(0) if t.dim() == 3 else t  # drop the Conv1D leading 1
        names[hf_name] = name
    return sizes, _hf_to_chapter(tensors, sizes, data_file, lambda n: names.get(n, openai_name(n)))


def download_openai_gpt2(
    size: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_urls: tuple[str, ...] | list[str] = OPENAI_BASE_URLS,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """OpenAI's GPT-2 files for ``size`` (``124M`` ...) in ``<cache>/gpt2-tf/<size>``, downloading what is missing.

    Each file comes from OpenAI, else the book's backup mirror; files already there are reused
    (downloads are atomic, so a present file is complete). Raises ``WeightsUnavailableError``.
    """
    if size not in OPENAI_TO_HUB:
        raise WeightsError(f"model size {size!r}: expected one of {', '.join(OPENAI_TO_HUB)}")
    from .data import default_cache_dir  # one cache folder for data, checkpoints and features
    from .download import DownloadError, download_file

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / "gpt2-tf" / size
    for name in OPENAI_FILES:
        urls = [base.format(size=size) + name for base in base_urls]
        try:
            download_file(urls, folder / name, timeout=timeout, desc=f"{size}/{name}", progress=progress)
        except DownloadError as err:
            raise WeightsUnavailableError(f"{_one_line(err)}; {WEIGHTS_HINT}") from None
    return folder


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def _looks_like_hub_id(text: str) -> bool:
    return text in HUB_ALIASES or (_HUB_ID_RE.fullmatch(text) is not None and not text.startswith("."))


def checkpoint_format(folder: str | os.PathLike) -> str:
    """``"hf"`` or ``"tf"``: which kind of GPT-2 checkpoint a folder holds, told apart by its files."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return "hf"
    if (folder / "hparams.json").is_file():
        return "tf"
    raise WeightsError(
        f"{folder}: not a GPT-2 checkpoint folder: expected config.json + model.safetensors (or pytorch_model.bin) "
        "from Hugging Face, or OpenAI's hparams.json + model.ckpt.index + model.ckpt.data-00000-of-00001"
    )


def load_gpt2_state_dict(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``GPTSpamConfig`` size kwargs, state dict in the chapter's names incl. ``out_head.weight`` = wte).

    ``source``: a Hub id or alias (``openai-community/gpt2``, ``gpt2-medium``, ``124M`` ...), a local
    Hugging Face folder, or a local folder of OpenAI's TensorFlow files.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if checkpoint_format(path) == "tf":
            return load_openai_tf_checkpoint(path)
        return load_hf_checkpoint(path)
    if path.exists():
        raise WeightsError(f"{path}: expected a checkpoint folder or a Hub id, got a file")
    return load_hf_checkpoint(source, cache_dir=cache_dir, revision=revision)


def model_from_state_dict(sizes: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> GPTModel:
    """A ``GPTModel`` language model (head tied to ``tok_emb``, eval mode) holding ``state_dict``."""
    config = GPTSpamConfig(**sizes)
    with torch.device("meta"):  # no random init of weights that are replaced right away
        model = GPTModel(config)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    model.out_head.weight = model.tok_emb.weight
    return model.eval()


def load_gpt2(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> GPTModel:
    """The pretrained GPT-2 as the chapter's ``GPTModel`` (vocab-wide head tied to ``tok_emb``, eval mode).

    ``model(ids)`` on ``[batch, tokens]`` ids gives ``[batch, tokens, vocab]`` logits.
    """
    sizes, state_dict = load_gpt2_state_dict(source, cache_dir=cache_dir, revision=revision)
    return model_from_state_dict(sizes, state_dict)


def load_gpt2_for_classification(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    **config_kwargs: Any,
) -> GPTSpamForSequenceClassification:
    """A classifier whose trunk holds GPT-2's pretrained weights and whose ``out_head`` is freshly initialised.

    ``config_kwargs`` (``pooling``, ``num_labels``, ``drop_rate`` ...) go to ``GPTSpamConfig``; the sizes
    come from the checkpoint.
    """
    sizes, state_dict = load_gpt2_state_dict(source, cache_dir=cache_dir, revision=revision)
    model = GPTSpamForSequenceClassification(GPTSpamConfig(**{**config_kwargs, **sizes}))
    trunk = {k: v for k, v in state_dict.items() if not k.startswith("out_head.")}
    missing, unexpected = model.gpt.load_state_dict(trunk, strict=False)
    missing = [k for k in missing if not k.startswith("out_head.")]
    if missing or unexpected:  # cannot happen for a validated checkpoint; guards model changes
        raise WeightsError(f"{source}: weights do not fit the classifier (missing {missing}, unexpected {unexpected})")
    return model.eval()


def source_tensor_names(chapter_key: str) -> tuple[str, str]:
    """(HF name, OpenAI name) of the checkpoint tensor a chapter parameter comes from.

    ``W_query``/``W_key``/``W_value`` all come from the fused ``c_attn``; ``out_head`` is tied to ``wte``.
    """
    top = {"tok_emb.weight": "wte.weight", "out_head.weight": "wte.weight", "pos_emb.weight": "wpe.weight",
           "final_norm.scale": "ln_f.weight", "final_norm.shift": "ln_f.bias"}
    if chapter_key in top:
        hf = top[chapter_key]
    else:
        m = re.fullmatch(r"trf_blocks\.(\d+)\.(.+)\.(weight|bias|scale|shift)", chapter_key)
        if m is None:
            raise KeyError(chapter_key)
        modules = {"att.W_query": "attn.c_attn", "att.W_key": "attn.c_attn", "att.W_value": "attn.c_attn",
                   "att.out_proj": "attn.c_proj", "ff.layers.0": "mlp.c_fc", "ff.layers.2": "mlp.c_proj",
                   "norm1": "ln_1", "norm2": "ln_2"}
        leaf = {"scale": "weight", "shift": "bias"}.get(m[3], m[3])
        hf = f"h.{m[1]}.{modules[m[2]]}.{leaf}"
    return hf, openai_name(hf)


def compare_state_dicts(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], atol: float = 1e-6
) -> list[dict[str, Any]]:
    """One row per tensor name (``tensor, shape, max_abs_diff, ok``); missing or misshaped tensors are not ok."""
    rows = []
    for name in [*a, *(k for k in b if k not in a)]:
        if name not in a or name not in b:
            where = "first" if name not in a else "second"
            rows.append({"tensor": name, "shape": f"missing in {where}", "max_abs_diff": float("inf"), "ok": False})
            continue
        ta, tb = a[name], b[name]
        if tuple(ta.shape) != tuple(tb.shape):
            shape = f"{list(ta.shape)} vs {list(tb.shape)}"
            rows.append({"tensor": name, "shape": shape, "max_abs_diff": float("inf"), "ok": False})
            continue
        diff = (ta.double() - tb.double()).abs().max().item() if ta.numel() else 0.0
        rows.append({"tensor": name, "shape": list(ta.shape), "max_abs_diff": diff, "ok": diff <= atol})
    return rows


# --------------------------------------------------------------------------------------------------
# The chapter's own fine-tuned model file
# --------------------------------------------------------------------------------------------------

# GPT-2's width -> heads (the head count is not visible in the weights).
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1600: 25}
_CHAPTER_MASK_RE = re.compile(r"trf_blocks\.(\d+)\.att\.mask")


def _chapter_config(sd: Mapping[str, torch.Tensor], path: Path) -> GPTSpamConfig:
    """Infer the sizes of a chapter state dict (the head count from GPT-2's standard widths)."""
    try:
        vocab, emb = sd["tok_emb.weight"].shape
        ctx = sd["pos_emb.weight"].shape[0]
        num_labels = sd["out_head.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise WeightsError(f"{path}: not a chapter GPT state dict (no usable {err})") from None
    if emb not in _HEADS_BY_WIDTH:
        raise WeightsError(f"{path}: width {emb} is not a GPT-2 size; pass a GPTSpamConfig with its n_heads")
    layers = len({k.split(".")[1] for k in sd if k.startswith("trf_blocks.")})
    return GPTSpamConfig(
        vocab_size=vocab, context_length=ctx, emb_dim=emb, n_heads=_HEADS_BY_WIDTH[emb], n_layers=layers,
        qkv_bias="trf_blocks.0.att.W_query.bias" in sd, num_labels=num_labels,
    )


def load_chapter_classifier(
    path: str | os.PathLike, config: GPTSpamConfig | None = None
) -> GPTSpamForSequenceClassification:
    """The chapter's fine-tuned ``review_classifier.pth`` as a ``GPTSpamForSequenceClassification``.

    The file is read with ``weights_only=True`` and loaded strictly (chapter key names, a
    ``num_labels``-way ``out_head``), so the model can then be ``save_pretrained``. The chapter's
    causal-mask buffers (``trf_blocks.i.att.mask``, saved by its ``register_buffer``) are checked and
    dropped: this model builds the mask on the fly. Without ``config`` the sizes are inferred.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (expected the chapter's review_classifier.pth)")
    sd = _read_torch_bin(path)
    # The chapter's file may hold the whole state dict of the classifier object or only its GPT.
    if sd and all(k.startswith("gpt.") for k in sd):
        sd = {k.removeprefix("gpt."): v for k, v in sd.items()}
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _CHAPTER_MASK_RE.fullmatch(key):
            n = value.shape[-1] if value.dim() == 2 else -1
            if value.dim() != 2 or not torch.equal(value.bool(), torch.ones(n, n, dtype=torch.bool).triu(1)):
                raise WeightsError(f"{path}: buffer {key!r} is not the chapter's causal mask")
            continue
        cleaned[key] = value
    if config is None:
        config = _chapter_config(cleaned, path)
    else:
        config = copy.deepcopy(config)
        if "out_head.weight" in cleaned and cleaned["out_head.weight"].shape[0] != config.num_labels:
            raise WeightsError(
                f"{path}: tensor 'out_head.weight' has {cleaned['out_head.weight'].shape[0]} rows, but the config "
                f"has num_labels={config.num_labels}"
            )
    model = GPTSpamForSequenceClassification(config)
    expected = model.gpt.state_dict()
    shapes = {k: tuple(v.shape) for k, v in cleaned.items()}
    _check_tensors(shapes, {k: tuple(v.shape) for k, v in expected.items()}, path,
                   f"emb_dim={config.emb_dim}, n_layers={config.n_layers}, num_labels={config.num_labels}")
    model.load_chapter_state_dict(cleaned)
    return model.eval()


__all__ = [
    "WeightsError",
    "WeightsUnavailableError",
    "HUB_ALIASES",
    "OPENAI_TO_HUB",
    "load_gpt2_state_dict",
    "load_gpt2",
    "load_gpt2_for_classification",
    "load_hf_checkpoint",
    "load_openai_tf_checkpoint",
    "download_hf_gpt2",
    "download_openai_gpt2",
    "compare_state_dicts",
    "source_tensor_names",
    "model_from_state_dict",
    "load_chapter_classifier",
    "checkpoint_format",
]
