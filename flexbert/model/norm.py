"""Normalisation layers by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from flexbert.registry import NORMS

if TYPE_CHECKING:  # annotations only: the config module imports the layers, not the reverse
    from flexbert.config import NormConfig


@NORMS.register("layernorm", "LayerNorm; `norm.bias: false` drops the bias (ModernBERT)")
def layernorm(dim: int, cfg: NormConfig) -> nn.Module:
    return nn.LayerNorm(dim, eps=cfg.eps, bias=cfg.bias)


@NORMS.register("rmsnorm", "RMSNorm (scale only; `norm.bias` is ignored)")
def rmsnorm(dim: int, cfg: NormConfig) -> nn.Module:
    return nn.RMSNorm(dim, eps=cfg.eps)


def build_norm(dim: int, cfg: NormConfig) -> nn.Module:
    return NORMS.get(cfg.type, "model.norm.type")(dim, cfg)
