"""A run's identity: a random id written into save_folder when a run starts from scratch and
kept when it resumes. A restarted run reuses its folder, run name and checkpoint names
(ep0-ba200 again), so results computed from its checkpoints (`flexbert eval`) are keyed by this
id: those of an earlier run in the same folder are recognised as stale."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

RUN_ID_FILE = "run_id"


def read_run_id(folder: str | os.PathLike) -> Optional[str]:
    """The id of the run in `folder`, None when it has none (older runs, model folders)."""
    try:
        return (Path(folder) / RUN_ID_FILE).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def start_run_id(folder: str | os.PathLike, fresh: bool) -> str:
    """A new id for a run that starts from scratch; the existing one when it resumes."""
    current = None if fresh else read_run_id(folder)
    if current is None:
        current = uuid.uuid4().hex[:12]
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / RUN_ID_FILE).write_text(current + "\n")
    return current
