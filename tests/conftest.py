"""Shared fixtures for the web tests: an app per test on a tmp instance folder and SQLite file,
two users, and a session-wide registry of tiny UNTRAINED models of the real architectures
(two segmenters and two classifiers, so comparisons run)."""
from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from app import create_app
from database import User, db
from model_loader import ModelRegistry
from training.phantoms.sacroiliac import generate_case
from tests.data_gate import pytest_configure, pytest_runtest_setup  # noqa: F401  (pytest hooks)

TASK = "sacroiliac"
PASSWORD = "correct horse battery"          # >= 12 characters
SEG_OURS, SEG_REF = "si_seg_tiny_attunet", "si_seg_tiny_unet_ref"
CLS_OURS, CLS_REF = "si_cls_tiny_dual", "si_cls_tiny_cnn3_ref"
ALL_MODELS = (SEG_OURS, SEG_REF, CLS_OURS, CLS_REF)
CARD_HTML = '<script>alert("card")</script><img src=x onerror=alert(1)>'


# -- tiny registry (built once per test session) --------------------------------------
@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    # Imported here so that TensorFlow loads only when a test needs the models, not at collection.
    from training import architectures as arch
    from training.export import register_model, save_for_shipping, write_model_card

    root = tmp_path_factory.mktemp("tiny_models")
    seg_in = {"shape": [64, 64, 1], "channels": ["image"], "crop": "full"}
    specs = [
        (SEG_OURS, "segmenter", "Tiny attention U-Net", "attention_unet", False, True,
         lambda: arch.attention_unet(input_shape=(64, 64, 1), filters=(4, 8)), seg_in, ["mask"], None),
        (SEG_REF, "segmenter", "Tiny U-Net (reference)", "unet", True, False,
         lambda: arch.unet(input_shape=(64, 64, 1), filters=(4, 8)), seg_in, ["mask"], None),
        (CLS_OURS, "classifier", "Tiny dual-head classifier", "dual_head_classifier", False, True,
         lambda: arch.dual_head_classifier(input_shape=(64, 64, 2), widths=(4, 8)),
         {"shape": [64, 64, 2], "channels": ["image", "mask"], "crop": "joint_region"},
         ["as_status", "stage"], "gradcam_conv"),
        (CLS_REF, "classifier", "Tiny 3-block CNN (reference)", "cnn3_reference", True, False,
         lambda: arch.cnn3_reference(input_shape=(64, 64, 1)),
         {"shape": [64, 64, 1], "channels": ["image"], "crop": "full"}, ["as_status", "stage"], "gradcam_conv"),
    ]
    for mid, role, title, architecture, reference, default, build, spec, outputs, cam in specs:
        model = build()
        save_for_shipping(model, root / f"{mid}.keras")
        entry = register_model(root, {
            "id": mid, "task": TASK, "role": role, "version": "0.0.1", "title": title,
            "architecture": architecture, "reference": reference, "default": default,
            "file": f"{mid}.keras", "input": spec, "outputs": outputs, "gradcam_layer": cam,
            "training": {"command": f"python -m training.sacroiliac --model {mid}", "seed": 0, "epochs": 0},
            "metrics": {"test": {"dice": 0.5, "auc": 0.5}} if role == "segmenter" else {"test": {"as_auc": 0.5}},
            "description": "Untrained model of the right shape, for tests.",
        }, model=model)
        write_model_card(root, entry, {"Known failure modes and limits": f"Untrained. {CARD_HTML}\n\n**bold** text"})
    return root


@pytest.fixture(scope="session")
def shared_registry(tiny_models_dir):
    """One registry for every test that uses the intact tiny models: each model loads once per session."""
    return ModelRegistry(tiny_models_dir)


@pytest.fixture
def damaged_models_dir(tiny_models_dir, tmp_path) -> Path:
    """A private copy of the tiny registry, for tests that delete or alter model files."""
    copy = tmp_path / "models_copy"
    shutil.copytree(tiny_models_dir, copy)
    return copy


