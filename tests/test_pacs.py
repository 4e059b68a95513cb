"""PACS in, results out, against a real Orthanc with its DICOMweb plugin (started by ops/services.py for the
second pass of `make test`): the real DICOM files of ../shared/data and real radiographs and MRI wrapped in
DICOM with a patient in their headers are loaded into it; JointScan searches (QIDO-RS), retrieves (WADO-RS),
analyses, and stores its results back (STOW-RS); then what Orthanc holds is read back with pydicom and
highdicom and checked against the run's own numbers. Also the errors a clinician may meet: the PACS down,
credentials refused, a study with no series, with nothing stored."""
from __future__ import annotations

import html
import io
import os
import re
import uuid
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pypdf import PdfReader

from database import ModelResult, Run, RunStatus, db
from imaging.dicom_terms import sequence_kind
from pacs.export import ENCAPSULATED_PDF
from tests.conftest import create_user, leaked_text, login
from tests.data_gate import data_dir, need
from tests.test_api import bearer, issue_token

pytestmark = pytest.mark.services
REPO = Path(__file__).resolve().parents[1]
PATIENT = {"PatientName": "Gonzalez^Maria", "PatientID": "MRN88130427", "PatientBirthDate": "19580317",
           "PatientSex": "F", "InstitutionName": "Gonzalez Clinic 88130427", "ReferringPhysicianName": "Gonzalez^Maria",
           "StudyDescription": "Knee Maria Gonzalez 1958-03-17 MRN 88130427", "OperatorsName": "Gonzalez^Maria"}
SEG_UID, SR_UID, SC_UID = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def orthanc():
    url, auth = os.environ.get("JOINTSCAN_TEST_ORTHANC_URL"), os.environ.get("JOINTSCAN_TEST_ORTHANC_AUTH")
    if not url:
        pytest.skip("no Orthanc in this run: `make test` runs these tests again under ops/services.py")
    user, password = auth.split(":", 1)
    return url, (user, password)


def _dicom(pixels: np.ndarray, modality: str, accession: str, **extra) -> bytes:
    """A real image in a DICOM with a patient in its header, as a scanner would send it to the PACS."""
    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.1"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = modality, accession, "20260105", "101500"
    ds.SeriesNumber, ds.InstanceNumber, ds.StudyID = 3, 1, "1"
    for keyword, value in {**PATIENT, **extra}.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def loaded(orthanc):
    """What the test PACS holds: the real SIJ series, a real knee and a real spine slice with patients."""
    need(data_dir() / "sij_mri_dicom", data_dir() / "knee_kl", data_dir() / "spine_mri")
    url, auth = orthanc
    files = [p.read_bytes() for p in sorted((data_dir() / "sij_mri_dicom" / "patient1").glob("*.dcm"))]
    knee = cv2.imread(str(sorted((data_dir() / "knee_kl" / "val" / "3").glob("*.jpg"))[0]), cv2.IMREAD_GRAYSCALE)
    spine = cv2.imread(str(sorted((data_dir() / "spine_mri" / "images").glob("*.png"))[40]), cv2.IMREAD_GRAYSCALE)
    # Accession numbers of their own: another module (the browser test) loads its studies into the same PACS.
    accessions = {"knee": f"K{uuid.uuid4().hex[:10].upper()}", "spine": f"S{uuid.uuid4().hex[:10].upper()}"}
    files.append(_dicom(knee, "CR", accessions["knee"], PixelSpacing=[0.15, 0.15], BodyPartExamined="KNEE"))
    files.append(_dicom(spine, "MR", accessions["spine"], PixelSpacing=[0.6875, 0.6875], SliceThickness=4.0,
                        ImageOrientationPatient=[0, 1, 0, 0, 0, -1], ImagePositionPatient=[0, -100, 100]))
    for data in files:
        assert requests.post(f"{url}/instances", data=data, auth=auth, timeout=30).status_code == 200
    return accessions


@pytest.fixture
def pacs_app(make_app, orthanc, loaded):
    url, (user, password) = orthanc
    app = make_app(DICOMWEB_URL=f"{url}/dicom-web", DICOMWEB_USER=user, DICOMWEB_PASSWORD=password,
                   MODELS_DIR=str(REPO / "models"))
    create_user(app, "paula")
    client = app.test_client()
    assert login(client, "paula").status_code == 302
    return app, client


