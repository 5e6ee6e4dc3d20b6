"""Hugging Face Hub uploads: retried, and (while training) on a background thread.

A training run must never die, stall or lose a checkpoint because the Hub is slow or down:
`BackgroundUploads` runs uploads one at a time off the training loop, retries each, logs
failures and reports them when the run ends.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)
RETRY_SECONDS = (2.0, 10.0, 30.0)   # waits between attempts (so 4 attempts in all)


def upload(folder: str | os.PathLike, repo_id: str, revision: Optional[str] = None,
           token: Optional[str] = None, commit_message: Optional[str] = None) -> str:
    """Upload `folder` to `repo_id` at branch `revision` (created from main if missing).
    HF_ENDPOINT picks the server (read at call time, not at import). Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             revision=revision or None,
                             commit_message=commit_message or f"Upload {Path(folder).name}")
    return str(getattr(info, "commit_url", info))


# The seam tests (and dry runs) replace: called as UPLOADER(folder, repo_id, revision).
UPLOADER: Callable[..., Any] = upload


def upload_with_retries(folder: str, repo_id: str, revision: Optional[str]) -> str:
    for attempt, wait in enumerate((*RETRY_SECONDS, None), start=1):
        try:
            return str(UPLOADER(folder, repo_id, revision))
        except Exception as err:  # network, auth, server: all worth a retry, none fatal here
            if wait is None:
                raise
            log.warning("upload of %s to %s@%s failed (attempt %d: %s); retrying in %gs",
                        folder, repo_id, revision or "main", attempt, err, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


class BackgroundUploads:
    """One worker thread; `submit` returns at once, `finish` waits and returns the failures."""

    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.failures: list[str] = []
        self.done: list[str] = []
        self.thread: Optional[threading.Thread] = None

    def submit(self, folder: str, repo_id: str, revision: Optional[str]) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="hub-uploads", daemon=True)
            self.thread.start()
        self.jobs.put((folder, repo_id, revision))

    def _work(self) -> None:
        while True:
            folder, repo_id, revision = self.jobs.get()
            try:
                url = upload_with_retries(folder, repo_id, revision)
                self.done.append(f"{repo_id}@{revision or 'main'}")
                log.info("uploaded %s to %s@%s: %s", folder, repo_id, revision or "main", url)
            except Exception as err:
                msg = f"{folder} -> {repo_id}@{revision or 'main'}: {err}"
                self.failures.append(msg)
                log.error("upload failed for good: %s", msg)
            finally:
                self.jobs.task_done()

    def finish(self) -> list[str]:
        if self.thread is not None:
            self.jobs.join()
        return self.failures
