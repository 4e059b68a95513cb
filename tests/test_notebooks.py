"""Each training notebook runs top to bottom in its quick mode (tiny models into a temporary folder).

The kernel is this interpreter: a kernel spec named "python3" pointing at `sys.executable` is written
into a temporary JUPYTER_PATH (searched before user and system kernel folders), so the test works on a
fresh venv where only `pip install -r requirements.txt` ran and cannot pick up a foreign Python.
"""
from __future__ import annotations

from pathlib import Path

import json

import nbclient
import nbformat
import pytest

from model_loader import ModelRegistry
from tests.data_gate import data_dir

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
# notebook -> what its quick run must leave in JOINTSCAN_NOTEBOOK_OUT_DIR
NOTEBOOKS = {
    "sacroiliac_training.ipynb": ["registry.json", "sij-attention-unet.keras", "sij-dual-head.keras",
                                  "sij-unet-ref.keras", "sij-cnn3-ref.keras", "cards/sij-dual-head.md"],
    "knee_training.ipynb": ["registry.json", "knee-kl-grader.keras", "knee-kl-grader.catalogue.json",
                            "knee-kl-grader.catalogue.npz", "cards/knee-kl-grader.md"],
    "hand_training.ipynb": ["registry.json", "hand-joint-detector.keras", "hand-guss-scorer.keras",
                            "hand-guss-scorer-position.keras", "cards/hand-guss-scorer.md"],
}


STUDY_MODELS = ["sij-study-region-attention-unet.keras", "sij-study-region-unet-ref.keras",
                "sij-study-oedema-unet.keras", "cards/sij-study-oedema-unet.md"]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_quick_mode(name, tmp_path, monkeypatch, venv_kernel):
    out = tmp_path / "out"
    monkeypatch.setenv("JOINTSCAN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JOINTSCAN_NOTEBOOK_OUT_DIR", str(out))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=venv_kernel, timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    client.execute()
    expected = list(NOTEBOOKS[name])
    if name == "sacroiliac_training.ipynb" and (data_dir() / "sij_mri_nifti" / "disease_region").is_dir():
        expected += STUDY_MODELS           # the real studies are here: the study models are retrained too
    for rel in expected:
        assert (out / rel).exists(), f"{name} did not write {rel}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # every exported model loads through the registry the app uses (checksums, Keras file, outputs)
    registry = ModelRegistry(out)
    entries = registry.entries()
    assert {e.file for e in entries} >= {rel for rel in expected if rel.endswith(".keras")}
    for entry in entries:
        assert registry.problem(entry.id) is None, (entry.id, registry.problem(entry.id))
        assert registry.load(entry.id).entry.id == entry.id
    if name == "knee_training.ipynb":                  # the quick run went through the ensemble cell
        knee = next(m for m in json.loads((out / "registry.json").read_text())["models"] if m["id"] == "knee-kl-grader")
        assert [m["seed"] for m in knee["training"]["members"]] == [0, 1]
        assert knee["gradcam_layer"] == ["m0_gradcam_conv", "m1_gradcam_conv"]
        assert knee["input"]["shape"] == [80, 80, 1] and "--init" in knee["training"]["command"]
