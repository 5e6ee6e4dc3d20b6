"""Feed-forward blocks: plain two-layer MLP and gated (GLU) variants."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from flexbert.model.activations import ACTIVATIONS
from flexbert.registry import MLPS

if TYPE_CHECKING:  # annotations only: the config module imports the layers, not the reverse
    from flexbert.config import ModelConfig


@MLPS.register("mlp", "Wi -> act -> dropout -> Wo")
class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.mlp
        self.Wi = nn.Linear(cfg.hidden_size, m.intermediate_size, bias=m.bias)
        self.act = ACTIVATIONS.get(m.activation, "model.mlp.activation")()
        self.drop = nn.Dropout(m.dropout)
        self.Wo = nn.Linear(m.intermediate_size, cfg.hidden_size, bias=m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Wo(self.drop(self.act(self.Wi(x))))


@MLPS.register("glu", "Wi -> [input | gate] -> act(input) * gate -> dropout -> Wo (GeGLU with gelu)")
class GLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.mlp
        # One fused projection for input and gate: one matmul, and transformers' `Wi` layout.
        self.Wi = nn.Linear(cfg.hidden_size, 2 * m.intermediate_size, bias=m.bias)
        self.act = ACTIVATIONS.get(m.activation, "model.mlp.activation")()
        self.drop = nn.Dropout(m.dropout)
        self.Wo = nn.Linear(m.intermediate_size, cfg.hidden_size, bias=m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(value) * gate))
