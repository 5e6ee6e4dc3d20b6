"""Checkpoint saving whose `latest` pointer only ever names a complete checkpoint.

Composer writes `ep{e}-ba{b}-rank0.pt` in place and then re-points the `latest-rank0.pt` symlink
by remove + create. A crash during the write leaves a partial file that nothing points to (good),
but a crash between remove and create leaves no `latest` at all, and autoresume would silently
start over. Here the pointer moves with one atomic rename, after the file is complete.
Remote (s3://...) folders keep Composer's order: the `.symlink` object is uploaded only after the
checkpoint object exists.
"""

from __future__ import annotations

import os
import pathlib
import re

from composer.callbacks import CheckpointSaver
from composer.core import State
from composer.loggers import Logger
from composer.utils import dist, format_name_with_dist, parse_uri


def point_symlink(link: str, target: str) -> None:
    """Make `link` point to `target` (relative), replacing any old link atomically."""
    os.makedirs(os.path.dirname(link) or ".", exist_ok=True)
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.relpath(target, os.path.dirname(link) or "."), tmp)
    os.replace(tmp, link)


class AtomicCheckpointSaver(CheckpointSaver):
    """CheckpointSaver with an atomically replaced `latest` symlink (see the module docstring)."""

    def __init__(self, *args, upload_poll_seconds: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        # Composer polls every 30 s for the checkpoint object before uploading `latest.symlink`;
        # fit's end waits on that, so a short run would idle ~30 s per checkpoint.
        self._symlink_upload_wait_before_next_try_in_seconds = upload_poll_seconds

    def fit_start(self, state: State, logger: Logger) -> None:
        super().fit_start(state, logger)
        self._count_earlier_checkpoints(state)

    def _count_earlier_checkpoints(self, state: State) -> None:
        """Retention counts every checkpoint in the folder, not only this process's: earlier
        launches' files (up to where this one starts) join the front of the queue."""
        if state.fsdp_sharded_state_dict_enabled or self.num_checkpoints_to_keep < 0:
            return
        folder = pathlib.Path(format_name_with_dist(self.folder, state.run_name))
        pattern = re.compile(r"^ep\d+-ba(\d+)-rank%d\.pt$" % dist.get_global_rank())
        start = int(state.timestamp.batch)
        earlier = sorted((int(m.group(1)), str(p)) for p in folder.glob("*.pt")
                         if (m := pattern.match(p.name)) and not p.is_symlink()
                         and int(m.group(1)) <= start)
        known = {os.path.realpath(p) for p in self.saved_checkpoints}
        self.saved_checkpoints[:0] = [p for _, p in earlier if os.path.realpath(p) not in known]

    def _save_checkpoint(self, state: State, logger: Logger) -> None:
        latest, self.latest_filename = self.latest_filename, None
        previous = self.saved_checkpoints[-1] if self.saved_checkpoints else None
        try:
            super()._save_checkpoint(state, logger)
        finally:
            self.latest_filename = latest
        saved = self.saved_checkpoints[-1] if self.saved_checkpoints else None
        if latest is None or saved is None or saved == previous:
            return  # this rank wrote nothing, or nothing is kept locally
        target = str(pathlib.Path(saved).parent) if state.fsdp_sharded_state_dict_enabled else saved
        if dist.get_global_rank() == 0 or not state.fsdp_sharded_state_dict_enabled:
            point_symlink(latest.format(state), target)

        if dist.get_global_rank() == 0:
            self._record(state, target, latest.format(state))

    def _record(self, state: State, target: str, link: str) -> None:
        """Add this step's checkpoint (every rank's file) and the latest links to the run's
        manifest, so restart=true removes them and nothing else."""
        from flexbert.train.checkpointing import manifest

        folder = os.path.dirname(link) or "."
        names = [target, link]
        if not state.fsdp_sharded_state_dict_enabled:
            for rank in range(1, dist.get_world_size()):
                names += [p.replace("-rank0", f"-rank{rank}") for p in (target, link)]
        manifest.record(folder, [os.path.abspath(n) for n in names])


def local_save_folder(save_folder: str) -> str:
    """Where files for `save_folder` live on this machine (an s3:// folder is mirrored locally
    under the bucket path, relative to the working directory)."""
    backend, _, path = parse_uri(save_folder)
    return path if backend else save_folder