# -- apps and clients -------------------------------------------------------------------
@pytest.fixture
def make_app(tmp_path, monkeypatch, tiny_models_dir, shared_registry):
    """make_app(**config) -> a Flask app on a fresh tmp instance folder and database."""
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path / "instance"))
    counter = iter(range(1000))

    def factory(**overrides):
        n = next(counter)
        config = {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / f'test{n}.sqlite'}",
            "WTF_CSRF_ENABLED": False,
            "MODELS_DIR": str(tiny_models_dir),
            "RESULTS_DIR": str(tmp_path / f"results{n}"),
            "RUNS_PER_PAGE": 20,
            # Tests upload far faster than people: the analysis limits and the disk floor are tested on their own.
            "ANALYSIS_LIMITS_PER_USER": "10000 per minute",
            "ANALYSIS_LIMITS_PER_ADDRESS": "10000 per minute",
            "MIN_FREE_DISK_BYTES": 0,
            # Analyses are jobs in a thread pool; the web tests read their results, so the upload page waits
            # for them (production shows the progress page at once: tests/test_jobs.py covers that path).
            "UPLOAD_WAIT_S": 60,
        }
        config.update(overrides)
        app = create_app(config)
        if Path(config["MODELS_DIR"]) == tiny_models_dir:
            app.extensions["jointscan.registry"] = shared_registry
        with app.app_context():
            db.create_all()
        return app

    return factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def create_user(app, username: str, password: str = PASSWORD, role: str = "clinician"):
    with app.app_context():
        user = User(username=username, role=role)
        user.set_password(password)
        db.session.add(user)
        db.session.commit()
        return user.id


def login(client, username: str, password: str = PASSWORD, **extra):
    return client.post("/login", data={"username": username, "password": password, **extra})


def signup(client, username: str, password: str = PASSWORD, confirm: str | None = None):
    return client.post("/signup", data={"username": username, "password": password,
                                         "confirm": password if confirm is None else confirm})


@pytest.fixture
def users(app):
    """Two users, alice and bob: {name: id}."""
    return {"alice": create_user(app, "alice"), "bob": create_user(app, "bob")}


@pytest.fixture
def alice(app, users):
    c = app.test_client()
    assert login(c, "alice").status_code == 302
    return c


@pytest.fixture
def bob(app, users):
    c = app.test_client()
    assert login(c, "bob").status_code == 302
    return c


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


# -- scans ---------------------------------------------------------------------------------
def phantom_image(seed: int = 3) -> np.ndarray:
    return generate_case(seed).image


