"""The Composer face of FlexBertForSequenceClassification and its downstream metrics."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torchmetrics import MeanSquaredError, Metric, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import (BinaryF1Score, MulticlassAccuracy, MulticlassF1Score,
                                         MulticlassMatthewsCorrCoef)

from flexbert.config import ConfigError
from flexbert.runtime.composer_model import FlexBertComposerModel


def build_metrics(num_labels: int, problem_type: str) -> dict[str, Metric]:
    """Accuracy, F1 and Matthews for classification; Pearson, Spearman and MSE for regression."""
    if problem_type == "regression":
        return {"Pearson": PearsonCorrCoef(), "Spearman": SpearmanCorrCoef(), "MSE": MeanSquaredError()}
    if problem_type != "single_label_classification":
        raise ConfigError(f"finetune.problem_type: {problem_type!r} is not supported here; "
                          "allowed: single_label_classification, regression")
    classes = max(2, num_labels)
    return {
        "Accuracy": MulticlassAccuracy(num_classes=classes, average="micro"),
        # Binary tasks report F1 of the positive class (the GLUE convention for MRPC and QQP),
        # more classes the macro average.
        "F1": (BinaryF1Score() if classes == 2
               else MulticlassF1Score(num_classes=classes, average="macro")),
        "Matthews": MulticlassMatthewsCorrCoef(num_classes=classes),
    }


class ComposerFlexBertClassifier(FlexBertComposerModel):
    """Wraps FlexBertForSequenceClassification: the loss is the model's (cross-entropy, or MSE
    for regression); metrics are updated from arg-max predictions (or the scalar output)."""

    inputs = ("input_ids", "attention_mask", "labels")

    def __init__(self, model: torch.nn.Module):
        c = model.config.classifier
        super().__init__(model, build_metrics(c.num_labels, c.problem_type),
                         build_metrics(c.num_labels, c.problem_type))
        self.problem_type = c.problem_type

    def update_metric(self, batch: Mapping[str, Any], outputs: Any, metric: Metric) -> None:
        logits = outputs.logits.detach().float()
        if self.problem_type == "regression":
            metric.update(logits.squeeze(-1), batch["labels"].float())
        else:
            metric.update(logits.argmax(-1), batch["labels"].long())


def classification_model(cfg: Any, num_labels: int, problem_type: str) -> torch.nn.Module:
    """FlexBertForSequenceClassification with the encoder from cfg.model and a fresh classifier
    seeded by cfg.seed."""
    from flexbert.model import model_config
    from flexbert.finetune.loading import model_with_encoder
    from flexbert.model import FlexBertForSequenceClassification

    def build(tree: Any) -> torch.nn.Module:
        tree.classifier.num_labels = num_labels
        tree.classifier.problem_type = problem_type
        if cfg.pooling is not None:
            tree.classifier.pooling = cfg.pooling
        if cfg.dropout is not None:
            tree.classifier.dropout = cfg.dropout
        return FlexBertForSequenceClassification(model_config(tree, source=str(cfg.model)))

    return model_with_encoder(cfg.model, cfg.model_config, cfg.seed, build)
