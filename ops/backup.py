"""Backup and restore of the embedded SQLite database and the stored images.

The database is copied with SQLite's online backup API, so a backup taken
while the app serves is consistent (WAL included). A manifest lists every
file with its checksum; restore verifies it before touching anything.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from model_loader import sha256_of
from predict import STAGING_PREFIX

MANIFEST = "manifest.json"
DB_NAME = "jointscan.sqlite"
RESULTS = "results"


class BackupError(RuntimeError):
    pass


def sqlite_path(database_uri: str) -> Path:
    prefix = "sqlite:///"
    if not database_uri.startswith(prefix) or database_uri == "sqlite:///:memory:":
        raise BackupError("backup/restore handle the embedded SQLite database only; "
                          "use the database server's own tools (e.g. pg_dump) for others")
    return Path(database_uri[len(prefix):])


def backup(database_uri: str, results_dir: Path, dest: Path) -> dict:
    """Write a backup folder `dest` (must not exist) and return its manifest."""
    db_path = sqlite_path(database_uri)
    if dest.exists():
        raise BackupError(f"{dest} exists; choose a new folder")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        dst = sqlite3.connect(staging / DB_NAME)
        with dst:
            src.backup(dst)
        runs = dst.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        src.close()
        dst.close()
        if results_dir.exists():
            shutil.copytree(results_dir, staging / RESULTS,
                            ignore=shutil.ignore_patterns(STAGING_PREFIX + "*"))
        files = {str(p.relative_to(staging)): sha256_of(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        manifest = {"created_at": datetime.now(timezone.utc).isoformat(), "runs": runs, "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        staging.rename(dest)   # a backup folder either exists whole or not at all
        return manifest
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def verify(src: Path) -> dict:
    manifest_path = src / MANIFEST
    if not manifest_path.exists():
        raise BackupError(f"{src} is not a JointScan backup (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    for rel, digest in manifest["files"].items():
        path = src / rel
        if not path.is_file() or sha256_of(path) != digest:
            raise BackupError(f"backup file {rel} is missing or damaged")
    return manifest


def restore(src: Path, database_uri: str, results_dir: Path, *, force: bool = False) -> dict:
    """Replace the database and images with the backup's. Refuses to overwrite unless `force`."""
    manifest = verify(src)
    db_path = sqlite_path(database_uri)
    if db_path.exists() and not force:
        raise BackupError(f"{db_path} exists; pass --force to replace it with the backup")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # Copy through the backup API too, so the live database file is replaced page by page under a lock.
    src_db = sqlite3.connect(f"file:{src / DB_NAME}?mode=ro", uri=True)
    dst_db = sqlite3.connect(db_path)
    with dst_db:
        src_db.backup(dst_db)
    src_db.close()
    dst_db.close()
    incoming = results_dir.with_name(results_dir.name + ".restoring")
    shutil.rmtree(incoming, ignore_errors=True)
    if (src / RESULTS).exists():
        shutil.copytree(src / RESULTS, incoming)
    else:
        incoming.mkdir(parents=True)
    old = results_dir.with_name(results_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if results_dir.exists():
        results_dir.rename(old)
    incoming.rename(results_dir)
    shutil.rmtree(old, ignore_errors=True)
    return manifest
