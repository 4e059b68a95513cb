"""The knee training notebook runs top to bottom in its quick mode (a tiny model into a temporary folder).

Same mechanism as tests/test_notebooks.py: a kernel spec "python3" pointing at this interpreter in a
temporary JUPYTER_PATH, so a fresh venv cannot pick up a foreign Python."""
from __future__ import annotations

import json
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from pathlib import Path  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "knee_training.ipynb"


def test_knee_notebook_quick_mode(tmp_path, monkeypatch):
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (JointScan venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    out = tmp_path / "out"
    monkeypatch.setenv("JOINTSCAN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JOINTSCAN_NOTEBOOK_OUT_DIR", str(out))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    for rel in ("registry.json", "knee-kl-grader.keras", "knee-kl-grader.catalogue.json",
                "knee-kl-grader.catalogue.npz", "cards/knee-kl-grader.md"):
        assert (out / rel).exists(), rel
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
