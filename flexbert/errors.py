"""Error types every room raises, kept at the bottom so any module can raise them."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be built; the message names the YAML path and what was expected."""
