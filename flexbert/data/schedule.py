"""Batch-size warmup: rows per step grow linearly with tokens seen, from a minimum to the full batch.

The rows of step k depend only on k (tokens are counted as full rows), so every worker, rank and
resumed run agrees on the batch shape without talking to each other.
"""

from __future__ import annotations

from typing import Optional


class RowSchedule:
    """rows(k) for a device; tokens counted globally (rows x max_seq_len x world size)."""

    def __init__(self, device_batch_size: int, max_seq_len: int, world_size: int = 1,
                 min_rows: Optional[int] = None, warmup_tokens: int = 0):
        self.full = device_batch_size
        self.step_tokens = max_seq_len * world_size
        self.min_rows = min_rows if min_rows is not None else device_batch_size
        self.warmup_tokens = warmup_tokens if min_rows is not None else 0
        self.resume_at(0, 0)

    def resume_at(self, step: int, tokens: int) -> None:
        """Continue the ramp from `tokens` global slots served before `step` (a resume, possibly
        with a different rank count: the ramp follows tokens, so it neither restarts nor jumps)."""
        self._first, self._first_tokens = step, tokens
        self._rows: list[int] = []
        self._tokens = tokens

    def rows(self, step: int) -> int:
        """Device rows at global step `step`, extending the cached ramp as needed."""
        i = step - self._first
        if i < 0:
            raise ValueError(f"batch-size warmup: step {step} is before the resume point {self._first}")
        while len(self._rows) <= i and self._tokens < self.warmup_tokens:
            r = self.min_rows + (self.full - self.min_rows) * self._tokens // self.warmup_tokens
            self._rows.append(int(r))
            self._tokens += r * self.step_tokens
        return self._rows[i] if i < len(self._rows) else self.full

    def tokens_before(self, step: int) -> int:
        """Global token slots consumed by steps before `step`: what the warmup budget counts.
        Past the ramp every step is full, so a late step costs no walk over all earlier ones."""
        self.rows(max(step - 1, self._first))  # extends the cached ramp up to step - 1
        ramp = self._rows[:max(0, step - self._first)]
        full_steps = max(0, step - self._first - len(ramp))
        return self._first_tokens + (sum(ramp) + full_steps * self.full) * self.step_tokens
