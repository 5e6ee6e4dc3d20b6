"""The help format of every command line here (`python -m data_prep`, `flexbert`): each
option's help ends with its default, and descriptions and epilogs keep their line breaks."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """'(default: X)' after an option's help, unless the option is required, has no default
    (None), is a flag (store_true) or the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        quiet = (action.required or default is None or default is argparse.SUPPRESS
                 or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                 or not action.option_strings or "default" in text)
        return text if quiet else f"{text} (default: %(default)s)"
