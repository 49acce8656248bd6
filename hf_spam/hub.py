"""Model folders that stand alone on the Hub, written, checked and pushed: ``model.safetensors``, ``config.json``
with an ``auto_map`` and ``modeling_gpt.py`` beside it (remote code: ``pipeline(..., trust_remote_code=True)``
works without hf_spam), the GPT-2 tokenizer, ``README.md`` (the card, ``hf_spam.model_card``), ``handler.py`` (an
Inference Endpoints handler), ``training_args.json`` and ``metrics.json``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects, get_token

from .errors import FileSystemError, HfSpamError, UnavailableError, file_system_errno, one_line
from .files import is_hub_id, write_json
from .model_card import model_card
from .modeling_gpt import GPTSpamConfig
from .tokenization import build_hf_tokenizer, save_hf_tokenizer

HANDLER = Path(__file__).with_name("endpoint_handler.py")
WEIGHT_FILES = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
# Never uploaded: Trainer checkpoints (optimizer state, pickled arguments), logs, hidden and temporary files.
# Beside the weights a model folder holds the tokenizer (about 3.5 MB), the code, the card, metrics and plots.
FOLDER_MARGIN_BYTES = 64 * 2**20
UPLOAD_IGNORE = ["checkpoint-*/", "runs/", ".*", "*/.*", "*.log", "*.tmp", "training_args.bin", "*/training_args.bin"]


def save_model_folder(model: Any, folder: str | os.PathLike, *, metrics: dict | None = None,
                      settings: dict | None = None, info: dict | None = None, tokenizer: Any = None,
                      bpe_dir: str | os.PathLike | None = None, state_dict: dict | None = None) -> Path:
    """Write ``model`` (a ``GPTSpamForSequenceClassification``) as a Hub folder; returns the folder.

    Everything is written into a staging folder inside ``folder`` first and then moved in file by file
    (weights first, ``config.json`` last), so a kill never leaves a config pointing at missing or
    half-written weights. Other files already in ``folder`` (checkpoints, plots, logs) are kept.
    ``state_dict`` replaces the model's own (the gathered weights of a sharded FSDP model). A file-system failure
    (full disk, I/O error, no permission), whatever library meets it, is a one-line ``FileSystemError`` naming the
    folder, and nothing of the new model is left in it.
    """
    try:
        return _save_model_folder(model, folder, metrics=metrics, settings=settings, info=info, tokenizer=tokenizer,
                                  bpe_dir=bpe_dir, state_dict=state_dict)
    except Exception as err:
        code = file_system_errno(err)
        if code is None or isinstance(err, FileSystemError):
            raise
        raise FileSystemError(code, f"{folder}: the model could not be saved ({os.strerror(code)}: "
                                    f"{type(err).__name__}); nothing of it was left there") from err


def _save_model_folder(model: Any, folder: str | os.PathLike, *, metrics: dict | None, settings: dict | None,
                       info: dict | None, tokenizer: Any, bpe_dir: str | os.PathLike | None,
                       state_dict: dict | None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".stage-*"):  # from an earlier save that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=folder))
    try:
        (_unsharded(model) if state_dict is not None else model).save_pretrained(stage, state_dict=state_dict)
        config = json.loads((stage / "config.json").read_text(encoding="utf-8"))
        config.pop("_name_or_path", None)  # the local folder the model was loaded from
        write_json(stage / "config.json", config)
        save_hf_tokenizer(tokenizer or build_hf_tokenizer(bpe_dir), stage, bpe_dir)
        shutil.copyfile(HANDLER, stage / "handler.py")  # for a Hugging Face Inference Endpoint
        write_json(stage / "metrics.json", metrics or {})
        write_json(stage / "training_args.json", settings or {})
        model_card(model.config, metrics or {}, settings or {}, info or {}, folder.resolve().name).save(
            stage / "README.md")
        staged = sorted(stage.iterdir(), key=lambda p: (not _is_weights(p.name), p.name.endswith(".index.json"),
                                                        p.name in ("README.md", "config.json")))
        for old in folder.iterdir():  # weights of an earlier save (other sharding) would shadow the new ones
            if old.is_file() and _is_weights(old.name) and not (stage / old.name).exists():
                old.unlink()
        for path in staged:
            path.chmod(0o644)  # some writers create 0600 files; a model folder is meant to be shared
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder


def model_folder_bytes(model: torch.nn.Module, adapter: bool = False) -> int:
    """About how many bytes the model folder of ``model`` takes: its parameters as stored (twice with a LoRA
    ``adapter``, whose folder holds a copy of the base model) and ``FOLDER_MARGIN_BYTES`` for the rest."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights * (2 if adapter else 1) + FOLDER_MARGIN_BYTES


