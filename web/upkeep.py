"""Upkeep while the server runs: runs whose worker died are marked failed without waiting for a restart.

A worker killed mid-analysis (out of memory, the worker time-out, `kill -9`) leaves its run `pending`.
Every SWEEP_EVERY_S seconds, the first request a process serves sweeps the runs pending for longer than
RUN_STALE_AFTER_S (the time an analysis may take: the worker time-out plus a margin), by compare-and-set
(predict.sweep_interrupted_runs): a run that finished first keeps its result, one still running when
swept discards its late result. Each process sweeps on its own clock; two sweeps at once settle each run once.
"""
from __future__ import annotations

import logging
import threading
import time

from flask import Flask, current_app

from predict import sweep_interrupted_runs
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
            sweep_interrupted_runs(int(current_app.config["RUN_STALE_AFTER_S"]), results_dir())
        except Exception:  # upkeep never fails the request that happened to trigger it
            log.exception("sweeping interrupted runs failed")
        finally:
            _LOCK.release()
