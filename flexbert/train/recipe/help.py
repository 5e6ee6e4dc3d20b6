"""`python train.py --help`: every recipe key with its type, default and the schema's own
comment, read from the dataclasses themselves so the list cannot drift from what loads."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Iterator

SUBTREES = {  # keys typed `Any` in RecipeConfig whose schema lives elsewhere
    "model": ("flexbert.config", "ModelConfig"),
    "data": ("flexbert.data.config", "DataConfig"),
}
EXTRA = [  # keys read before the schema applies
    ("model.preset", "str", "null", "model preset YAML, relative to the recipe"),
    ("model.init_from", "str", "null", "weights to start from (checkpoint, model dir, HF folder "
     "or Hub name); fresh optimizer"),
    ("callbacks.NAME", "mapping", "-", "a registered callback with its arguments "
     "(`flexbert components`)"),
    ("algorithms.NAME", "mapping", "-", "a registered Composer algorithm with its arguments"),
    ("data.streams.NAME", "mapping", "-", "one source: local, remote, split, proportion, repeat, "
     "choose (docs/data.md)"),
]
HIDDEN = {"callbacks.registered"}  # filled from callbacks.NAME by the loader


def _comments(cls: type) -> dict[str, str]:
    """field name -> the comment on its line (or the comment lines just above it)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = re.match(r"\s+(\w+)\s*:[^#]*(?:#\s*(.*))?$", line)
        if match:
            out[match.group(1)] = match.group(2) or " ".join(above)
        above = []
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if str(value) == "???":
        return "required"
    return repr(value) if isinstance(value, str) else str(value)


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, comment) for every leaf of a dataclass tree."""
    import importlib

    comments = _comments(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if key in SUBTREES:
            module, name = SUBTREES[key]
            yield from walk(getattr(importlib.import_module(module), name), f"{key}.")
        elif dataclasses.is_dataclass(sub):
            yield from walk(type(sub), f"{key}.")
        else:
            yield key, str(f.type).replace("typing.", ""), _default(f), comments.get(f.name, "")


def recipe_keys() -> list[tuple[str, str, str, str]]:
    from flexbert.train.recipe.schema import RecipeConfig

    rows = [row for row in walk(RecipeConfig) if row[0] not in HIDDEN]
    return sorted([*rows, *EXTRA], key=lambda row: row[0])


def keys_help() -> str:
    """The epilog of `train.py --help`."""
    rows = recipe_keys()
    width = max(len(key) for key, *_ in rows)
    lines = ["recipe keys (set in the YAML or as key=value; KEY: TYPE = DEFAULT  comment):"]
    for key, kind, default, comment in rows:
        text = f"  {key:<{width}}  {kind} = {default}"
        lines.append(text + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)
