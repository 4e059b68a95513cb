"""Real-data tests: skipped where the data folder (../shared/data, or JOINTSCAN_DATA_DIR) is absent,
and FAILED instead when JOINTSCAN_REQUIRE_DATA=1 (.ci/run sets it), so CI cannot pass by skipping them.

Two ways in: the marker `@real_data(path, ...)` (checked by `pytest_runtest_setup`, which
tests/conftest.py imports), and `need(path, ...)` inside a test that finds its files at run time.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_ENV = "JOINTSCAN_REQUIRE_DATA"


def data_dir() -> Path:
    """The real-data folder: $JOINTSCAN_DATA_DIR, else ../shared/data beside the repository."""
    env = os.environ.get("JOINTSCAN_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def need(*paths: Path | str) -> None:
    """Skip the calling test when a path is missing; fail it when real data is required."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if not missing:
        return
    message = f"real data not found: {', '.join(missing)} (set JOINTSCAN_DATA_DIR)"
    if data_required():
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 requires it", pytrace=False)
    pytest.skip(message)


def real_data(*paths: Path | str) -> pytest.MarkDecorator:
    """Marker for a test (or module, as `pytestmark`) that needs these paths."""
    return pytest.mark.real_data(*paths)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "real_data(*paths): the test needs these real-data paths "
                                       f"(skipped when absent, failed when {REQUIRE_ENV}=1)")


def pytest_runtest_setup(item) -> None:
    for mark in item.iter_markers("real_data"):
        need(*mark.args)
