"""Model folders that stand alone on the Hub, their model card, and pushing them.

A folder holds ``model.safetensors``, ``config.json`` with an ``auto_map`` and ``modeling_gpt.py`` beside
it (remote code: ``pipeline(..., trust_remote_code=True)`` works without hf_spam), the GPT-2 tokenizer,
``README.md`` (the model card, from ``model_card.md``), ``handler.py`` (an Inference Endpoints handler),
``training_args.json`` and ``metrics.json``.
What goes into the card and ``training_args.json`` comes from allow-lists, so no token or local path
can reach them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects, get_token

from .errors import HfSpamError, UnavailableError, one_line
from .files import is_hub_id, write_json
from .metrics import positive_index
from .tokenization import build_hf_tokenizer, save_hf_tokenizer

CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
HANDLER = Path(__file__).with_name("endpoint_handler.py")
# Two messages to try on the model's Hub page (made up for the card, not taken from any data set).
WIDGET = [{"text": "Congratulations! You have won a free cruise. Text WIN to 80085 to claim your prize now."},
          {"text": "Running late, see you at the station at 6?"}]
WEIGHT_FILES = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
# Never uploaded: Trainer checkpoints (optimizer state, pickled arguments), logs, hidden and temporary files.
UPLOAD_IGNORE = ["checkpoint-*/", "runs/", ".*", "*/.*", "*.log", "*.tmp", "training_args.bin", "*/training_args.bin"]


def _metric_names(two_labels: bool, positive: str) -> dict[str, tuple[str, str, dict | None]]:
    """``metrics.json`` key suffix -> (model-index metric type, display name, metric arguments)."""
    if two_labels:
        return {"accuracy": ("accuracy", "Accuracy", None), "f1": ("f1", f"F1 ({positive})", None),
                "precision": ("precision", f"Precision ({positive})", None),
                "recall": ("recall", f"Recall ({positive})", None)}
    return {"accuracy": ("accuracy", "Accuracy", None),
            **{f"macro_{k}": (k, f"{k.capitalize()} (macro)", {"average": "macro"})
               for k in ("f1", "precision", "recall")}}


def _eval_dataset(data: dict[str, Any]) -> dict[str, str | None]:
    """The model-index dataset of the test scores: only names that exist (a Hub id and its split, or none)."""
    if data.get("source") == "hub":
        given = data.get("made", {}).get("test", "given") == "given"
        return {"dataset_type": data["dataset_id"], "dataset_config": data.get("dataset_config"),
                "dataset_split": "test" if given else "train",
                "dataset_name": f"{data['dataset_id']}, " + ("test split" if given else "rows held out of train")}
    if data.get("source") == "local":
        return {"dataset_type": "local-files", "dataset_split": "test", "dataset_name": "local files, test split"}
    # The SMS data came from UCI's file, not from a Hub dataset: the test split named here is the recipe's own.
    return {"dataset_type": "uci-sms-spam-collection", "dataset_split": "test",
            "dataset_name": "SMS Spam Collection v.1 (UCI), the recipe's test split"}


def model_card(config: Any, metrics: dict[str, Any], settings: dict[str, Any], info: dict[str, Any],
               model_name: str) -> ModelCard:
    """The README.md: metadata (library, license, dataset, tags, ``model-index`` of the test metrics) and
    what the model is, what it was trained on, how well it does (per class too) and how to use it.

    ``info`` may name ``base_model`` (kept only if it is a Hub id), ``repo_id``, ``weights``, ``model_size`` and
    ``data`` (``hf_spam.sources.load_data``'s account of the data; default: the SMS recipe); ``settings`` is an
    allow-listed summary of the training arguments.
    """
    base_model = info.get("base_model") if is_hub_id(info.get("base_model")) else None
    data = {"source": "sms", **(info.get("data") or {})}  # default: the chapter's data
    sms = data["source"] == "sms"
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    positive = labels[positive_index(labels, metrics.get("positive_label"))] if len(labels) == 2 else None
    names = _metric_names(len(labels) == 2, positive)
    evals = [EvalResult(task_type="text-classification", task_name="Text classification", metric_type=kind,
                        metric_name=name, metric_args=args, metric_value=round(metrics[f"test_{key}"], 6),
                        **_eval_dataset(data))
             for key, (kind, name, args) in names.items() if isinstance(metrics.get(f"test_{key}"), (int, float))]
    card = ModelCardData(
        base_model=base_model, language=["en"] if sms else None, library_name="transformers", license="apache-2.0",
        pipeline_tag="text-classification", model_name=model_name, eval_results=evals or None,
        datasets=[data["dataset_id"]] if data.get("source") == "hub" else None, widget=WIDGET if sms else None,
        tags=["text-classification", *(["spam-detection"] if sms else []), "gpt2", "hf-spam", "llms-from-scratch"])
    results = [[split, *(f"{metrics[f'{split}_{k}'] * 100:.2f}%" for k in names), str(metrics.get(f"{split}_examples"))]
               for split in ("train", "validation", "test") if all(f"{split}_{k}" in metrics for k in names)]
    per_class = [[name, *(f"{scores[k] * 100:.2f}%" for k in ("precision", "recall", "f1")), str(scores["support"])]
                 for name, scores in (metrics.get("test_per_class") or {}).items()]
    return ModelCard.from_template(
        card, template_path=str(CARD_TEMPLATE), model_name=model_name, base_model=base_model,
        repo_id=info.get("repo_id") if is_hub_id(info.get("repo_id")) else f"YOUR_NAME/{model_name}",
        weights=info.get("weights"), model_size=info.get("model_size") or "custom size", sms=sms,
        recipe=data.get("recipe"), splits=data.get("splits") or {}, made=data.get("made") or {},
        dataset_id=data.get("dataset_id"), dataset_config=data.get("dataset_config"), balance=data.get("balance"),
        labels=labels, positive=positive, settings=settings, results=results,
        per_class=per_class, confusion=list(zip(labels, metrics.get("test_confusion_matrix") or [])),
        total_parameters=metrics.get("total_parameters"), pooling=config.pooling,
        padded_length=getattr(config, "padded_length", None), n_layers=config.n_layers, n_heads=config.n_heads,
        emb_dim=config.emb_dim, context_length=config.context_length,
    )


def save_model_folder(model: Any, folder: str | os.PathLike, *, metrics: dict | None = None,
                      settings: dict | None = None, info: dict | None = None, tokenizer: Any = None,
                      bpe_dir: str | os.PathLike | None = None, state_dict: dict | None = None) -> Path:
    """Write ``model`` (a ``GPTSpamForSequenceClassification``) as a Hub folder; returns the folder.

    Everything is written into a staging folder inside ``folder`` first and then moved in file by file
    (weights first, ``config.json`` last), so a kill never leaves a config pointing at missing or
    half-written weights. Other files already in ``folder`` (checkpoints, plots, logs) are kept.
    ``state_dict`` replaces the model's own (the gathered weights of a sharded FSDP model).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".stage-*"):  # from an earlier save that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=folder))
    try:
        model.save_pretrained(stage, state_dict=state_dict)
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


def _is_weights(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in WEIGHT_FILES)


def check_model_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if it holds a complete, self-contained model folder, else an error saying what is missing."""
    path, expected = Path(folder), "expected a model folder written by training"
    if not path.is_dir():
        raise HfSpamError(f"{path}: not a folder; {expected}")
    for name in ("config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise HfSpamError(f"{path}: {name} is missing; {expected}")
    if not any(_is_weights(p.name) for p in path.iterdir()):
        raise HfSpamError(f"{path}: model.safetensors is missing; {expected}")
    try:
        auto_map = json.loads((path / "config.json").read_text(encoding="utf-8")).get("auto_map")
    except (OSError, ValueError, AttributeError) as err:
        raise HfSpamError(f"{path / 'config.json'}: not a readable JSON object ({type(err).__name__}); "
                          f"{expected}") from None
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
