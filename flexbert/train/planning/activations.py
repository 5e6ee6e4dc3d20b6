"""Activation memory of one training microbatch, measured rather than guessed: the MLM forward
(loss included) runs under saved-tensor hooks and every tensor autograd keeps for the backward is
counted once, by storage. On the meta device nothing is allocated, so a base-model microbatch of
8192-token rows is measured on a laptop in a second (`flexbert plan`).

The attention kernel is replaced by a stand-in that keeps what fused kernels (flash-attn,
FlexAttention) keep for their backward: q, k, v, the output and a float32 log-sum-exp per head
and token, never a score matrix. Everything else is the model's own code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


class _FusedAttention(torch.autograd.Function):
    """Shapes and saved tensors of a fused attention kernel; values are zeros (never trained)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(q)
        lse = q.new_zeros(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def fused_attention_stand_in(q, k, v, layout, window, dropout_p) -> torch.Tensor:
    return _FusedAttention.apply(q, k, v)


@dataclass
class ActivationBytes:
    """Bytes autograd keeps between forward and backward for one microbatch."""

    total: int
    layers: list[int]          # saved while each encoder layer ran
    layer_inputs: list[int]    # each layer's input: what activation checkpointing keeps instead

    @property
    def checkpointed(self) -> int:
        """With every layer checkpointed: the rest of the model, each layer's input, and one
        layer's activations while it is recomputed in the backward."""
        outside = self.total - sum(self.layers)
        return outside + sum(self.layer_inputs) + max(self.layers, default=0)


def _storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage (views share it); works for meta tensors too."""
    storage = t.untyped_storage()
    return getattr(storage, "_cdata", None) or id(storage)


def measure_activations(model: torch.nn.Module, batch: dict) -> ActivationBytes:
    """Run `model(**batch)` (an MLM model computing its loss) and count saved storages."""
    params = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in seen and key not in params:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    layers: list[int] = []
    inputs: list[int] = []

    def before(module, args):
        layers.append(-total[0])
        inputs.append(args[0].numel() * args[0].element_size())

    def after(module, args, output):
        layers[-1] += total[0]

    handles = []
    for layer in model.model.layers:
        handles += [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**batch)
        assert out.loss is not None
    finally:
        for h in handles:
            h.remove()
    return ActivationBytes(total[0], layers, inputs)


def packed_batch(rows: int, seq_len: int, mask_rate: float, vocab: int, device: str) -> dict:
    """A fully packed batch (one document per row, as long as the row), `mask_rate` of its tokens
    masked, with the collator's host-side indices so the step has no data-dependent shapes."""
    import numpy as np

    from flexbert.data import collate_rows, token_indices

    c = collate_rows([[np.arange(seq_len) % vocab] for _ in range(rows)], seq_len, 0)
    batch = {k: torch.as_tensor(v) for k, v in c.items() if isinstance(v, np.ndarray)}
    n = batch["input_ids"].numel()
    masked = torch.zeros(n, dtype=torch.bool)
    masked[torch.linspace(0, n - 1, max(1, round(mask_rate * n))).long()] = True
    batch["labels"] = torch.where(masked.view_as(batch["input_ids"]), batch["input_ids"], -100)
    batch.update(token_indices(batch["attention_mask"], batch["labels"]))
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["max_seqlen"] = c["max_seqlen"]
    return batch


def build_for_measurement(model_cfg: Any, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """The MLM model with the fused-attention stand-in (built with the always-available sdpa
    kernel so a GPU-only kernel in the recipe does not stop a plan on a laptop)."""
    from flexbert.model import FlexBertForMaskedLM

    attention = dataclasses.replace(model_cfg.attention, kernel="sdpa", dropout=0.0)
    cfg = dataclasses.replace(model_cfg, attention=attention)
    with torch.device(device):
        model = FlexBertForMaskedLM(cfg)
    model.to(dtype)
    for module in model.modules():
        if hasattr(module, "kernel") and callable(module.kernel):
            module.kernel = fused_attention_stand_in
    return model


def count_parameters(model_cfg: Any) -> int:
    """Unique parameters of the MLM model (a tied decoder counts once), on the meta device."""
    return build_for_measurement(model_cfg, "meta", torch.float32).num_parameters()


def activation_bytes(model_cfg: Any, rows: int, seq_len: int, mask_rate: float,
                     device: str = "meta", dtype: torch.dtype = torch.bfloat16) -> ActivationBytes:
    """Measured activation memory of a `rows` x `seq_len` microbatch."""
    model = build_for_measurement(model_cfg, device, dtype)
    batch = packed_batch(rows, seq_len, mask_rate, model_cfg.vocab_size, device)
    return measure_activations(model, batch)
