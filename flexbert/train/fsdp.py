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


def grad_norm(model: nn.Module) -> Optional[torch.Tensor]:
    """Global L2 norm of the gradients (a float32 scalar, equal on every rank), or None when no
    parameter has one. Each rank sums the squares of what it holds (one fused norm per device
    and dtype); only ranks holding *different* shards are summed over (`shard_groups`), so the
    replicas of HYBRID_SHARD / a 2-D FSDP2 mesh and DDP's whole copies are not counted twice."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    sharded = [g.to_local() for g in grads if _is_dtensor(g)]
    plain = [g for g in grads if not _is_dtensor(g)]
    fsdp1 = _fsdp1_root(model)
    shard_squares = _square_sum(sharded + (plain if fsdp1 is not None else []))
    whole_squares = _square_sum(plain if fsdp1 is None else [])
    if shard_squares is not None:
        for group in shard_groups(model, next((g for g in grads if _is_dtensor(g)), None), fsdp1):
            shard_squares = shard_squares.clone()
            torch.distributed.all_reduce(shard_squares, group=group)
    total = sum(x for x in (shard_squares, whole_squares) if x is not None)
    return total.sqrt()


def clip_grads_(model: nn.Module, norm: torch.Tensor, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_'s rule with the norm already taken: scale every gradient
    (each rank its own shard, in place) by min(1, max_norm / (norm + 1e-6))."""
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    grads = [p.grad.to_local() if _is_dtensor(p.grad) else p.grad
             for p in model.parameters() if p.grad is not None]
    for group in _by_device_and_dtype(grads).values():
        torch._foreach_mul_(group, coef.to(group[0].device))


def _by_device_and_dtype(tensors: list) -> dict:
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t.detach())
    return groups


def _square_sum(tensors: list) -> Optional[torch.Tensor]:
    if not tensors:
        return None
    parts = [_group_square_sum(group) for group in _by_device_and_dtype(tensors).values()]
    return torch.stack([p.to(parts[0].device) for p in parts]).sum()


def _group_square_sum(group: list) -> torch.Tensor:
    # CUDA: one fused norm per group (tree reductions). CPU norm kernels accumulate serially
    # (4e-6 relative error on 0.5M entries, enough to tell a sharded run from DDP), while
    # sum() is cascaded: per-tensor squares there.
    if group[0].device.type == "cuda":
        return torch.stack(torch._foreach_norm(group)).float().pow(2).sum()
    return torch.stack([t.float().square().sum() for t in group]).sum()


def _fsdp1_root(model: nn.Module) -> Optional[nn.Module]:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return next((m for m in model.modules() if isinstance(m, FullyShardedDataParallel)), None)


def shard_groups(model: nn.Module, dtensor_grad: Optional[torch.Tensor],
                 fsdp1: Optional[nn.Module]) -> list:
    """Process groups to sum per-rank square sums over. FSDP2: the mesh dimensions a gradient is
    sharded on (the second of a (replicate, shard) mesh); FSDP v1: the module's `process_group`
    (for HYBRID_SHARD torch keeps the intra-node shard group there, the replicas in
    `_inter_node_pg`), none for NO_SHARD; DDP: none (gradients are whole)."""
    if dtensor_grad is not None:
        mesh = dtensor_grad.device_mesh
        return [mesh.get_group(dim) for dim, placement in enumerate(dtensor_grad.placements)
                if placement.is_shard()]
    if fsdp1 is not None:
        from torch.distributed.fsdp import ShardingStrategy

        if fsdp1.sharding_strategy == ShardingStrategy.NO_SHARD:
            return []
        return [fsdp1.process_group]
    return []


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
