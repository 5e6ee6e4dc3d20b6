"""Training callbacks: telemetry, console and summary, stopping on a non-finite loss, loss
spikes, publishing and downstream evaluation while training."""

from flexbert.train.callbacks.telemetry import GradNorm, PackingEfficiency, Throughput

__all__ = ["GradNorm", "PackingEfficiency", "Throughput"]


def __getattr__(name: str):
    # metrics.jsonl and the FLOP figures moved down to flexbert.runtime (0.2).
    from flexbert._aliases import moved_attribute

    return moved_attribute(__name__, name)
