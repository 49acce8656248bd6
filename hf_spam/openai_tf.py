"""OpenAI's original GPT-2 TensorFlow checkpoint (the files the chapter downloads) in the chapter's names.

Needs TensorFlow (the optional ``tf`` extra). Every variable's name and shape is checked against
``hparams.json`` before any data is read; the tensors then go through the same name mapping as the
Hugging Face checkpoint (``hf_spam.gpt2_names.hf_to_chapter``): OpenAI's Conv1D weights only carry an
extra leading 1 (``[1, n_in, n_out]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .download import download_file
from .errors import HfSpamError, UnavailableError, one_line
from .files import cache_dir
from .gpt2_names import WEIGHTS_HINT, checked_sizes, gpt2_shapes, hf_to_chapter, openai_name

BASE_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/models/{size}/",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/{size}/",
)
FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001", "model.ckpt.index",
         "model.ckpt.meta", "vocab.bpe")
SIZES = ("124M", "355M", "774M", "1558M")
EXPECTED = "OpenAI's files: hparams.json, checkpoint, model.ckpt.index, model.ckpt.data-00000-of-00001"


def _import_tensorflow(folder: Path) -> Any:
    # TensorFlow's import chatter is not for our users; oneDNN only changes maths, and reading does none.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf  # optional and heavy: only for this format
    except ImportError:
        raise UnavailableError(f"{folder}: reading OpenAI's TensorFlow checkpoint needs TensorFlow: "
                               f'pip install "hf-spam[tf]", or {WEIGHTS_HINT}') from None
    return tf


def _checkpoint_prefix(folder: Path, tf: Any) -> Path:
    """``.../model.ckpt``: named by the ``checkpoint`` file, else the only ``*.index`` in the folder."""
    try:
        latest = tf.train.latest_checkpoint(str(folder)) if (folder / "checkpoint").is_file() else None
    except Exception:  # a damaged 'checkpoint' text file: fall back to the index files
        latest = None
    if latest and Path(latest + ".index").is_file():
        return Path(latest)
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) != 1:
        raise HfSpamError(f"{folder}: {'no model.ckpt.index' if not indexes else 'several *.index files'} "
                          f"({EXPECTED})")
    return indexes[0].with_suffix("")


def load_openai_gpt2(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config sizes, chapter state dict) from OpenAI's GPT-2 folder (``hparams.json`` + ``model.ckpt.*``)."""
    folder = Path(folder).expanduser()
    if not (folder / "hparams.json").is_file():
        raise HfSpamError(f"{folder}: no such folder or no hparams.json ({EXPECTED})")
    try:
        hp = json.loads((folder / "hparams.json").read_text(encoding="utf-8"))
        sizes = checked_sizes(hp.get("n_vocab"), hp.get("n_ctx"), hp.get("n_embd"), hp.get("n_head"),
                              hp.get("n_layer"), 1e-5, f"{folder / 'hparams.json'}")  # eps: fixed in OpenAI's code
    except (OSError, ValueError, AttributeError) as err:
        raise HfSpamError(f"{folder / 'hparams.json'}: not usable ({one_line(err)})") from None
    if not any(folder.glob("*.index")):  # before the slow TensorFlow import
        raise HfSpamError(f"{folder}: no model.ckpt.index ({EXPECTED})")
    tf = _import_tensorflow(folder)
    prefix = _checkpoint_prefix(folder, tf)
    index, data = Path(f"{prefix}.index"), folder / f"{prefix.name}.data-00000-of-00001"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        found = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    except Exception as err:  # tf.errors.* (DataLoss, NotFound ...) for a damaged index
        raise HfSpamError(f"{index}: unreadable TensorFlow checkpoint index ({one_line(err)})") from None
    described = f"width {sizes['emb_dim']}, {sizes['n_layers']} layers, context {sizes['context_length']}"
    expected = {openai_name(hf): (hf, (1, *shape) if hf.startswith("h.") and len(shape) == 2 else shape)
                for hf, shape in gpt2_shapes(sizes).items()}
    for name in [*expected, *found]:
        if name not in found or name not in expected:
            raise HfSpamError(f"{index}: {'missing' if name not in found else 'unexpected'} tensor {name!r} "
                              f"({described} in hparams.json)")
        if found[name] != expected[name][1]:
            raise HfSpamError(f"{index}: tensor {name!r} has shape {list(found[name])}, expected "
                              f"{list(expected[name][1])} ({described} in hparams.json)")
    tensors = {}
    for name, (hf, _) in expected.items():
        try:
            array = reader.get_tensor(name)
        except Exception as err:  # a truncated or altered data file: DataLoss/IndexError from the reader
            raise HfSpamError(f"{data}: cannot read tensor {name!r} ({one_line(err)}); the file may be truncated "
                              "or corrupt: delete the folder and download again") from None
        tensor = torch.from_numpy(array.copy())
        tensors[hf] = tensor[0] if tensor.dim() == 3 else tensor  # drop the Conv1D leading 1
    return sizes, hf_to_chapter(tensors, sizes["n_layers"])


def download_openai_gpt2(size: str, cache: str | os.PathLike | None = None, *, base_urls: Sequence[str] = BASE_URLS,
                         timeout: float = 30.0, progress: bool = True) -> Path:
    """OpenAI's GPT-2 files for ``size`` (``124M`` ...) in ``<cache>/gpt2-tf/<size>``, downloading what is
    missing from OpenAI, else the book's backup mirror (each file atomically, so a present file is whole)."""
    if size not in SIZES:
        raise HfSpamError(f"model size {size!r}: expected one of {', '.join(SIZES)}")
    folder = cache_dir(cache) / "gpt2-tf" / size
    for name in FILES:
        try:
            download_file([base.format(size=size) + name for base in base_urls], folder / name, timeout=timeout,
                          desc=f"{size}/{name}", progress=progress)
        except UnavailableError as err:
            raise UnavailableError(f"{one_line(err)}; {WEIGHTS_HINT}") from None
    return folder
