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
