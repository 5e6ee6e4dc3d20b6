"""Token classification: FlexBertForTokenClassification (encoder -> head -> a label per token),
its Composer face, entity-level F1 over BIO spans, and the run."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import Metric
from transformers.modeling_outputs import TokenClassifierOutput

from flexbert.config import ModelConfig
from flexbert.finetune.config import FinetuneConfig
from flexbert.model import FlexBertPreTrained, PredictionHead
from flexbert.runtime.composer_model import FlexBertComposerModel


class FlexBertForTokenClassification(FlexBertPreTrained):
    """Encoder + head (dense, activation, norm) + linear classifier on every token; logits come
    back [B, S, num_labels] in the caller's padded layout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.head = PredictionHead(cfg)
        self.drop = nn.Dropout(cfg.classifier.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.classifier.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, labels=None, **unused) -> TokenClassifierOutput:
        hidden_L, layout = self.model(input_ids, attention_mask)
        logits = layout.to_rows(self.classifier(self.drop(self.head(hidden_L))))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)


def bio_spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) of each entity, conlleval style: an I-X after O or after another type
    starts a new entity."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, this = tag.partition("-")
        continues = prefix == "I" and this == kind
        if start is not None and not continues:
            spans.add((start, i, kind))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, this
    return spans


class EntityF1(Metric):
    """Entity-level precision, recall or F1 (`which`) over the labelled positions of each row."""

    full_state_update = False

    def __init__(self, tag_names: list[str], which: str = "f1"):
        super().__init__()
        self.tag_names, self.which = tag_names, which
        for name in ("hits", "predicted", "gold"):
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        for pred_row, label_row in zip(preds.tolist(), labels.tolist()):
            keep = [i for i, y in enumerate(label_row) if y != -100]
            gold = bio_spans([self.tag_names[label_row[i]] for i in keep])
            guess = bio_spans([self.tag_names[pred_row[i]] for i in keep])
            self.hits += len(gold & guess)
            self.predicted += len(guess)
            self.gold += len(gold)

    def compute(self) -> torch.Tensor:
        precision = self.hits / self.predicted.clamp(min=1)
        recall = self.hits / self.gold.clamp(min=1)
        if self.which == "precision":
            return precision
        if self.which == "recall":
            return recall
        return 2 * precision * recall / (precision + recall).clamp(min=1e-12)


class TokenAccuracy(Metric):
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("right", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        keep = labels != -100
        self.right += (preds[keep] == labels[keep]).sum().float()
        self.total += keep.sum().float()

    def compute(self) -> torch.Tensor:
        return self.right / self.total.clamp(min=1)


def token_metrics(tag_names: list[str]) -> dict[str, Metric]:
    return {"Entity_F1": EntityF1(tag_names), "Entity_Precision": EntityF1(tag_names, "precision"),
            "Entity_Recall": EntityF1(tag_names, "recall"), "Token_Accuracy": TokenAccuracy()}


class ComposerTokenClassifier(FlexBertComposerModel):
    inputs = ("input_ids", "attention_mask", "labels")

    def __init__(self, model: torch.nn.Module, tag_names: list[str]):
        super().__init__(model, {}, token_metrics(tag_names))  # entity F1 on dev only

    def update_metric(self, batch: Mapping[str, Any], outputs: Any, metric: Metric) -> None:
        metric.update(outputs.logits.detach().argmax(-1), batch["labels"])


def collate_tokens(pad_id: int):
    from flexbert.finetune.data import pad_ids

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_ids(rows, pad_id)
        labels = torch.full(ids.shape, -100, dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, :len(r["labels"])] = torch.tensor(r["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def run_token_classification(cfg: FinetuneConfig) -> dict[str, Any]:
    from flexbert.model import model_config
    from flexbert.finetune.loading import load_tokenizer, model_with_encoder
    from flexbert.finetune.token_data import encode_sentences, load_token_task
    from flexbert.finetune.fitting import fit_and_evaluate, pad_id, quiet

    quiet(cfg)
    task = load_token_task(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)

    def build(tree: Any) -> torch.nn.Module:
        tree.classifier.num_labels = len(task.tag_names)
        if cfg.dropout is not None:
            tree.classifier.dropout = cfg.dropout
        return FlexBertForTokenClassification(model_config(tree, source=str(cfg.model)))

    model = model_with_encoder(cfg.model, cfg.model_config, cfg.seed, build)
    train = encode_sentences(task.train, tokenizer, task.tag_names, cfg.max_seq_len)
    dev = encode_sentences(task.eval, tokenizer, task.tag_names, cfg.max_seq_len)
    values, fit = fit_and_evaluate(cfg, ComposerTokenClassifier(model, task.tag_names), train, dev,
                                   collate_tokens(pad_id(tokenizer, model)))
    return {"num_labels": len(task.tag_names), "train_examples": len(train),
            "eval_examples": len(dev), **fit, **values}
