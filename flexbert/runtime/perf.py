"""GPU figures in one place: the accelerators' peak FLOP/s and the model's training FLOPs, read
by the trainer's MFU, `flexbert plan` and the benches (which never keep their own copies)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

# Dense bf16 tensor-core peaks in FLOP/s (no sparsity), from the vendors' data sheets, matched
# by substring of the device name; the most specific names come first.
PEAK_FLOPS = (
    ("H200", 989.4e12), ("H100 NVL", 835.0e12), ("H100 PCIe", 756.0e12), ("H100", 989.4e12),
    ("A100", 312.0e12), ("L40S", 362.1e12), ("A10G", 70.0e12), ("L4", 121.0e12),
    ("4090", 165.2e12), ("V100", 125.0e12),
)


def peak_flops(device_name: str) -> Optional[float]:
    """The dense bf16 peak of a device by name, or None when it is not in the table."""
    return next((flops for key, flops in PEAK_FLOPS if key in device_name), None)


def device_peak_flops() -> Optional[float]:
    """Peak of this rank's accelerator, or None on CPU and unknown GPUs (then no MFU is logged)."""
    if not torch.cuda.is_available():
        return None
    return peak_flops(torch.cuda.get_device_name())


def linear_flops(cfg: Any, tokens: int, masked: int) -> float:
    """Training (forward + backward = 3 x forward, 2 FLOPs per MAC) matmul FLOPs: the encoder's
    qkv, output and GLU projections on every token; the MLM head's dense layer and the tied
    decoder on the tokens that reach the head (the masked ones under sparse prediction)."""
    d, inter = cfg.hidden_size, cfg.mlp.intermediate_size
    per_token = cfg.num_layers * (4 * d * d + 3 * d * inter)
    head_tokens = masked if cfg.sparse_prediction else tokens
    return 6.0 * (per_token * tokens + (d * d + d * cfg.vocab_size) * head_tokens)


def window_pairs(n: int, half_window: int) -> int:
    """(query, key) pairs a local layer attends in an n-token document: each token sees up to
    half_window keys on each side, and itself."""
    w = half_window
    if n <= w + 1:
        return n * n
    before = sum(min(t, w) for t in range(min(n, w))) + w * max(0, n - w)
    return n + 2 * before


def step_flops(cfg: Any, lengths: Sequence[int], masked: int) -> float:
    """Model FLOPs of one training step over documents of these lengths, the MFU numerator:
    matmuls plus 12 x hidden per attended (query, key) pair (QK^T and PV, forward + backward),
    pairs counted per document (global layers n^2, local layers within the window)."""
    half = cfg.attention.local_window // 2
    pairs = sum(sum(n * n for n in lengths) if cfg.is_global_layer(i)
                else sum(window_pairs(n, half) for n in lengths) for i in range(cfg.num_layers))
    return linear_flops(cfg, sum(lengths), masked) + 12.0 * cfg.hidden_size * pairs


def flops_per_token(cfg: Any, seq_len: int, mask_rate: float) -> float:
    """Training FLOPs per real token for packed rows of `seq_len` tokens, counting a global
    layer's attention over the whole row (an upper bound when a row holds several documents)."""
    return step_flops(cfg, [seq_len], mask_rate * seq_len) / seq_len
