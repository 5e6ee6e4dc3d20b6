"""`flexbert publish` and `flexbert average` (registered with flexbert.cli's `command`)."""

from __future__ import annotations

import argparse

from flexbert.checkpoint_reader import TRUST_FLAG
from flexbert.cli import command


def _publish_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="Composer checkpoint (e.g. <save_folder>/latest-rank0.pt)")
    parser.add_argument("out_dir", help="Hugging Face folder to write")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub name (default: the one the "
                        "run trained with, recorded in the checkpoint)")
    parser.add_argument("--repo-id", help="upload to this Hub repository (huggingface_hub; "
                        "HF_ENDPOINT / HF_TOKEN apply)")
    parser.add_argument("--revision", help="branch to upload to, created if missing; "
                        "{phase}, {step}, {tokens} are filled in (default: main)")
    parser.add_argument("--config", help="the recipe YAML, only for checkpoints that carry no "
                        "model config")
    _trust_arg(parser)


def _trust_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(TRUST_FLAG, dest="trust", action="store_true",
                        help="load checkpoints that need full unpickling (this can run code "
                        "stored in the file; only for files you trust). Default: refused")


@command("publish", "Composer checkpoint -> Hugging Face ModernBERT folder [-> Hub branch]",
         _publish_args)
def publish(args: argparse.Namespace) -> int:
    import logging

    from flexbert.train.publish import publish_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.revision and not args.repo_id:
        raise ValueError("--revision needs --repo-id")
    out = publish_checkpoint(args.checkpoint, args.out_dir, args.tokenizer, args.repo_id,
                             args.revision, args.config, args.trust)
    print(f"wrote Hugging Face ModernBERT folder to {out}")
    if args.repo_id:
        print(f"uploaded to {args.repo_id}" + (f" at {args.revision}" if args.revision else ""))
    return 0


def _average_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="CKPT",
                        help="Composer checkpoints (or HF / FlexBERT folders) with one architecture")
    parser.add_argument("out", help="OUT.pt: a weights-only checkpoint; otherwise an HF folder")
    parser.add_argument("--tokenizer", help="tokenizer for an HF folder output")
    _trust_arg(parser)


@command("average", "average the weights of several checkpoints (CKPT... OUT)", _average_args)
def average(args: argparse.Namespace) -> int:
    from flexbert.train.average import average_checkpoints

    out = average_checkpoints(args.sources, args.out, args.tokenizer, args.trust)
    print(f"wrote the average of {len(args.sources)} checkpoints to {out}")
    return 0


def _checkpoints_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run's save_folder (e.g. runs/flexbert-tiny)")


@command("checkpoints", "list a run's checkpoints with step, tokens, train and eval loss "
         "(from its metrics.jsonl), oldest first", _checkpoints_args)
def checkpoints(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from flexbert.train.callbacks import read_metrics
    from flexbert.train.resume import CHECKPOINT_RE, checkpoints_in

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
