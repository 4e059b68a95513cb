"""Upkeep while the server runs: runs that lost their job are rescued or settled without waiting for a restart.

A job's process can die (out of memory, `kill -9`, a restart) with runs queued in it or running. Every
SWEEP_EVERY_S seconds, the first request a process serves sweeps (predict.sweep_runs): a run whose holder
stopped beating is handed to this process's executor, whose job takes it over by compare-and-set (or fails
it after JOB_MAX_ATTEMPTS); a run running past the time limit, or waiting in the broker's queue past
JOB_QUEUE_TIMEOUT_S, fails with that reason. Each process sweeps on its own clock; two sweeps at once settle
or take over each run once.
"""
from __future__ import annotations

import logging
import threading
import time

from flask import Flask, current_app

from jobs import current_executor, job_settings
from predict import sweep_runs
from storage import results_dir

log = logging.getLogger("jointscan.upkeep")
_LOCK = threading.Lock()


def init_app(app: Flask) -> None:
    state = {"next": 0.0}

    @app.before_request
    def _sweep_now_and_then() -> None:
        now = time.monotonic()
        if now < state["next"] or not _LOCK.acquire(blocking=False):
            return
        try:
            state["next"] = now + float(current_app.config["SWEEP_EVERY_S"])
            sweep_runs(job_settings(current_app.config), results_dir(), resubmit=current_executor().submit)
        except Exception:  # upkeep never fails the request that happened to trigger it
            log.exception("sweeping runs failed")
        finally:
            _LOCK.release()
