"""JOINTSCAN_REQUIRE_DATA=1 turns "real data absent" skips into failures (tests/data_gate.py)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import data_gate

REPO = Path(__file__).resolve().parents[1]


def test_need_skips_without_the_variable_and_fails_with_it(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-folder"
    monkeypatch.delenv(data_gate.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-folder"):
        data_gate.need(missing)
    monkeypatch.setenv(data_gate.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="JOINTSCAN_REQUIRE_DATA=1 requires it"):
        data_gate.need(missing)
    data_gate.need(tmp_path)                                  # present: neither


@pytest.mark.parametrize("required, outcome", [("0", "1 skipped"), ("1", "1 error")])
def test_the_marker_hook_skips_or_fails_a_whole_session(tmp_path, required, outcome):
    (tmp_path / "conftest.py").write_text("from tests.data_gate import pytest_configure, pytest_runtest_setup\n")
    (tmp_path / "test_needs_data.py").write_text(textwrap.dedent(f"""
        from tests.data_gate import real_data

        @real_data({str(tmp_path / "absent")!r})
        def test_uses_the_data():
            pass
    """))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "JOINTSCAN_REQUIRE_DATA": required}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-W", "error::pytest.PytestUnknownMarkWarning", str(tmp_path)]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert outcome in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == (0 if required == "0" else 1)
