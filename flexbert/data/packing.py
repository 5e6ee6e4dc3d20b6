"""Greedy best-fit packing of documents into rows, and the packed batch's attention metadata.

A packed batch keeps documents apart only through `position_ids` / `cu_seqlens`, so every helper
here recomputes them from the rows rather than trusting stale copies.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Optional, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


def best_fit(lengths: Sequence[int], priority: Sequence[bool], n_rows: int, row_len: int,
             tie_break: Optional[Sequence[float]] = None, longest_first: bool = True):
    """Place pieces (each <= row_len) into rows, tightest fitting row first, longest piece first
    (or, with `longest_first=False`, in `tie_break` order whatever their length).

    Pieces flagged in `priority` (they waited too long) go before all others, which bounds how
    long any piece can be left over. Pieces of equal length go in `tie_break` order (default:
    as given). Returns (row index per piece or -1, tokens per row).
    """
    ties = tie_break if tie_break is not None else range(len(lengths))
    sign = -1 if longest_first else 0
    order = sorted(range(len(lengths)), key=lambda i: (not priority[i], sign * lengths[i], ties[i], i))
    free = [(row_len, r) for r in range(n_rows)]  # sorted by remaining capacity, then row
    where = [-1] * len(lengths)
    for i in order:
        n = lengths[i]
        j = bisect_left(free, (n, -1))
        if j == len(free):
            continue
        cap, r = free.pop(j)
        where[i] = r
        if cap - n > 0:
            insort(free, (cap - n, r))
        if not free:
            break
    used = [0] * n_rows
    for i, r in enumerate(where):
        if r >= 0:
            used[r] += lengths[i]
    return where, used


def collate_rows(rows: Sequence[Sequence[np.ndarray]], row_len: int, pad_id: int) -> dict:
    """Lay out rows of documents left-aligned in [B, S], pads at the end of each row.

    `cu_seqlens` runs over the real tokens of the whole batch in row-major order, which is the
    order `input_ids[attention_mask.bool()]` produces.
    """
    docs = [d for row in rows for d in row]
    lens = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    row_tokens = np.array([sum(len(d) for d in row) for row in rows], dtype=np.int64)
    flat = np.concatenate(docs).astype(np.int64) if docs else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)])
    mask = np.arange(row_len)[None, :] < row_tokens[:, None]
    ids = np.full((len(rows), row_len), pad_id, dtype=np.int64)
    ids[mask] = flat
    pos = np.zeros_like(ids)
    pos[mask] = np.arange(len(flat)) - np.repeat(starts[:-1], lens)
    return {"input_ids": ids, "attention_mask": mask.astype(np.int64), "position_ids": pos,
            "cu_seqlens": starts.astype(np.int32), "max_seqlen": int(lens.max()) if len(lens) else 0}


def token_indices(attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict:
    """Where the real tokens are, worked out on the host so the model's step needs no device sync.

    `indices`: flat [B * S] positions of real tokens (row-major), what the model unpads with.
    `prediction_indices`: positions within those real tokens whose label is not -100, what sparse
    prediction gathers. Both have host-known lengths, so every shape in the step is known up front.
    """
    indices = attention_mask.flatten().nonzero().squeeze(1)
    out = {"indices": indices}
    if labels is not None:
        out["prediction_indices"] = (labels.flatten()[indices] != -100).nonzero().squeeze(1)
    return out


def cu_seqlens_from_positions(position_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Document offsets over real tokens: a document starts wherever its position id is 0."""
    pos = position_ids[attention_mask.bool()]
    starts = torch.nonzero(pos == 0).flatten()
    total = torch.tensor([pos.numel()], device=pos.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return cu, max_len


def split_packed_batch(batch: dict, microbatch_size: Optional[int] = None, num_microbatches: Optional[int] = None):
    """Split along rows for gradient accumulation (composer's `split_batch` signature).

    Each chunk gets its own `cu_seqlens` and `max_seqlen`; slicing the batch-wide ones would
    point attention at tokens that are no longer in the chunk.
    """
    rows = batch["input_ids"].shape[0]
    if num_microbatches is not None:
        microbatch_size = -(-rows // num_microbatches)
    if microbatch_size is None or microbatch_size < 1:
        raise ValueError(f"split_packed_batch: microbatch_size must be >= 1, got {microbatch_size}")
    size = int(microbatch_size)
    return [_row_slice(batch, start, min(start + size, rows)) for start in range(0, rows, size)]


def _row_slice(batch: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) with recomputed document metadata; non-row entries are recomputed or dropped."""
    out = {k: v[start:stop] for k, v in batch.items()
           if isinstance(v, torch.Tensor) and v.dim() == 2}
    out["cu_seqlens"], out["max_seqlen"] = cu_seqlens_from_positions(out["position_ids"], out["attention_mask"])
    if "indices" in batch:
        out.update(token_indices(out["attention_mask"], out.get("labels")))
    return out


def num_tokens(batch: dict) -> int:
    """Real (non-pad) tokens: what a token budget should count, per composer's DataSpec hook."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def token_counts(batch: dict) -> dict[str, int]:
    """Composer's token counts for a batch: real tokens advance the clock; masked tokens weight
    microbatches and ranks, so a step's loss is the mean over every masked token of the global
    batch (Composer's "loss_generating" count).

    Composer asks for these on every microbatch after it is on the device (before each
    forward): the sizes of the collator's `indices` / `prediction_indices` are host ints, where
    summing the mask or the labels would stall the host on a GPU twice per microbatch."""
    if "indices" in batch and "prediction_indices" in batch:
        return {"total": batch["indices"].numel(),
                "loss_generating": batch["prediction_indices"].numel()}
    return {"total": num_tokens(batch), "loss_generating": int((batch["labels"] != -100).sum())}


def num_samples(batch: dict) -> int:
    """Rows in a padded batch, documents in a 1-D batch."""
    if batch["input_ids"].dim() == 2:
        return int(batch["input_ids"].shape[0])
    return int(batch["cu_seqlens"].numel() - 1)


def packing_efficiency(batch: dict) -> float:
    """Fraction of the [B, S] slots that hold real tokens."""
    return num_tokens(batch) / max(batch["input_ids"].numel(), 1)


def unpad_batch(batch: dict) -> dict:
    """The 1-D form: real tokens only ([T]) with `cu_seqlens`/`max_seqlen`, for unpadded models."""
    real = batch["attention_mask"].bool()
    out = {k: batch[k][real] for k in ("input_ids", "labels", "position_ids") if k in batch}
    out["cu_seqlens"], out["max_seqlen"] = cu_seqlens_from_positions(batch["position_ids"], batch["attention_mask"])
    if "labels" in out:
        out["prediction_indices"] = (out["labels"] != -100).nonzero().squeeze(1)
    return out
