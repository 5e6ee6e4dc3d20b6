"""The `flexbert` subcommand table: each room registers its commands here; flexbert.cli runs them.

It sits at the bottom so a room can register a command without importing the CLI above it.
"""

from __future__ import annotations

import argparse
from typing import Callable

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand; plugins can add theirs the same way."""

    def wrap(fn: Callable) -> Callable:
        COMMANDS[name] = (help_text, add_args, fn)
        return fn

    return wrap