def _study_uid(html: str) -> str:
    return re.search(r'name="study_uid" type="hidden" value="([0-9.]+)"', html).group(1)


def _series_uid(html: str) -> str:
    return re.search(r'name="series_uid" type="hidden" value="([0-9.]+)"', html).group(1)


def _analyse(client, accession: str, task: str) -> str:
    page = client.post("/pacs/", data={"accession": accession})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and accession in html and "Gonzalez" not in html
    study_uid = _study_uid(html)
    series = client.post("/pacs/study", data={"study_uid": study_uid, "accession": accession})
    series_uid = _series_uid(series.get_data(as_text=True))
    response = client.post("/pacs/analyse", data={"study_uid": study_uid, "series_uid": series_uid,
                                                  "accession": accession, "task": task})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return re.search(r"/runs/([0-9a-f]{32})$", response.headers["Location"]).group(1)


def _held(orthanc, study_uid: str) -> list[Dataset]:
    from dicomweb_client.api import DICOMwebClient

    url, auth = orthanc
    session = requests.Session()
    session.auth = auth
    client = DICOMwebClient(url=f"{url}/dicom-web", session=session)
    out = []
    for series in client.search_for_series(study_instance_uid=study_uid):
        out += client.retrieve_series(study_uid, series["0020000E"]["Value"][0])
    return out


def _dump(app) -> str:
    with app.app_context():
        return "\n".join(db.session.connection().connection.driver_connection.iterdump())


def test_a_knee_from_the_pacs_is_analysed_and_its_results_go_back(pacs_app, orthanc, loaded):
    app, client = pacs_app
    public_id = _analyse(client, loaded["knee"], "knee")
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == RunStatus.DONE, run.error
        source = run.input_meta["source"]
        grader = ModelResult.query.filter_by(run_id=run.id, role="grader").first()
        result, model = grader.result, (grader.model_id, grader.model_version, grader.model_sha256)
    assert source["accession"] == loaded["knee"] and UID(source["study_uid"]).is_valid
    assert leaked_text(_dump(app)) == []                    # the retrieved header left nothing identifying
    page = client.get(f"/runs/{public_id}").get_data(as_text=True)
    assert "Send the results to the PACS" in page and "Gonzalez" not in page

    sent = client.post(f"/pacs/runs/{public_id}/store", follow_redirects=True).get_data(as_text=True)
    assert "Sent to the PACS:" in sent and "1 SR" in sent and "1 PDF" in sent
    held = _held(orthanc, source["study_uid"])
    by_class = {}
    for ds in held:
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    assert len(by_class[SR_UID]) == 1 and len(by_class[ENCAPSULATED_PDF]) == 1 and by_class[SC_UID]
    for ds in by_class[SR_UID] + by_class[ENCAPSULATED_PDF] + by_class[SC_UID]:
        assert ds.StudyInstanceUID == source["study_uid"] and ds.PatientID == "MRN88130427"   # filed with the patient
        assert UID(ds.SOPInstanceUID).is_valid and ds.SOPInstanceUID != source["sop_uid"]
    sr = by_class[SR_UID][0]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source["series_uid"]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source["sop_uid"]
    flat = " ".join(str(e.value) for e in by_class[SR_UID][0].iterall() if isinstance(e.value, str))
    if result.get("withheld"):
        assert "Answer withheld" in flat
    else:
        values = {name: value for name, value, _ in _numbers(by_class[SR_UID][0])}
        assert values["Kellgren-Lawrence grade"] == pytest.approx(result["grade"])
        assert values["Kellgren-Lawrence grade, continuous"] == pytest.approx(result["value"], abs=1e-6)
    assert model[0] in flat and model[1] in flat and f"sha256 {model[2]}" in flat
    pdf = by_class[ENCAPSULATED_PDF][0]
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(bytes(pdf.EncapsulatedDocument).rstrip(b"\0"))).pages)
    assert public_id in text and "Gonzalez" not in text


