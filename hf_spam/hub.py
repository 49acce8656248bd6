"""Hub-ready model folders, and pushing them to the Hugging Face Hub.

``save_model_folder`` writes a folder that stands alone on the Hub: weights (safetensors), a
``config.json`` whose ``auto_map`` points at ``modeling_gpt.py`` copied beside it (remote code, so
``pipeline(..., trust_remote_code=True)`` works without ``hf_spam``), tokenizer files, a model card,
``metrics.json`` and ``training_args.json``. Nothing in it names a local path or holds a secret.
``push_folder_to_hub`` uploads such a folder; every failure is a one-line ``HubError`` that never
contains the token.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .tokenization import save_hf_tokenizer

# The Hub's copy of the UCI SMS Spam Collection (the same messages the chapter downloads from UCI).
HUB_DATASET_ID = "ucirvine/sms_spam"
DATASET_NAME = "SMS Spam Collection (UCI)"
AUTO_CLASS = "AutoModelForSequenceClassification"
DEFAULT_COMMIT_MESSAGE = "Upload GPT spam classifier (hf-spam)"
# Files that make up the model's weights; stale ones from an earlier save are removed.
WEIGHT_FILE_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                        "pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")
# Never uploaded: Trainer checkpoints (optimizer state, pickled TrainingArguments), TensorBoard runs,
# hidden/temporary files and logs (which name local paths).
UPLOAD_IGNORE_PATTERNS = [
    "checkpoint-*/", "runs/", ".*", "*/.*", "*.log", "*.tmp", "*.part",
    "training_args.bin", "*/training_args.bin",
]
METRIC_NAMES = {"accuracy": "Accuracy", "f1": "F1 (spam)", "precision": "Precision (spam)", "recall": "Recall (spam)"}

_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")
# An absolute POSIX path (or ~/...) not preceded by a word character, ':' or '/' (so URLs and
# relative paths stay); replaced by its last component.
_POSIX_PATH_RE = re.compile(r"(?<![\w.:/~\\-])~?/(?:[^\s'\"/]+/)*([^\s'\"/]+)/?")
_WINDOWS_PATH_RE = re.compile(r"(?<![\w])[A-Za-z]:[\\/](?:[^\s'\"\\/]+[\\/])*([^\s'\"\\/]+)[\\/]?")
_SECRET_WORDS = ("password", "passwd", "secret", "api_key", "apikey", "credential", "private_key")
_NOT_SECRET_TOKEN_KEY = re.compile(r"token_ids?$|tokens$|tokenizer|token_len|num_token")


class HubError(RuntimeError):
    """Saving or pushing a model folder failed; the message is one line and never holds a token."""


class HubInputError(HubError, ValueError):
    """The folder or repo id given to ``push_folder_to_hub`` is not usable (bad input, not a network failure)."""


# --------------------------------------------------------------------------------------------
# Sanitizing: no secrets, no local paths
# --------------------------------------------------------------------------------------------


def is_secret_key(key: str) -> bool:
    """Whether a settings key names a credential (``hub_token``, ``password`` ...); ``pad_token_id`` does not."""
    k = str(key).lower()
    if any(word in k for word in _SECRET_WORDS):
        return True
    return "token" in k and not _NOT_SECRET_TOKEN_KEY.search(k)


def scrub_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with the given secrets and anything shaped like a Hugging Face token replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _HF_TOKEN_RE.sub("***", text)


def strip_local_paths(text: str) -> str:
    """Replace absolute local paths inside ``text`` by their base name (URLs and relative paths stay)."""
    text = _WINDOWS_PATH_RE.sub(lambda m: m.group(1), text)
    return _POSIX_PATH_RE.sub(lambda m: m.group(1), text)


def sanitize(value: Any) -> Any:
    """A JSON-able copy of ``value`` without secret-like keys, token-like strings or absolute paths."""
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, (list, tuple, set)):
        return [sanitize(v) for v in value]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return strip_local_paths(scrub_text(value))
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int, float)):  # enums (schedulers ...)
        return sanitize(value.value)
    return sanitize(str(value))


def _hub_id_or_none(name: Any) -> str | None:
    """``name`` when it is a Hub repo id (``owner/name``) and not a local path, else ``None``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or not name or Path(name).expanduser().exists() or os.path.isabs(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _split_metric(metrics: dict[str, Any], split: str, name: str) -> float | None:
    value = metrics.get(f"{split}_{name}")
    if value is None and split == "test":
        value = metrics.get(name)  # unprefixed metrics are test metrics
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def build_model_card(
    config: Any,
    metrics: dict[str, Any],
    training_args: dict[str, Any],
    card: dict[str, Any],
    model_name: str,
) -> str:
    """The README.md: YAML front matter (library, license, datasets, tags, ``model-index``) and a body
    that says what the model is, how it was trained and how well it does, and how to use it."""
    from huggingface_hub import EvalResult, ModelCardData

    base_model = _hub_id_or_none(card.get("base_model"))
    repo_id = _hub_id_or_none(card.get("repo_id")) or f"YOUR_NAME/{model_name}"
    dataset_id = _hub_id_or_none(card.get("dataset")) or HUB_DATASET_ID
    eval_results = []
    for name, pretty in METRIC_NAMES.items():
        value = _split_metric(metrics, "test", name)
        if value is not None:
            eval_results.append(
                EvalResult(
                    task_type="text-classification", task_name="Text Classification",
                    dataset_type=dataset_id, dataset_name=DATASET_NAME, dataset_split="test",
                    metric_type=name, metric_value=round(value, 6), metric_name=pretty,
                )
            )
    tags = ["text-classification", "spam-detection", "gpt2", "hf-spam", "llms-from-scratch"]
    tags += [t for t in card.get("tags", []) if isinstance(t, str) and t not in tags]
    data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_id],
        language=["en"],
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="text-classification",
        tags=tags,
        model_name=model_name,
        eval_results=eval_results or None,
    )

    pooling = getattr(config, "pooling", "last")
    padded_length = getattr(config, "padded_length", None)
    n_params = card.get("total_parameters") or metrics.get("total_parameters")
    if base_model:
        weights = f"initialised from [{base_model}](https://huggingface.co/{base_model})"
    elif card.get("weights") == "random":
        weights = "trained from randomly initialised weights (no pretraining)"
    else:
        weights = "initialised from OpenAI's pretrained GPT-2 weights"
    size = card.get("model_size")
    lines = [
        f"# {model_name}",
        "",
        "A GPT-2 style model fine-tuned to classify SMS messages as **ham** (0) or **spam** (1), following "
        "chapter 6 of *Build a Large Language Model (From Scratch)* (Sebastian Raschka, Manning 2024). "
        "The model is the book's from-scratch GPT (`modeling_gpt.py`, included in this repository) with its "
        "output head replaced by a 2-way classifier; it loads with `trust_remote_code=True`.",
        "",
        f"- Architecture: {config.n_layers} blocks, {config.n_heads} heads, width {config.emb_dim}, context "
        f"{config.context_length} tokens" + (f" ({size})" if size else "")
        + (f", {int(n_params):,} parameters" if isinstance(n_params, (int, float)) else ""),
        f"- Weights: {weights}",
        f"- Classifier input: `{pooling}` pooling"
        + (" (the last position of the padded sequence, as in the book)" if pooling == "last" else "")
        + (f"; trained on sequences padded to {padded_length} tokens" if padded_length else ""),
        "- Tokenizer: GPT-2's byte-pair encoding; the text `<|endoftext|>` inside a message is encoded as "
        "ordinary text (like tiktoken's `encode_ordinary`), and `<|endoftext|>` (id 50256) pads on the right.",
        "",
        "## Training data",
        "",
        "The [SMS Spam Collection v.1](https://archive.ics.uci.edu/dataset/228/sms+spam+collection) "
        "(Almeida & Gómez Hidalgo, 2011; CC BY 4.0): 5,574 English SMS messages labelled ham or spam.",
        "",
        f"Recipe: {_fmt(card.get('recipe') or 'balanced (747 ham + 747 spam, seed 123), shuffled, split 70/10/20')}.",
    ]
    splits = card.get("splits") or {
        s: int(metrics[f"{s}_examples"]) for s in ("train", "validation", "test") if f"{s}_examples" in metrics
    }
    if splits:
        lines += ["", "| split | messages |", "|---|---|"]
        lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in splits.items()]

    if training_args:
        lines += ["", "## Training hyperparameters", "", "| setting | value |", "|---|---|"]
        lines += [
            f"| `{_fmt(k)}` | {_fmt(v)} |" for k, v in training_args.items()
            if isinstance(v, (str, int, float, bool)) and v != ""
        ]
        lines += ["", "All arguments are in `training_args.json`."]

    rows = []
    for split in ("train", "validation", "test"):
        values = [_split_metric(metrics, split, n) for n in METRIC_NAMES]
        if any(v is not None for v in values):
            cells = [f"{v * 100:.2f}%" if v is not None else "" for v in values]
            examples = metrics.get(f"{split}_examples", "")
            rows.append(f"| {split} | " + " | ".join(cells) + f" | {_fmt(examples)} |")
    lines += ["", "## Results", ""]
    if rows:
        lines += ["Spam is the positive class.", "",
                  "| split | accuracy | F1 | precision | recall | messages |", "|---|---|---|---|---|---|", *rows]
        lines += ["", "All numbers are in `metrics.json`."]
    else:
        lines += ["No evaluation results were recorded."]

    call = 'clf(["Congratulations! You won a free cruise. Reply WIN to claim.", "See you at 6?"]'
    if pooling == "last" and padded_length:
        call += f', padding="max_length", truncation=True, max_length={padded_length}'
    call += ")"
    lines += [
        "", "## Usage", "", "```python", "from transformers import pipeline", "",
        f'clf = pipeline("text-classification", model="{repo_id}", trust_remote_code=True)',
        call, "```",
    ]
    if pooling == "last" and padded_length:
        lines += [
            "",
            f"The classifier reads the last position of a sequence padded to {padded_length} tokens, as in "
            "training, so pass the padding arguments above; without them a prediction depends on the padding.",
        ]
    elif pooling == "last":
        lines += ["", "The classifier reads the last position: call the pipeline one text at a time "
                  "(`batch_size=1`, the default) so that no padding is read."]
    lines += [
        "",
        "With the hf-spam package that trained it: `SpamClassifier.from_pretrained(...).predict([...])` "
        "or `hf-spam predict --model ... \"text\"` (batched, streaming, same token ids as training).",
        "",
        "## Limitations",
        "",
        "- Trained on about a thousand English SMS messages from the 2000s (UK and Singapore); expect worse "
        "results on other languages, other kinds of messages (e-mail, chat) and newer spam.",
        "- The balanced recipe makes spam as frequent as ham in training and test; on real traffic, where "
        "spam is rarer, precision will be lower than the test numbers suggest.",
        f"- Messages longer than {padded_length or config.context_length} tokens are cut; an empty message "
        "gives no tokens (the pipeline fails; hf-spam classifies it as a lone `<|endoftext|>`).",
        "- Not a safety or security filter on its own; do not use it to make decisions about people.",
        "",
        "## License",
        "",
        "Apache-2.0 for the model code and weights. GPT-2's weights and tokenizer files are under OpenAI's "
        "MIT license; the SMS Spam Collection under CC BY 4.0.",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def _is_weight_file(name: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, pattern) for pattern in WEIGHT_FILE_PATTERNS)


