"""Training telemetry counted on real tokens: throughput and MFU, packing efficiency, and a
metrics.jsonl that scripts can read without parsing the console."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from typing import Any, Callable, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from flexbert.train.fsdp import clip_grads_, grad_norm

# Dense bf16 peak FLOP/s by device-name substring (first match wins). Unknown devices log no MFU.
PEAK_FLOPS = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
    ("L40S", 362e12), ("A10G", 125e12), ("L4", 121e12), ("4090", 165e12), ("V100", 125e12),
)


def device_peak_flops() -> Optional[float]:
    """Peak of this rank's accelerator, or None on CPU and unknown GPUs."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


def flops_per_token(cfg: Any, seq_len: int, mask_rate: float) -> float:
    """Training FLOPs per real token (forward + backward = 3x forward, 2 FLOPs per MAC).

    Matmuls: qkv + out (4 d^2), GLU in/out (3 d i) per layer, the head's dense (d^2) and the tied
    decoder (d V) on masked tokens only; attention scores and values (2 d span) per layer, where
    the span is the local window or, for global layers, the packed row length (an upper bound).
    """
    d, inter, layers = cfg.hidden_size, cfg.mlp.intermediate_size, cfg.num_layers
    window = cfg.attention.local_window or seq_len
    span = sum(seq_len if cfg.is_global_layer(i) else min(window, seq_len) for i in range(layers))
    macs = layers * (4 * d * d + 3 * d * inter) + 2 * d * span + mask_rate * (d * d + d * cfg.vocab_size)
    return 6.0 * macs


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
    different shards only (flexbert.train.fsdp.grad_norm)."""

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


class MetricsJSONL(LoggerDestination):
    """One JSON object per training step in `path` (rank 0): step, tokens, loss, lr, time (unix
    seconds), then every
    other metric logged during that step under its Composer name. Eval metrics join the step they
    ran after. Appends, so a resumed run continues the same file (a step redone after a crash
    appears twice; the later line is the one that counts). Non-finite values are kept (written as
    NaN / Infinity, which Python's json reads): a diverging run must show where it diverged."""

    def __init__(self, path: str, upload: Optional[Callable[[str], None]] = None):
        super().__init__()
        self.path = path
        self.upload = upload
        self.pending: dict[str, Any] = {}

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().float().item() if value.numel() == 1 else None
            if isinstance(value, (int, float)):
                self.pending[key] = value

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self.flush(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        self.flush(state)
        if self.upload is not None and dist.get_global_rank() == 0 and os.path.exists(self.path):
            self.upload(self.path)

    def flush(self, state: State) -> None:
        if dist.get_global_rank() != 0 or "loss/train/total" not in self.pending:
            self.pending.clear()
            return
        lr = next((v for k, v in sorted(self.pending.items()) if k.startswith("lr-")), None)
        row = {"step": int(state.timestamp.batch), "tokens": int(state.timestamp.token),
               "loss": self.pending["loss/train/total"], "lr": lr, "time": time.time()}
        row.update({k: v for k, v in self.pending.items() if not k.startswith("time/")})
        self.pending.clear()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl, one per step: later lines for a step update the earlier ones
    (a redone step, or downstream results written when their evaluation finished)."""
    rows: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = {**rows.get(row["step"], {}), **row}
    return [rows[k] for k in sorted(rows)]
