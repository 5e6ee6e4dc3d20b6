"""Positional information: rotary (separate theta for global and local layers), learned absolute, none.

A positional module has two hooks: `embed` (added at the embeddings; only absolute uses it) and
`rotate` (applied to q and k in attention; only rotary uses it). `prepare` runs once per forward
and returns what `rotate` needs, so 22 layers share one cos/sin computation per theta.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

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


def inverse_frequencies(head_dim: int, theta: float, device: Optional[torch.device] = None
                        ) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@POSITIONS.register("rope", "rotary embeddings, non-interleaved, theta per global/local layer")
class Rotary(NoPosition):
    """Rotary embeddings whose frequencies always follow the config, always in float32.

    The inverse frequencies are computed from `position.global_theta` / `position.local_theta`
    where they are used, on the positions' device, and are never module state: a checkpoint
    never carries them (loading phase-1 weights into a model configured with a new theta really
    uses the new frequencies), and no wrapper can cast them. FSDP v1 mixed precision casts every
    floating buffer to `buffer_dtype` (bf16 under Composer's DEFAULT and PURE); bf16 frequencies
    at theta 160k put the angles pi off at position 8192.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.head_dim = cfg.head_dim
        self.global_theta = float(cfg.position.global_theta)
        self.local_theta = float(cfg.position.local_theta)

    @property
    def inv_freq_global(self) -> torch.Tensor:
        return inverse_frequencies(self.head_dim, self.global_theta)

    @property
    def inv_freq_local(self) -> torch.Tensor:
        return inverse_frequencies(self.head_dim, self.local_theta)

    def prepare(self, position_ids: torch.Tensor) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
        # A few tiny ops per forward (fused under compile), and no host-to-device copy.
        dim, device = self.head_dim, position_ids.device
        return {True: self._cos_sin(position_ids, inverse_frequencies(dim, self.global_theta, device)),
                False: self._cos_sin(position_ids, inverse_frequencies(dim, self.local_theta, device))}

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

