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
# callbacks.registered: filled from callbacks.NAME by the loader. data.batch_warmup_*: the data
# loader's per-device form of batch.warmup_start / batch.warmup_tokens, filled in from those
# (setting them is refused), so the help shows only the batch.* pair. scheduler: a mapping whose
# keys depend on scheduler.name; listed by scheduler_keys() instead.
HIDDEN = {"callbacks.registered", "data.batch_warmup_min_rows", "data.batch_warmup_tokens",
          "scheduler"}


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


DEFAULT_SCHEDULER = "warmup_stable_decay"  # RecipeConfig.scheduler's default


def scheduler_keys() -> list[tuple[str, str, str, str]]:
    """scheduler.name and every argument of the registered schedulers, with the schedulers that
    take it; the default shown is the default scheduler's (others may differ)."""
    import flexbert.train.schedules  # noqa: F401  (registers the schedulers)
    from flexbert.registry import ALL

    registry = ALL["scheduler"]
    takers: dict[str, list[str]] = {}
    first: dict[str, inspect.Parameter] = {}
    default_first = sorted(registry.names(), key=lambda n: n != DEFAULT_SCHEDULER)
    for name in default_first:
        for param in list(inspect.signature(registry.get(name, "scheduler.name")).parameters.values()):
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                takers.setdefault(param.name, []).append(name)
                first.setdefault(param.name, param)
    rows = [("scheduler.name", "str", repr(DEFAULT_SCHEDULER), f"one of {', '.join(registry.names())}")]
    for key, param in first.items():
        kind = getattr(param.annotation, "__name__", str(param.annotation)).replace("typing.", "")
        default = "required" if param.default is param.empty else repr(param.default)
        rows.append((f"scheduler.{key}", kind, default, f"for {', '.join(takers[key])}"))
    return rows


def recipe_keys() -> list[tuple[str, str, str, str]]:
    from flexbert.train.recipe.schema import RecipeConfig

    rows = [row for row in walk(RecipeConfig) if row[0] not in HIDDEN]
    return sorted([*rows, *EXTRA, *scheduler_keys()], key=lambda row: row[0])


def keys_help() -> str:
    """The epilog of `train.py --help`."""
    rows = recipe_keys()
    width = max(len(key) for key, *_ in rows)
    lines = ["recipe keys (set in the YAML or as key=value; KEY: TYPE = DEFAULT  comment):"]
    for key, kind, default, comment in rows:
        text = f"  {key:<{width}}  {kind} = {default}"
        lines.append(text + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)
