"""The user's plugins: modules that add entries to the registries declared in flexbert.registry.

Plugins are ordinary modules that register entries into a family (`NORMS.register("mine")`,
`CALLBACKS.register("my_monitor")`, ...). They are named in a recipe's `plugins:` list or
advertised by an installed package under the `flexbert.plugins` entry-point group, and are
imported before a config is validated, so their names are valid in YAML. (The built-in entries
come with their rooms: importing flexbert.model or flexbert.train registers them.)
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from typing import Iterable

from flexbert.errors import ConfigError

ENTRY_POINT_GROUP = "flexbert.plugins"
_loaded_entry_points = False


def load_entry_point_plugins() -> None:
    """Import each module advertised under the `flexbert.plugins` entry-point group, once."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()


def load_plugins(modules: Iterable[str], source: str = "<config>") -> None:
    """Import a recipe's `plugins:` modules; a missing one is a config error naming it."""
    for i, name in enumerate(modules):
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                raise ConfigError(f"{source}: plugins[{i}]: cannot import {name!r} (module "
                                  f"{err.name!r} not found; is its folder on PYTHONPATH or the "
                                  "package installed?)") from None
            raise