def save_model_folder(
    model: Any,
    folder: str | os.PathLike,
    *,
    metrics: dict | None = None,
    training_args: dict | None = None,
    card: dict | None = None,
    bpe_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``model`` as a folder that stands alone on the Hub; returns the folder.

    Files: ``model.safetensors``, ``config.json`` (with ``auto_map``), ``modeling_gpt.py``, tokenizer
    files, ``README.md``, ``training_args.json`` and ``metrics.json``, all free of secrets and local
    paths. Everything is written into a temporary folder beside ``folder`` first and moved in file by
    file (weights first, ``config.json`` last), so a kill never leaves a folder whose config points at
    missing or half-written weights. Other files already in ``folder`` (checkpoints, plots) are kept.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model: expected a transformers PreTrainedModel, got {type(model).__name__}")
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.parent.glob(f".{glob.escape(folder.name)}.stage-*"):  # from an earlier killed save
        shutil.rmtree(leftover, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stage-", dir=folder.parent))
    try:
        _write_stage(model, stage, folder.name, metrics or {}, training_args or {}, card or {}, bpe_dir)
        _move_into_place(stage, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder


def _write_stage(
    model: Any, stage: Path, model_name: str, metrics: dict, training_args: dict, card: dict, bpe_dir: Any
) -> None:
    # register_for_auto_class sets a class attribute; put the old values back afterwards so that the
    # Trainer's later checkpoints of other models are unaffected.
    model_cls, config_cls = type(model), type(model.config)
    old = (model_cls.__dict__.get("_auto_class"), config_cls.__dict__.get("_auto_class"))
    try:
        model.register_for_auto_class(AUTO_CLASS)
        model.config.register_for_auto_class()
        model.save_pretrained(stage)
    finally:
        for cls, value in ((model_cls, old[0]), (config_cls, old[1])):
            if value is None:
                if "_auto_class" in cls.__dict__:
                    delattr(cls, "_auto_class")
            else:
                cls._auto_class = value

    config_path = stage / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("_name_or_path", None)  # the local folder the model was loaded from
    _write_json(config_path, sanitize(config))

    save_hf_tokenizer(stage, bpe_dir)
    clean_metrics = sanitize(metrics)
    clean_args = sanitize(training_args)
    clean_card = sanitize(card)
    clean_card["base_model"] = _hub_id_or_none(card.get("base_model"))
    _write_json(stage / "metrics.json", clean_metrics)
    _write_json(stage / "training_args.json", clean_args)
    name = clean_card.get("model_name") or model_name
    readme = build_model_card(model.config, clean_metrics, clean_args, clean_card, str(name))
    (stage / "README.md").write_text(readme, encoding="utf-8")


def _move_into_place(stage: Path, folder: Path) -> None:
    staged = sorted(p for p in stage.iterdir() if p.is_file())
    for path in staged:  # some writers create 0600 files; a model folder is meant to be shared
        path.chmod(0o644)
    weights = [p for p in staged if _is_weight_file(p.name)]
    # Shards before their index, so the index never names a missing file.
    weights.sort(key=lambda p: p.name.endswith(".index.json"))
    rest = [p for p in staged if p not in weights and p.name not in ("README.md", "config.json")]
    last = [stage / n for n in ("README.md", "config.json") if (stage / n).is_file()]
    for path in weights:
        os.replace(path, folder / path.name)
    new_weights = {p.name for p in weights}
    for old in folder.iterdir():  # weights of an earlier save (other sharding) would shadow the new ones
        if old.is_file() and _is_weight_file(old.name) and old.name not in new_weights:
            old.unlink()
    for path in rest + last:
        os.replace(path, folder / path.name)


# --------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------


def check_model_folder(folder: str | os.PathLike) -> Path:
    """Raise ``HubInputError`` unless ``folder`` holds a loadable, self-contained model folder."""
    path = Path(folder)
    expected = "expected a model folder written by training (save_model_folder)"
    if not path.is_dir():
        raise HubInputError(f"{path}: not a folder; {expected}")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise HubInputError(f"{path}: config.json is missing; {expected}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HubInputError(f"{config_path}: not readable JSON ({type(err).__name__}); {expected}") from None
    if not isinstance(config, dict):
        raise HubInputError(f"{config_path}: not a JSON object; {expected}")
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        raise HubInputError(f"{path}: model.safetensors is missing; {expected}")
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not {"AutoConfig", AUTO_CLASS} <= set(auto_map):
        raise HubInputError(
            f"{config_path}: no auto_map for AutoConfig and {AUTO_CLASS}, so the Hub copy could not be loaded "
            f"with trust_remote_code; {expected}"
        )
    for ref in auto_map.values():
        refs = ref if isinstance(ref, (list, tuple)) else [ref]
        for item in refs:
            if isinstance(item, str) and "--" not in item:  # "repo--module.Class" points elsewhere
                module_file = path / (item.rsplit(".", 1)[0] + ".py")
                if not module_file.is_file():
                    raise HubInputError(f"{path}: {module_file.name} (named in config.json's auto_map) is missing")
    if not (path / "tokenizer.json").is_file():
        raise HubInputError(f"{path}: tokenizer.json is missing; {expected}")
    return path


def _describe_hub_failure(err: BaseException, repo_id: str) -> str:
    """One line saying why a Hub call failed, with a hint where one helps."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1); unset it to push"
    if isinstance(err, LocalTokenNotFoundError):
        return "no Hugging Face token: run `hf auth login`, set HF_TOKEN or pass --token"
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            return ("unauthorised (HTTP 401): the token is missing or invalid; run `hf auth login`, set HF_TOKEN "
                    "or pass --token with a write token")
        if status == 403:
            return f"forbidden (HTTP 403): the token may not write to {repo_id} (needs a write token)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"HTTP {status}: {first}" if status else first
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, (ConnectionError, TimeoutError, OSError)) or "connect" in type(err).__name__.lower():
        return f"cannot reach the Hub ({type(err).__name__}{': ' + first if first else ''})"
    return f"{type(err).__name__}{': ' + first if first else ''}"


def _known_tokens(token: str | None) -> list[str]:
    tokens = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import get_token

        tokens.append(get_token())
    except Exception:  # a broken token file must not hide the real error
        pass
    return [t for t in tokens if t]


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    endpoint: str | None = None,
) -> str:
    """Upload a saved model folder to the Hub model repo ``repo_id`` (created if needed); returns its URL.

    The token is ``token``, else ``$HF_TOKEN``, else the saved login (huggingface_hub's order).
    Trainer checkpoints, ``runs/``, logs and hidden files are not uploaded. Raises ``HubInputError``
    for a bad folder or repo id and ``HubError`` for Hub/network failures (401, 403, offline ...).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, filter_repo_objects, validate_repo_id

    path = check_model_folder(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = str(err).strip().splitlines()[0]
        raise HubInputError(f"repo_id {repo_id!r}: {reason}; expected 'name' or 'owner/name'") from None
    secrets = _known_tokens(token)
    # The token must never land in the repo either: look for it in every text file that would be uploaded.
    files = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    for rel in filter_repo_objects(files, ignore_patterns=UPLOAD_IGNORE_PATTERNS):
        file = path / rel
        if file.suffix in (".json", ".md", ".txt", ".py", ".yaml", ".yml", ".csv") and file.stat().st_size < 50_000_000:
            text = file.read_text(encoding="utf-8", errors="replace")
            if any(secret in text for secret in secrets):
                raise HubInputError(f"{file}: contains the Hugging Face token; refusing to upload it")
    api = HfApi(endpoint=endpoint, token=token or None)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=url.repo_id or repo_id, folder_path=str(path), repo_type="model",
            commit_message=commit_message, ignore_patterns=list(UPLOAD_IGNORE_PATTERNS),
        )
    except Exception as err:  # huggingface_hub/httpx raise many types; all become one clean line
        message = _describe_hub_failure(err, repo_id)
        raise HubError(scrub_text(f"push of {path.name} to {repo_id} failed: {message}", secrets)) from None
    return str(url)


class _QuietParser(argparse.ArgumentParser):
    """argparse that never echoes a token (e.g. in 'unrecognized arguments: --tokn hf_...')."""

    def error(self, message: str) -> None:  # type: ignore[override]
        argv = sys.argv[1:]
        secrets = [b for a, b in zip(argv, argv[1:]) if a.startswith("--tok")]
        secrets += [a.split("=", 1)[1] for a in argv if a.startswith("--tok") and "=" in a]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {scrub_text(message, secrets)}\n")


def main(argv: list[str] | None = None) -> None:
    """``scripts/push_to_hub.py FOLDER --repo_id NAME [--private] [--token T]`` and ``hf-spam push``."""
    parser = _QuietParser(
        prog="push_to_hub", description="Push a model folder written by training to the Hugging Face Hub."
    )
    parser.add_argument("folder", help="model folder (config.json, model.safetensors, modeling_gpt.py ...)")
    parser.add_argument("--repo_id", required=True, help="Hub model repo: NAME or OWNER/NAME (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None,
                        help="Hub token with write access (default: $HF_TOKEN or `hf auth login`; "
                             "prefer those: a token on the command line is visible to other users)")
    parser.add_argument("--commit_message", default=DEFAULT_COMMIT_MESSAGE)
    args = parser.parse_args(argv)
    try:
        url = push_folder_to_hub(
            args.folder, args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message
        )
    except HubInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except HubError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(url)


__all__ = [
    "HubError",
    "HubInputError",
    "build_model_card",
    "check_model_folder",
    "is_secret_key",
    "main",
    "push_folder_to_hub",
    "sanitize",
    "save_model_folder",
    "scrub_text",
    "strip_local_paths",
]
