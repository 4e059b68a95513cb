"""Every task withholds what its model was not trained for: the knee grader, the spine segmenter and the
hand detector and scorers read their training-data check (tasks.ood) from the registry, answer on their
own kind of image and withhold on noise, other anatomy and (the hand scorers) a child's hand."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from imaging.io import DecodedImage, read_image
from model_loader import ModelRegistry
from tasks.hand import TASK as HAND
from tasks.knee import TASK as KNEE
from tasks.spine import TASK as SPINE
from tests.data_gate import data_dir, real_data
from training.phantoms.hand import generate_hand, split_patients

MODELS = Path(__file__).resolve().parent.parent / "models"
DATA = data_dir()
KNEE_VAL = sorted((DATA / "knee_kl" / "val").glob("*/*.jpg"))[::200]
SPINE_SLICES = sorted((DATA / "spine_mri" / "images").glob("*.png"))[::100]
CHILD_HANDS = sorted((DATA / "hand_xray_paediatric").glob("*.png"))


def copy_of(tmp_path: Path, model_ids: tuple[str, ...], threshold: float | None = None) -> ModelRegistry:
    raw = json.loads((MODELS / "registry.json").read_text())
    entries = [m for m in raw["models"] if m["id"] in model_ids]
    for entry in entries:
        for name in (entry["file"], entry["ood"]["file"]):
            shutil.copy(MODELS / name, tmp_path / name)
        for key in ("json", "npz"):                     # the knee's phenotype catalogue
            if entry["input"].get("catalogue", {}).get(key):
                shutil.copy(MODELS / entry["input"]["catalogue"][key], tmp_path / entry["input"]["catalogue"][key])
        if threshold is not None:
            entry["ood"]["threshold"] = threshold
    (tmp_path / "registry.json").write_text(json.dumps({"models": entries}))
    return ModelRegistry(tmp_path)


def noise(shape=(300, 300)) -> DecodedImage:
    return DecodedImage(np.random.default_rng(4).random(shape).astype(np.float32), "png")


def knee_result(registry: ModelRegistry, image: DecodedImage) -> dict:
    out = KNEE.run(image, {"grader": [registry.load("knee-kl-grader")]}, {})
    return out.models[0].result | {"_images": set(out.models[0].images)}


def test_the_knee_grader_withholds_its_grade_on_noise(tmp_path):
    result = knee_result(copy_of(tmp_path, ("knee-kl-grader",)), noise())
    assert result["grade"] is None and result["phenotype"] is None and result["confidence"] is None
    assert "grader" in result["withheld"] and "Osteoarthritis Initiative" in result["withheld"]
    assert result["training_data_check"]["outside"] is True and not result["_images"]   # no Grad-CAM either
    assert "withheld" in KNEE.headline({}, [{"role": "grader", "result": result}])


def test_the_knee_threshold_is_read_from_the_registry(tmp_path):
    result = knee_result(copy_of(tmp_path, ("knee-kl-grader",), threshold=1e9), noise())
    assert result["withheld"] is None and result["grade"] in range(5)
    assert result["training_data_check"]["outside"] is False


@real_data(DATA / "knee_kl" / "val")
def test_real_knee_radiographs_are_graded(tmp_path):
    registry = copy_of(tmp_path, ("knee-kl-grader",))
    for path in KNEE_VAL:
        result = knee_result(registry, read_image(path.read_bytes()))
        assert result["withheld"] is None and result["grade"] in range(5), path.name


def spine_result(registry: ModelRegistry, image: DecodedImage) -> dict:
    return SPINE.run(image, {"segmenter": [registry.load("spine-attention-unet")]}, {}).models[0].result


def test_the_spine_segmenter_withholds_its_masks_on_noise(tmp_path):
    registry = copy_of(tmp_path, ("spine-attention-unet",))
    result = spine_result(registry, noise((320, 256)))
    assert result["counts"] is None and "segmenter" in result["withheld"]
    assert "withheld" in SPINE.headline({}, [{"role": "segmenter", "result": result}])
    lenient = tmp_path / "lenient"
    lenient.mkdir()
    assert spine_result(copy_of(lenient, ("spine-attention-unet",), threshold=1e9), noise((320, 256)))["counts"]


@real_data(DATA / "spine_mri" / "images")
def test_real_spine_slices_are_segmented(tmp_path):
    registry = copy_of(tmp_path, ("spine-attention-unet",))
    for path in SPINE_SLICES:
        result = spine_result(registry, read_image(path.read_bytes()))
        assert result["withheld"] is None and result["counts"]["vertebrae"] >= 1, path.name


HAND_MODELS = ("hand-joint-detector", "hand-guss-scorer")


def hand_run(registry: ModelRegistry, image: DecodedImage):
    out = HAND.run(image, {"detector": [registry.load("hand-joint-detector")],
                           "scorer": [registry.load("hand-guss-scorer")]}, {})
    return out, out.models[0].result, out.models[1].result


def test_hand_phantoms_are_scored_and_the_detector_check_comes_from_the_registry(tmp_path):
    registry = copy_of(tmp_path, HAND_MODELS)
    patient = split_patients(range(400))["test"][0]
    image = DecodedImage(generate_hand(patient, 0).image.astype(np.float32) / 255, "png")
    out, detector, scorer = hand_run(registry, image)
    assert detector["training_data_check"]["outside"] is False and detector["out_of_distribution"] is False
    assert scorer["withheld"] is None and scorer["training_data_check"]["outside"] == []
    assert scorer["n_scored"] >= 6
    strict = tmp_path / "strict"
    strict.mkdir()
    _, detector, scorer = hand_run(copy_of(strict, HAND_MODELS, threshold=0.0), image)
    assert detector["out_of_distribution"] is True and scorer["n_scored"] == 0
    assert scorer["withheld"] and "scorer" in scorer["withheld"]
    assert all(j["withheld"] for j in scorer["joints"])


@real_data(DATA / "hand_xray_paediatric")
def test_a_childs_hand_gets_boxes_but_no_score(tmp_path):
    """The detector and the scorer answer separately: the detector (which has seen child phantoms) boxes the
    joints it finds, and the scorer's own check, which knows only adult joints, withholds every GUSS score
    with that reason, even where the detector's check lets the radiograph through."""
    registry = copy_of(tmp_path, HAND_MODELS)
    passed_the_detector = 0
    for path in CHILD_HANDS:
        out, detector, scorer = hand_run(registry, read_image(path.read_bytes()))
        assert scorer["n_scored"] == 0 and scorer["guss_total"] is None, path.name
        assert "detections" in out.models[0].images      # the boxes are still shown
        assert any(j["status"] != "missing" and j["box"] for j in detector["joints"]), path.name
        assert scorer["withheld"] and "scorer" in scorer["withheld"] and "adult" in scorer["withheld"], path.name
        passed_the_detector += not detector["out_of_distribution"]
    assert passed_the_detector >= 1


def test_the_result_page_says_what_was_withheld_and_why(make_app):
    """A clinician who analyses noise anyway as a knee and as a spine sees 'Withheld' and the reason, and the
    history's headline says so: no grade, no mask."""
    from tests.conftest import create_user, login

    app = make_app(MODELS_DIR=str(MODELS))
    create_user(app, "curious")
    client = app.test_client()
    assert login(client, "curious").status_code == 302
    ok, png = cv2.imencode(".png", (np.random.default_rng(9).random((320, 256)) * 255).astype(np.uint8))
    for task, reason in (("knee", "Osteoarthritis Initiative"), ("spine", "SPIDER")):
        models = [e.id for e in ModelRegistry(MODELS).entries(task) if e.default]
        response = client.post("/upload", data={"task": task, "scan": (io.BytesIO(png.tobytes()), "noise.png"),
                                                "model_ids": models, "analyse_anyway": "y"},
                               content_type="multipart/form-data")
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        page = client.get(response.headers["Location"]).get_data(as_text=True)
        assert "Withheld" in page and reason in page and "analysed anyway" in page.lower()
    history = client.get("/history").get_data(as_text=True)
    assert "KL grade withheld" in history and "Segmentation withheld" in history
