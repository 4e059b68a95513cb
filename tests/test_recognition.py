"""The image recogniser: what an upload is, the refusal that names it, the override, and the endpoint.

The app-level tests use a wired recogniser (a model whose answer is fixed by its bias) beside the tiny
sacroiliac models, so they test the mechanism whatever the trained model says; the shipped recogniser
is tested on the tasks' phantoms here and on the real images of ../shared/data (skipped when absent).
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from database import AuditEvent, Run
from model_loader import ModelRegistry
from predict import Limits, PredictionError, recognise_upload
from tasks import all_tasks, get_task
from tasks.recognition import (INPUT_SIZE, KINDS, RECOGNITION, Recognition, letterbox, recognise, recogniser_input,
                               refusal)
from tests.conftest import create_user, csrf_from, dicom_bytes, login, result_files
from tests.data_gate import data_dir, real_data

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED_ID = "image-recogniser"


def recognition(kind: str, probability: float, body_part: str | None = None,
                others: dict[str, float] | None = None) -> Recognition:
    """`kind` at `probability`, the given `others`, and the rest of the mass on a kind no task reads."""
    probs = {k: 0.0 for k in KINDS}
    probs.update(others or {})
    probs[kind] = probability
    spare = "document" if kind != "document" else "photo_or_noise"
    probs[spare] += 1 - sum(probs.values())
    return Recognition(kind, probability, probs, "rec", "0.0.1", body_part)


# -- preprocessing and refusal wording -----------------------------------------------------------
def test_letterbox_keeps_the_shape_of_the_image():
    portrait = np.ones((200, 100), np.float32)
    portrait[:, :50] = 0.0
    box = letterbox(portrait, 96)
    assert box.shape == (96, 96)
    # 100 px wide at scale 0.48 -> 48 columns of image centred, 24 of padding each side
    assert np.all(box[:, :24] == 0) and np.all(box[:, -24:] == 0)
    assert box[:, 24:48].max() == 0.0 and box[:, 49:72].min() == pytest.approx(1.0)
    assert recogniser_input(portrait).shape == (1, 96, 96, 1)
    with pytest.raises(ValueError):
        letterbox(np.zeros((4, 4, 3)))


def test_refusal_names_what_the_upload_looks_like_and_what_the_task_reads():
    knee = get_task("knee")
    message = refusal(knee, recognition("other_radiograph", 0.93, body_part="CHEST"))
    assert message.startswith("This looks like a chest radiograph (93% sure); the knee task reads knee radiographs.")
    assert "a hand radiograph" in refusal(knee, recognition("hand_radiograph", 0.8))
    assert refusal(get_task("spine"), recognition("knee_radiograph", 0.99)).count("sagittal lumbar spine MRI") == 1
    # the task's own kind, or a recogniser that is not sure, never refuses
    assert refusal(knee, recognition("knee_radiograph", 0.99)) is None
    assert refusal(knee, recognition("other_radiograph", 0.45)) is None
    # nor does one that still gives the task's own kind a few per cent (a real knee taken for MRI)
    assert refusal(knee, recognition("other_mri_ct", 0.9, others={"knee_radiograph": 0.05})) is None
    assert refusal(knee, recognition("other_mri_ct", 0.9, others={"knee_radiograph": 0.001})) is not None
    # a body part only names the 'other' kinds: a knee recognised as a knee is not 'a chest knee'
    assert recognition("knee_radiograph", 0.9, body_part="CHEST").label == "a knee radiograph"


class _FixedRecogniser:
    """A stand-in model that always answers `kind`."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entry = type("Entry", (), {"input_shape": [INPUT_SIZE, INPUT_SIZE, 1], "id": "rec", "version": "0"})()

    def __call__(self, batch):
        return np.array([[0.9 if k == self.kind else 0.1 / (len(KINDS) - 1) for k in KINDS]])


