"""Positional information: rotary (separate theta for global and local layers), learned absolute, none.

A positional module has two hooks: `embed` (added at the embeddings; only absolute uses it) and
`rotate` (applied to q and k in attention; only rotary uses it). `prepare` runs once per forward
and returns what `rotate` needs, so 22 layers share one cos/sin computation per theta.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from flexbert.registry import POSITIONS

if TYPE_CHECKING:  # annotations only: the config module imports the layers, not the reverse
    from flexbert.config import ModelConfig


class NoPosition(nn.Module):
    """No positional information at all (a bag-of-tokens ablation)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()

    def embed(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x

    def prepare(self, position_ids: torch.Tensor) -> Any:
        return None

    def rotate(self, q, k, cache: Any, is_global: bool):
        return q, k


POSITIONS.register("none", "no positional information")(NoPosition)


@POSITIONS.register("absolute", "learned absolute position embeddings added to the token embeddings")
class AbsolutePosition(NoPosition):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def embed(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x + self.embeddings(position_ids)


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@POSITIONS.register("rope", "rotary embeddings, non-interleaved, theta per global/local layer")
class Rotary(NoPosition):
    """Rotary embeddings whose frequencies always follow the config.

    The inverse frequencies are non-persistent buffers computed from `position.global_theta` and
    `position.local_theta` at construction: a checkpoint never carries them, so loading phase-1
    weights into a model configured with a new theta really uses the new frequencies.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.register_buffer("inv_freq_global",
                             inverse_frequencies(cfg.head_dim, cfg.position.global_theta),
                             persistent=False)
        self.register_buffer("inv_freq_local",
                             inverse_frequencies(cfg.head_dim, cfg.position.local_theta),
                             persistent=False)

    def prepare(self, position_ids: torch.Tensor) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
        return {True: self._cos_sin(position_ids, self.inv_freq_global),
                False: self._cos_sin(position_ids, self.inv_freq_local)}

    @staticmethod
    def _cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor):
        # float32 angles: bf16 positions lose integer precision past 256.
        angles = position_ids.float()[..., None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1).unsqueeze(-2)  # broadcast over heads
        return angles.cos(), angles.sin()

    def rotate(self, q, k, cache, is_global: bool):
        cos, sin = cache[is_global]
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def build_position(cfg: ModelConfig) -> nn.Module:
    return POSITIONS.get(cfg.position.type, "model.position.type")(cfg)

