"""The chapter's habits on top of transformers' ``Trainer``: what is trained, every example scored, the per-epoch
accuracy and the metrics ``Trainer`` computes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .launch import FsdpShardsCallback, allow_fsdp_on_cpu
from .metrics import compute_metrics


def set_trainable_layers(model: torch.nn.Module, choice: str) -> None:
    """The chapter's choices: freeze everything, then unfreeze the head (``last_layer``), plus the last
    block(s) and the final norm (``last_block``/``last_two_blocks``), or everything (``all``).
    ``lora`` leaves the head trainable; peft then decides the rest (``hf_spam.lora``)."""
    gpt = model.gpt
    for p in model.parameters():
        p.requires_grad = choice == "all"
    blocks = {"last_block": 1, "last_two_blocks": 2}.get(choice, 0)
    for module in [gpt.out_head, *([gpt.final_norm, *gpt.trf_blocks[-blocks:]] if blocks else [])]:
        for p in module.parameters():
            p.requires_grad = True


class SpamTrainer(Trainer):
    """``Trainer`` that never drops an example when scoring: the chapter drops the last incomplete
    *training* batch (``dataloader_drop_last``) but evaluates every example."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled:
            self.add_callback(FsdpShardsCallback())  # "FSDP: the ranks hold N + N of M parameters"

    def create_accelerator_and_postprocess(self) -> None:
        allow_fsdp_on_cpu(self.args)  # FSDP on CPU processes too, not DDP in its place
        super().create_accelerator_and_postprocess()

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        return self._every_example(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        return self._every_example(super().get_test_dataloader, test_dataset)

    def _every_example(self, get_dataloader: Callable[[Any], Any], dataset: Any) -> Any:
        drop, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False
        try:
            return get_dataloader(dataset)
        finally:
            self.args.dataloader_drop_last = drop


class EpochAccuracyCallback(TrainerCallback):
    """The chapter's per-epoch accuracy: at each epoch end, score a few training batches and the whole
    validation set, logged as ``epoch_train_accuracy``/``epoch_validation_accuracy`` (for the plot)."""

    def __init__(self, trainer: Trainer, train_subset: Any, validation: Any):
        self.trainer, self.train_subset, self.validation = trainer, train_subset, validation

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        scores = {f"epoch_{name}_accuracy": self.trainer.predict(ds, metric_key_prefix="x").metrics["x_accuracy"]
                  for name, ds in (("train", self.train_subset), ("validation", self.validation))}
        self.trainer.log(scores)
        return control


def classification_metrics(num_labels: int = 2, positive: int = 1) -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` for ``Trainer``: the argmax of the logits against the labels (``hf_spam.metrics``;
    with two labels, ``positive``'s precision/recall/F1)."""

    def compute(eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return compute_metrics(logits.argmax(axis=-1), eval_pred.label_ids, num_labels, positive)

    return compute