def test_the_label_names_the_dicom_headers_coded_body_part_only():
    from imaging.io import read_image

    assert recognition("other_radiograph", 0.9, body_part="LSPINE").label == "a lumbar spine radiograph"
    assert recognition("other_radiograph", 0.9, body_part="ANKLE").label == "an ankle radiograph"
    assert recognition("other_mri_ct", 0.9, body_part="KNEE").label == "a knee image"
    assert recognition("other_radiograph", 0.9, body_part="Maria Gonzalez").label == "a radiograph of another body part"
    model = _FixedRecogniser("other_radiograph")
    for written, coded, label in (("CHEST", "CHEST", "a chest radiograph"), ("c spine", "CSPINE",
                                  "a cervical spine radiograph"),
                                  ("Maria Gonzalez", None, "a radiograph of another body part")):
        image = read_image(dicom_bytes("CR", BodyPartExamined=written))
        found = recognise(model, image.pixels, image.meta)
        assert (found.body_part, found.label) == (coded, label)
        assert found.as_dict()["label"] == label


def test_every_task_names_the_kind_it_reads():
    kinds = {name: task.recognised_as for name, task in all_tasks().items()}
    assert kinds == {"sacroiliac": "sacroiliac_mri", "sacroiliac_study": "sacroiliac_mri", "spine": "spine_mri",
                     "knee": "knee_radiograph", "hand": "hand_radiograph"}
    assert set(kinds.values()) <= set(KINDS)


