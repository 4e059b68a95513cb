"""Login throttling shared by every worker of an instance: the SQLite storage for `limits` holds a
limit exactly when processes race for it, and two app processes count the same failed logins.

The worker functions run in processes started with "spawn" (nothing inherited from pytest), so this
module imports only what they need.
"""
from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from web.ratelimit_sqlite import SQLiteStorage

PASSWORD = "correct horse battery"
SPAWN = multiprocessing.get_context("spawn")


def _acquire_many(uri: str, limit: str, attempts: int, start, results) -> None:
    strategy = MovingWindowRateLimiter(storage_from_string(uri))
    item = parse(limit)
    start.wait(30)                       # every process begins at once
    results.put(sum(strategy.hit(item, "login-account", "account:alice") for _ in range(attempts)))


def _run_all(target, args_list) -> list:
    results = SPAWN.Queue()
    processes = [SPAWN.Process(target=target, args=(*args, results)) for args in args_list]
    for p in processes:
        p.start()
    got = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(30)
        assert p.exitcode == 0
    return got


def test_the_storage_holds_a_limit_when_processes_race_for_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'limits.sqlite'}"
    start = SPAWN.Barrier(4)
    granted = _run_all(_acquire_many, [(uri, "25 per minute", 15, start)] * 4)
    assert sum(granted) == 25                                 # 60 tries, exactly the 25 the limit allows
    strategy = MovingWindowRateLimiter(SQLiteStorage(uri))
    assert strategy.get_window_stats(parse("25 per minute"), "login-account", "account:alice").remaining == 0
    assert stat.S_IMODE(os.stat(tmp_path / "limits.sqlite").st_mode) == 0o600


def test_the_storage_behaves_like_the_in_memory_one(tmp_path):
    """Same answers as `limits`' own in-memory storage, for the moving and the fixed window."""
    shared = SQLiteStorage(f"sqlite:///{tmp_path / 'limits.sqlite'}")
    memory = storage_from_string("memory://")
    item = parse("3 per minute")
    for storage in (shared, memory):
        moving = MovingWindowRateLimiter(storage)
        assert [moving.hit(item, "k") for _ in range(4)] == [True, True, True, False]
        assert moving.get_window_stats(item, "k").remaining == 0 and not moving.test(item, "k")
        assert moving.test(item, "other")
        storage.clear(item.key_for("k"))
        assert moving.test(item, "k")
        assert [storage.incr("counter", 60) for _ in range(3)] == [1, 2, 3]
        assert storage.get("counter") == 3 and storage.get_expiry("counter") > 0
        assert storage.check()


def _login_worker(instance: str, config: dict, attempts: list[str], results) -> None:
    """One 'gunicorn worker': its own process and app (and so its own Flask-Limiter), the instance's files."""
    os.environ["JOINTSCAN_INSTANCE_PATH"] = instance
    from app import create_app

    client = create_app(config).test_client()
    results.put([client.post("/login", data={"username": "alice", "password": p}).status_code for p in attempts])


@pytest.mark.parametrize("storage, second_worker", [
    ("", [401, 401, 429]),              # the default: one count for the instance
    ("memory://", [401, 401, 401]),     # what each worker counted on its own before
])
def test_two_worker_processes_count_the_same_failed_logins(tmp_path, monkeypatch, storage, second_worker):
    instance = tmp_path / "instance"
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(instance))
    from app import create_app
    from database import User, db

    config = {"TESTING": True, "SECRET_KEY": "test-secret-key", "WTF_CSRF_ENABLED": False,
              "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance / 'jointscan.sqlite'}",
              "MODELS_DIR": str(tmp_path / "no-models"), "RATELIMIT_STORAGE_URI": storage,
              "LOGIN_LIMITS_PER_ACCOUNT": "4 per minute", "LOGIN_LIMITS_PER_ADDRESS": "50 per minute"}
    app = create_app(config)
    with app.app_context():
        db.create_all()
        user = User(username="alice")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()

    wrong = "not the password at all"
    assert _run_all(_login_worker, [(str(instance), config, [wrong, wrong])]) == [[401, 401]]
    assert _run_all(_login_worker, [(str(instance), config, [wrong, wrong, wrong])]) == [second_worker]
    if not storage:
        assert (Path(instance) / "ratelimits.sqlite").is_file()
