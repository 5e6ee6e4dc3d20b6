"""A loss-spike monitor: says when the training loss jumps well above its recent level, and can
stop the run after several spikes in a row (a diverging run wastes the rest of its budget)."""

from __future__ import annotations

import logging
from collections import deque

from composer.core import Callback, State
from composer.loggers import Logger

log = logging.getLogger("flexbert.train")


class LossSpike(Callback):
    """A step's loss above `factor` x the mean of the previous `window` steps is a spike; it is
    logged (`loss_spike/count`, `loss_spike/ratio`) and reported on the console. With
    `stop_after` > 0, that many spikes in a row stop training (the last checkpoint is kept)."""

    def __init__(self, factor: float = 2.0, window: int = 50, stop_after: int = 0):
        if factor <= 1.0 or window < 1 or stop_after < 0:
            raise ValueError(f"needs factor > 1, window >= 1 and stop_after >= 0; got factor="
                             f"{factor}, window={window}, stop_after={stop_after}")
        self.factor, self.stop_after = float(factor), int(stop_after)
        self.recent: deque = deque(maxlen=int(window))
        self.count = 0
        self.in_a_row = 0

    def batch_end(self, state: State, logger: Logger) -> None:
        loss = state.loss
        if isinstance(loss, dict):
            loss = loss.get("total", sum(loss.values()))
        if isinstance(loss, (list, tuple)):
            loss = sum(loss)
        value = float(loss)
        full = len(self.recent) == self.recent.maxlen
        mean = sum(self.recent) / len(self.recent) if self.recent else value
        if full and mean > 0 and value > self.factor * mean:
            self.count += 1
            self.in_a_row += 1
            log.warning("loss spike at step %d: %.4g is %.1fx the mean of the last %d steps",
                        int(state.timestamp.batch), value, value / mean, len(self.recent))
            logger.log_metrics({"loss_spike/count": self.count, "loss_spike/ratio": value / mean})
            if self.stop_after and self.in_a_row >= self.stop_after:
                log.warning("%d loss spikes in a row: stopping training", self.in_a_row)
                state.stop_training()
            return  # a spike does not raise the baseline it is judged against
        self.in_a_row = 0
        self.recent.append(value)

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.recent.extend(state.get("recent", []))
        self.count = int(state.get("count", 0))
