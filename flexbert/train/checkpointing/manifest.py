"""What a run wrote into save_folder, so that `restart=true` removes exactly that.

`.flexbert-run.json` in save_folder lists names relative to it: the outputs a launch is about to
create (metrics, HF export, publish folder, plot; only those that did not exist before it) and
every checkpoint and `latest` link the saver writes. Names that resolve outside save_folder
(`export.hf_folder=../shared`) are never recorded and never removed. Rank 0 keeps the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

MANIFEST = ".flexbert-run.json"


def contained(folder: str | os.PathLike, name: str) -> Optional[Path]:
    """`folder/name` when it lies inside `folder` (its parent resolved; the leaf itself may be a
    link, which is removed as a link), else None."""
    if not name or os.path.isabs(name):
        return None
    root = os.path.realpath(folder)
    path = os.path.normpath(os.path.join(root, name))
    parent = os.path.realpath(os.path.dirname(path))
    if path == root or not (parent == root or parent.startswith(root + os.sep)):
        return None
    return Path(parent) / os.path.basename(path)


def read(folder: str | os.PathLike) -> Optional[list[str]]:
    """The recorded names, or None when the folder has no manifest (a run from before it)."""
    path = Path(folder) / MANIFEST
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("wrote", [])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return []  # unreadable: remove nothing we cannot vouch for
    return [n for n in names if isinstance(n, str)]


def record(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add `names` (relative to `folder`, or absolute paths inside it) to the manifest."""
    if os.environ.get("RANK", "0") != "0" or not os.path.isdir(folder):
        return
    root = os.path.realpath(folder)
    new = []
    for name in names:
        if os.path.isabs(name):  # resolve the parent only: a latest link is recorded as itself
            name = os.path.relpath(os.path.join(os.path.realpath(os.path.dirname(name)),
                                                os.path.basename(name)), root)
        rel = name
        if contained(folder, rel) is not None:
            new.append(os.path.normpath(rel))
    have = read(folder) or []
    if not new or set(new) <= set(have):
        return
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f"{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"wrote": sorted(set(have) | set(new))}, indent=1) + "\n")
    os.replace(tmp, path)
