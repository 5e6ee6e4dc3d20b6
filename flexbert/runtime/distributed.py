"""Whole tensors from shards: the few places that must see a full gradient or full weights when
each rank holds only a shard (gradient norm, exported and published weights)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from composer.core import State


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
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

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
