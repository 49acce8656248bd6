"""Fine-tune GPT-2 as a text classifier: chapter 6 of *Build a Large Language Model (From Scratch)* with
transformers' Trainer, on the chapter's SMS spam data by default or on your own (``--dataset_name`` or
``--train_file``). The recipe reads top to bottom in ``main``; each step is one call into hf_spam.

    python scripts/train.py --config configs/tiny.yaml --output_dir runs/tiny [--flag value ...]
    accelerate launch scripts/train.py --config configs/seed.yaml --output_dir runs/seed
    torchrun --nproc_per_node 2 scripts/train.py --config configs/tiny.yaml --output_dir runs/ddp

Every field of ModelArguments, DataArguments and SpamTrainingArguments (hf_spam/arguments.py; the last is
transformers' TrainingArguments plus ours) is a flag; --config FILE.yaml gives defaults that flags override.
Bad input ends with one ``error: ...`` line and exit status 2 (3 when something cannot be downloaded).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, set_seed

from hf_spam.arguments import DECISION_FLAGS, parse_args
from hf_spam.arithmetic import native_bf16
from hf_spam.data import write_splits_csv
from hf_spam.errors import HfSpamError, run_main
from hf_spam.evaluation import check_decision, evaluate_splits, format_accuracy_table, softmax, write_predictions
from hf_spam.feature_cache import prepare_cached_training
from hf_spam.files import cache_dir, write_json
from hf_spam.hub import check_room_for_model_folder, push_folder_to_hub, save_model_folder
from hf_spam.launch import check_fsdp, configure_cpu_threads, configure_processes, describe_device, describe_processes
from hf_spam.lora import apply_lora, save_adapter_and_merge
from hf_spam.metrics import decide, positive_index
from hf_spam.model_card import run_summary
from hf_spam.operating_point import fold_temperature, fold_threshold
from hf_spam.plots import plot_confusion_matrix, plot_history, plot_operating_curves
from hf_spam.run_folder import HistoryLogCallback, logger, prepare_output_dir, resume_target, setup_logging
from hf_spam.sources import load_data
from hf_spam.starting_model import build_model, is_trained_classifier
from hf_spam.tokenization import build_hf_tokenizer, tokenize_splits
from hf_spam.trainer import (
    EpochAccuracyCallback,
    SpamTrainer,
    class_weights,
    classification_metrics,
    set_trainable_layers,
)
from hf_spam.weights import HUB_IDS


def main(argv: list[str] | None = None, search: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or score) as ``argv`` says and return ``metrics.json``'s values; ``search``: the hyperparameter search
    that chose the settings (scripts/search.py), named in the model card."""
    started = time.time()

    # 1. Arguments (--config YAML as defaults, flags win), processes, CPU threads, logging, seed.
    configure_processes()
    model_args, data_args, args = parse_args(argv)
    hub_token, args.hub_token = args.hub_token, None  # pushed with at the end, never pickled into checkpoints
    out_dir = prepare_output_dir(args)
    resume = resume_target(args.resume_from_checkpoint, out_dir)
    setup_logging(out_dir, is_main=args.process_index == 0, progress_bars=not args.disable_tqdm,
                  node_main=args.local_process_index == 0)  # other machines' first processes: their stdout
    threads = configure_cpu_threads(args.cpu_threads)
    logger.info("%s", describe_processes(args, threads))
    if args.bf16 and args.device.type == "cpu":
        native, why = native_bf16(args.device)
        logger.info("--bf16 on the CPU%s: %s%s", " (--use_cpu true set, since there is no GPU)" if
                    args.use_cpu_for_bf16 else "", why, "" if native else " (emulated: likely slower than float32)")
    push, args.push_to_hub = args.push_to_hub, False  # the Trainer would create the repo now; step 11 pushes
    if push and not args.hub_model_id:
        raise HfSpamError("--push_to_hub: also pass --hub_model_id NAME")
    if (fsdp := check_fsdp(args)) and model_args.trainable_layers == "lora":
        raise HfSpamError("--trainable_layers lora: not supported with FSDP; use configs/accelerate/multi_gpu.yaml")
    if fsdp and (args.calibrate != "none" or any(getattr(args, flag) is not None for flag in DECISION_FLAGS)):
        raise HfSpamError("--calibrate/--decision_threshold/--max_false_positive_rate/--min_precision: not supported "
                          "with FSDP (they are folded into the gathered head)")
    set_seed(args.seed)

    # 2. Data: the SMS Spam Collection, balanced and split 70/10/20 like the chapter (1,045 / 149 / 300 rows), or
    #    yours (--dataset_name or --train_file ...: your columns, two or more labels, missing splits cut stratified).
    raw, data_info = load_data(**data_args.source_settings)
    labels = data_info["labels"]
    positive = positive_index(labels, data_args.positive_label)  # two labels: whose precision/recall/F1
    decision = check_decision({flag: getattr(args, flag) for flag in DECISION_FLAGS}, labels)  # two labels only
    weights = class_weights(args.class_weight, raw["train"]["label"], labels)  # --class_weight: one per label
    if data_args.write_csv and args.process_index == 0:
        write_splits_csv(raw, out_dir)

    # 3. Model: GPT-2's weights in the chapter's GPTModel and a new head, one output per label, created after
    #    seeding with --seed (the chapter's 123), or a classifier folder trained before (--model_name_or_path DIR).
    model = build_model(model_size=model_args.model_size, weights=model_args.weights, pooling=model_args.pooling,
                        checkpoint=model_args.model_name_or_path, drop_rate=model_args.drop_rate, labels=labels,
                        causal=not model_args.disable_causal_mask, seed=args.seed)
    trained = is_trained_classifier(model_args.model_name_or_path)
    if trained and [model.config.id2label[i] for i in range(model.config.num_labels)] != labels:
        raise HfSpamError(f"--model_name_or_path {model_args.model_name_or_path}: its labels "
                          f"{list(model.config.id2label.values())} differ from the data's {labels}")
    if weights is not None:  # the weighted cross-entropy of compute_loss (also the cached suffix's); never saved
        model.class_weights = torch.tensor(list(weights.values()), dtype=torch.float32)
        logger.info("Class weights (%s): %s", args.class_weight, ", ".join(f"{k} {w:.4g}" for k, w in weights.items()))

    # 4. Tokenize with tiktoken's GPT-2 encoding, padded to the longest training text (or per batch); a trained
    #    folder is fed texts of the length it was trained on.
    padding, max_length = (("longest_train", model.config.padded_length) if trained and model.config.padded_length
                           else (data_args.padding, data_args.max_length))
    tokenized, length = tokenize_splits(raw, padding=padding, context_length=model.config.context_length,
                                        bpe_dir=model_args.bpe_dir, max_length=max_length)
    if not trained:
        model.config.padded_length = length  # prediction pads `last` pooling to it, as training did
    tokenized = tokenized.rename_column("label", "labels").remove_columns(["text"])
    tokenizer = build_hf_tokenizer(model_args.bpe_dir)  # the same ids: pads batches, ships with the model
    logger.info("Data: %s, labels %s; padding %s (length %s)", data_info["splits"], ", ".join(labels), padding,
                length)

    # 5. What trains: the chapter's freezing choices, or LoRA adapters through peft.
    lora = model_args.trainable_layers == "lora" and args.do_train
    set_trainable_layers(model, model_args.trainable_layers)
    train_model = apply_lora(model, model_args.lora_rank, model_args.lora_alpha, model_args.lora_dropout) if lora \
        else model
    trainable, total = train_model.num_parameters(only_trainable=True), train_model.num_parameters()
    scale = model_args.lora_alpha / model_args.lora_rank
    logger.info("Trainable parameters: %s of %s (%.2f%%)%s", f"{trainable:,}", f"{total:,}", 100 * trainable / total,
                f"; LoRA r={model_args.lora_rank}, update scale alpha/r={scale:g}" if lora else "")
    if args.do_train and args.process_index == 0:  # the disk must hold the model folder, before any training
        check_room_for_model_folder(out_dir, model, adapter=lora)

    # 6. Frozen-trunk feature cache: the frozen blocks run once per example, the Trainer trains the top.
    data, collator = tokenized, DataCollatorWithPadding(tokenizer)
    if fsdp and args.cache_features:
        logger.info("Frozen-trunk feature cache not used: FSDP shards the trunk it would run on one device")
    cached = None if lora or fsdp or not (args.cache_features and args.do_train) else prepare_cached_training(
        model, tokenized, trainable_layers=model_args.trainable_layers, padding=data_args.padding,
        training_args=args, feature_dtype=args.feature_dtype,
        cache_dir=args.feature_cache_dir or cache_dir(data_args.data_cache_dir) / "features")
    if cached is not None:
        train_model, data, collator = cached.model, cached.datasets, cached.collator

    # 7. Trainer, plus the chapter's per-epoch accuracy (a few training batches and the validation set) and,
    #    with --early_stopping_patience, transformers' early stopping.
    trainer = SpamTrainer(model=train_model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                          data_collator=collator, compute_metrics=classification_metrics(len(labels), positive),
                          callbacks=[HistoryLogCallback()])
    n_plot = min(len(data["train"]), args.plot_train_batches * args.per_device_train_batch_size)
    trainer.add_callback(EpochAccuracyCallback(trainer, data["train"].select(range(n_plot)), data["validation"]))
    if args.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(args.early_stopping_patience))

    # 8. Train, or resume a killed run (--resume_from_checkpoint true | CHECKPOINT_FOLDER); the best checkpoint's
    #    weights at the end with --load_best_model_at_end.
    result = trainer.train(resume_from_checkpoint=resume) if args.do_train else None

    # 9. Accuracy, precision, recall, F1 (macro, per class and, for two labels, the positive class's), confusion
    #    matrix, loss, ROC AUC, average precision, log loss, Brier score, ECE (and the false-positive rate) on every
    #    example of each split (--do_eval), and the test split's predictions (--do_predict).
    splits = [s for s in ("train", "validation", "test") if args.do_eval or (args.do_predict and s == "test")]
    #    A threshold (--decision_threshold, or chosen on validation for --max_false_positive_rate/--min_precision)
    #    decides two labels; no threshold meeting the target ends the run here, before anything is saved.
    metrics, logits = evaluate_splits(trainer, {split: data[split] for split in splits}, labels, positive, decision,
                                      args.calibrate)
    threshold = metrics.get("decision_log_odds")  # the positive class's log-odds; its probability: decision_threshold
    if threshold is not None and "test_precision" in metrics:
        logger.info("Decision threshold %.6g (%s probability; log-odds %.4g); test precision %.4f, recall %.4f, "
                    "false-positive rate %.4f", metrics["decision_threshold"], labels[positive], threshold,
                    metrics["test_precision"], metrics["test_recall"], metrics["test_false_positive_rate"])
    metrics.update(label_names=labels, **({"positive_label": labels[positive]} if len(labels) == 2 else {}),
                   train_runtime_seconds=time.time() - started, trainable_parameters=trainable,
                   total_parameters=total, device=str(args.device), device_name=describe_device(args.device),
                   cpu_threads=threads, num_processes=args.world_size)
    if result is not None:
        metrics["training_loss"] = result.training_loss
    if weights is not None:
        metrics["class_weights"] = weights
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20

    # 10. Save (main process): the model folder with its card and metrics, the log history, the plots.
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if fsdp and args.do_train else None  # all ranks
    if trainer.is_world_process_zero():
        if args.do_eval:
            print(format_accuracy_table(metrics, labels, positive))
        if "test_confusion_matrix" in metrics:
            plot_confusion_matrix(metrics["test_confusion_matrix"], labels, out_dir / "confusion-matrix.png",
                                  f"test split ({metrics['test_examples']} examples)")
            decided = decide(logits["test"], positive, threshold)
            plot_operating_curves(softmax(logits["test"]), raw["test"]["label"], decided, labels, positive, out_dir,
                                  f"test split ({metrics['test_examples']} examples)",
                                  metrics.get("decision_threshold", 0.5))
        if args.do_predict:
            write_predictions(out_dir / "predictions.jsonl", raw["test"]["text"], raw["test"]["label"],
                              logits["test"], model.config.id2label, positive, threshold)
        if not args.do_train:
            write_json(out_dir / "metrics.json", metrics)
            logger.info("Scored %s; metrics in %s", model_args.model_name_or_path or "the model", out_dir)
        else:
            write_json(out_dir / "log_history.json", trainer.state.log_history)
            if "temperature" in metrics:  # the saved logits are the calibrated ones (LoRA: the adapter's head too)
                fold_temperature(model, metrics["temperature"])
            if threshold is not None:  # argmax of the saved model is the thresholded decision
                fold_threshold(model, threshold, positive)
            final = save_adapter_and_merge(train_model, out_dir / "adapter") if lora else model
            pretrained = model_args.weights == "pretrained"
            settings = run_summary({**vars(args), **vars(model_args), **vars(data_args)}, data_info)  # allow-listed
            save_model_folder(final, out_dir, metrics=metrics, settings=settings,
                              tokenizer=tokenizer, state_dict=state_dict, info={
                                  "base_model": (model_args.model_name_or_path or HUB_IDS[model_args.model_size])
                                  if pretrained else None,
                                  "weights": model_args.weights, "model_size": model_args.model_size,
                                  "repo_id": args.hub_model_id, "data": data_info, "search": search})
            examples_per_step = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
            plot_history(trainer.state.log_history, examples_per_step,
                         math.floor(len(data["train"]) / examples_per_step) or 1, out_dir)
            logger.info("Saved model, metrics and plots to %s (%.1f s)", out_dir, time.time() - started)

            # 11. Push the finished folder to the Hub (--push_to_hub --hub_model_id NAME [--hub_revision BRANCH]).
            if push:
                url = push_folder_to_hub(out_dir, args.hub_model_id, private=bool(args.hub_private_repo),
                                         token=hub_token, revision=args.hub_revision)
                logger.info("Pushed to %s", url)
    trainer.accelerator.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; a run that saved checkpoints continues with --resume_from_checkpoint true")
