"""Analyses as jobs: the executor an upload hands its queued run to, and the worker side of it.

Two executors with one interface (`submit(public id)`), chosen by configuration:

- `CeleryExecutor` when REDIS_URL is set: the run's id goes to Redis (broker and result backend) and a
  Celery worker process (`celery -A worker worker`, worker.py) runs it, keeping its models loaded between
  jobs. The task is acknowledged late and rejected when its worker process dies, so the broker delivers it
  again; the job itself is idempotent by run (`predict.execute_run` claims the run by compare-and-set).
- `InProcessExecutor` otherwise (`make run`, no extra service): a small pool of threads in the web process.

Either way a holder beats for the runs it holds (`Heartbeat`), so that a run whose process died is found
silent by the sweep (web/upkeep.py -> `predict.sweep_runs`) and handed to a live executor again. No queue,
scheduler or lock of our own: the broker, the database's compare-and-set and a thread pool do the work.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from flask import Flask, current_app

from database import Run, db
from predict import JobSettings, Outcome, execute_run

log = logging.getLogger("jointscan.jobs")

TASK_NAME = "jointscan.analyse"     # the Celery task's name (worker.py registers it)


class Executor(Protocol):
    name: str
    holds_queue: bool     # True: this process holds its queued runs (and beats for them); False: a broker does

    def submit(self, public_id: str) -> None:
        """Run the queued run's job (soon, elsewhere); raises when it cannot be queued."""


def job_settings(config: dict[str, Any]) -> JobSettings:
    return JobSettings(time_limit_s=int(config["JOB_TIME_LIMIT_S"]), stale_after_s=int(config["JOB_STALE_AFTER_S"]),
                       max_attempts=int(config["JOB_MAX_ATTEMPTS"]), queue_timeout_s=int(config["JOB_QUEUE_TIMEOUT_S"]))


class Heartbeat:
    """Says, every `every_s` seconds, that this process still holds its runs (`Run.beat`): the queued ones it
    holds, and the ones it runs under their attempt. One thread, alive only while something is held."""

    def __init__(self, app: Flask, every_s: float):
        self._app, self._every = app, every_s
        self._held: dict[str, int | None] = {}       # public id -> the attempt running it, or None while queued
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, public_id: str, attempt: int | None = None) -> None:
        with self._lock:
            self._held[public_id] = attempt
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="jointscan-heartbeat", daemon=True)
                self._thread.start()

    def release(self, public_id: str) -> None:
        with self._lock:
            self._held.pop(public_id, None)

    def held(self) -> dict[str, int | None]:
        with self._lock:
            return dict(self._held)

    def _beat(self) -> None:
        while True:
            time.sleep(self._every)
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
                held = dict(self._held)
            with self._app.app_context():
                try:
                    Run.beat([p for p, a in held.items() if a is None],
                             [(p, a) for p, a in held.items() if a is not None])
                except Exception:       # a database hiccup: the next beat tries again, the sweep is patient
                    log.exception("heartbeat failed")
                finally:
                    db.session.remove()


def run_job(app: Flask, public_id: str, heartbeat: Heartbeat) -> Outcome:
    """One delivery of a run's job, in an application context (a pool thread or a Celery worker), beating for
    the run from its claim to its end."""
    with app.app_context():
        try:
            return execute_run(public_id, registry=app.extensions["jointscan.registry"],
                               results_dir=Path(app.config["RESULTS_DIR"]), settings=job_settings(app.config),
                               on_claim=lambda attempt: heartbeat.hold(public_id, attempt))
        finally:
            heartbeat.release(public_id)
            db.session.remove()


class InProcessExecutor:
    """A thread pool in this process (JOB_THREADS threads: each analysis uses every core already)."""

    name = "in-process"
    holds_queue = True

    def __init__(self, app: Flask, threads: int, heartbeat_s: float):
        self._app = app
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jointscan-job")
        self.heartbeat = Heartbeat(app, heartbeat_s)

    def submit(self, public_id: str) -> None:
        self.heartbeat.hold(public_id)          # beats while it waits here (only while it is `queued`)
        try:
            self._pool.submit(self._run, public_id)
        except RuntimeError:        # the pool is shutting down with its process
            self.heartbeat.release(public_id)
            raise

    def _run(self, public_id: str) -> None:
        try:
            if run_job(self._app, public_id, self.heartbeat) is Outcome.HELD:
                log.info("run %s is held by another live attempt", public_id)
        except Exception:
            log.exception("job for run %s crashed", public_id)


def celery_settings(redis_url: str, time_limit_s: int) -> dict[str, Any]:
    """The Celery configuration web nodes and workers share. Late acknowledgement and reject-on-worker-lost:
    a job whose worker process dies goes back to the queue. The broker's visibility time-out (how long an
    unacknowledged job waits before another worker gets it, when the whole worker died) outlasts any job."""
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": time_limit_s,
        "task_time_limit": time_limit_s + 30,
        "broker_transport_options": {"visibility_timeout": time_limit_s + 120},
        "result_expires": 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
    }


def celery_app(redis_url: str, time_limit_s: int):
    from celery import Celery

    app = Celery("jointscan")
    app.conf.update(celery_settings(redis_url, time_limit_s))
    return app


class CeleryExecutor:
    """Sends the run's id to the Celery workers through Redis. The task id is the run id, so a job sent
    twice (a rescued run) is the same job to anyone watching the result backend."""

    name = "celery"
    holds_queue = False

    def __init__(self, redis_url: str, time_limit_s: int):
        self.celery = celery_app(redis_url, time_limit_s)

    def submit(self, public_id: str) -> None:
        self.celery.send_task(TASK_NAME, args=[public_id], task_id=public_id, retry=False)


def wait_until_settled(run: Run, timeout_s: float, poll_s: float = 0.05) -> Run:
    """The run once it is done or failed, or as it is after `timeout_s` (the API's ?wait=true, the upload
    page's short wait for a quick result). Reads the database, so it works whichever process runs the job."""
    deadline = time.monotonic() + timeout_s
    while True:
        db.session.expire_all()
        current = db.session.get(Run, run.id)
        if current.settled or time.monotonic() >= deadline:
            return current
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        poll_s = min(poll_s * 1.5, 0.5)


def init_app(app: Flask) -> None:
    """The application's executor, from REDIS_URL (Celery) or none (in process)."""
    if app.config.get("REDIS_URL"):
        executor: Executor = CeleryExecutor(app.config["REDIS_URL"], int(app.config["JOB_TIME_LIMIT_S"]))
    else:
        executor = InProcessExecutor(app, int(app.config["JOB_THREADS"]), float(app.config["JOB_HEARTBEAT_S"]))
    app.extensions["jointscan.executor"] = executor


def current_executor() -> Executor:
    return current_app.extensions["jointscan.executor"]


__all__ = ["CeleryExecutor", "Executor", "Heartbeat", "InProcessExecutor", "TASK_NAME", "celery_app",
           "celery_settings", "current_executor", "init_app", "job_settings", "run_job", "wait_until_settled"]
