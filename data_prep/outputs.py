"""Output folders that never endanger inputs: the output may not overlap a source, leftovers of
killed runs are removed, and disk errors become one line naming the path."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

from data_prep import DataPrepError

LEFTOVER_KINDS = ("partial", "old")  # `.OUT.partial-PID` (being built), `.OUT.old-PID` (replaced)


def check_output(out: str | os.PathLike, sources: Iterable[str], overwrite: bool) -> Path:
    """Refuse an output that is a file, overlaps a source either way, or is a non-empty folder
    without --overwrite. Returns the output path."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DataPrepError(f"--out {out}: is a file, not a folder")
    target = path.resolve()
    for src in sources:
        if src.startswith("hf:"):
            continue
        source = Path(src).resolve()
        if target == source or source in target.parents:
            raise DataPrepError(f"--out {out}: is inside the source {src} (the output would be "
                                "read as input); write it elsewhere")
        if target in source.parents:
            raise DataPrepError(f"source {src}: is inside --out {out} (--overwrite would delete "
                                "it); write the output elsewhere")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DataPrepError(f"--out {out}: already exists and is not empty (use --overwrite)")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_leftovers(out: Path) -> list[Path]:
    """Remove `.OUT.partial-PID` / `.OUT.old-PID` folders whose process is gone (killed runs)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for kind in LEFTOVER_KINDS:
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def disk_error(exc: OSError, where: str | os.PathLike) -> DataPrepError:
    """One line for a failed write: the output it was for (not the hidden partial folder), and
    why (full disk, read-only, permission)."""
    reason = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, exc.strerror or str(exc))
    return DataPrepError(f"{where}: cannot write ({reason})")
