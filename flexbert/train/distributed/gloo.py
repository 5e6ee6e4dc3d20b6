"""FSDP2 on CPU (gloo): make gradients an average over ranks, as NCCL and DDP do."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from composer.core import Callback

if TYPE_CHECKING:
    from composer.core import State

log = logging.getLogger(__name__)


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
