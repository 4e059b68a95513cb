"""Reliability: SQLite in WAL with a busy timeout, writes that wait out another writer's lock (or
fail cleanly, keeping nothing), and a worker killed mid-prediction: its run taken over and done once, or
failed with the reason, and its files cleaned up."""
from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

import database
from app import create_app
from database import BUSY_TIMEOUT_MS, ApiToken, Run, User, db
from jobs import wait_until_settled
from tests.conftest import CLS_OURS, PASSWORD, SEG_OURS, create_user, result_files, upload

REPO = Path(__file__).resolve().parents[1]


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
        response = alice.post("/account/tokens", data={"name": "during the lock", "password": PASSWORD})
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
        token = alice.post("/account/tokens", data={"name": "lost", "password": PASSWORD})
        scan = upload(alice, scan_png)
        api = alice.post("/api/v1/analyze?wait=true", content_type="multipart/form-data",
                         data={"task": "sacroiliac", "file": (io.BytesIO(scan_png), "scan.png"),
                               "model_ids": f"{SEG_OURS},{CLS_OURS}"})
    assert token.status_code == 503 and b"nothing was saved" in token.data
    assert token.headers["Retry-After"]
    assert scan.status_code == 503 and b"nothing was saved" in scan.data
    assert api.status_code == 503 and api.mimetype == "application/json"
    assert api.headers["Retry-After"] == "5"
    assert "nothing was saved" in api.get_json()["error"]["message"]
    with app.app_context():
        assert ApiToken.query.count() == 0 and Run.query.count() == 0
    assert result_files(app) == []
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 10_000)
    with app.app_context():
        db.engine.dispose()
    assert alice.post("/account/tokens", data={"name": "after", "password": PASSWORD}).status_code == 200   # serving again


# A worker process: analyses the scan in argv[2] with the app configured by argv[1] (JSON) as user 1,
# and stops for good right after the first image is written to the staging folder, once it has
# said where (in the file named by argv[3]).
WORKER = """
import json, sys, time
from pathlib import Path

import predict
from app import create_app
from database import User, db
from model_loader import current_registry
from predict import Analysis, analyze

config, scan, marker = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
app = create_app(config)
real_write = predict._write_png

def write_then_hang(path, img):
    name = real_write(path, img)
    marker.write_text(str(path.parent))
    time.sleep(600)
    return name

predict._write_png = write_then_hang
with app.app_context():
    analyze(db.session.get(User, 1), scan.read_bytes(), Analysis("sacroiliac", sys.argv[4].split(",")),
            registry=current_registry(), results_dir=Path(config["RESULTS_DIR"]))
"""


def _stale(app, public_id: str, *, seconds: float = 3600) -> None:
    """Age a run's heartbeat and start as if its holder had been silent for `seconds`."""
    with app.app_context():
        long_ago = database.utcnow() - timedelta(seconds=seconds)
        run = Run.query.filter_by(public_id=public_id).one()
        run.heartbeat_at = long_ago
        if run.started_at is not None:
            run.started_at = long_ago
        db.session.commit()


