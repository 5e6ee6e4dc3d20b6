"""Stop a run at its first non-finite training loss, before that step is checkpointed.

Composer all-reduces the step's loss to a Python float on every rank (`state.total_loss_dict`),
so the check costs no extra device sync and every rank stops at the same step. It runs at
BATCH_END, before BATCH_CHECKPOINT: the NaN state is never saved and `latest-rank0.pt` keeps
naming the last good checkpoint; nothing is exported or published after it.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger

LOSS_KEY = "loss/train/total"


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"the training loss is {loss} at step {step}")
        self.step, self.loss = step, loss


class StopOnNonFiniteLoss(Callback):
    """Raises NonFiniteLoss; `before_stop` (e.g. MetricsJSONL.flush) records the bad step first."""

    def __init__(self, before_stop: Optional[Callable[[State], None]] = None):
        self.before_stop = before_stop

    def batch_end(self, state: State, logger: Logger) -> None:
        loss = (getattr(state, "total_loss_dict", None) or {}).get(LOSS_KEY)
        if loss is None or math.isfinite(float(loss)):
            return
        if self.before_stop is not None:
            self.before_stop(state)
        raise NonFiniteLoss(int(state.timestamp.batch), float(loss))

    def state_dict(self) -> dict:
        return {}


def check_finite(model: torch.nn.Module, where: str) -> None:
    """Refuse to export weights holding NaN or inf."""
    bad = [name for name, p in model.state_dict().items()
           if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"{where}: not exported: non-finite values in {', '.join(bad[:3])}"
                         + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
