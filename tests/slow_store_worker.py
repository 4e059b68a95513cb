"""The real Celery worker (worker.py) with one change for tests/test_celery.py: each attempt pauses for
JOINTSCAN_TEST_STORE_PAUSE_S seconds after it writes its first image, and says so in the file
JOINTSCAN_TEST_STORING_MARKER, so that a test can SIGKILL the process while a run is half stored.

    celery -A tests.slow_store_worker worker --concurrency 1
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import predict
from worker import celery  # noqa: F401  (the app celery -A finds)

_PAUSE_S = float(os.environ.get("JOINTSCAN_TEST_STORE_PAUSE_S", "0"))
_MARKER = os.environ.get("JOINTSCAN_TEST_STORING_MARKER")
_real_write = predict._write_png


def _write_then_pause(path: Path, img) -> str:
    name = _real_write(path, img)
    if name == "input.png":
        if _MARKER:
            with open(_MARKER, "a") as fh:
                fh.write(f"{os.getpid()} {path.parent.name}\n")
        time.sleep(_PAUSE_S)
    return name


predict._write_png = _write_then_pause