def test_spine_masks_go_back_as_a_segmentation_on_the_source_grid(pacs_app, orthanc, loaded):
    app, client = pacs_app
    public_id = _analyse(client, loaded["spine"], "spine")
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == RunStatus.DONE, run.error
        source = run.input_meta["source"]
        seg_result = next(r for r in run.results if r.role == "segmenter" and not (r.result or {}).get("withheld"))
        mask_file = Path(app.config["RESULTS_DIR"]) / public_id / seg_result.images["label_mask"]
        areas_mm2 = seg_result.result["areas_mm2"]
        user_id = run.user_id
    answer = app.test_client().post(f"/api/v1/runs/{public_id}/pacs", headers=bearer(issue_token(app, user_id)))
    assert answer.status_code == 200 and answer.get_json()["stored"]["SEG"] >= 1, answer.get_json()
    held = _held(orthanc, source["study_uid"])
    segs = [hd.seg.Segmentation.from_dataset(ds) for ds in held if str(ds.SOPClassUID) == SEG_UID]
    assert segs
    seg = segs[0]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source["series_uid"]
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source["sop_uid"]
    labels = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    assert set(labels) <= {"Vertebra", "Intervertebral disc", "Spinal canal"} and "Vertebra" in labels
    stored = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
    for label, value in (("Vertebra", 76), ("Intervertebral disc", 29), ("Spinal canal", 150)):
        if label not in labels:
            continue
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source["sop_uid"]],
                                                   segment_numbers=[labels[label]])
        mask = np.asarray(frames)[0, :, :, 0].astype(bool)
        assert mask.shape == stored.shape and np.array_equal(mask, stored == value), label
    sr = next(ds for ds in held if str(ds.SOPClassUID) == SR_UID)
    areas = [value for name, value, _ in _numbers(sr) if name == "Area"]
    assert sorted(areas) == pytest.approx(sorted(areas_mm2.values()), abs=1e-6)


def _numbers(sr) -> list[tuple[str, float, list[str]]]:
    """(concept, value, finding-site meanings of its group) for every NUM item of an SR."""
    found = []

    def walk(items, sites):
        for item in items or []:
            here = sites + [s.ConceptCodeSequence[0].CodeMeaning for s in item.get("ContentSequence") or []
                            if s.ConceptNameCodeSequence[0].CodeMeaning == "Finding Site"]
            if item.get("ValueType") == "NUM":
                found.append((item.ConceptNameCodeSequence[0].CodeMeaning,
                              float(item.MeasuredValueSequence[0].NumericValue), here))
            walk(item.get("ContentSequence"), here)
    walk(sr.ContentSequence, [])
    return found


