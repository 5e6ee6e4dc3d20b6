"""Training telemetry counted on real tokens: throughput and MFU, packing efficiency, and a
metrics.jsonl that scripts can read without parsing the console."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from flexbert.runtime.distributed import clip_grads_, grad_norm


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
    """The step's global L2 gradient norm, taken once after the last microbatch's backward
    (AFTER_TRAIN_BATCH, before the optimizer step), logged as `l2_norm/grad/global` and, when
    `clip` > 0, used to clip the gradients (torch's clip_grad_norm_ rule).

    Clipping lives here rather than in Composer's GradientClipping: callbacks run after the
    algorithms at each event, so a separate norm callback would see clipped gradients, and the
    clipper would take the same norm again. The norm sums squares over the ranks that hold
    different shards only (flexbert.runtime.distributed.grad_norm)."""

    def __init__(self, clip: float = 0.0, log: bool = True) -> None:
        self.clip, self.log = float(clip), log

    def after_train_batch(self, state: State, logger: Logger) -> None:
        norm = grad_norm(state.model)
        if norm is None:
            return
        if self.log:
            logger.log_metrics({"l2_norm/grad/global": float(norm)})
        if self.clip > 0:
            clip_grads_(state.model, norm, self.clip)


