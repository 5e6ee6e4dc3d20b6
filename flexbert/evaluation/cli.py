"""`flexbert eval RUN_OR_FOLDERS --tasks ...`: downstream curves over a run's checkpoints or
published folders (resumable), written as table.csv, table.md and curves.png."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flexbert.commands import command
from flexbert.config import ConfigError

# FinetuneConfig options `flexbert eval` passes on to every fine-tune run.
RUN_OPTIONS = ["max_seq_len", "batch_size", "eval_batch_size", "lr", "weight_decay", "warmup",
               "epochs", "max_duration", "max_train_samples", "max_eval_samples", "pooling",
               "device", "precision"]


def _add_args(parser: argparse.ArgumentParser) -> None:
    from flexbert.finetune.cli import add_options

    parser.add_argument("sources", nargs="+",
                        help="run folders (their ep*-ba*-rank0.pt checkpoints, else published/ "
                             "folders), checkpoint files, or Hugging Face model folders")
    parser.add_argument("--tasks", nargs="+", required=True,
                        help="task folders or TRAIN,EVAL files (classification, token "
                             "classification, BEIR retrieval; NAME=PATH names one), GLUE names, "
                             "or glue (the 8-task suite with its grid and seeds)")
    parser.add_argument("--seeds",
                        help="comma-separated seeds for each task (the glue preset has its own "
                             "unless given) (default: 17)")
    parser.add_argument("--out", help="results folder (default: RUN/eval for a run folder, else "
                                      "./eval)")
    parser.add_argument("--tokenizer", help="tokenizer for checkpoints whose own is gone "
                                            "(default: the one recorded in the checkpoint)")
    add_options(parser, RUN_OPTIONS)


def out_folder(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    first = Path(args.sources[0])
    is_run = first.is_dir() and not (first / "config.json").is_file()
    return first / "eval" if is_run else Path("eval")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    return seeds


@command("eval", "fine-tune and evaluate checkpoints on downstream tasks: a table and curves "
         "against tokens seen", _add_args)
def eval_command(args: argparse.Namespace) -> int:
    from flexbert.evaluation.report import summarize, write_report
    from flexbert.evaluation.runner import read_results, run_all
    from flexbert.evaluation.sources import find_sources
    from flexbert.evaluation.tasks import parse_tasks
    from flexbert.finetune.cli import config_from_args

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    tasks = parse_tasks(args.tasks)
    seeds = parse_seeds(args.seeds or "17")
    if args.seeds:  # explicit seeds win over a preset's
        for task in tasks:
            task.seeds = ()
    sources = find_sources(args.sources)
    out = out_folder(args)
    counts = run_all(sources, tasks, seeds, out, config_from_args(args), args.tokenizer)
    files = write_report(summarize(read_results(out), tasks), out)
    print(f"flexbert eval: {counts['ran']} runs done, {counts['skipped']} already finished; "
          f"{', '.join(str(f) for f in files)}", flush=True)
    return 0


def _example_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="folder to write banana/, ner/ and code/ into")
    parser.add_argument("--train", type=int, default=320, help="training examples per task")
    parser.add_argument("--dev", type=int, default=160, help="evaluation examples per task")


@command("example-tasks", "write three small generated tasks (classification, token "
         "classification, BEIR retrieval) to try `flexbert finetune` and `flexbert eval` offline",
         _example_args)
def example_tasks(args: argparse.Namespace) -> int:
    from flexbert.evaluation.example_tasks import write_example_tasks

    for folder in write_example_tasks(Path(args.out), args.train, args.dev):
        print(f"wrote {folder}", flush=True)
    return 0
