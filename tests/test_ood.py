"""The training-data check: Mahalanobis arithmetic, the threshold read from the registry, and the
sacroiliac segmenters and classifiers withholding their answers on images unlike their phantoms."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imaging.io import DecodedImage, read_image
from model_loader import ModelRegistry, ModelUnavailable
from tasks.ood import FeatureDistribution, OodUnavailable, distribution_for, feature_statistics, run_checked
from tasks.sacroiliac import TASK as SIJ
from training.ood import cross_fitted_refusal, fit_distribution, refusal_threshold, threshold_of
from tests.data_gate import data_dir, real_data
from training.phantoms.sacroiliac import SEED_RANGES, generate_case

MODELS = Path(__file__).resolve().parent.parent / "models"
DATA = data_dir()
SIJ_MODELS = ("sij-attention-unet", "sij-dual-head", "sij-unet-ref", "sij-cnn3-ref")


def test_mahalanobis_distance_by_hand():
    dist = FeatureDistribution(np.zeros(2), np.eye(2))
    assert dist.distance(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist() == pytest.approx([5.0, 0.0])
    # A variance of 4 along x halves distances along x.
    scaled = FeatureDistribution(np.array([1.0, 0.0]), np.diag([0.25, 1.0]))
    assert scaled.distance(np.array([[5.0, 0.0]]))[0] == pytest.approx(2.0)


def test_feature_statistics_are_channel_mean_and_std():
    maps = np.zeros((1, 2, 2, 2))
    maps[0, :, :, 0] = [[0, 2], [4, 6]]
    maps[0, :, :, 1] = 7
    assert np.asarray(feature_statistics(maps))[0].tolist() == pytest.approx([3.0, 7.0, np.std([0, 2, 4, 6]), 0.0])
    assert tuple(feature_statistics(np.ones((3, 5))).shape) == (3, 5)


def test_fitted_threshold_refuses_the_stated_share_of_held_out_inputs():
    rng = np.random.default_rng(0)
    dist = fit_distribution(rng.normal(size=(4000, 6)))
    held_out = rng.normal(size=(20000, 6))
    threshold = refusal_threshold(dist, held_out, 0.01)
    refused = np.mean(dist.distance(rng.normal(size=(20000, 6))) > threshold)
    assert refused == pytest.approx(0.01, abs=0.004)
    assert dist.distance(np.full((1, 6), 10.0))[0] > threshold > dist.distance(np.zeros((1, 6)))[0]


def test_cross_fitted_refusal_holds_each_group_out():
    # Group "b" lies far beyond the others: a threshold chosen without it refuses all of it.
    distances = np.array([1.0, 1.1, 1.2, 1.0, 1.1, 1.2, 5.0, 5.0])
    groups = ["a", "a", "a", "c", "c", "c", "b", "b"]
    assert cross_fitted_refusal(distances, groups, 0.0, folds=3) == pytest.approx(2 / 8)
    # A margin of 5 covers it.
    assert cross_fitted_refusal(distances, groups, 0.0, margin=5.0, folds=3) == 0.0
    assert threshold_of(distances, 0.0, 1.25) == pytest.approx(6.25)


def shipped_copy(tmp_path: Path, threshold: float | None = None) -> ModelRegistry:
    """The shipped sacroiliac models in a folder of their own, optionally with another threshold."""
    raw = json.loads((MODELS / "registry.json").read_text())
    entries = [m for m in raw["models"] if m["id"] in SIJ_MODELS]
    for entry in entries:
        shutil.copy(MODELS / entry["file"], tmp_path / entry["file"])
        if entry.get("ood"):
            shutil.copy(MODELS / entry["ood"]["file"], tmp_path / entry["ood"]["file"])
            if threshold is not None:
                entry["ood"]["threshold"] = threshold
    (tmp_path / "registry.json").write_text(json.dumps({"models": entries}))
    return ModelRegistry(tmp_path)


PAIRS = {"sij-dual-head": "sij-attention-unet", "sij-cnn3-ref": "sij-unet-ref"}


def run_both(registry: ModelRegistry, pixels: np.ndarray, classifier: str = "sij-dual-head") -> tuple[dict, dict]:
    """(segmenter result, classifier result) of the pipeline as the app runs it."""
    models = {"segmenter": [registry.load(PAIRS[classifier])], "classifier": [registry.load(classifier)]}
    output = SIJ.run(DecodedImage(pixels.astype(np.float32), "png"), models, {})
    by_role = {m.role: m.result for m in output.models}
    return by_role["segmenter"], by_role["classifier"]


def run_sijs(registry: ModelRegistry, pixels: np.ndarray, classifier: str = "sij-dual-head") -> dict:
    return run_both(registry, pixels, classifier)[1]


def phantom_pixels(i: int = 0) -> np.ndarray:
    return generate_case(int(SEED_RANGES["test"][i])).image.astype(np.float32) / 255


SHIPPED = [e.id for e in ModelRegistry(MODELS).entries() if e.task != "recognition" and (MODELS / e.file).exists()]


@pytest.mark.parametrize("model_id", SHIPPED)
def test_every_shipped_model_declares_its_check(model_id):
    registry = ModelRegistry(MODELS)
    entry = json.loads((MODELS / "registry.json").read_text())
    exempt = next(m.get("ood_exempt") for m in entry["models"] if m["id"] == model_id)
    if exempt:
        # Only the study models may ship without one, saying why, and their task must refuse other anatomy.
        from tasks import get_task

        task = get_task(registry.get(model_id).task)
        assert model_id.startswith("sij-study-") and "recogniser" in exempt and task.recognised_as == "sacroiliac_mri"
        return
    spec = registry.get(model_id).ood
    assert spec and spec["method"] == "mahalanobis" and spec["threshold"] > 0 and spec["data"]
    assert registry.problem(model_id) is None
    distribution_for(MODELS, spec)          # present and its checksum holds
    # Fitted with a stated false-refusal rate that held on held-out in-distribution inputs.
    figures = spec["figures"]
    held_out = figures.get("validation_cross_fitted_refused", figures.get("test_phantoms_refused"))
    assert held_out <= 0.015


@pytest.mark.parametrize("model_id", ["sij-unet-ref", "knee-kl-grader", "hand-guss-scorer"])
def test_the_check_reads_the_layer_from_the_same_call_as_the_outputs(model_id):
    """One compiled call gives the outputs and the check's features: both as the model alone gives them."""
    model = ModelRegistry(MODELS).load(model_id)
    x = np.random.default_rng(2).random((2, *model.entry.input_shape)).astype(np.float32)
    outputs, verdicts = run_checked(model, x)
    alone = model(x)
    for key in (alone if isinstance(alone, dict) else [None]):
        got, want = (outputs[key], alone[key]) if key else (outputs, alone)
        np.testing.assert_allclose(got, want, atol=1e-5)
    features = model.features(x, model.entry.ood["layer"], feature_statistics)
    distances = distribution_for(MODELS, model.entry.ood).distance(features)
    assert [v.distance for v in verdicts] == pytest.approx(distances.tolist(), rel=1e-4)
    assert [v.outside for v in verdicts] == [bool(d > model.entry.ood["threshold"]) for d in distances]


@pytest.mark.parametrize("classifier", ["sij-dual-head", "sij-cnn3-ref"])
def test_phantoms_are_answered_and_other_images_withheld(tmp_path, classifier):
    registry = shipped_copy(tmp_path)
    for i in range(3):
        region, answer = run_both(registry, phantom_pixels(i), classifier)
        assert region["withheld"] is None and region["found"] is True
        assert answer["withheld"] is None and answer["as_status"] in ("negative", "positive")
    region, noise = run_both(registry, np.random.default_rng(0).random((256, 256)), classifier)
    assert region["found"] is None and "segmenter" in region["withheld"]
    assert noise["as_status"] is None and noise["stage"] is None and "outside the data" in noise["withheld"]
    assert noise["training_data_check"]["outside"] is True
    assert noise["joint_region_found"] is False        # a withheld region focuses nothing


def test_the_threshold_is_read_from_the_registry(tmp_path):
    lenient = tmp_path / "lenient"
    strict = tmp_path / "strict"
    lenient.mkdir(), strict.mkdir()
    noise = np.random.default_rng(1).random((256, 256))
    assert run_sijs(shipped_copy(lenient, threshold=1e9), noise)["withheld"] is None
    assert run_sijs(shipped_copy(strict, threshold=0.0), phantom_pixels())["withheld"] is not None


def test_a_damaged_check_disables_the_classifier(tmp_path):
    registry = shipped_copy(tmp_path)
    spec = registry.get("sij-dual-head").ood
    (tmp_path / spec["file"]).write_bytes(b"not the fitted distribution")
    with pytest.raises(ModelUnavailable, match="damaged"):
        run_sijs(ModelRegistry(tmp_path), phantom_pixels())
    (tmp_path / spec["file"]).unlink()
    with pytest.raises(OodUnavailable, match="missing"):
        distribution_for(tmp_path, {**spec, "sha256": "another"})


REAL_SLICES = sorted((DATA / "sij_mri_dicom" / "patient1").glob("STIR_*.dcm"))[:4]
HANDS = sorted((DATA / "hand_xray_paediatric").glob("*.png"))[:1]


@real_data(DATA / "sij_mri_dicom" / "patient1", DATA / "hand_xray_paediatric")
def test_real_mri_and_a_hand_radiograph_get_no_as_status(tmp_path):
    registry = shipped_copy(tmp_path)
    for path in [*REAL_SLICES, *HANDS]:
        region, result = run_both(registry, read_image(path.read_bytes()).pixels)
        assert region["found"] is None and region["withheld"], path.name
        assert result["as_status"] is None and result["withheld"], path.name
    assert "withheld" in SIJ.headline({}, [{"role": "classifier", "result": result}])
    assert "withheld" in SIJ.headline({}, [{"role": "segmenter", "result": region}])
