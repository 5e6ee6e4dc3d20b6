"""Token embeddings, optional absolute positions, norm and dropout."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from flexbert.model.norm import build_norm
from flexbert.registry import EMBEDDINGS

if TYPE_CHECKING:  # annotations only: the config module imports the layers, not the reverse
    from flexbert.config import ModelConfig


@EMBEDDINGS.register("token", "token table (+ absolute positions if configured) -> norm -> dropout")
class TokenEmbeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # padding_idx keeps the pad row's gradient at zero, as transformers' ModernBERT does.
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                           padding_idx=cfg.pad_token_id)
        self.norm = build_norm(cfg.hidden_size, cfg.norm) if cfg.embeddings.norm else nn.Identity()
        self.drop = nn.Dropout(cfg.embeddings.dropout)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                position: nn.Module) -> torch.Tensor:
        x = position.embed(self.tok_embeddings(input_ids), position_ids)
        return self.drop(self.norm(x))
