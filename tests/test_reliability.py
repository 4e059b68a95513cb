"""Reliability: SQLite in WAL with a busy timeout, writes that wait out another writer's lock (or
fail cleanly, keeping nothing), and a worker killed mid-prediction swept up at start-up with its
files."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

import database
from app import create_app
from database import BUSY_TIMEOUT_MS, ApiToken, Run, User, db
from tests.conftest import PASSWORD, result_files, upload


def _db_path(app) -> str:
    with app.app_context():
        return db.engine.url.database


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(app):
    with app.app_context():
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS >= 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


class WriteLock:
    """Another connection holding SQLite's write lock from a thread, for `seconds` (None: until the
    `with` block ends)."""

    def __init__(self, path: str, seconds: float | None = None):
        self.path, self.seconds = path, seconds
        self.taken, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self):
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO settings(key, value, changed_at) VALUES ('lock-drill', '1', '2026-01-01')")
        self.taken.set()
        if self.seconds is None:
            self.release.wait(60)
        else:
            time.sleep(self.seconds)
        conn.execute("ROLLBACK")
        conn.close()

    def __enter__(self):
        self.thread.start()
        assert self.taken.wait(5)
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(10)


def test_a_write_waits_for_a_locked_database_and_succeeds(app, alice):
    with WriteLock(_db_path(app), seconds=1.0):
        start = time.perf_counter()
        response = alice.post("/account/tokens", data={"name": "during the lock"})
        waited = time.perf_counter() - start
    assert response.status_code == 200 and b"Your new API token" in response.data
    assert waited >= 0.5                                     # it did wait for the lock

    with app.app_context():
        assert ApiToken.query.filter_by(name="during the lock").count() == 1


def test_a_lock_longer_than_the_timeout_fails_cleanly_and_keeps_nothing(app, alice, scan_png, monkeypatch):
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 200)
    with app.app_context():
        db.engine.dispose()                                  # new connections get the short timeout
    with WriteLock(_db_path(app)):
        token = alice.post("/account/tokens", data={"name": "lost"})
        scan = upload(alice, scan_png)
        api = alice.post("/api/v1/analyze", data={"task": "sacroiliac"})
    assert token.status_code == 503 and b"nothing was saved" in token.data
    assert token.headers["Retry-After"]
    assert scan.status_code == 503 and b"nothing was saved" in scan.data
    assert api.status_code in (400, 503)
    with app.app_context():
        assert ApiToken.query.count() == 0 and Run.query.count() == 0
    assert result_files(app) == []
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 10_000)
    with app.app_context():
        db.engine.dispose()
    assert alice.post("/account/tokens", data={"name": "after"}).status_code == 200   # serving again


def test_worker_killed_mid_prediction_is_swept_at_start_up_with_its_files(tmp_path, monkeypatch):
    """What a SIGKILLed worker leaves: a pending run and a staging folder (benchmarks/load_test.py
    does it for real with gunicorn). `flask prepare` at start-up marks the run failed and removes
    the files no finished run owns; finished runs keep theirs."""
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'k.sqlite'}",
                      "RESULTS_DIR": str(tmp_path / "results")})
    runner = app.test_cli_runner()
    assert runner.invoke(args=["prepare"]).exit_code == 0
    results = Path(app.config["RESULTS_DIR"])
    with app.app_context():
        user = User(username="u1")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        done = Run(user_id=user.id, task="sacroiliac", status="done", input_image="input.png")
        killed = Run(user_id=user.id, task="sacroiliac", status="pending")
        db.session.add_all([done, killed])
        db.session.commit()
        done_id, killed_id = done.public_id, killed.public_id
    (results / done_id).mkdir(parents=True)
    (results / done_id / "input.png").write_bytes(b"png")
    staging = results / f".staging-{killed_id}-abc123"
    staging.mkdir()
    (staging / "input.png").write_bytes(b"half")
    (results / killed_id).mkdir()                            # killed between the rename and the commit

    result = runner.invoke(args=["prepare"])
    assert result.exit_code == 0, result.output
    assert "1 interrupted" in result.output and "2 orphan" in result.output
    with app.app_context():
        assert db.session.get(Run, 2).status == "failed"
        assert "interrupted" in Run.query.filter_by(public_id=killed_id).one().error
        assert Run.query.filter_by(public_id=done_id).one().status == "done"
    assert sorted(p.name for p in results.iterdir()) == [done_id]
    assert (results / done_id / "input.png").exists()
