"""The Celery worker: `celery -A worker worker --concurrency N` (with REDIS_URL set, as for the web nodes).

Each worker process keeps its Flask application, and so its model registry, between jobs: the models load on
the first job that needs them and stay loaded. A job is one run (`jointscan.analyse`, jobs.TASK_NAME):

- acknowledged late and rejected when its process dies (jobs.celery_settings), so Redis delivers it again;
- idempotent by run: `predict.execute_run` claims the run by compare-and-set, so a second delivery does nothing
  while the first lives, and a delivery that finds the run held by an attempt that has just died (its
  heartbeat not yet stale) looks again once it would be, and then takes it over;
- bounded in time: Celery's soft limit (JOB_TIME_LIMIT_S) stops the models with a clear `failed`, its hard
  limit (30 s later) the process.
"""
from __future__ import annotations

import logging

from app import create_app
from jobs import TASK_NAME, Heartbeat, celery_app, run_job
from predict import Outcome

log = logging.getLogger("jointscan.worker")

flask_app = create_app()
if not flask_app.config.get("REDIS_URL"):
    raise RuntimeError("The worker needs REDIS_URL (the broker the web nodes send jobs to).")
_time_limit = int(flask_app.config["JOB_TIME_LIMIT_S"])
_stale_after = int(flask_app.config["JOB_STALE_AFTER_S"])
celery = celery_app(flask_app.config["REDIS_URL"], _time_limit)
# Enough looks for a live duplicate to finish (the time limit) and a dead one to go silent.
_MAX_LOOKS = (_time_limit + 2 * _stale_after) // max(1, _stale_after) + 2
_heartbeats: dict[int, Heartbeat] = {}


def _heartbeat() -> Heartbeat:
    """One heartbeat per worker process, made in the process itself (threads do not survive the fork)."""
    import os

    pid = os.getpid()
    if pid not in _heartbeats:
        _heartbeats[pid] = Heartbeat(flask_app, float(flask_app.config["JOB_HEARTBEAT_S"]))
    return _heartbeats[pid]


@celery.task(name=TASK_NAME, bind=True, max_retries=_MAX_LOOKS)
def analyse(self, public_id: str) -> str:
    outcome = run_job(flask_app, public_id, _heartbeat())
    if outcome is Outcome.HELD:
        log.info("run %s is held by another attempt; looking again in %d s", public_id, _stale_after)
        raise self.retry(countdown=_stale_after)
    return outcome.value
