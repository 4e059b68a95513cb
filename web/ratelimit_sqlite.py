"""A storage for the `limits` library in one SQLite file, so that every gunicorn worker of an
instance counts the same failed logins. Registered as the `sqlite:///<path>` scheme (the path as in
SQLAlchemy's URLs: `sqlite:////abs/file` is absolute); web/security.py uses a file in the instance
folder unless JOINTSCAN_RATELIMIT_STORAGE_URI names another storage (redis://... where one runs).

Written by hand because no maintained library offers it: `limits` ships in-memory, Redis, Memcached
and MongoDB storages only, and the in-memory one counts per process, so with two workers a limit of
5 failures allowed 10, and an account locked in one worker could still log in through the other.
It follows `limits`' documented extension point (a `Storage` subclass with `MovingWindowSupport`,
registered by its STORAGE_SCHEME) and its in-memory storage's semantics.

Safe across processes: every call opens its own connection (so nothing is shared over a fork or
between threads; login attempts are rare enough for that), a write runs in one `BEGIN IMMEDIATE`
transaction that takes the write lock before it reads (two workers cannot both see room for the
last entry), the file is in WAL mode and a busy writer is waited for. The file is created 0600.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

from limits.storage import MovingWindowSupport, Storage

from private_files import private_file

SCHEME = "sqlite"
BUSY_TIMEOUT_S = 10.0
SCHEMA = (
    # Moving window: one row per acquired entry, `at` its time; rows past `expires_at` are swept.
    "CREATE TABLE IF NOT EXISTS window_entries (key TEXT NOT NULL, at REAL NOT NULL, expires_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_window_entries_key_at ON window_entries (key, at)",
    "CREATE INDEX IF NOT EXISTS ix_window_entries_expires_at ON window_entries (expires_at)",
    # Fixed window: one counter per key, reset once it expires.
    "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL)",
)


def path_of(uri: str) -> Path:
    prefix = f"{SCHEME}:///"
    path = uri[len(prefix):] if uri.startswith(prefix) else ""
    if not path or path == ":memory:":
        raise ValueError(f"a {SCHEME} rate-limit storage needs a file: {prefix}<path>, not {uri!r}")
    return Path(path)


class SQLiteStorage(Storage, MovingWindowSupport):
    """Rate-limit counts in a SQLite file shared by every process that names it."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.path = path_of(uri)
        self.timeout = float(options.get("timeout", BUSY_TIMEOUT_S))
        private_file(self.path)
        with closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")   # kept by the file: readers never wait for a writer
        with self._write() as conn:
            for statement in SCHEMA:
                conn.execute(statement)

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; _write() says where one begins and ends.
        return sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from its first read to its commit."""
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple) -> tuple:
        with closing(self._connect()) as conn:
            return conn.execute(sql, params).fetchone()

    # -- fixed window --------------------------------------------------------------------------
    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        with self._write() as conn:
            conn.execute("DELETE FROM counters WHERE key = ? AND expires_at <= ?", (key, now))
            conn.execute("INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value", (key, amount, now + expiry))
            return conn.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()[0]

    def get(self, key: str) -> int:
        row = self._read("SELECT value FROM counters WHERE key = ? AND expires_at > ?", (key, time.time()))
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        now = time.time()
        row = self._read("SELECT expires_at FROM counters WHERE key = ? AND expires_at > ?", (key, now))
        return row[0] if row else now

    # -- moving window -------------------------------------------------------------------------
    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        with self._write() as conn:
            conn.execute("DELETE FROM window_entries WHERE expires_at < ?", (now,))
            (taken,) = conn.execute("SELECT COUNT(*) FROM window_entries WHERE key = ? AND at >= ?",
                                    (key, now - expiry)).fetchone()
            if taken + amount > limit:
                return False
            conn.executemany("INSERT INTO window_entries (key, at, expires_at) VALUES (?, ?, ?)",
                             [(key, now, now + expiry)] * amount)
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(time of the oldest entry in the window, entries in the window); (now, 0) when it is empty."""
        now = time.time()
        oldest, count = self._read(
            "SELECT MIN(at), COUNT(*) FROM (SELECT at FROM window_entries WHERE key = ? AND at >= ? "
            "ORDER BY at DESC LIMIT ?)", (key, now - expiry, limit))
        return (oldest, count) if count else (now, 0)

    # -- housekeeping --------------------------------------------------------------------------
    def check(self) -> bool:
        try:
            self._read("SELECT 1", ())
            return True
        except sqlite3.Error:
            return False

    def reset(self) -> int | None:
        with self._write() as conn:
            removed = conn.execute("DELETE FROM window_entries").rowcount
            return removed + conn.execute("DELETE FROM counters").rowcount

    def clear(self, key: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM window_entries WHERE key = ?", (key,))
            conn.execute("DELETE FROM counters WHERE key = ?", (key,))
