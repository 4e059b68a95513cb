"""Where uploads are limited and results are kept, as the running application is configured.

Each finished run's images live in RESULTS_DIR/<public id>/ (`predict.execute_run` writes them to a
staging folder and renames it into place), a queued run's decoded input in RESULTS_DIR/.queue/;
`remove_orphan_files` clears what a stopped process left behind. Web nodes and workers share RESULTS_DIR.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from flask import current_app

from database import UNSETTLED, Run, RunStatus, db
from predict import QUEUE_FOLDER, STAGING_PREFIX, Limits

RUN_FOLDER = re.compile(r"[0-9a-f]{32}")   # a run's public id


def upload_limits() -> Limits:
    """The limits for one scan: file size and pixel count (MAX_UPLOAD_BYTES, MAX_IMAGE_PIXELS), the disk's
    free-space floor (MIN_FREE_DISK_BYTES) and the default storage quota (STORAGE_QUOTA_BYTES)."""
    cfg = current_app.config
    return Limits(max_bytes=cfg["MAX_UPLOAD_BYTES"], max_pixels=cfg["MAX_IMAGE_PIXELS"],
                  min_free_disk_bytes=int(cfg["MIN_FREE_DISK_BYTES"]),
                  storage_quota_bytes=int(cfg["STORAGE_QUOTA_BYTES"]))


def results_dir() -> Path:
    """The folder holding every run's images (RESULTS_DIR)."""
    return Path(current_app.config["RESULTS_DIR"])


def remove_orphan_files(root: Path, older_than_s: float = 0) -> int:
    """Remove result folders no finished run owns: staging folders left by a killed worker and the
    folders of runs that are not `done` (or no longer exist), and queued inputs of runs that are no longer
    waiting or running, when last changed more than `older_than_s` seconds ago (a live server's analysis
    in flight writes its staging folder now). Returns how many."""
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    done = {pid for (pid,) in db.session.execute(db.select(Run.public_id).filter_by(status=RunStatus.DONE))}
    waiting = {pid for (pid,) in db.session.execute(db.select(Run.public_id).where(Run.status.in_(UNSETTLED)))}
    removed = 0
    queue = root / QUEUE_FOLDER
    for path in (queue.iterdir() if queue.is_dir() else ()):
        if path.stem not in waiting and path.stat().st_mtime <= cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    for path in root.iterdir():
        orphan = path.name.startswith(STAGING_PREFIX) or (
            RUN_FOLDER.fullmatch(path.name) is not None and path.name not in done)
        if orphan and path.is_dir() and path.stat().st_mtime <= cutoff:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
