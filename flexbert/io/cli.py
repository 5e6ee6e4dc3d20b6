"""`flexbert publish` and `flexbert average` (registered in flexbert.commands)."""

from __future__ import annotations

import argparse

from flexbert.commands import command
from flexbert.io.checkpoint_reader import TRUST_FLAG


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

    from flexbert.io.publish import publish_checkpoint

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
    from flexbert.io.average import average_checkpoints

    out = average_checkpoints(args.sources, args.out, args.tokenizer, args.trust)
    print(f"wrote the average of {len(args.sources)} checkpoints to {out}")
    return 0


