"""Training telemetry counted on real tokens: throughput and MFU, packing efficiency, and a
metrics.jsonl that scripts can read without parsing the console."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from flexbert.runtime.distributed import grad_square_sum, whole_sum


class Throughput(Callback):
    """tokens/s and samples/s over a sliding window of steps, from Composer's all-reduced counters
    (real, non-padding tokens as the data spec reports them), and MFU when the peak is known."""

    def __init__(self, window_size: int = 20, flops_per_token: Optional[float] = None,
                 peak_flops: Optional[float] = None):
        self.window: deque = deque(maxlen=max(1, window_size))
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops

    def batch_end(self, state: State, logger: Logger) -> None:
        now, before = state.timestamp, state.previous_timestamp
        if before is None:
            return
        tokens = int(now.token) - int(before.token)
        samples = int(now.sample) - int(before.sample)
        seconds = now.batch_wct.total_seconds()
        self.window.append((tokens, samples, seconds))
        tok, smp, sec = (sum(x) for x in zip(*self.window))
        if sec <= 0:
            return
        world = dist.get_world_size()
        metrics = {"throughput/tokens_per_sec": tok / sec, "throughput/samples_per_sec": smp / sec,
                   "throughput/device/tokens_per_sec": tok / sec / world}
        if self.flops_per_token and self.peak_flops:
            metrics["throughput/mfu"] = tok / sec / world * self.flops_per_token / self.peak_flops
        logger.log_metrics(metrics)

    def state_dict(self) -> dict:
        return {}


class PackingEfficiency(Callback):
    """Real tokens over row capacity for this rank's batch: how much compute padding wastes."""

    def __init__(self, efficiency: Callable[[Any], float]):
        self.efficiency = efficiency

    def after_dataloader(self, state: State, logger: Logger) -> None:
        logger.log_metrics({"data/packing_efficiency": float(self.efficiency(state.batch))})


class GradNorm(Callback):
    """Global L2 norm of the gradient before clipping. Gradients accumulate over microbatches,
    so the norm taken after the last backward is the step's; Composer's clipping runs later (at
    AFTER_TRAIN_BATCH). Under FSDP each rank holds a shard: squares are summed locally per
    microbatch and over ranks once per step (flexbert.train.distributed.fsdp)."""

    def __init__(self) -> None:
        self.last: Optional[torch.Tensor] = None

    def after_backward(self, state: State, logger: Logger) -> None:
        squares = grad_square_sum(state.model)
        if squares is not None:
            self.last = squares

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.last is None:
            return
        squares = whole_sum(self.last, state.fsdp_config_version)
        logger.log_metrics({"l2_norm/grad/global": float(squares.sqrt())})
        self.last = None


