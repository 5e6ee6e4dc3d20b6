"""`flexbert checkpoints RUN`: a training run's checkpoints with step, tokens and losses."""

from __future__ import annotations

import argparse

from flexbert.commands import command


def _checkpoints_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run's save_folder (e.g. runs/flexbert-tiny)")


@command("checkpoints", "list a run's checkpoints with step, tokens, train and eval loss "
         "(from its metrics.jsonl), oldest first", _checkpoints_args)
def checkpoints(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from flexbert.runtime.metrics_file import read_metrics
    from flexbert.train.checkpointing.provenance import CHECKPOINT_RE, checkpoints_in

    run = Path(args.run)
    found = list(reversed(checkpoints_in(str(run))))
    if not found:
        raise FileNotFoundError(f"{run}: no checkpoints (ep*-ba*-rank0.pt)")
    metrics = run / "metrics.jsonl"
    rows = {r["step"]: r for r in read_metrics(str(metrics))} if metrics.is_file() else {}
    latest = os.path.realpath(run / "latest-rank0.pt")
    print(f"{'checkpoint':<24} {'step':>7} {'tokens':>13} {'train loss':>10} {'eval loss':>9}  size")
    for path in found:
        step = int(CHECKPOINT_RE.match(path.name).group(2))
        row = rows.get(step, {})
        fig = lambda key, f: format(row[key], f) if key in row else "-"  # noqa: E731
        mark = "  (latest)" if os.path.realpath(path) == latest else ""
        print(f"{path.name:<24} {step:>7} {fig('tokens', ','):>13} {fig('loss', '.4f'):>10} "
              f"{fig('metrics/eval/MaskedLoss', '.4f'):>9}  {path.stat().st_size / 2**20:.1f} MiB{mark}")
    if not rows:
        print(f"(no {metrics}: tokens and losses unknown)")
    return 0
