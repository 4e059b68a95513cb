"""Backup and restore of the database and the stored images.

SQLite (the embedded default): the database is copied with SQLite's online backup API, so a backup
taken while the app serves is consistent (WAL included). PostgreSQL: `pg_dump --format=custom` (one
consistent snapshot, taken while the app serves) and `pg_restore --clean` (the server's own tools, from
the PostgreSQL client binaries). Either way a manifest lists every file with its checksum; restore
verifies it before touching anything.
"""
from __future__ import annotations

import glob
import json
import shutil
import sqlite3
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from model_loader import sha256_of
from predict import STAGING_PREFIX

MANIFEST = "manifest.json"
DB_NAME = "jointscan.sqlite"
PG_DUMP = "jointscan.pgdump"
RESULTS = "results"


class BackupError(RuntimeError):
    pass


def sqlite_path(database_uri: str) -> Path:
    prefix = "sqlite:///"
    if not database_uri.startswith(prefix) or database_uri == "sqlite:///:memory:":
        raise BackupError("backup/restore handle the embedded SQLite database and PostgreSQL "
                          "(postgresql+psycopg://...) only")
    return Path(database_uri[len(prefix):])


def is_postgresql(database_uri: str) -> bool:
    return database_uri.startswith(("postgresql://", "postgresql+psycopg://", "postgres://"))


def libpq_url(database_uri: str) -> str:
    """The URL pg_dump and pg_restore take: SQLAlchemy's without its driver name."""
    return "postgresql://" + database_uri.split("://", 1)[1]


def pg_tool(name: str) -> str:
    """A PostgreSQL client binary: on PATH, or Debian's versioned folder (the newest)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   key=lambda p: int(Path(p).parts[-3]), reverse=True)), None)
    if not found:
        raise BackupError(f"{name} is not installed (Debian: postgresql-client); it backs up PostgreSQL")
    return found


def _run_pg(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{Path(args[0]).name} failed: {done.stderr.strip()[-500:]}")


def backup(database_uri: str, results_dir: Path, dest: Path) -> dict:
    """Write a backup folder `dest` (must not exist) and return its manifest."""
    postgres = is_postgresql(database_uri)
    db_path = None if postgres else sqlite_path(database_uri)
    if dest.exists():
        raise BackupError(f"{dest} exists; choose a new folder")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if postgres:
            _run_pg([pg_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={staging / PG_DUMP}",
                     libpq_url(database_uri)])
            runs = _pg_count_runs(database_uri)
        else:
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


def _pg_count_runs(database_uri: str, missing_ok: bool = False) -> int | None:
    import psycopg

    with psycopg.connect(libpq_url(database_uri)) as con:
        exists = con.execute("SELECT to_regclass('public.runs')").fetchone()[0]
        if exists is None:
            if missing_ok:
                return None
            raise BackupError("the database has no JointScan tables")
        return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


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
    if is_postgresql(database_uri):
        if not (src / PG_DUMP).is_file():
            raise BackupError(f"{src} is a backup of a SQLite database; restore it into SQLite")
        if _pg_count_runs(database_uri, missing_ok=True) is not None and not force:
            raise BackupError("the database has JointScan tables; pass --force to replace them with the backup")
        _run_pg([pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
                 f"--dbname={libpq_url(database_uri)}", str(src / PG_DUMP)])
    else:
        db_path = sqlite_path(database_uri)
        if not (src / DB_NAME).is_file():
            raise BackupError(f"{src} is a backup of a PostgreSQL database; restore it into PostgreSQL")
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
