"""Weight initialisation schemes, applied once after the model is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch.nn as nn

from flexbert.registry import INITS

if TYPE_CHECKING:  # annotations only: the config module imports the layers, not the reverse
    from flexbert.config import ModelConfig

# Projections that write into the residual stream; megatron-style init shrinks them with depth so
# the stream's variance does not grow with the number of layers.
OUTPUT_PROJECTIONS = ("attn.Wo", "mlp.Wo")


def _is_output(name: str) -> bool:
    return any(name.endswith(suffix) for suffix in OUTPUT_PROJECTIONS)


def _reset_norms_and_biases(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            module.reset_parameters()
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


@INITS.register("megatron", "truncated normal (std, +-cutoff*std); output projections std/sqrt(2L)")
def megatron_init(model: nn.Module, cfg: ModelConfig) -> None:
    std, cutoff = cfg.init.std, cfg.init.cutoff_factor
    out_std = std / math.sqrt(2.0 * cfg.num_layers)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            s = out_std if _is_output(name) else std
            nn.init.trunc_normal_(module.weight, mean=0.0, std=s, a=-cutoff * s, b=cutoff * s)
    _reset_norms_and_biases(model)


@INITS.register("normal", "plain normal(0, std) for every weight matrix (BERT style)")
def normal_init(model: nn.Module, cfg: ModelConfig) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=cfg.init.std)
    _reset_norms_and_biases(model)
