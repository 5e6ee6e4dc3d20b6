"""metrics.jsonl: one JSON row per training step, written on rank 0 and read by the summary,
sweeps and evaluation without parsing the console."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional

import torch
from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist


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
