"""Sequence pooling for classification: one vector per document."""

from __future__ import annotations

import torch

from flexbert.registry import POOLINGS


@POOLINGS.register("cls", "the first token of each document")
def cls_pool(hidden_T: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    return hidden_T[cu_seqlens[:-1].long()]


@POOLINGS.register("mean", "mean over each document's real tokens (padding never counted)")
def mean_pool(hidden_T: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    doc_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=hidden_T.device), lengths)
    sums = hidden_T.new_zeros(lengths.numel(), hidden_T.shape[-1]).index_add(0, doc_ids, hidden_T)
    return sums / lengths.clamp(min=1).unsqueeze(-1).to(hidden_T.dtype)
