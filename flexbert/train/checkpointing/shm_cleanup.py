"""Remove the shared memory a killed run's Streaming datasets left behind in /dev/shm.

Streaming names its shared memory `NNNNNN_locals`, `NNNNNN_barrier`, ...; a SIGKILLed run never
unlinks them, and they pile up run after run. Streaming's own `clean_stale_shared_memory`
removes every such entry, including those of runs still alive on the same machine (two jobs per
node, a test suite beside a run); here only entries that no process has open or mapped go.
"""

from __future__ import annotations

import os
import re

SHM_DIR = "/dev/shm"


def _streaming_names() -> re.Pattern:
    try:
        from streaming.base.util import SHM_TO_CLEAN
    except ImportError:  # a Streaming without the list: the names it has used since 0.5
        SHM_TO_CLEAN = ["locals", "barrier", "next_epoch", "cache_usage", "shard_states",
                        "shard_access_times", "resume", "epoch_shape", "epoch_data"]
    return re.compile(r"^\d{6}_(%s)$" % "|".join(map(re.escape, SHM_TO_CLEAN)))


def _in_use(shm_dir: str) -> set[str]:
    """Names under shm_dir that some process we can inspect has open or mapped. Entries are
    created with mode 0600, so only our own processes (whose /proc we can read) can use ours."""
    used: set[str] = set()
    prefix = shm_dir.rstrip("/") + "/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as fh:
                used.update(os.path.basename(line.split(None, 5)[-1].strip().split(" ")[0])
                            for line in fh if prefix in line)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    used.add(os.path.basename(target.split(" ")[0]))
        except OSError:  # gone meanwhile, or another user's process
            continue
    return used


def _owned(path: str) -> bool:
    try:
        return os.stat(path).st_uid == os.getuid()
    except FileNotFoundError:
        return False


def clean_stale_streaming_memory(shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink our Streaming shared-memory entries that no live process holds; returns their names.
    Does nothing where /dev/shm or /proc do not exist (macOS, Windows)."""
    if not (os.path.isdir(shm_dir) and os.path.isdir("/proc")):
        return []
    pattern = _streaming_names()
    ours = [n for n in os.listdir(shm_dir) if pattern.match(n) and _owned(os.path.join(shm_dir, n))]
    if not ours:
        return []
    used = _in_use(shm_dir)
    removed = []
    for name in ours:
        if name not in used:
            try:
                os.unlink(os.path.join(shm_dir, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed
