"""Sacroiliac training: a tiny end-to-end run (--quick) produces loadable, registered, verified models,
and the batch evaluation used for the published figures matches what the task serves."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("training.phantoms.sacroiliac")

from imaging.io import DecodedImage  # noqa: E402
from imaging.layers import Int8Conv2D, Int8Conv2DTranspose  # noqa: E402
from model_loader import ModelRegistry  # noqa: E402
from tasks.sacroiliac import AS_NAMES, TASK, classifier_probabilities  # noqa: E402
from training.sacroiliac.data import classifier_arrays, generate_split, perturb_mask, segmentation_arrays  # noqa: E402
from training.sacroiliac.evaluate import predict_classes, predict_masks  # noqa: E402
from training.sacroiliac.model import ALL_MODELS, CLASSIFIER_SPECS, DEFAULT_MODELS, REFERENCES  # noqa: E402
from training.sacroiliac.pipeline import prepare, run  # noqa: E402
from training.phantoms.sacroiliac import SEED_RANGES  # noqa: E402
from training.sacroiliac.train import QUICK_SIZES  # noqa: E402
from training.toolbox.runs import COMMITTED_MODELS_DIR  # noqa: E402

REQUIRED_FIELDS = ("id", "task", "role", "version", "title", "architecture", "reference", "default", "file",
                   "sha256", "size_bytes", "params", "input", "outputs", "training", "metrics", "card",
                   "description")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sij-quick")
    summary = run(ALL_MODELS, out_dir=out, quick=True, verbose=0, log=lambda *_: None)
    return out, summary


def test_quick_run_registers_verified_models(quick_run):
    out, summary = quick_run
    assert set(summary["models"]) == set(ALL_MODELS)
    registry = ModelRegistry(out)
    raw = {e["id"]: e for e in json.loads((out / "registry.json").read_text())["models"]}
    assert list(raw) == sorted(raw)
    for mid in ALL_MODELS:
        assert registry.problem(mid) is None, mid
        entry = raw[mid]
        assert all(k in entry for k in REQUIRED_FIELDS), mid
        assert entry["training"]["quick"] is True and "--quick" in entry["training"]["command"]
        assert entry["metrics"]["test_cases"] == QUICK_SIZES["n_test"]
        assert (out / entry["card"]).exists()
        loaded = registry.load(mid)
        if entry["role"] == "classifier":
            assert entry["gradcam_layer"] == "gradcam_conv" and entry["outputs"] == ["as_status", "stage"]
            loaded.gradcam_model()
        else:
            assert entry["outputs"] == ["mask"]
    assert {raw[m]["default"] for m in DEFAULT_MODELS} == {True} and {raw[m]["reference"] for m in REFERENCES} == {True}
    ref_unet = registry.load("sij-unet-ref").model                  # shipped with int8 conv kernels
    assert isinstance(ref_unet.get_layer("mask"), Int8Conv2D) and isinstance(ref_unet.get_layer("dec0_up"),
                                                                              Int8Conv2DTranspose)
    assert raw["sij-dual-head"]["input"] == CLASSIFIER_SPECS["sij-dual-head"]
    assert raw["sij-dual-head"]["metrics"]["segmenter"] == "sij-attention-unet"
    card = (out / "cards" / "sij-dual-head.md").read_text()
    assert "Not for clinical use" in card and "sij-cnn3-ref" in card and "Phantoms are not patients" in card


def test_batch_evaluation_matches_the_served_task(quick_run):
    """The figures' batch path (predict_masks / predict_classes) gives what SacroiliacTask.run serves."""
    out, _ = quick_run
    registry = ModelRegistry(out)
    ph = generate_split("test", 3)
    for seg_id, cls_id in (("sij-attention-unet", "sij-dual-head"), ("sij-unet-ref", "sij-cnn3-ref")):
        seg, cls = registry.load(seg_id), registry.load(cls_id)
        masks = predict_masks(seg.model, ph)
        as_pred, stage_pred = predict_classes(cls.model, ph, cls.entry.input, masks)
        for i in range(len(ph)):
            result = TASK.run(DecodedImage(pixels=ph.image01(i), kind="png"),
                              {"segmenter": [seg], "classifier": [cls]}, {})
            seg_out, cls_out = result.models
            np.testing.assert_array_equal(seg_out.images["mask"] > 0, masks[i] > 0)
            assert cls_out.result["stage"] == stage_pred[i]
            assert cls_out.result["as_status"] == AS_NAMES[as_pred[i]]


def test_quick_refuses_committed_models_dir():
    with pytest.raises(ValueError, match="committed"):
        prepare(out_dir=COMMITTED_MODELS_DIR, quick=True, generate=False)
    with pytest.raises(ValueError, match="unknown model"):
        prepare(["sij-nope"], quick=True, generate=False)


def test_data_helpers():
    ph = generate_split("train", 2)
    assert ph.images.dtype == np.uint8 and ph.images.shape == (2, 256, 256)
    x, y = segmentation_arrays(ph)
    assert x.shape == y.shape == (2, 128, 128, 1) and 0 <= x.min() and x.max() <= 1
    # soft target: area fraction, same total area (/4) as the full-resolution mask
    assert y[0].sum() == pytest.approx(ph.masks[0].sum() / 4, rel=1e-4)
    rng = np.random.default_rng(0)
    moved = [perturb_mask(ph.masks[0], rng) for _ in range(10)]
    assert all(m.any() for m in moved) and any((m != ph.masks[0]).any() for m in moved)
    xc = classifier_arrays(ph, CLASSIFIER_SPECS["sij-dual-head"], rng=rng, augment=True)
    assert xc.shape == (2, 128, 160, 2) and set(np.unique(xc[..., 1])) <= {0.0, 1.0}
    xr = classifier_arrays(ph, CLASSIFIER_SPECS["sij-cnn3-ref"])
    assert xr.shape == (2, 128, 128, 1)


def test_seed_ranges_are_disjoint():
    sets = {k: set(v) for k, v in SEED_RANGES.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])


def test_committed_models_verify_and_fit_the_budget():
    """The committed sacroiliac models (when present) pass their checksums, and every model file the
    repository commits (all tasks; models/.gitignore names those regenerated instead) stays under 30 MB."""
    registry = ModelRegistry(COMMITTED_MODELS_DIR)
    entries = [registry.get(m) for m in ALL_MODELS]
    if not all(entries):
        pytest.skip("committed sacroiliac models not registered yet")
    assert all(registry.problem(e.id) is None for e in entries)
    ignore_file = COMMITTED_MODELS_DIR / ".gitignore"
    ignored = [ln.strip() for ln in ignore_file.read_text().splitlines()
               if ln.strip() and not ln.startswith("#")] if ignore_file.exists() else []
    committed = [f for f in COMMITTED_MODELS_DIR.iterdir()
                 if f.suffix in (".keras", ".npz") and not any(fnmatch.fnmatch(f.name, pat) for pat in ignored)]
    assert sum(f.stat().st_size for f in committed) < 30_000_000
    for e in entries:
        assert not e.training.get("quick"), f"{e.id} was registered from a --quick run"
        assert e.metrics.get("test_cases", 0) >= 500


def test_flip_tta_averages_the_mirror():
    """spec tta=hflip: one batch holds the input and its mirror; the probabilities are their mean."""
    def infer(b):       # reads the top-left pixel: the mirror shows it the top-right one
        seen = np.asarray(b)[:, 0, 0, 0]
        return {"as_status": np.stack([1 - seen, seen], -1)}

    x = np.zeros((2, 4, 6, 2), np.float32)
    x[:, 0, 0, 0], x[:, 0, -1, 0] = (0.2, 0.9), (0.6, 0.1)
    plain = classifier_probabilities(infer, x, {"tta": None})["as_status"][:, 1]
    both = classifier_probabilities(infer, x, {"tta": "hflip"})["as_status"][:, 1]
    np.testing.assert_allclose(plain, [0.2, 0.9], atol=1e-6)
    np.testing.assert_allclose(both, [0.4, 0.5], atol=1e-6)
