"""Sharded training glue: `trainer.fsdp` -> Composer's FSDP (v1) or FSDP2 config, activation
checkpointing, and the few places that must see whole tensors (gradient norm, exported weights)
when each rank holds only a shard."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

from torch import nn

if TYPE_CHECKING:

    from flexbert.train.recipe.schema import FsdpConfig, TrainerConfig

log = logging.getLogger(__name__)

V1_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
# FSDP2 has one knob for this: whether parameters are freed again after the forward.
V2_RESHARD_AFTER_FORWARD = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}
STATE_DICT_TYPES = ("full", "sharded")
MIXED_PRECISIONS = ("DEFAULT", "PURE", "FULL")
BACKWARD_PREFETCH = ("BACKWARD_PRE", "BACKWARD_POST", "NONE")
# FsdpConfig keys that only FSDP v1 reads, with their defaults (set under v2 = an error).
V1_ONLY = {"cpu_offload": False, "limit_all_gathers": True, "forward_prefetch": False,
           "backward_prefetch": "BACKWARD_POST", "sync_module_states": False,
           "data_parallel_shard_degree": -1, "data_parallel_replicate_degree": None}


def _choice(fail: Callable[[str, str], None], key: str, value: Any, allowed) -> None:
    if value not in allowed:
        fail(f"trainer.fsdp.{key}", f"{value!r}; allowed: {', '.join(map(str, allowed))}")


def validate_fsdp(trainer: "TrainerConfig", optimizer: str,
                  fail: Callable[[str, str], None]) -> None:
    """Check `trainer.fsdp` before anything is built; `fail(key, message)` raises."""
    cfg = trainer.fsdp
    _choice(fail, "version", cfg.version, (1, 2))
    strategies = V1_STRATEGIES if cfg.version == 1 else tuple(V2_RESHARD_AFTER_FORWARD)
    _choice(fail, "sharding_strategy", cfg.sharding_strategy, strategies)
    _choice(fail, "state_dict_type", cfg.state_dict_type, STATE_DICT_TYPES)
    _choice(fail, "mixed_precision", cfg.mixed_precision, MIXED_PRECISIONS)
    _choice(fail, "backward_prefetch", cfg.backward_prefetch, BACKWARD_PREFETCH)
    if cfg.version == 2:
        for key, default in V1_ONLY.items():
            if getattr(cfg, key) != default:
                fail(f"trainer.fsdp.{key}", "exists only in FSDP version 1 (trainer.fsdp.version: 1)")
        if trainer.device_train_microbatch_size == "auto":
            fail("trainer.device_train_microbatch_size", "'auto' needs trainer.fsdp.version: 1 "
                 "(Composer's FSDP2 has no automatic microbatching); set an int")
        from flexbert.runtime.device import pick_device

        if optimizer == "stable_adamw" and pick_device(trainer.device) == "cpu":
            # Its per-tensor RMS is a mean over a sharded tensor: an AVG all-reduce, which
            # gloo does not implement (NCCL does).
            fail("optimizer.name", "stable_adamw cannot run under trainer.fsdp.version: 2 on "
                 "CPU (gloo has no AVG all-reduce); use decoupled_adamw there")
    if cfg.load_monolith_rank0_only and cfg.state_dict_type != "full":
        fail("trainer.fsdp.load_monolith_rank0_only", "needs trainer.fsdp.state_dict_type: full")


def composer_fsdp(cfg: Optional["FsdpConfig"], device: str) -> Optional[Any]:
    """Composer's FSDPConfig / FSDP2Config for `trainer.fsdp`, or None for DDP (no FSDP asked,
    or version 1 on CPU, which torch's FullyShardedDataParallel cannot run)."""
    if cfg is None:
        return None
    from composer.utils.parallelism import FSDP2Config, FSDPConfig

    if cfg.version == 1 and device != "gpu":
        log.warning("trainer.fsdp version 1 needs GPUs; running with DDP on CPU "
                    "(trainer.fsdp.version: 2 runs sharded on CPU too)")
        return None
    common = dict(state_dict_type=cfg.state_dict_type, mixed_precision=cfg.mixed_precision,
                  load_monolith_rank0_only=cfg.load_monolith_rank0_only, verbose=cfg.verbose)
    if cfg.version == 2:
        return FSDP2Config(reshard_after_forward=V2_RESHARD_AFTER_FORWARD[cfg.sharding_strategy],
                           **common)
    return FSDPConfig(sharding_strategy=cfg.sharding_strategy, use_orig_params=True,
                      **{key: getattr(cfg, key) for key in V1_ONLY}, **common)


def apply_activation_checkpointing(model: nn.Module, every_n: int) -> None:
    """Recompute every n-th encoder layer's activations in the backward (0: off). The encoder
    wraps those layer calls in non-reentrant torch.utils.checkpoint, outside the layer's own
    FSDP hooks, so it works alike under DDP, FSDP and FSDP2 and in both batch layouts."""
    encoder = getattr(model, "model", model)
    encoder.checkpoint_every = int(every_n)


# --- whole tensors from shards -------------------------------------------------------------------


# --- gloo ----------------------------------------------------------------------------------------


