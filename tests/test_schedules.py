"""Each LR schedule tabulated against its closed-form formula, in tok, ba and dur units."""

import math

import pytest
import torch
from composer.core import State, Time, Timestamp
from composer.devices import DeviceCPU

from flexbert.train.schedules import (SCHEDULERS, ConstantWithWarmup, OneMinusSqrt,
                                      WarmupStableDecay, build_scheduler)


def make_state(max_duration: str) -> State:
    return State(model=torch.nn.Linear(1, 1), run_name="sched", device=DeviceCPU(), rank_zero_seed=0,
                 max_duration=max_duration)


def at(state: State, tokens: int = 0, batches: int = 0) -> State:
    state.timestamp = Timestamp(token=tokens, batch=batches)
    return state


def wsd_formula(t, warmup, decay, total, alpha_f, shape):
    """The trapezoid, written independently of the implementation."""
    if t < warmup:
        return t / warmup
    if decay == 0 or t < total - decay:
        return 1.0
    p = min((t - (total - decay)) / decay, 1.0)
    drop = p if shape == "linear" else math.sqrt(p)
    return alpha_f + (1 - alpha_f) * (1 - drop)


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_warmup_stable_decay_in_tokens(shape):
    state = make_state("10000tok")
    sched = WarmupStableDecay(t_warmup="1000tok", t_decay="4000tok", decay_shape=shape, alpha_f=0.1)
    rows = []
    for t in range(0, 10001, 250):
        got = sched(at(state, tokens=t))
        rows.append((t, got, wsd_formula(t, 1000, 4000, 10000, 0.1, shape)))
    for t, got, want in rows:
        assert got == pytest.approx(want, abs=1e-12), f"t={t}: {got} != {want}\n{rows}"
    assert rows[0][1] == 0.0 and rows[4][1] == 1.0 and rows[-1][1] == pytest.approx(0.1)


def test_decay_zero_is_infinite():
    """ModernBERT phase 1: after warmup the multiplier stays 1.0 up to and past max_duration."""
    state = make_state("5000tok")
    sched = WarmupStableDecay(t_warmup="1000tok", t_decay="0tok")
    assert sched(at(state, tokens=500)) == pytest.approx(0.5)
    assert [sched(at(state, tokens=t)) for t in (1000, 3000, 5000, 9000)] == [1.0] * 4


def test_duration_fractions_resolve_against_max_duration_in_batches():
    state = make_state("200ba")
    sched = WarmupStableDecay(t_warmup="0.1dur", t_decay="0.5dur", decay_shape="linear", alpha_f=0.0)
    for b in range(0, 201, 10):
        want = wsd_formula(b, 20, 100, 200, 0.0, "linear")
        assert sched(at(state, batches=b)) == pytest.approx(want), b


def test_constant_with_warmup():
    state = make_state("100ba")
    sched = ConstantWithWarmup(t_warmup="10ba")
    got = [sched(at(state, batches=b)) for b in range(0, 101, 5)]
    assert got == pytest.approx([min(b / 10, 1.0) for b in range(0, 101, 5)])


def test_one_minus_sqrt_over_the_whole_phase():
    """Phase 3: 1 - sqrt(t/T) from the peak down to alpha_f = 0.001 at the end."""
    state = make_state("50000tok")
    sched = OneMinusSqrt(alpha_f=0.001)
    for t in range(0, 50001, 2500):
        want = 0.001 + 0.999 * (1 - math.sqrt(t / 50000))
        assert sched(at(state, tokens=t)) == pytest.approx(want, abs=1e-12), t
    assert sched(at(state, tokens=50000)) == pytest.approx(0.001)


def test_registry_names_and_errors():
    assert {"warmup_stable_decay", "constant_with_warmup", "one_minus_sqrt"} <= set(SCHEDULERS.names())
    with pytest.raises(ValueError, match="unknown scheduler 'cosine_forever'"):
        build_scheduler({"name": "cosine_forever"})
    with pytest.raises(ValueError, match="t_warmup.*'3Btok'"):
        build_scheduler({"name": "warmup_stable_decay", "t_warmup": "3Btok"})
    with pytest.raises(ValueError, match="unexpected keyword argument 't_dekay'"):
        build_scheduler({"name": "warmup_stable_decay", "t_dekay": "0tok"})
    with pytest.raises(ValueError, match="decay_shape.*'cubic'"):
        build_scheduler({"name": "warmup_stable_decay", "decay_shape": "cubic"})


def test_decay_unit_must_match_max_duration():
    state = make_state("100ba")
    sched = WarmupStableDecay(t_decay="1000tok")
    with pytest.raises(ValueError, match="t_decay is in tok but max_duration is in ba"):
        sched(at(state, batches=50, tokens=10))
