"""What a training run prints: a progress bar for this phase (on a terminal) and one compact
metrics line per console interval, on rank 0. Composer's own console and progress-bar loggers
stay off (together they duplicate every line); the full record is metrics.jsonl / wandb."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Optional

import torch
from composer.core import Event, State, Time, TimeUnit
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist
from composer.utils.misc import create_interval_scheduler

TRAIN_LOSS = "loss/train/total"
EVAL_PREFIX = "metrics/eval/"
THROUGHPUT = "throughput/tokens_per_sec"
UNIT_NAMES = {TimeUnit.BATCH: "step", TimeUnit.TOKEN: "tok", TimeUnit.SAMPLE: "sample",
              TimeUnit.EPOCH: "epoch"}


def human(n: float) -> str:
    """1234567 -> '1.23M': token counts and rates at a glance."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.4g}" if isinstance(n, float) else str(n)


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _number(value: Any) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item()) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


class BarSafeStream:
    """Stands in for stdout/stderr while the bar is drawn: each complete line another part of the
    run prints (publishing, warnings, logging) goes through tqdm.write, which clears the bar,
    writes the line and redraws the bar below it, instead of running into the bar's line."""

    def __init__(self, bar: Any, real: Any):
        self.bar, self.real, self.pending = bar, real, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.bar.write(line, file=self.real)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Console(LoggerDestination):
    """Rank 0's view of the run; also keeps the last train/eval figures and the loss curves the
    end-of-run summary reports (flexbert/train/callbacks/summary.py).

    `work(step)` gives the token slots that the steps before `step` hold (the batch-size warmup's
    RowSchedule.tokens_before): the ETA of a run counted in steps follows tokens, since a step at
    the full batch costs several warmup steps. Without it every step counts the same."""

    def __init__(self, interval: str = "50ba", lines: bool = True, bar: bool = True,
                 stream: Any = None, work: Optional[Callable[[int], int]] = None,
                 bar_file: Any = None):
        super().__init__()
        self.lines = lines
        self.want_bar = bar
        self.stream = stream or sys.stdout
        self.bar_file = bar_file
        self.work = work
        self.redirect = contextlib.ExitStack()
        self.line_losses: list[float] = []  # train losses since the last metrics line
        self.due: Callable[[State, Event], bool] = create_interval_scheduler(
            interval, checkpoint_events=False, final_events={Event.BATCH_END})
        self.latest: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.train_curve: list[tuple[int, float]] = []   # (tokens, loss) per step of this run
        self.eval_curve: list[tuple[int, float]] = []    # (tokens, eval loss)
        self.start_time = time.time()
        self.start = {"batch": 0, "token": 0, "position": 0}
        self.unit, self.total = TimeUnit.BATCH, 0
        self.bar: Any = None

    # --- Composer events ------------------------------------------------------------------------
    def fit_start(self, state: State, logger: Logger) -> None:
        """The bar covers this phase as max_duration defines it: after reset_time the clock is
        back at 0; after extending a run it starts where the last checkpoint stopped."""
        self.start_time = time.time()
        end = state.max_duration or Time(0, TimeUnit.BATCH)
        self.unit, self.total = end.unit, int(end.value)
        self.start = {"batch": int(state.timestamp.batch), "token": int(state.timestamp.token),
                      "position": self.position(state)}
        bar_file = self.bar_file or sys.stderr
        if self.want_bar and dist.get_global_rank() == 0 and bar_file.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.start["position"], file=bar_file,
                            unit=UNIT_NAMES.get(self.unit, "it"), dynamic_ncols=True,
                            unit_scale=self.unit == TimeUnit.TOKEN, leave=True)
            self.route_prints_through_bar()

    def route_prints_through_bar(self) -> None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.redirect.enter_context(contextlib.redirect_stdout(BarSafeStream(self.bar, sys.stdout)))
        self.redirect.enter_context(contextlib.redirect_stderr(BarSafeStream(self.bar, sys.stderr)))
        self.redirect.enter_context(logging_redirect_tqdm())

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        for key, value in metrics.items():
            number = _number(value)
            if number is not None:
                self.latest[key] = number

    def batch_end(self, state: State, logger: Logger) -> None:
        tokens = int(state.timestamp.token)
        if TRAIN_LOSS in self.latest:
            self.train_curve.append((tokens, self.latest[TRAIN_LOSS]))
            self.line_losses.append(self.latest[TRAIN_LOSS])
        if self.bar is not None:
            self.bar.n = self.position(state)
            self.bar.refresh()
        if self.lines and self.due(state, Event.BATCH_END):
            self.write(self.train_line(state))

    def eval_end(self, state: State, logger: Logger) -> None:
        self.last_eval = {k[len(EVAL_PREFIX):]: v for k, v in self.latest.items()
                          if k.startswith(EVAL_PREFIX)}
        loss = self.last_eval.get("MaskedLoss")
        if loss is not None:
            self.eval_curve.append((int(state.timestamp.token), loss))
        if self.lines and self.last_eval:
            figures = " | ".join(f"{k} {v:.4f}" for k, v in sorted(self.last_eval.items()))
            self.write(f"eval at step {int(state.timestamp.batch)}: {figures}")

    def fit_end(self, state: State, logger: Logger) -> None:
        self.close_bar()

    def close(self, state: State, logger: Logger) -> None:
        self.close_bar()  # a run that stopped with an error: give stdout and stderr back

    def close_bar(self) -> None:
        self.redirect.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # --- formatting -----------------------------------------------------------------------------
    def position(self, state: State) -> int:
        return int(state.timestamp.get(self.unit))

    def eta(self, state: State) -> Optional[float]:
        """Seconds left, at the pace of the work done so far in this phase: tokens when the run
        is counted in tokens or has a batch-size warmup, else steps."""
        pos, start, end = self.position(state), self.start["position"], self.total
        if self.unit == TimeUnit.BATCH and self.work is not None:
            pos, start, end = self.work(pos), self.work(start), self.work(end)
        done = pos - start
        if done <= 0:
            return None
        return (time.time() - self.start_time) / done * max(0, end - pos)

    def train_line(self, state: State) -> str:
        pos = self.position(state)
        pct = 100.0 * pos / self.total if self.total else 0.0
        if self.unit == TimeUnit.BATCH:
            parts = [f"step {pos}/{self.total} {pct:3.0f}%", f"tok {human(int(state.timestamp.token))}"]
        else:
            parts = [f"step {int(state.timestamp.batch)}",
                     f"{UNIT_NAMES.get(self.unit, 'it')} {human(pos)}/{human(self.total)} {pct:3.0f}%"]
        m = self.latest
        if self.line_losses:  # the mean since the last line: one step's loss jumps around
            n = len(self.line_losses)
            mean = sum(self.line_losses) / n
            parts.append(f"loss {mean:.4f}" + (f" (mean of {n} steps)" if n > 1 else ""))
            self.line_losses = []
        lr = next((v for k, v in sorted(m.items()) if k.startswith("lr-")), None)
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        if THROUGHPUT in m:
            parts.append(f"{human(m[THROUGHPUT])} tok/s")
        eta = self.eta(state)
        if eta is not None and pos < self.total:
            parts.append(f"eta {duration(eta)}")
        return " | ".join(parts)

    def write(self, line: str) -> None:
        if dist.get_global_rank() != 0:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=self.stream, flush=True)

    def state_dict(self) -> dict:
        return {}