def test_worker_killed_mid_prediction_is_taken_over_and_ends_done_once(tmp_path, monkeypatch, tiny_models_dir,
                                                                        scan_png):
    """A real worker process, SIGKILLed while it stores a run's images: it leaves a running run, its queued
    input and a staging folder. A live server's sweep finds the run silent, its executor takes it over (the
    second attempt) and it ends done with one set of results; `flask prepare` then removes the dead
    attempt's staging folder."""
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path / "instance"))
    config = {"TESTING": True, "SECRET_KEY": "kill-test", "RESULTS_DIR": str(tmp_path / "results"),
              "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'w.sqlite'}", "MODELS_DIR": str(tiny_models_dir)}
    app = create_app(config)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["prepare"]).exit_code == 0
    create_user(app, "worker-owner")
    scan, marker = tmp_path / "scan.png", tmp_path / "staging-at"
    scan.write_bytes(scan_png)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(config), str(scan), str(marker),
                               f"{SEG_OURS},{CLS_OURS}"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), worker.stderr.read().decode()[-2000:] if worker.poll() is not None else "timed out"
        staging = Path(marker.read_text())
        assert staging.parent == Path(config["RESULTS_DIR"]) and (staging / "input.png").is_file()
        with app.app_context():
            run = Run.query.one()
            assert run.status == "running" and run.attempts == 1 and run.public_id in staging.name
            public_id = run.public_id
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        worker.stderr.close()
    assert worker.returncode == -signal.SIGKILL

    # Start-up beside it leaves a run that may be adopted alone (only a live server's executor adopts).
    result = runner.invoke(args=["prepare"])
    assert result.exit_code == 0 and "0 run(s)" in result.output, result.output
    _stale(app, public_id, seconds=60)        # its heartbeat went quiet a minute ago, as the kill left it
    live = create_app({**config, "SWEEP_EVERY_S": 0})
    assert live.test_client().get("/healthz").status_code == 200      # any request sweeps
    with live.app_context():
        run = wait_until_settled(Run.query.one(), 60)
        assert run.status == "done" and run.attempts == 2, run.error
        assert len(run.results) == 2 and run.timings["total_ms"] > 0
    results = Path(config["RESULTS_DIR"])
    assert (results / public_id / "input.png").is_file() and staging.is_dir()
    assert not (results / ".queue" / f"{public_id}.npy").exists()        # the queued input went with the job
    old = time.time() - 3600              # older than an analysis may take: no live attempt writes it
    os.utime(staging, (old, old))
    result = runner.invoke(args=["prepare"])
    assert result.exit_code == 0 and "1 orphan" in result.output, result.output
    assert sorted(p.name for p in results.iterdir() if p.name != ".queue") == [public_id]


def test_start_up_sweep_fails_overdue_runs_and_keeps_finished_ones(tmp_path, monkeypatch):
    """The states a dead worker can leave (a run running past the time limit, its staging folder, or a folder
    renamed into place before the commit), written by hand beside a finished run: the sweep fails the run
    with the reason and removes its files, and keeps the finished run's files."""
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'k.sqlite'}",
                      "RESULTS_DIR": str(tmp_path / "results"), "JOB_TIME_LIMIT_S": 60, "JOB_STALE_AFTER_S": 30})
    runner = app.test_cli_runner()
    assert runner.invoke(args=["prepare"]).exit_code == 0
    results = Path(app.config["RESULTS_DIR"])
    with app.app_context():
        user = User(username="u1")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        done = Run(user_id=user.id, task="sacroiliac", status="done", input_image="input.png")
        killed = Run(user_id=user.id, task="sacroiliac", status="running", attempts=1, started_at=database.utcnow())
        db.session.add_all([done, killed])
        db.session.commit()
        done_id, killed_id = done.public_id, killed.public_id
    _stale(app, killed_id, seconds=91)        # past the time limit and the heartbeat's patience
    (results / done_id).mkdir(parents=True)
    (results / done_id / "input.png").write_bytes(b"png")
    staging = results / f".staging-{killed_id}-1-abc123"
    staging.mkdir()
    (staging / "input.png").write_bytes(b"half")
    old = time.time() - 3600
    os.utime(staging, (old, old))
    (results / killed_id).mkdir()                            # killed between the rename and the commit

    result = runner.invoke(args=["prepare"])
    assert result.exit_code == 0, result.output
    # The sweep removes the folder renamed into place; the staging folder is an orphan.
    assert "1 run(s) that lost their job marked failed" in result.output and "1 orphan" in result.output
    with app.app_context():
        killed = Run.query.filter_by(public_id=killed_id).one()
        assert killed.status == "failed" and "did not finish within the time limit of 60 s" in killed.error
        assert killed.finished_at is not None
        assert Run.query.filter_by(public_id=done_id).one().status == "done"
    assert sorted(p.name for p in results.iterdir()) == [done_id]
    assert (results / done_id / "input.png").exists()


