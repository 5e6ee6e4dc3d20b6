"""`flexbert sweep FILE [key=value ...]`: plan, run and report from the command line."""

from __future__ import annotations

import argparse
import logging
import shlex

from flexbert.commands import command
from flexbert.sweep.plan import load_sweep
from flexbert.sweep.report import write_report
from flexbert.sweep.running import launch_command, run_sweep


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep YAML (base recipe + grid or list of overrides)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides for every run, after the file's own (e.g. "
                             "max_duration=20ba); changing them retrains and extends the runs")
    parser.add_argument("--print-commands", action="store_true",
                        help="print the `composer train.py ...` line per run and exit")
    parser.add_argument("--out", help="sweep folder (default: the file's `out`, or runs/sweeps/NAME)")
    parser.add_argument("--launcher", choices=["inprocess", "subprocess"],
                        help="override the file's launcher")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.csv/.md/.png from the runs' metrics; train nothing")


@command("sweep", "run a grid of config overrides and compare the runs", _add_args)
def sweep_command(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, args.out, args.overrides)
    if args.launcher:
        sweep.launcher = args.launcher
    if args.print_commands:
        for run in sweep.runs:
            print(shlex.join(launch_command(sweep, run)))
        return 0
    if args.report_only:
        write_report(sweep)
        print(f"report in {sweep.out}")
        return 0
    # Warnings only from the libraries (train.py's own basicConfig is then a no-op); the sweep
    # prints its progress itself.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    run_sweep(sweep)
    print((sweep.out / "results.md").read_text())
    return 0
