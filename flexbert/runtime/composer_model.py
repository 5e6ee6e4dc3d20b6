"""The Composer face of FlexBertForMaskedLM: forward on a packed batch, loss, MLM metrics."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from composer.models import ComposerModel
from torchmetrics import Metric

from flexbert.model import real_token_labels

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "cu_seqlens", "max_seqlen", "labels",
                "indices", "prediction_indices")


def masked_targets(logits: torch.Tensor, labels: torch.Tensor,
                   targets: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair logits with labels of masked tokens only, whether or not the model predicted sparsely.

    Sparse logits are already [M, V] in row-major order of `labels != -100`, which is the order
    boolean indexing of `labels` gives. `targets`, when the caller has them (gathered with the
    batch's host-computed indices), skip that boolean indexing and its device sync.
    """
    if targets is not None and logits.dim() == 2 and logits.shape[0] == targets.shape[0]:
        return logits, targets
    selected = labels != -100
    targets = labels[selected]
    if logits.shape[0] == targets.shape[0] and logits.dim() == 2:
        return logits, targets
    return logits.reshape(-1, logits.shape[-1])[selected.reshape(-1)], targets


class MaskedTokenLoss(Metric):
    """Cross-entropy summed over every masked token, divided by their count at compute time:
    a per-token mean that does not overweight small batches, unlike a mean of batch means."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor,
               targets: Optional[torch.Tensor] = None) -> None:
        logits, targets = masked_targets(logits, labels, targets)
        self.total += F.cross_entropy(logits.float(), targets, reduction="sum").double()
        self.count += targets.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class MaskedAccuracy(Metric):
    """Share of masked tokens whose arg-max prediction is the original token."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor,
               targets: Optional[torch.Tensor] = None) -> None:
        logits, targets = masked_targets(logits, labels, targets)
        self.correct += (logits.argmax(-1) == targets).sum()
        self.count += targets.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.count.clamp(min=1).float()


def _metrics() -> dict[str, Metric]:
    return {"MaskedLoss": MaskedTokenLoss(), "MaskedAccuracy": MaskedAccuracy()}


class FlexBertComposerModel(ComposerModel):
    """What every FlexBERT task model shares: the wrapped model computes its own loss, eval reuses
    the training forward's outputs, and metrics are kept apart for training and evaluation.
    Subclasses pick the batch keys the model takes and how outputs update a metric."""

    inputs: tuple[str, ...] = MODEL_INPUTS

    def __init__(self, model: torch.nn.Module, train_metrics: dict[str, Metric],
                 eval_metrics: dict[str, Metric]):
        super().__init__()
        self.model = model
        self.train_metrics = train_metrics
        self.eval_metrics = eval_metrics

    def forward(self, batch: Mapping[str, Any]) -> Any:
        return self.model(**{k: batch[k] for k in self.inputs if k in batch})

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        return outputs.loss

    def eval_forward(self, batch: Mapping[str, Any], outputs: Any = None) -> Any:
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else self.eval_metrics


class ComposerFlexBertMLM(FlexBertComposerModel):
    """Wraps FlexBertForMaskedLM; the model's loss is already the mean over masked tokens, and the
    trainer weights microbatches by masked-token count (accumulate_train_batch_on_tokens)."""

    def __init__(self, model: torch.nn.Module, train_metrics: bool = True):
        super().__init__(model, _metrics() if train_metrics else {}, _metrics())

    def update_metric(self, batch: Mapping[str, Any], outputs: Any, metric: Metric) -> None:
        metric.update(outputs.logits.detach(), batch["labels"], _batch_targets(batch))


def _batch_targets(batch: Mapping[str, Any]) -> Optional[torch.Tensor]:
    """Masked tokens' labels from the collator's indices (no device sync), when it sent them."""
    if "indices" not in batch or "prediction_indices" not in batch:
        return None
    labels_T = real_token_labels(batch["labels"], batch["indices"])
    return labels_T.index_select(0, batch["prediction_indices"])
