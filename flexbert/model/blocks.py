"""Transformer layers: where the norms sit relative to the residual stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from flexbert.model.attention import ATTENTIONS
from flexbert.model.mlp import MLPS
from flexbert.model.norm import build_norm
from flexbert.model.attention.layout import Layout
from flexbert.registry import LAYERS

if TYPE_CHECKING:  # annotations only: the config module imports the layers, not the reverse
    from flexbert.config import ModelConfig


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        skip_first = layer_index == 0 and not cfg.first_layer_attn_norm and cfg.layer != "postnorm"
        self.attn_norm = nn.Identity() if skip_first else build_norm(cfg.hidden_size, cfg.norm)
        self.attn = ATTENTIONS.get(cfg.attention.type, "model.attention.type")(cfg, layer_index)
        self.mlp_norm = build_norm(cfg.hidden_size, cfg.norm)
        self.mlp = MLPS.get(cfg.mlp.type, "model.mlp.type")(cfg)


@LAYERS.register("prenorm", "x + attn(norm(x)), then x + mlp(norm(x)) (ModernBERT)")
class PreNormLayer(_Block):
    def forward(self, x: torch.Tensor, layout: Layout, position, cache) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), layout, position, cache)
        return x + self.mlp(self.mlp_norm(x))


@LAYERS.register("postnorm", "norm(x + attn(x)), then norm(x + mlp(x)) (original BERT)")
class PostNormLayer(_Block):
    def forward(self, x: torch.Tensor, layout: Layout, position, cache) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, layout, position, cache))
        return self.mlp_norm(x + self.mlp(x))


@LAYERS.register("parallel", "x + attn(norm(x)) + mlp(norm(x)) from one shared norm (GPT-J style)")
class ParallelLayer(_Block):
    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__(cfg, layer_index)
        self.mlp_norm = nn.Identity()  # the attention norm feeds both branches

    def forward(self, x: torch.Tensor, layout: Layout, position, cache) -> torch.Tensor:
        h = self.attn_norm(x)
        return x + self.attn(h, layout, position, cache) + self.mlp(h)
