"""Learning-rate schedules as Composer `ComposerScheduler`s, with times in tok / ba / ep / dur.

Each schedule returns the multiplier on the optimizer's peak LR. All three are one shape, the
warmup-stable-decay ("trapezoid"): a decay length of zero is the "infinite" schedule whose
stable-phase checkpoints can later be resumed or decayed.
"""

from __future__ import annotations

import math
from typing import Union

from composer.core import State, Time, TimeUnit
from composer.optim.scheduler import ComposerScheduler

from flexbert.registry import SCHEDULERS

TimeLike = Union[str, Time]
DECAY_SHAPES = {
    "linear": lambda p: 1.0 - p,
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}


def _time(value: TimeLike, key: str) -> Time:
    """Parse a time string early so a typo fails at build time, naming the key."""
    if isinstance(value, Time):
        return value
    try:
        parsed = Time.from_timestring(str(value))
    except ValueError as err:
        raise ValueError(f"scheduler.{key}: {value!r} is not a time string such as "
                         f"'3000000000tok', '100ba' or '0.1dur' ({err})") from None
    if parsed.unit in (TimeUnit.SECOND, TimeUnit.EPOCH) and key != "t_max":
        raise ValueError(f"scheduler.{key}: {value!r}: use tok, ba, sp or dur")
    return parsed


def _resolve(t: Time, state: State, ssr: float) -> tuple[float, TimeUnit]:
    """(value, unit): a duration fraction becomes the max_duration's unit; ssr scales times."""
    if t.unit == TimeUnit.DURATION:
        assert state.max_duration is not None, "schedulers run with max_duration set"
        return t.value * state.max_duration.value * ssr, state.max_duration.unit
    return t.value * ssr, t.unit


def _elapsed(state: State, unit: TimeUnit) -> float:
    return float(state.timestamp.get(unit).value)


class WarmupStableDecay(ComposerScheduler):
    """Linear warmup 0 -> 1 over `t_warmup`, 1.0 until the last `t_decay` of the run, then decay of
    shape `decay_shape` to `alpha_f` at max_duration. `t_decay=0` never decays (the infinite
    schedule ModernBERT's phase 1 uses)."""

    def __init__(self, t_warmup: TimeLike = "0tok", t_decay: TimeLike = "0tok",
                 decay_shape: str = "linear", alpha_f: float = 0.0):
        if decay_shape not in DECAY_SHAPES:
            raise ValueError(f"scheduler.decay_shape: unknown {decay_shape!r}; "
                             f"allowed: {', '.join(DECAY_SHAPES)}")
        if not 0.0 <= alpha_f <= 1.0:
            raise ValueError(f"scheduler.alpha_f: must be in [0, 1], got {alpha_f}")
        self.t_warmup = _time(t_warmup, "t_warmup")
        self.t_decay = _time(t_decay, "t_decay")
        self.decay_shape = decay_shape
        self.alpha_f = alpha_f

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        warmup, warmup_unit = _resolve(self.t_warmup, state, ssr)
        if warmup > 0 and _elapsed(state, warmup_unit) < warmup:
            return _elapsed(state, warmup_unit) / warmup
        decay, decay_unit = _resolve(self.t_decay, state, ssr)
        if decay <= 0:
            return 1.0
        end, end_unit = _resolve(Time(1.0, TimeUnit.DURATION), state, ssr)
        if end_unit != decay_unit:
            raise ValueError(f"scheduler.t_decay is in {decay_unit.value} but max_duration is in "
                             f"{end_unit.value}; give t_decay in dur or the same unit")
        progress = (_elapsed(state, decay_unit) - (end - decay)) / decay
        progress = min(max(progress, 0.0), 1.0)
        return self.alpha_f + (1.0 - self.alpha_f) * DECAY_SHAPES[self.decay_shape](progress)


class ConstantWithWarmup(WarmupStableDecay):
    """Linear warmup, then the peak LR for the rest of the run (phase 2's shape when t_warmup=0)."""

    def __init__(self, t_warmup: TimeLike = "0tok"):
        super().__init__(t_warmup=t_warmup, t_decay="0tok")


class OneMinusSqrt(WarmupStableDecay):
    """Decay-only phase: 1 - sqrt(progress) from the peak to `alpha_f` over the last `t_decay`
    (the whole run by default), as ModernBERT's phase 3 anneals."""

    def __init__(self, t_decay: TimeLike = "1dur", alpha_f: float = 0.001, t_warmup: TimeLike = "0tok"):
        super().__init__(t_warmup=t_warmup, t_decay=t_decay, decay_shape="1-sqrt", alpha_f=alpha_f)


SCHEDULERS.register("warmup_stable_decay")(WarmupStableDecay)
SCHEDULERS.register("constant_with_warmup")(ConstantWithWarmup)
SCHEDULERS.register("one_minus_sqrt")(OneMinusSqrt)


def build_scheduler(cfg: dict) -> ComposerScheduler:
    """`cfg` is the recipe's `scheduler:` mapping; `name` picks the registry entry."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    cls = SCHEDULERS.get(name, "scheduler.name")
    try:
        return cls(**cfg)
    except TypeError as err:
        raise ValueError(f"scheduler ({name}): {err}") from None