def check_room_for_model_folder(folder: str | os.PathLike, model: torch.nn.Module, adapter: bool = False) -> None:
    """Before training: stop with one line if ``folder``'s disk has less free space than the model folder needs."""
    needed, free = model_folder_bytes(model, adapter), shutil.disk_usage(folder).free
    if needed > free:
        raise HfSpamError(f"--output_dir {folder}: the model folder needs about {needed / 2**20:,.0f} MB and "
                          f"{free / 2**20:,.0f} MB is free there; free some space or choose another --output_dir")


def _unsharded(model: Any) -> Any:
    """The model's own class for saving an FSDP model's gathered ``state_dict``: FSDP2 swaps the class for one made
    on the fly in torch's ``_fsdp_init``, which ``save_pretrained`` would name in ``auto_map`` (and copy torch's
    files for). A weightless (meta-device) instance of the real class is saved with the gathered weights instead."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return model
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        return cls(model.config)


def _is_weights(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in WEIGHT_FILES)


def check_model_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if it holds a complete, self-contained model folder, else an error saying what is missing (an
    hf-spam model needs its remote code; a plain transformers one, as ``hf-spam export --format transformers`` writes,
    none)."""
    path, expected = Path(folder), "expected a model folder written by training"
    if not path.is_dir():
        raise HfSpamError(f"{path}: not a folder; {expected}")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise HfSpamError(f"{path}: a LoRA adapter folder; push the run's folder ({path.parent}), which holds the "
                          f"merged model and this adapter as {path.name}/ (peft loads it with subfolder=)")
    for name in ("config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise HfSpamError(f"{path}: {name} is missing; {expected}")
    if not any(_is_weights(p.name) for p in path.iterdir()):
        raise HfSpamError(f"{path}: model.safetensors is missing; {expected}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        auto_map = config.get("auto_map")
    except (OSError, ValueError, AttributeError) as err:
        raise HfSpamError(f"{path / 'config.json'}: not a readable JSON object ({type(err).__name__}); "
                          f"{expected}") from None
    if config.get("model_type") != GPTSpamConfig.model_type and not auto_map:  # transformers' own class (export)
        return path
    if not isinstance(auto_map, dict) or "AutoModelForSequenceClassification" not in auto_map:
        raise HfSpamError(f"{path / 'config.json'}: no auto_map, so the Hub copy could not be loaded with "
                          f"trust_remote_code; {expected}")
    for reference in auto_map.values():
        module = path / (str(reference).rsplit(".", 1)[0] + ".py")
        if "--" not in str(reference) and not module.is_file():  # "repo--module.Class" points elsewhere
            raise HfSpamError(f"{path}: {module.name} (named in config.json's auto_map) is missing")
    return path


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                       revision: str | None = None,
                       commit_message: str = "Upload GPT spam classifier (hf-spam)") -> str:
    """Upload a saved model folder to the Hub model repo ``repo_id`` (created if needed) on branch ``revision``
    (created if needed; default ``main``); returns the repo's URL.

    The token is ``token``, else ``$HF_TOKEN``, else the saved login. Bad input is an ``HfSpamError``; a
    Hub or network failure an ``UnavailableError``; neither message ever holds the token.
    """
    path = check_model_folder(folder)
    if not is_hub_id(repo_id):
        raise HfSpamError(f"repo_id {repo_id!r}: not a valid Hub repo id; expected 'name' or 'owner/name'")
    secret = token or get_token()
    files = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    for rel in filter_repo_objects(files, ignore_patterns=UPLOAD_IGNORE) if secret else []:
        if (path / rel).stat().st_size < 50_000_000 and secret.encode() in (path / rel).read_bytes():
            raise HfSpamError(f"{path / rel}: contains the Hugging Face token; refusing to upload it")
    api = HfApi(token=token or None)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(url.repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=str(path), commit_message=commit_message,
                          ignore_patterns=UPLOAD_IGNORE, revision=revision)
    except Exception as err:  # huggingface_hub and httpx raise many types: all become one line
        message = f"push of {path.name} to {repo_id} failed: {_hub_failure(err, repo_id)}"
        raise UnavailableError(message.replace(secret, "***") if secret else message) from None
    return str(url)


def _hub_failure(err: BaseException, repo_id: str) -> str:
    """Why a Hub call failed, in a line, with the way out where there is one."""
    if isinstance(err, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1); unset it to push"
    if isinstance(err, LocalTokenNotFoundError):
        return "no Hugging Face token: run `hf auth login`, set HF_TOKEN or pass --token"
    status = getattr(getattr(err, "response", None), "status_code", None) if isinstance(err, HfHubHTTPError) else None
    if status == 401:
        return "unauthorised (HTTP 401): the token is missing or invalid; use a write token (`hf auth login`)"
    if status == 403:
        return f"forbidden (HTTP 403): the token may not write to {repo_id} (needs a write token)"
    return f"{f'HTTP {status}: ' if status else ''}{type(err).__name__}: {one_line(err)[:200]}"
