"""Multi-head self-attention: fused qkv projection + positional rotation + a pluggable kernel.

One class serves global and local layers and both layouts; the kernel and the layout metadata
absorb every difference, so there is no attention class per combination.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from flexbert.model.attention.kernels import KERNELS
from flexbert.model.attention.layout import Layout
from flexbert.registry import ATTENTIONS

if TYPE_CHECKING:  # annotations only: the config module imports the layers, not the reverse
    from flexbert.config import ModelConfig


@ATTENTIONS.register("mha", "fused-qkv multi-head attention; global or sliding-window by layer index")
class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        a = cfg.attention
        self.num_heads = a.num_heads
        self.head_dim = cfg.head_dim
        self.is_global = cfg.is_global_layer(layer_index)
        self.window = None if self.is_global else a.local_window // 2
        self.dropout = a.dropout
        self.kernel = KERNELS.get(a.kernel, "model.attention.kernel")
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=a.qkv_bias)
        self.Wo = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=a.out_bias)
        self.out_drop = nn.Dropout(a.out_dropout)

    def forward(self, x: torch.Tensor, layout: Layout, position: nn.Module,
                position_cache) -> torch.Tensor:
        qkv = self.Wqkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(dim=-3)
        q, k = position.rotate(q, k, position_cache, self.is_global)
        dropout_p = self.dropout if self.training else 0.0
        out = self.kernel(q, k, v, layout, self.window, dropout_p)
        return self.out_drop(self.Wo(out.flatten(-2)))

    def extra_repr(self) -> str:
        kind = "global" if self.is_global else f"local(+-{self.window})"
        return f"heads={self.num_heads}, head_dim={self.head_dim}, {kind}"
