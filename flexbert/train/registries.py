"""Callbacks and Composer algorithms a recipe turns on by name.

    callbacks:
      memory_monitor: {}                  # Composer's MemoryMonitor (GPU memory)
      loss_spike: {factor: 3.0}           # keyword arguments of the entry
    algorithms:
      ema: {half_life: 500ba}

Every entry is called with the YAML mapping as keyword arguments and returns a Composer
`Callback` (CALLBACKS) or `Algorithm` (ALGORITHMS). A plugin registers its own the same way
(`CALLBACKS.register("mine")(MyCallback)`); see docs/training.md.
"""

from __future__ import annotations

from typing import Any

from flexbert.registry import ALGORITHMS, CALLBACKS, Registry


@CALLBACKS.register("memory_monitor", "Composer's MemoryMonitor: GPU memory per step")
def memory_monitor(**kwargs: Any):
    from composer.callbacks import MemoryMonitor

    return MemoryMonitor(**kwargs)


@CALLBACKS.register("runtime_estimator", "Composer's RuntimeEstimator: time left in the run")
def runtime_estimator(**kwargs: Any):
    from composer.callbacks import RuntimeEstimator

    return RuntimeEstimator(**kwargs)


@CALLBACKS.register("loss_spike", "flags (and optionally stops on) training-loss spikes")
def loss_spike(**kwargs: Any):
    from flexbert.train.callbacks.loss_spike import LossSpike

    return LossSpike(**kwargs)


@ALGORITHMS.register("ema", "Composer's EMA: an exponential moving average of the weights")
def ema(**kwargs: Any):
    from composer.algorithms import EMA

    return EMA(**kwargs)


def enabled(entries: Any) -> dict[str, dict]:
    """{name: kwargs} of the entries switched on: a mapping, `{}`, `true` or null turns one on,
    `false` turns it off."""
    out = {}
    for name, value in (entries or {}).items():
        if value is False:
            continue
        out[name] = {} if value in (None, True) else dict(value)
    return out


def build_all(registry: Registry, entries: Any, key: str, source: str = "<config>") -> list:
    """Instantiate every enabled entry; a wrong name or argument raises ValueError naming
    `key.NAME`."""
    built = []
    for name, kwargs in enabled(entries).items():
        factory = registry.get(name, f"{source}: {key}.{name}")
        try:
            built.append(factory(**kwargs))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {key}.{name}: {err}") from None
    return built
