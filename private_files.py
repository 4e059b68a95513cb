"""What JointScan keeps is readable by its own account only: folders 0700, files 0600.

The instance folder holds the database (accounts, the audit trail), the session signing key, the
login-throttling counts and every scan's images. The usual umask (022, which gunicorn and Docker
keep) would make each new file world-readable, so the modes are set here, when a path is created,
rather than left to the umask of whoever starts the process.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600

log = logging.getLogger("jointscan.files")


def _tighten(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)
    except PermissionError:   # not ours (a mounted folder, say): say so, and serve anyway
        log.warning("cannot make %s private (mode %o); check who owns it", path, mode)


def private_dir(path: Path | str) -> Path:
    """The folder `path`, created if missing (with its parents) and made 0700 if it is not.

    An existing folder is tightened too: a deployment from before this rule had 0755 folders.
    """
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: Path | str) -> Path:
    """The file `path`, created empty if missing and made 0600 if it is not: for files another
    library opens afterwards (SQLite creates its -wal and -shm files with the main file's mode)."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    _tighten(path, FILE_MODE)
    return path


def write_private(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` (created or replaced), a file only this account can read."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    _tighten(path, FILE_MODE)
    return path
