"""The chapter's habits on top of transformers' ``Trainer``: what is trained, every example scored, the per-epoch
accuracy and the metrics ``Trainer`` computes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from transformers import Trainer, TrainerCallback

from .arguments import parse_class_weight
from .errors import HfSpamError
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


def class_weights(choice: str, train_labels: Sequence[int], labels: list[str]) -> dict[str, float] | None:
    """The loss's weight of each label (by name, in label order) for ``--class_weight``: ``None`` for ``none``;
    ``balanced`` is scikit-learn's ``n_samples / (n_classes * count)`` over ``train_labels`` (label ids)."""
    parsed = parse_class_weight(choice)
    if parsed == "none":
        return None
    if parsed == "balanced":
        y = np.asarray(train_labels, dtype=np.int64)
        missing = [name for i, name in enumerate(labels) if not (y == i).any()]
        if missing:
            raise HfSpamError(f"--class_weight balanced: no training examples of {', '.join(missing)}; "
                              "a weight per label cannot be derived (give the weights, or more --max_train_samples)")
        parsed = compute_class_weight("balanced", classes=np.arange(len(labels)), y=y).tolist()
    if len(parsed) != len(labels):
        raise HfSpamError(f"--class_weight {choice}: {len(parsed)} weight(s) for {len(labels)} labels "
                          f"({', '.join(labels)}); expected one per label, in that order")
    return {name: float(w) for name, w in zip(labels, parsed)}


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