# -- a wired recogniser beside the tiny models -----------------------------------------------------
def wired_recogniser(models_dir: Path, kind: str, model_id: str = "wired-recogniser") -> None:
    """A recogniser whose answer is `kind` with probability ~0.99 for every image."""
    import keras

    from training.export import register_model, save_for_shipping

    inputs = keras.Input((96, 96, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(len(KINDS), activation="softmax", name="kind")(pooled)
    model = keras.Model(inputs, outputs)
    bias = np.zeros(len(KINDS), np.float32)
    bias[KINDS.index(kind)] = 7.0
    model.get_layer("kind").set_weights([np.zeros((1, len(KINDS)), np.float32), bias])
    save_for_shipping(model, models_dir / f"{model_id}.keras", float16=False)
    register_model(models_dir, {"id": model_id, "task": RECOGNITION, "role": "recogniser", "version": "0.0.1",
                                "title": "Wired recogniser", "default": True, "file": f"{model_id}.keras",
                                "input": {"shape": [96, 96, 1], "channels": ["image"], "crop": "letterbox"},
                                "outputs": ["kind"], "training": {"command": "tests"}, "metrics": {}},
                   model=model)


@pytest.fixture
def refusing_app(make_app, damaged_models_dir):
    """The tiny sacroiliac models with a recogniser that takes every upload for a chest-like radiograph."""
    wired_recogniser(damaged_models_dir, "other_radiograph")
    app = make_app(MODELS_DIR=str(damaged_models_dir))
    create_user(app, "alice")
    return app


def _api_token(app) -> dict:
    from database import ApiToken, User, db

    with app.app_context():
        row, plain = ApiToken.issue(User.query.filter_by(username="alice").one(), "script")
        db.session.add(row)
        db.session.commit()
    return {"Authorization": f"Bearer {plain}"}


def _post_api(client, path: str, data: bytes, headers: dict, **fields):
    form = {"task": "sacroiliac", "file": (io.BytesIO(data), "scan.png"), **fields}
    return client.post(path, data=form, headers=headers, content_type="multipart/form-data")


def test_a_refused_upload_gets_422_naming_what_it_looks_like_and_only_an_audit_row(refusing_app, scan_png):
    client = refusing_app.test_client()
    response = _post_api(client, "/api/v1/analyze?wait=true", scan_png, _api_token(refusing_app))
    assert response.status_code == 422, response.data[:300]
    error = response.get_json()["error"]
    assert error["status"] == 422
    assert error["message"].startswith("This looks like a radiograph of another body part (")
    assert "the sacroiliac task reads semi-coronal sacroiliac-joint MRI" in error["message"]
    assert error["recognised"]["kind"] == "other_radiograph" and error["recognised"]["probability"] > 0.9
    with refusing_app.app_context():
        assert Run.query.count() == 0
        events = AuditEvent.query.filter_by(action="upload").all()
        assert [(e.outcome, e.detail) for e in events] == [
            ("denied", "HTTP 422 (PredictionError); recognised as other_radiograph")]
    assert result_files(refusing_app) == []


def test_analyse_anyway_through_the_api_stores_the_run_and_says_so(refusing_app, scan_png):
    client = refusing_app.test_client()
    headers = _api_token(refusing_app)
    assert _post_api(client, "/api/v1/analyze?wait=true", scan_png, headers, analyse_anyway="maybe").status_code == 400
    response = _post_api(client, "/api/v1/analyze?wait=true", scan_png, headers, analyse_anyway="true")
    assert response.status_code == 201, response.data[:300]
    body = response.get_json()
    assert body["analysed_anyway"] is True and body["recognised"]["kind"] == "other_radiograph"
    assert body["summary"]["analysed_anyway"].endswith("analysed anyway at the user's request.")
    assert body["timings"]["check_ms"] >= 0
    again = client.get(f"/api/v1/runs/{body['id']}", headers=headers).get_json()
    assert again["recognised"] == body["recognised"]
    with refusing_app.app_context():
        detail = AuditEvent.query.filter_by(action="upload", outcome="ok").one().detail
    assert detail == "task sacroiliac via API, analysed anyway (recognised as other_radiograph)"


def test_the_page_offers_analyse_anyway_only_after_a_refusal_and_the_result_carries_a_banner(refusing_app, scan_png):
    client = refusing_app.test_client()
    assert login(client, "alice").status_code == 302
    page = client.get("/upload").get_data(as_text=True)
    assert 'id="analyse-anyway"' not in page and 'data-recognise-url="/api/v1/recognise"' in page
    form = {"task": "sacroiliac", "scan": (io.BytesIO(scan_png), "scan.png")}
    from tests.conftest import ALL_MODELS
    refused = client.post("/upload", data={**form, "model_ids": list(ALL_MODELS)}, content_type="multipart/form-data")
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert "This looks like a radiograph of another body part" in html and 'id="analyse-anyway"' in html
    with refusing_app.app_context():
        assert Run.query.count() == 0
    form = {"task": "sacroiliac", "scan": (io.BytesIO(scan_png), "scan.png"), "model_ids": list(ALL_MODELS),
            "analyse_anyway": "y"}
    done = client.post("/upload", data=form, content_type="multipart/form-data")
    assert done.status_code == 302
    result = client.get(done.headers["Location"]).get_data(as_text=True)
    assert 'id="analysed-anyway"' in result and "Recognised as a radiograph of another body part" in result


def test_the_recognise_endpoint_suggests_a_task_stores_nothing_and_is_audited(make_app, damaged_models_dir, scan_png):
    wired_recogniser(damaged_models_dir, "knee_radiograph")
    app = make_app(MODELS_DIR=str(damaged_models_dir), WTF_CSRF_ENABLED=True)
    create_user(app, "alice")
    client = app.test_client()
    headers = _api_token(app)
    response = _post_api(client, "/api/v1/recognise", scan_png, headers)
    assert response.status_code == 200, response.data[:300]
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["recognised"]["kind"] == "knee_radiograph" and body["suggested_task"] == "knee"
    assert body["refusals"]["knee"] is None
    assert body["refusals"]["sacroiliac"].startswith("This looks like a knee radiograph")
    assert body["input"] == {"width": 256, "height": 256, "modality": None}
    with app.app_context():
        assert Run.query.count() == 0
        assert [(e.action, e.outcome, e.detail) for e in AuditEvent.query.all()] == [
            ("recognise", "ok", "recognised as knee_radiograph")]
    assert result_files(app) == []
    # a broken file: a clear error, audited, nothing stored
    bad = _post_api(client, "/api/v1/recognise", b"not an image", headers)
    assert bad.status_code in (400, 415) and bad.get_json()["error"]["message"]
    # the browser session must send the CSRF token, as for every API POST
    session = app.test_client()
    page = session.get("/login").get_data(as_text=True)
    assert login(session, "alice", csrf_token=csrf_from(page)).status_code == 302
    assert _post_api(session, "/api/v1/recognise", scan_png, {}).status_code == 400
    upload_page = session.get("/upload").get_data(as_text=True)
    ok = _post_api(session, "/api/v1/recognise", scan_png, {"X-CSRFToken": csrf_from(upload_page)})
    assert ok.status_code == 200


def test_without_a_recogniser_the_run_goes_on_and_says_it_was_not_checked(alice, scan_png):
    from tests.conftest import ALL_MODELS, run_id_from, upload

    response = upload(alice, scan_png, model_ids=list(ALL_MODELS))
    run_id = run_id_from(response)
    page = alice.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Not checked: no image recogniser is available." in page


def test_a_disabled_or_broken_recogniser_is_not_used(damaged_models_dir, scan_png, app):
    wired_recogniser(damaged_models_dir, "other_radiograph")
    registry = ModelRegistry(damaged_models_dir)
    with app.app_context():
        found = recognise_upload(scan_png, registry=registry, limits=Limits())
        assert found["recognised"]["kind"] == "other_radiograph" and found["suggested_task"] is None
        (damaged_models_dir / "wired-recogniser.keras").write_bytes(b"damaged")
        with pytest.raises(PredictionError) as info:
            recognise_upload(scan_png, registry=ModelRegistry(damaged_models_dir), limits=Limits())
        assert info.value.status == 503 and "no image recogniser is available" in info.value.message


# -- the shipped recogniser -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    registry = ModelRegistry(REPO_MODELS)
    entry = registry.get(SHIPPED_ID)
    assert entry is not None and entry.task == RECOGNITION and entry.default
    assert registry.problem(SHIPPED_ID) is None
    return registry.load(SHIPPED_ID)


def _kind(model, image01) -> str:
    from tasks.recognition import recognise

    return recognise(model, image01).kind


def test_the_shipped_recogniser_is_registered_with_its_held_out_confusion_matrix():
    entry = json.loads((REPO_MODELS / "registry.json").read_text())
    rec = next(m for m in entry["models"] if m["id"] == SHIPPED_ID)
    held = rec["metrics"]["held_out"]
    matrix = np.asarray(held["confusion"])
    assert held["kinds"] == list(KINDS) and matrix.shape == (len(KINDS), len(KINDS))
    assert matrix.sum() == held["n"] and held["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-4)
    card = (REPO_MODELS / rec["card"]).read_text()
    assert "true \\ recognised" in card and "Not for clinical use" in card


def test_the_shipped_recogniser_knows_each_tasks_phantoms_and_refuses_them_for_the_other_tasks(shipped):
    from training.phantoms.hand import generate_hand, split_patients
    from training.phantoms.knee import SEED_RANGES as KNEE, generate_knee
    from training.phantoms.sacroiliac import SEED_RANGES as SIJ, generate_case

    hands = split_patients(range(60))["test"][:3]
    cases = {"sacroiliac_mri": [generate_case(s).image for s in list(SIJ["test"])[:5]],
             "knee_radiograph": [generate_knee(s).image for s in list(KNEE["test"])[:5]],
             "hand_radiograph": [generate_hand(p, 0).image for p in hands]}
    for kind, images in cases.items():
        for image in images:
            found = _kind(shipped, image / 255.0)
            assert found == kind, (kind, found)
            for name, task in all_tasks().items():
                refused = refusal(task, Recognition(found, 0.99, {}, "", ""))
                assert (refused is None) == (task.recognised_as == kind)


def test_the_shipped_recogniser_refuses_documents_and_noise(shipped):
    from training.recogniser.data import document, texture

    rng = np.random.default_rng(7)
    kinds = [_kind(shipped, document(rng)) for _ in range(5)] + [_kind(shipped, texture(rng)) for _ in range(5)]
    assert all(k in ("document", "photo_or_noise") for k in kinds), kinds


@real_data(*(data_dir() / name for name in ("knee_kl", "spine_mri", "sij_mri_dicom", "dicom", "hand_xray_paediatric")))
def test_the_shipped_recogniser_on_real_images_of_every_folder(shipped):
    from imaging.io import read_image

    root = data_dir()
    probes = {"knee_radiograph": sorted((root / "knee_kl/val").glob("*/*.jpg"))[::40],
              "spine_mri": sorted((root / "spine_mri/images").glob("*.png"))[::25],
              "hand_radiograph": sorted((root / "hand_xray_paediatric").glob("*.png")),
              "sacroiliac_mri": sorted((root / "sij_mri_dicom").glob("*/*.dcm"))[::3]}
    wrong = []
    for kind, paths in probes.items():
        for path in paths:
            found = _kind(shipped, read_image(path.read_bytes()).pixels)
            if found != kind:
                wrong.append((kind, path.name, found))
    total = sum(len(p) for p in probes.values())
    assert len(wrong) <= 0.05 * total, wrong
    # the other DICOM files are never taken for a task's kind
    for path in sorted((root / "dicom").glob("*.dcm")):
        found = _kind(shipped, read_image(path.read_bytes()).pixels)
        assert found not in KINDS[:4], (path.name, found)


def test_a_tiny_training_run_registers_a_recogniser_with_its_held_out_figures(tmp_path):
    from training.recogniser.train import MODEL_ID, main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    registry = ModelRegistry(tmp_path)
    entry = registry.get(MODEL_ID)
    assert entry.task == RECOGNITION and entry.default and registry.problem(MODEL_ID) is None
    held = entry.metrics["held_out"]
    assert np.asarray(held["confusion"]).sum() == held["n"] > 0
    assert entry.training["command"] == "python -m training.recogniser --out models --quick"
    model = registry.load(MODEL_ID)
    assert np.asarray(model(recogniser_input(np.random.default_rng(0).random((80, 60))))).shape == (1, len(KINDS))
    assert "## Metrics on held-out data" in (tmp_path / entry.card).read_text()


def test_a_study_is_recognised_from_its_middle_slice_and_goes_to_the_study_task(make_app, damaged_models_dir,
                                                                                scan_png):
    """A NIfTI volume (or a zip) is read as a study for the recogniser; sacroiliac MRI then suggests the task that
    reads whole studies, while one slice still suggests the slice task."""
    import gzip

    import nibabel as nib

    wired_recogniser(damaged_models_dir, "sacroiliac_mri")
    app = make_app(MODELS_DIR=str(damaged_models_dir))
    create_user(app, "alice")
    client = app.test_client()
    headers = _api_token(app)
    volume = gzip.compress(nib.Nifti1Image(np.random.default_rng(0).random((40, 48, 6)).astype(np.float32),
                                           np.diag([0.6, 0.6, 3.3, 1.0])).to_bytes())
    study = _post_api(client, "/api/v1/recognise", volume, headers).get_json()
    assert study["recognised"]["kind"] == "sacroiliac_mri" and study["suggested_task"] == "sacroiliac_study"
    assert study["input"]["width"] == 40 or study["input"]["height"] == 40
    one = _post_api(client, "/api/v1/recognise", scan_png, headers).get_json()
    assert one["suggested_task"] == "sacroiliac"
