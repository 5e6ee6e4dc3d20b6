"""Sharded training glue: `trainer.fsdp` -> Composer's FSDP (v1) or FSDP2 config, activation
checkpointing, and the few places that must see whole tensors (gradient norm, exported weights)
when each rank holds only a shard."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from composer.core import Callback
from torch import nn

if TYPE_CHECKING:
    from composer.core import State

    from flexbert.train.config import FsdpConfig, TrainerConfig

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
        from flexbert.train.builder import pick_device

        if optimizer == "stable_adamw" and pick_device(trainer) == "cpu":
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

def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


def grad_square_sum(model: nn.Module) -> Optional[torch.Tensor]:
    """Sum of squared gradient entries on this rank, with no communication. FSDP2 gradients are
    DTensors: their sum stays a DTensor (a pending cross-rank sum) that `whole_sum` resolves."""
    plain, sharded = [], []
    for p in model.parameters():
        if p.grad is not None:
            (sharded if _is_dtensor(p.grad) else plain).append(p.grad.detach().float().pow(2).sum())
    if not plain and not sharded:
        return None
    total = torch.stack(sharded).sum() if sharded else None
    if plain:
        local = torch.stack(plain).sum()
        total = local if total is None else total + local
    return total


def whole_sum(value: torch.Tensor, fsdp_version: int) -> torch.Tensor:
    """A per-rank partial sum made global: DTensors reduce over their own mesh (right for HSDP);
    FSDP v1 shards are plain tensors summed over all ranks; DDP gradients are already whole."""
    if _is_dtensor(value):
        return value.full_tensor()
    if fsdp_version == 1:
        from composer.utils import dist

        value = value.clone()
        dist.all_reduce(value, reduce_operation="SUM")
    return value


def full_model_state(state: "State") -> dict[str, torch.Tensor]:
    """The training model's full weights (FlexBERT names, on CPU) on rank 0 and {} on the other
    ranks. Under FSDP every rank must call it: the shards are gathered collectively."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(unwrap(state.model), options=options)
    return {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}


def unwrap(model: nn.Module) -> nn.Module:
    """The ComposerModel inside DDP (FSDP wraps its children instead, in place)."""
    return getattr(model, "module", model)


def export_model(state: "State") -> Optional[nn.Module]:
    """The model to export on rank 0 (None elsewhere). Without FSDP it is the training model
    itself; under FSDP a CPU copy with the gathered weights (every rank must call this)."""
    from composer.utils import dist

    model = unwrap(state.model).model
    if not state.fsdp_enabled:
        return model if dist.get_global_rank() == 0 else None
    weights = full_model_state(state)
    if dist.get_global_rank() != 0:
        return None
    model = getattr(model, "_fsdp_wrapped_module", model)  # FSDP v1 wraps it in place
    copy = _flexbert_class(model)(model.config)
    copy.load_state_dict(weights)
    return copy


def _flexbert_class(module: nn.Module) -> type:
    """FSDP2 swaps a sharded module's class for a subclass it makes; build the original one."""
    return next(c for c in type(module).__mro__ if c.__module__.startswith("flexbert."))


# --- gloo ----------------------------------------------------------------------------------------

def reduce_scatter_avg_sums() -> bool:
    """True when this process group's reduce-scatter silently sums for ReduceOp.AVG (gloo in
    torch 2.7 does), so FSDP2 gradients would come out world-size times too large."""
    import torch.distributed as tdist

    world = tdist.get_world_size()
    out = torch.empty(1)
    try:
        tdist.reduce_scatter_tensor(out, torch.ones(world), op=tdist.ReduceOp.AVG)
    except (RuntimeError, ValueError):
        return False
    return abs(out.item() - 1.0) > 1e-6


class GlooGradientAverage(Callback):
    """Makes FSDP2 on CPU (gloo) average gradients over ranks as DDP does: where the backend
    sums instead, each FSDP2 unit divides its reduce-scatter output by the world size (FSDP2's
    public post-reduce hook). A no-op under DDP, FSDP v1 and on NCCL."""

    def fit_start(self, state: "State", logger: Any) -> None:
        import torch.distributed as tdist
        from torch.distributed.fsdp import FSDPModule

        if state.fsdp_config_version != 2 or tdist.get_backend() != "gloo":
            return
        if not reduce_scatter_avg_sums():
            return
        world = tdist.get_world_size()
        for module in state.model.modules():
            if isinstance(module, FSDPModule):
                module.set_all_reduce_hook(lambda grads: grads.div_(world))
        log.info("gloo sums where FSDP2 asks for a mean: gradients divided by %d after reduction",
                 world)