@pytest.fixture(scope="session")
def scan_png() -> bytes:
    ok, buf = cv2.imencode(".png", phantom_image())
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="session")
def scan_jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", phantom_image(5), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def dicom_dataset(sop_class: str, transfer_syntax: str | None = None):
    """An empty DICOM dataset with its file meta and a fresh instance UID (explicit VR little endian by default)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def dicom_bytes(modality: str = "MR", patient_name: str = "Doe^Jane", seed: int = 7, **elements) -> bytes:
    """An MR (or `modality`) slice of a phantom with a patient in its header; `elements` set or override others."""
    pixels = phantom_image(seed).astype(np.uint16) * 16        # 12-bit range
    ds = dicom_dataset(MRImageStorage)
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = "JD-0042"
    ds.InstitutionName = "Doe Memorial Clinic"
    ds.SeriesDescription = "STIR Doe^Jane"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# A patient's names, birth date and record number, written into every text element a header may carry
# (coded elements included: a BodyPartExamined or an ImageType value can be typed by hand too).
PERSON = ("Gonzalez", "Maria", "19580317", "1958-03-17", "88130427")
FREE_TEXT = "Knee Maria Gonzalez 1958-03-17 MRN 88130427"
IDENTIFYING_TEXT = {
    "PatientName": "Gonzalez^Maria", "PatientID": "MRN88130427", "PatientBirthDate": "19580317",
    "OtherPatientIDs": "88130427", "AccessionNumber": "88130427", "StudyID": "88130427",
    "SeriesDescription": FREE_TEXT, "StudyDescription": FREE_TEXT, "ProtocolName": FREE_TEXT,
    "PerformedProcedureStepDescription": FREE_TEXT, "RequestedProcedureDescription": FREE_TEXT,
    "ImageComments": FREE_TEXT, "AdmittingDiagnosesDescription": FREE_TEXT, "DerivationDescription": FREE_TEXT,
    "BodyPartExamined": "Maria Gonzalez 1958", "ViewPosition": "Gonzalez 88130427",
    "ImageLaterality": "M", "Laterality": "Gonzalez", "PatientSex": "Maria", "BurnedInAnnotation": "Maria",
    "ImageType": ["DERIVED", "Maria Gonzalez", "88130427"], "SequenceName": "Gonzalez88130427",
    "VOILUTFunction": "MARIA_GONZALEZ", "InstitutionName": "Gonzalez Clinic 88130427",
    "InstitutionAddress": FREE_TEXT, "StationName": "GONZALEZ88130427", "ReferringPhysicianName": "Gonzalez^Maria",
    "PerformingPhysicianName": "Gonzalez^Maria", "OperatorsName": "Gonzalez^Maria", "Manufacturer": FREE_TEXT,
    "ManufacturerModelName": FREE_TEXT, "DeviceSerialNumber": "88130427", "SoftwareVersions": FREE_TEXT,
}


def leaked_text(text: str | bytes) -> list[str]:
    """The parts of PERSON found in `text` (any case)."""
    lowered = text.lower() if isinstance(text, str) else text.decode("latin-1").lower()
    return [p for p in PERSON if p.lower() in lowered]


def upload(client, data: bytes, filename: str = "scan.png", model_ids=None, task: str = TASK, **extra):
    form = {"task": task, "scan": (io.BytesIO(data), filename), **extra}
    form["model_ids"] = list(model_ids) if model_ids is not None else [SEG_OURS, CLS_OURS]
    return client.post("/upload", data=form, content_type="multipart/form-data")


def run_id_from(response) -> str:
    assert response.status_code == 302, response.status_code
    match = re.search(r"/runs/([0-9a-f]{32})$", response.headers["Location"])
    assert match, response.headers["Location"]
    return match.group(1)


def image_urls(html: str) -> list[str]:
    return sorted(set(re.findall(r'<img src="(/runs/[0-9a-f]{32}/images/[^"]+)"', html)))


def result_files(app) -> list[Path]:
    """Everything under RESULTS_DIR (the folder where queued inputs wait counts only for what is in it)."""
    from predict import QUEUE_FOLDER

    root = Path(app.config["RESULTS_DIR"])
    return sorted(p for p in root.rglob("*") if p != root / QUEUE_FOLDER)


@pytest.fixture
def registry_json():
    def read(models_dir: Path) -> dict:
        return json.loads((Path(models_dir) / "registry.json").read_text())

    return read


# -- notebooks ----------------------------------------------------------------------------------
@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A kernel spec "python3" pointing at this interpreter, first on JUPYTER_PATH: a fresh venv
    where only requirements.txt was installed runs notebooks with its own Python."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (JointScan venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    return "python3"


# -- PostgreSQL (the second pass of `make test`, under ops/services.py) ----------------------------
@pytest.fixture
def postgres_url():
    """A fresh, empty database on the throw-away PostgreSQL server, dropped afterwards."""
    import os
    import uuid

    admin = os.environ.get("JOINTSCAN_TEST_POSTGRES_URL")
    if not admin:
        pytest.skip("no PostgreSQL in this run: `make test` runs these tests again under ops/services.py")
    import psycopg

    name = f"jointscan_{uuid.uuid4().hex[:12]}"
    libpq = "postgresql://" + admin.split("://", 1)[1]
    with psycopg.connect(libpq, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(libpq, autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