def _queued_run(app, username: str = "sweeper", *, held: bool = True) -> str:
    user_id = create_user(app, username)
    with app.app_context():
        run = Run(user_id=user_id, task="sacroiliac", status="queued", model_ids=[SEG_OURS, CLS_OURS],
                  heartbeat_at=database.utcnow() if held else None)
        db.session.add(run)
        db.session.commit()
        return run.public_id


def test_a_live_server_adopts_a_silent_run_and_fails_it_with_the_reason(make_app):
    """No restart needed: a request (any) sweeps; a run whose holder went silent is handed to this server's
    executor, and a run whose queued scan is gone ends failed with that reason (never stays queued)."""
    app = make_app(SWEEP_EVERY_S=0)
    public_id = _queued_run(app)
    _stale(app, public_id)
    assert app.test_client().get("/healthz").status_code == 200
    with app.app_context():
        run = wait_until_settled(Run.query.filter_by(public_id=public_id).one(), 30)
        assert run.status == "failed" and "no longer on the server's disk" in run.error
        assert run.attempts == 1 and run.finished_at is not None


def test_a_run_queued_in_a_broker_too_long_fails(make_app):
    app = make_app(SWEEP_EVERY_S=0, JOB_QUEUE_TIMEOUT_S=60)
    fresh, old = _queued_run(app, "fresh", held=False), _queued_run(app, "old", held=False)
    with app.app_context():
        db.session.execute(db.update(Run).where(Run.public_id == old).values(
            created_at=database.utcnow() - timedelta(seconds=61)))
        db.session.commit()
    assert app.test_client().get("/healthz").status_code == 200
    with app.app_context():
        assert Run.query.filter_by(public_id=fresh).one().status == "queued"
        run = Run.query.filter_by(public_id=old).one()
        assert run.status == "failed" and "waited 1 minute without a worker" in run.error


def test_prepare_beside_a_live_server_leaves_runs_in_flight_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    # The default settings: a run that its holder beats for may still be running.
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'live.sqlite'}",
                      "RESULTS_DIR": str(tmp_path / "results")})
    assert app.test_cli_runner().invoke(args=["prepare"]).exit_code == 0
    public_id = _queued_run(app)
    staging = Path(app.config["RESULTS_DIR"]) / f".staging-{public_id}-1-abc123"
    staging.mkdir(parents=True)
    result = app.test_cli_runner().invoke(args=["prepare"])
    assert result.exit_code == 0 and "0 run(s)" in result.output and "0 orphan" in result.output
    assert staging.is_dir()
    with app.app_context():
        assert Run.query.filter_by(public_id=public_id).one().status == "queued"


def test_a_run_is_settled_once(make_app):
    app = make_app()
    public_id = _queued_run(app)
    with app.app_context():
        run_id = Run.query.filter_by(public_id=public_id).one().id
        assert Run.settle(run_id, database.RunStatus.FAILED, error="first")
        assert not Run.settle(run_id, database.RunStatus.DONE)
        db.session.commit()
        run = db.session.get(Run, run_id)
        assert run.status == "failed" and run.error == "first"


def test_a_run_swept_while_it_ran_stays_failed_and_keeps_nothing(app, alice, scan_png, monkeypatch):
    """The sweep (another process, say) marks the run failed while the models run: the analysis ends with a
    clear error, the run stays failed once, and its results and images are discarded."""
    from predict import JobSettings, sweep_runs
    from tasks.sacroiliac import SacroiliacTask

    real_run = SacroiliacTask.run

    def run_then_be_swept(self, *args, **kwargs):
        output = real_run(self, *args, **kwargs)
        with app.app_context():
            sweep_runs(JobSettings(time_limit_s=0, stale_after_s=0), Path(app.config["RESULTS_DIR"]))
        return output

    monkeypatch.setattr(SacroiliacTask, "run", run_then_be_swept)
    response = upload(alice, scan_png)
    with app.app_context():
        run = Run.query.one()
        assert response.headers["Location"].endswith(f"/runs/{run.public_id}")      # the failed run's page
        assert run.status == "failed" and "did not finish within the time limit" in run.error and not run.results
    assert [p for p in result_files(app) if p.is_file()] == []
