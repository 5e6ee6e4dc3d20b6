"""flexbert: pretrain, fine-tune, sweep, convert and publish ModernBERT-style encoders.

Training itself is `python train.py RECIPE [key=value ...]` (or `composer -n N train.py ...`);
this command holds everything around it. `flexbert COMMAND --help` describes each command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from flexbert.commands import COMMANDS, command  # noqa: F401  (`command`: plugins add theirs)

# Each room registers its subcommands in flexbert.commands; this module only runs them.
ROOMS_WITH_COMMANDS = ("flexbert.io.cli", "flexbert.train.cli", "flexbert.sweep", "flexbert.finetune",
                       "flexbert.train.planning.plan", "flexbert.interop.modernbert",
                       "flexbert.evaluation")


def _no_args(parser: argparse.ArgumentParser) -> None:
    pass


@command("components", "list every registry (model parts, optimizers, schedulers, callbacks, "
         "algorithms) and its entries, plugins included", _no_args)
def components(args: argparse.Namespace) -> int:
    import flexbert.model  # noqa: F401  (registers the model families)
    import flexbert.train.optim  # noqa: F401  (the training families: optimizers,)
    import flexbert.train.registries  # noqa: F401  (named callbacks and algorithms,)
    import flexbert.train.schedules  # noqa: F401  (schedulers)
    from flexbert.plugins import load_entry_point_plugins
    from flexbert.registry import ALL

    import shutil
    import textwrap

    load_entry_point_plugins()
    columns = min(120, shutil.get_terminal_size((100, 24)).columns)
    for family in sorted(ALL):
        registry = ALL[family]
        print(textwrap.fill(f"{family}  ({registry.contract})", columns, subsequent_indent="    "))
        width = max((len(name) for name in registry.names()), default=0)
        for name in registry.names():  # wrapped under the description, never cut
            print(textwrap.fill(registry.describe(name), columns, initial_indent=f"  {name:<{width}}  ",
                                subsequent_indent=" " * (width + 4)))
        print()
    return 0


def _convert_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source model directory (or hub name for from-hf)")
    parser.add_argument("out", help="output directory (the source's tokenizer is copied into it)")


def _source_tokenizer(src: str):
    """The tokenizer saved with a model (folder or Hub name), or None when it has none."""
    import os

    files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
    if os.path.isdir(src) and not any(os.path.isfile(os.path.join(src, f)) for f in files):
        return None
    from flexbert.io.checkpoint_reader import load_tokenizer_safely, refuse_custom_code

    refuse_custom_code(src)  # outside the try: a refusal is not "the source has no tokenizer"
    try:
        return load_tokenizer_safely(src)
    except (OSError, ValueError):
        return None


def _save_tokenizer(tokenizer, out) -> str:
    if tokenizer is None:
        return " (the source has no tokenizer)"
    from data_prep.tokenizer import save_tokenizer

    save_tokenizer(tokenizer, out)
    return " with its tokenizer"


@command("from-hf", "transformers ModernBERT folder or hub name -> FlexBERT model directory",
         _convert_args)
def from_hf(args: argparse.Namespace) -> int:
    from flexbert.io.hf import from_transformers, save_flexbert

    out = save_flexbert(from_transformers(args.src), args.out)
    note = _save_tokenizer(_source_tokenizer(args.src), out)
    print(f"wrote FlexBERT model to {out}{note}")
    return 0


@command("to-hf", "FlexBERT model directory -> transformers ModernBERT folder", _convert_args)
def to_hf(args: argparse.Namespace) -> int:
    from flexbert.io.hf import load_flexbert, save_hf

    out = save_hf(load_flexbert(args.src), args.out)
    note = _save_tokenizer(_source_tokenizer(args.src), out)
    print(f"wrote Hugging Face ModernBERT folder to {out}{note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    from data_prep.cli_format import HelpFormatter

    parser = argparse.ArgumentParser(prog="flexbert", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, fn) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        add_args(p)
        p.set_defaults(fn=fn)
    return parser


def _load_plugins() -> None:
    """Import modules that register further subcommands (training, publishing, sweeps)."""
    import importlib

    for module in ROOMS_WITH_COMMANDS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Commands with `key=value` overrides (their `overrides` positional) take them anywhere,
    also after flags (`flexbert sweep FILE --print-commands max_duration=60ba`): argparse fills
    a positional list only from one run of positionals, and its intermixed parsing does not
    work with subcommands, so the leftover key=value words are added here."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and isinstance(getattr(args, "overrides", None), list) and \
            all("=" in word and not word.startswith("-") for word in rest):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        return int(args.fn(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"flexbert {args.command}: error: {_advice(args, err)}", file=sys.stderr)
        return 2


def _advice(args: argparse.Namespace, err: Exception) -> str:
    """A refusal advises the opt-in; a command without --trust-checkpoint (finetune, eval) is
    pointed at the one that has it instead."""
    from flexbert.io.checkpoint_reader import TRUST_FLAG, UnsafeCheckpoint

    message = str(err)
    if not isinstance(err, UnsafeCheckpoint) or hasattr(args, "trust_checkpoint") \
            or hasattr(args, "trust"):
        return message
    cut = message.find("; if you trust")
    if cut < 0:
        return message
    return (message[:cut] + f"; `flexbert {args.command}` has no {TRUST_FLAG}: if you trust where "
            f"it came from, convert it first with `flexbert publish CHECKPOINT OUT {TRUST_FLAG}` "
            "(weights only, none of its code runs) and pass OUT")


if __name__ == "__main__":
    # Run through the imported module so plugins register into the same COMMANDS table.
    from flexbert.cli import main as package_main

    sys.exit(package_main())
