"""The model card (``README.md`` of a model folder, from the ``model_card.md`` template) and the run summary it and
``training_args.json`` show: both from allow-lists, so no token or local path can reach them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .files import is_hub_id
from .metrics import positive_index

CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
# Two messages to try on the model's Hub page (made up for the card, not taken from any data set).
WIDGET = [{"text": "Congratulations! You have won a free cruise. Text WIN to 80085 to claim your prize now."},
          {"text": "Running late, see you at the station at 6?"}]
# The settings kept with a trained model (training_args.json, the model card): an allow-list, so that
# tokens, local paths and other private values never leave the machine.
SUMMARY_FIELDS = (
    "model_size", "weights", "trainable_layers", "pooling", "drop_rate", "disable_causal_mask", "lora_rank",
    "lora_alpha", "lora_dropout", "natural_balance", "padding", "max_length", "split_seed",
    "validation_split_percentage", "test_split_percentage", "max_train_samples", "max_eval_samples",
    "max_test_samples", "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps", "num_train_epochs",
    "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "dataloader_drop_last", "seed", "eval_steps", "bf16", "fp16", "optim", "cache_features", "feature_dtype",
    "decision_threshold", "max_false_positive_rate", "min_precision", "calibrate", "class_weight",
)
# Kept too when the data is the user's (a Hub dataset's id only: a local path stays private).
USER_DATA_FIELDS = ("dataset_name", "dataset_config_name", "text_column", "label_column", "balance", "positive_label")


def run_summary(settings: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The allow-listed ``settings`` of a run (its arguments by name) as JSON-friendly values. ``data`` is
    ``hf_spam.sources.load_data``'s account of the data (default: the SMS collection); for the user's data its
    settings are kept too, the data named by its Hub id or as ``local files``."""
    user = (data or {}).get("source", "sms") != "sms"
    out = {}
    for key in SUMMARY_FIELDS + (USER_DATA_FIELDS if user else ()):
        value = settings.get(key)
        out[key] = getattr(value, "value", value)  # enums (scheduler, optimizer) as their names
    if user:
        out.pop("natural_balance")
        out["dataset_name"] = data.get("dataset_id") or "local files"
    if settings.get("trainable_layers") != "lora":
        for key in ("lora_rank", "lora_alpha", "lora_dropout"):
            out.pop(key)
    return out


def _metric_names(two_labels: bool, positive: str) -> dict[str, tuple[str, str, dict | None]]:
    """``metrics.json`` key suffix -> (model-index metric type, display name, metric arguments)."""
    prefix, which, args = ("", positive, None) if two_labels else ("macro_", "macro", {"average": "macro"})
    return {"accuracy": ("accuracy", "Accuracy", None),
            **{prefix + k: (k, f"{k.capitalize()} ({which})", args) for k in ("f1", "precision", "recall")}}


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

    ``info`` may name ``base_model`` (kept only if it is a Hub id), ``repo_id``, ``weights``, ``model_size``,
    ``data`` (``hf_spam.sources.load_data``'s account of the data; default: the SMS recipe) and ``search`` (the
    hyperparameter search that chose the settings: ``scripts/search.py``); ``settings`` is an allow-listed summary
    of the training arguments.
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
    ranked = ("roc_auc", "average_precision", "log_loss", "brier_score", "ece",
              *(["false_positive_rate"] if positive else []))
    ranking = [[split, *("n/a" if metrics[f"{split}_{k}"] is None else f"{metrics[f'{split}_{k}']:.4f}"
                         for k in ranked)]
               for split in ("train", "validation", "test") if all(f"{split}_{k}" in metrics for k in ranked)]
    per_class = [[name, *(f"{scores[k] * 100:.2f}%" for k in ("precision", "recall", "f1")), str(scores["support"])]
                 for name, scores in (metrics.get("test_per_class") or {}).items()]
    return ModelCard.from_template(
        card, template_path=str(CARD_TEMPLATE), model_name=model_name, base_model=base_model,
        repo_id=info.get("repo_id") if is_hub_id(info.get("repo_id")) else f"YOUR_NAME/{model_name}",
        weights=info.get("weights"), model_size=info.get("model_size") or "custom size", sms=sms,
        recipe=data.get("recipe"), splits=data.get("splits") or {}, made=data.get("made") or {},
        dataset_id=data.get("dataset_id"), dataset_config=data.get("dataset_config"), balance=data.get("balance"),
        labels=labels, positive=positive, settings=settings, results=results, ranking=ranking,
        class_weights=metrics.get("class_weights"), class_weight=settings.get("class_weight"),
        threshold=metrics.get("decision_threshold"), temperature=metrics.get("temperature"), calibration=[
            [split, *(f"{metrics[f'{split}_{k}']:.4f}" for k in ("log_loss_uncalibrated", "log_loss",
                                                                 "ece_uncalibrated", "ece"))]
            for split in ("validation", "test") if f"{split}_log_loss_uncalibrated" in metrics],
        target=next(((k[10:], v) for k, v in metrics.items() if k.startswith("threshold_")), None),
        per_class=per_class, confusion=list(zip(labels, metrics.get("test_confusion_matrix") or [])),
        total_parameters=metrics.get("total_parameters"), pooling=config.pooling,
        training_length=config.training_length, n_layers=config.n_layers, n_heads=config.n_heads,
        emb_dim=config.emb_dim, context_length=config.context_length, search=info.get("search"),
    )
