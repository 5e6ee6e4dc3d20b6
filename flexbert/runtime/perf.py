"""GPU figures in one place: the accelerators' peak FLOP/s and the model's FLOPs per token, read by
the trainer's MFU, `flexbert plan` and the benches."""

from __future__ import annotations

from typing import Any, Optional

import torch

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