def test_the_real_sacroiliac_series_is_analysed_at_its_middle_slice(pacs_app):
    app, client = pacs_app
    page = client.post("/pacs/", data={"modality": "MR", "patient_id": "02-01"}).get_data(as_text=True)
    study_uid = _study_uid(page)
    series_page = client.post("/pacs/study", data={"study_uid": study_uid}).get_data(as_text=True)
    assert series_page.count('name="series_uid"') == 2                  # STIR and T1, 15 slices each
    series_uid = _series_uid(series_page)
    response = client.post("/pacs/analyse", data={"study_uid": study_uid, "series_uid": series_uid,
                                                  "task": "sacroiliac"})
    public_id = re.search(r"/runs/([0-9a-f]{32})$", response.headers["Location"]).group(1)
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == RunStatus.DONE and run.input_meta["source"]["series_uid"] == series_uid
        picked = run.input_meta["source"]["sop_uid"]
    files = [dcmread(p, stop_before_pixels=True) for p in (data_dir() / "sij_mri_dicom" / "patient1").glob("*.dcm")]
    series = sorted((f for f in files if f.SeriesInstanceUID == series_uid),
                    key=lambda f: float(np.dot(np.cross(np.asarray(f.ImageOrientationPatient[:3], float),
                                                        np.asarray(f.ImageOrientationPatient[3:], float)),
                                               np.asarray(f.ImagePositionPatient, float))))
    assert picked == series[len(series) // 2].SOPInstanceUID


def test_pacs_errors_are_clear_and_store_nothing(make_app, orthanc, loaded):
    url, (user, password) = orthanc
    down = make_app(DICOMWEB_URL="http://127.0.0.1:9/dicom-web")
    wrong = make_app(DICOMWEB_URL=f"{url}/dicom-web", DICOMWEB_USER=user, DICOMWEB_PASSWORD="not-the-password")
    right = make_app(DICOMWEB_URL=f"{url}/dicom-web", DICOMWEB_USER=user, DICOMWEB_PASSWORD=password)
    none = make_app()
    for app, status, words in ((down, 503, "does not answer"), (wrong, 502, "refused JointScan's credentials"),
                               (none, 200, "No PACS is configured")):
        create_user(app, "erin")
        client = app.test_client()
        assert login(client, "erin").status_code == 302
        if app is none:
            assert "No PACS is configured" in client.get("/pacs/").get_data(as_text=True)
        page = client.post("/pacs/", data={"accession": "ACCKNEE01"})
        assert page.status_code == status and words in html.unescape(page.get_data(as_text=True))
        analysed = client.post("/pacs/analyse", data={"study_uid": "1.2.3", "series_uid": "1.2.3.4", "task": "knee"})
        assert analysed.status_code == status and words in html.unescape(analysed.get_data(as_text=True))
        with app.app_context():
            assert Run.query.count() == 0
    create_user(right, "erin")
    client = right.test_client()
    assert login(client, "erin").status_code == 302
    empty = client.post("/pacs/study", data={"study_uid": "1.2.826.0.1.3680043.99999"})
    assert empty.status_code == 404 and "holds no series" in empty.get_data(as_text=True)
    wrong_series = client.post("/pacs/analyse", data={"study_uid": "1.2.826.0.1.3680043.99999",
                                                      "series_uid": "1.2.3", "task": "knee"})
    assert wrong_series.status_code == 404
    assert client.post("/pacs/analyse", data={"study_uid": "not a uid", "series_uid": "1", "task": "knee"}
                       ).status_code == 400
    nothing = client.post("/pacs/", data={"accession": "NO-SUCH-ACC"})
    assert nothing.status_code == 200 and "No study matches" in nothing.get_data(as_text=True)
    with right.app_context():
        assert Run.query.count() == 0


def test_a_series_from_the_pacs_is_analysed_as_a_study_and_its_oedema_goes_back(pacs_app, orthanc):
    """The study task takes the whole STIR series (15 slices, de-identified as uploads are), and the measurement
    report it sends back carries the oedema volume and the ASAS result of the run."""
    app, client = pacs_app
    page = client.post("/pacs/", data={"modality": "MR", "patient_id": "02-01"}).get_data(as_text=True)
    study_uid = _study_uid(page)
    series_page = client.post("/pacs/study", data={"study_uid": study_uid}).get_data(as_text=True)
    files = [dcmread(p, stop_before_pixels=True) for p in (data_dir() / "sij_mri_dicom" / "patient1").glob("*.dcm")]
    stir = next(f.SeriesInstanceUID for f in files if sequence_kind(f) == "STIR")
    assert stir in series_page
    response = client.post("/pacs/analyse", data={"study_uid": study_uid, "series_uid": stir,
                                                  "task": "sacroiliac_study"})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    public_id = re.search(r"/runs/([0-9a-f]{32})$", response.headers["Location"]).group(1)
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == RunStatus.DONE, run.error
        assert run.input_kind == "study" and run.input_meta["slices"] == 15
        assert run.input_meta["series"][0]["sequence"] == "STIR"
        result = next(r.result for r in run.results if r.role == "segmenter")
    dump = _dump(app)
    assert str(files[0].PatientID) not in dump and str(files[0].PatientName) not in dump
    stored = client.post(f"/pacs/runs/{public_id}/store")
    assert stored.status_code == 302
    reports = [d for d in _held(orthanc, study_uid) if d.Modality == "SR"]
    numbers = [[(name, round(value, 3)) for name, value, _ in _numbers(sr)] for sr in reports]
    ours = [n for n in numbers if ("Sacroiliac disease region volume", round(result["region_ml"], 3)) in n]
    assert ours, numbers
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        oedema_volumes = {round(r.result["oedema"]["volume_ml"], 3) for r in run.results
                          if (r.result.get("oedema") or {}).get("measured")}
    # Each method's oedema volume (the segmenter's intensity, the learned model's own) is in the report.
    assert oedema_volumes <= {v for name, v in ours[0] if name == "Volume of hyperintense bone marrow oedema"}
    assert ("Sacroiliac disease region volume", 0.0) not in ours[0]
