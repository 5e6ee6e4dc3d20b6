"""Encoder, masked-LM and sequence-classification models assembled from a ModelConfig."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import MaskedLMOutput, SequenceClassifierOutput

from flexbert.config import ModelConfig
from flexbert.model.attention.layout import Layout, describe_batch
from flexbert.model.attention.rotary import build_position
from flexbert.model.config_check import validate_model_config
from flexbert.model.loss import chunked_cross_entropy
from flexbert.model.norm import build_norm
from flexbert.registry import ACTIVATIONS, EMBEDDINGS, INITS, KERNELS, LAYERS, PADDINGS, POOLINGS


class FlexBertModel(nn.Module):
    """The encoder. `forward` returns hidden states in the padding strategy's layout plus the
    Layout that maps them back, so heads can work on real (or only masked) tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        validate_model_config(cfg)
        _check_kernel_available(cfg)
        self.config = cfg
        self.layout = PADDINGS.get(cfg.padding, "model.padding").layout
        self.position = build_position(cfg)
        self.embeddings = EMBEDDINGS.get(cfg.embeddings.type, "model.embeddings.type")(cfg)
        layer_cls = LAYERS.get(cfg.layer, "model.layer")
        self.layers = nn.ModuleList(layer_cls(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = build_norm(cfg.hidden_size, cfg.norm) if cfg.final_norm else nn.Identity()
        # Recompute every n-th layer in the backward (0: off); trainer.activation_checkpointing.
        self.checkpoint_every = 0

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        max_seqlen: Optional[int] = None,
        indices: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Layout]:
        layout = describe_batch(input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen,
                                self.layout, indices)
        ids_L = layout.to_layout(input_ids)
        cache = self.position.prepare(layout.position_ids_L)
        x = self.embeddings(ids_L, layout.position_ids_L, self.position)
        for i, layer in enumerate(self.layers):
            if self.checkpoint_every and i % self.checkpoint_every == 0 and torch.is_grad_enabled():
                x = checkpoint(layer, x, layout, self.position, cache, use_reentrant=False)
            else:
                x = layer(x, layout, self.position, cache)
        return self.final_norm(x), layout


def _check_kernel_available(cfg: ModelConfig) -> None:
    reason = KERNELS.get(cfg.attention.kernel).available()
    if reason:
        raise RuntimeError(f"model.attention.kernel={cfg.attention.kernel!r} cannot run here: "
                           f"{reason}. CPU-capable kernels: sdpa, flex")


class PredictionHead(nn.Module):
    """dense -> activation -> norm, shared by the MLM and classification heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.head.dense_bias)
        self.act = ACTIVATIONS.get(cfg.head.activation, "model.head.activation")()
        self.norm = build_norm(cfg.hidden_size, cfg.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class FlexBertPreTrained(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = FlexBertModel(cfg)

    def init_weights(self) -> None:
        INITS.get(self.config.init.type, "model.init.type")(self, self.config)
        self.tie_weights()

    def tie_weights(self) -> None:
        pass

    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        """Composer's FSDP and FSDP2 wrap policy: each encoder layer is its own unit (gathered
        just before it runs, freed after); embeddings, final norm and heads stay in this model's
        root unit, which keeps the tied decoder and token embeddings in one unit."""
        return any(module is layer for layer in self.model.layers)

    def num_parameters(self) -> int:
        """Unique parameters (a tied decoder counts once)."""
        return sum(p.numel() for p in self.parameters())


class FlexBertForMaskedLM(FlexBertPreTrained):
    """Encoder + MLM head + decoder tied to the token embeddings.

    With `sparse_prediction`, only positions whose label is not -100 reach the head: logits are
    [M, V] for those positions in row-major order. Otherwise logits come back in the caller's shape.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.head = PredictionHead(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.head.decoder_bias)
        self.init_weights()

    def tie_weights(self) -> None:
        if self.config.head.tie_word_embeddings:
            self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    def forward(self, input_ids, attention_mask=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, indices=None, prediction_indices=None,
                **unused) -> MaskedLMOutput:
        hidden_L, layout = self.model(input_ids, attention_mask, position_ids, cu_seqlens,
                                      max_seqlen, indices)
        if labels is None or not self.config.sparse_prediction:
            logits = self.decoder(self.head(hidden_L))
            loss = None
            if labels is not None:
                loss = F.cross_entropy(logits.flatten(0, -2).float(),
                                       layout.to_layout(labels).flatten(), ignore_index=-100)
            return MaskedLMOutput(loss=loss, logits=layout.to_rows(logits))
        labels_T = real_token_labels(labels, layout.indices_T)
        if prediction_indices is None:  # found here; costs a device sync
            prediction_indices = (labels_T != -100).nonzero().squeeze(1)
        rows = layout.rows_of_tokens(prediction_indices)
        logits = self.decoder(self.head(hidden_L.flatten(0, -2).index_select(0, rows)))
        loss = chunked_cross_entropy(logits, labels_T.index_select(0, prediction_indices))
        return MaskedLMOutput(loss=loss, logits=logits)


def real_token_labels(labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Labels of the real tokens [T], row-major: what `prediction_indices` index into, so
    `real_token_labels(...)[prediction_indices]` lines up with sparse logits."""
    return labels.flatten().index_select(0, indices)


class FlexBertForSequenceClassification(FlexBertPreTrained):
    """Encoder + pooling (one vector per document) + head + linear classifier."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        c = cfg.classifier
        self.pool = POOLINGS.get(c.pooling, "model.classifier.pooling")
        self.head = PredictionHead(cfg)
        self.drop = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, c.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cu_seqlens=None,
                max_seqlen=None, labels=None, **unused) -> SequenceClassifierOutput:
        hidden_L, layout = self.model(input_ids, attention_mask, position_ids, cu_seqlens, max_seqlen)
        pooled = self.pool(layout.to_tokens(hidden_L), layout.cu_seqlens)
        logits = self.classifier(self.drop(self.head(pooled)))
        loss = None if labels is None else classification_loss(logits, labels,
                                                                self.config.classifier.problem_type)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())
