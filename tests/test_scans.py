"""Upload -> result -> images, comparison, bad inputs, owner-only access, and failures mid-run."""
from __future__ import annotations

import errno
import io
import logging
import re
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

import predict
from database import ApiToken, ModelResult, Run, User, db
from imaging.dicom_terms import CODED_KEYS
from imaging.errors import size_text
from tasks import sacroiliac
from tests.conftest import (ALL_MODELS, CLS_OURS, IDENTIFYING_TEXT, SEG_OURS, create_user, dicom_bytes, image_urls,
                            leaked_text, login, result_files, run_id_from, upload)

def _runs(app):
    with app.app_context():
        return Run.query.all()


def _assert_nothing_stored(app):
    assert _runs(app) == []
    assert result_files(app) == []


# -- the whole flow ---------------------------------------------------------------------------
def test_png_upload_shows_result_and_every_image_loads(app, alice, scan_png):
    run_id = run_id_from(upload(alice, scan_png))
    page = alice.get(f"/runs/{run_id}")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    assert "AS status" in html and ("AS positive" in html or "AS negative" in html)
    assert "Stage probabilities" in html and all(s in html for s in ("Normal", "Early", "Moderate", "Advanced"))
    assert SEG_OURS in html and CLS_OURS in html and "0.0.1" in html
    urls = image_urls(html)
    assert any("input" in u for u in urls)
    assert any("mask_overlay" in u for u in urls) and any("gradcam_as" in u for u in urls)
    assert any("gradcam_stage" in u for u in urls)
    for url in urls:
        response = alice.get(url)
        assert response.status_code == 200, url
        assert response.mimetype == "image/png"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.data.startswith(b"\x89PNG")


def test_result_shows_model_version_checksum_and_timings(app, alice, scan_png, shared_registry):
    run_id = run_id_from(upload(alice, scan_png))
    html = alice.get(f"/runs/{run_id}").get_data(as_text=True)
    assert shared_registry.get(CLS_OURS).sha256[:12] in html
    assert "Timings" in html and "Total" in html

    with app.app_context():
        run = Run.query.filter_by(public_id=run_id).one()
        assert run.status == "done"
        assert [r.model_id for r in run.results] == [SEG_OURS, CLS_OURS]
        assert run.results[1].model_sha256 == shared_registry.get(CLS_OURS).sha256


def test_jpeg_upload(alice, scan_jpeg):
    run_id = run_id_from(upload(alice, scan_jpeg, "knee.jpg"))
    assert alice.get(f"/runs/{run_id}").status_code == 200


def test_dicom_upload_never_shows_or_stores_the_patient_name(app, alice):
    response = upload(alice, dicom_bytes("MR"), "Doe_Jane.dcm")
    run_id = run_id_from(response)
    page = alice.get(f"/runs/{run_id}")
    history = alice.get("/history")
    api = alice.get(f"/api/v1/runs/{run_id}")
    for body in (response.data, page.data, history.data, api.data):
        assert b"Doe" not in body and b"Jane" not in body and b"JD-0042" not in body
    assert b"DICOM" in page.data and b"MR" in page.data


    with app.app_context():
        run = Run.query.filter_by(public_id=run_id).one()
        assert run.input_kind == "dicom"
        assert run.input_meta["modality"] == "MR"
        # no identifying value anywhere in the stored rows
        dump = repr([(c.name, getattr(run, c.name)) for c in Run.__table__.columns])
        dump += repr([r.result for r in db.session.query(ModelResult).all()])
        assert "Doe" not in dump and "Jane" not in dump and "JD-0042" not in dump


def test_no_text_from_a_dicom_header_reaches_the_database_files_or_log(app, alice, caplog, recwarn):
    """Names, a birth date and a record number in every text element of the header (coded ones included),
    uploaded on the page and through the API: none of them is in the database file, any stored file, the
    log or a warning, and the run's input metadata holds only coded facts."""
    data = dicom_bytes("MR", **IDENTIFYING_TEXT)
    with app.app_context():
        row, token = ApiToken.issue(db.session.get(User, create_user(app, "api-user")), "script")
        db.session.add(row)
        db.session.commit()
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    recwarn.clear()
    page_run = run_id_from(upload(alice, data, "Gonzalez_Maria_88130427.dcm"))
    api = app.test_client().post("/api/v1/analyze?wait=true", headers={"Authorization": f"Bearer {token}"},
                                 data={"task": "sacroiliac", "file": (io.BytesIO(data), "scan.dcm")},
                                 content_type="multipart/form-data")
    assert api.status_code == 201, api.data[:300]
    shown = [alice.get(f"/runs/{page_run}").data, alice.get(f"/runs/{page_run}/export.json").data, api.data]
    assert not any(leaked_text(body) for body in shown)

    with app.app_context():
        runs = Run.query.order_by(Run.id).all()
        assert [r.input_kind for r in runs] == ["dicom", "dicom"] and runs[0].public_id == page_run
        for run in runs:
            assert run.input_meta["modality"] == "MR"
            assert not {"body_part", "view_position", "sequence"} & set(run.input_meta)    # they held free text
            assert set(run.input_meta) - CODED_KEYS <= {"width", "height", "rows", "cols", "frames", "frame_index",
                                                        "transfer_syntax", "transfer_syntax_name", "compressed",
                                                        "sop_class", "window", "inverted", "rescale"}
        db.session.remove()
        db.engine.dispose()                          # every write is in the files now
    database = Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    db_files = sorted(database.parent.glob(database.name + "*"))
    stored = [p for p in result_files(app) if p.is_file()]
    assert db_files and len(stored) >= 2
    for path in db_files + stored:
        assert not leaked_text(path.read_bytes()), path.name
    assert not leaked_text(caplog.text), caplog.text
    assert not leaked_text(" ".join(str(w.message) for w in recwarn))


def test_cr_dicom_is_refused_for_the_mri_task(app, alice):
    response = upload(alice, dicom_bytes("CR"), "chest.dcm")
    assert response.status_code == 400
    assert b"MRI" in response.data and b"CR" in response.data
    _assert_nothing_stored(app)


# -- bad inputs: a clear message on the form, nothing stored ---------------------------------
def _huge_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = lambda kind, payload: (struct.pack(">I", len(payload)) + kind + payload
                                   + struct.pack(">I", zlib.crc32(kind + payload)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name, make, filename, statuses", [
    ("empty", lambda png: b"", "scan.png", {400}),
    ("truncated", lambda png: png[: len(png) // 3], "scan.png", {400}),
    ("random bytes", lambda png: bytes(range(256)) * 40, "scan.bin", {415}),
    ("text named .png", lambda png: b"name,stage\nDoe,2\n" * 50, "scan.png", {415}),
    ("huge dimensions", lambda png: _huge_png(), "huge.png", {413}),
])
def test_bad_upload_shows_message_and_stores_nothing(app, alice, scan_png, name, make, filename, statuses):
    response = upload(alice, make(scan_png), filename)
    assert response.status_code in statuses, (name, response.status_code)
    html = response.get_data(as_text=True)
    assert "The scan was not analysed." in html
    assert 'role="alert"' in html
    _assert_nothing_stored(app)


def test_upload_over_the_size_limit(make_app, scan_png):
    app = make_app(MAX_UPLOAD_BYTES=len(scan_png) // 2)
    create_user(app, "alice")
    client = app.test_client()
    login(client, "alice")
    response = upload(client, scan_png)             # over MAX_UPLOAD_BYTES, inside the request envelope
    assert response.status_code == 413
    html = response.get_data(as_text=True)
    assert "The scan was not analysed." in html
    limit = app.config["MAX_UPLOAD_BYTES"]
    assert f"{size_text(len(scan_png))}; the limit is {size_text(limit)}." in html     # exact, never "64 MB ... 64 MB"
    assert f"up to {size_text(limit)}" in client.get("/upload").get_data(as_text=True)
    big = scan_png + b"\0" * (app.config["MAX_CONTENT_LENGTH"] + 10)
    response = upload(client, big)                  # over MAX_CONTENT_LENGTH: refused before reading
    assert response.status_code == 413
    html = response.get_data(as_text=True)
    assert "larger than the server accepts" in html and f"the limit is {size_text(limit)} per file." in html
    assert " bytes) with the form)" in html
    _assert_nothing_stored(app)


def test_no_file_or_no_model_is_a_form_error(app, alice, scan_png):
    response = alice.post("/upload", data={"task": "sacroiliac", "model_ids": [SEG_OURS, CLS_OURS]},
                          content_type="multipart/form-data")
    assert response.status_code == 400 and b"Choose a scan file" in response.data
    response = upload(alice, scan_png, model_ids=[])
    assert response.status_code == 400 and b"Choose at least one model" in response.data
    response = upload(alice, scan_png, model_ids=[SEG_OURS])          # no classifier
    assert response.status_code == 400 and b"AS status and stage" in response.data
    _assert_nothing_stored(app)


def test_upload_page_lists_models_grouped_by_role_with_defaults_checked(alice):
    html = alice.get("/upload").get_data(as_text=True)
    assert "Joint-region segmentation" in html and "AS status and stage" in html
    for mid in ALL_MODELS:
        assert f'value="{mid}"' in html

    checked = set(re.findall(r'value="([^"]+)" id="model-[^"]+"\s+checked', html))
    assert checked == {SEG_OURS, CLS_OURS}
    assert 'src="/static/js/upload.js"' in html


# -- owner-only access ---------------------------------------------------------------------------
def test_other_users_get_404_for_pages_and_images(app, alice, bob, scan_png):
    run_id = run_id_from(upload(alice, scan_png, model_ids=ALL_MODELS))
    urls = image_urls(alice.get(f"/runs/{run_id}").get_data(as_text=True))
    assert urls
    assert bob.get(f"/runs/{run_id}").status_code == 404
    assert bob.get(f"/runs/{run_id}/compare").status_code == 404
    for url in urls:
        assert bob.get(url).status_code == 404
    assert alice.get("/runs/" + "0" * 32).status_code == 404
    assert alice.get("/runs/" + "0" * 32 + "/images/input.png").status_code == 404
    anonymous = app.test_client()
    assert anonymous.get(urls[0]).status_code == 302            # to the login page


@pytest.mark.parametrize("name", [
    "secret.png", "m9_mask.png", "..%2F..%2Fjointscan.sqlite", "../../secret_key", "%2E%2E%2Fsecret_key",
    "..", ".", "input.png%00", "run_other.png",
])
def test_image_names_not_in_the_run_give_404(app, alice, scan_png, name):
    run_id = run_id_from(upload(alice, scan_png))
    response = alice.get(f"/runs/{run_id}/images/{name}")
    assert response.status_code == 404


def test_image_route_does_not_join_paths_from_the_url(app, alice, scan_png):
    run_id = run_id_from(upload(alice, scan_png))
    assert alice.get(f"/runs/{run_id}/images/../../../etc/passwd").status_code == 404
    assert alice.get(f"/runs/{run_id}/images/%2e%2e/%2e%2e/secret_key").status_code == 404


# -- comparison ---------------------------------------------------------------------------------
def test_comparison_page_has_a_column_per_model_and_the_dice(app, alice, scan_png):
    run_id = run_id_from(upload(alice, scan_png, model_ids=ALL_MODELS))
    result = alice.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f"/runs/{run_id}/compare" in result
    page = alice.get(f"/runs/{run_id}/compare")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    for mid in ALL_MODELS:
        assert mid in html
    assert "Dice" in html

    with app.app_context():
        run = Run.query.filter_by(public_id=run_id).one()
        comparison = run.summary["comparison"]
        assert f"{comparison['segmenter_dice']:.3f}" in html
        assert "segmenter_disagreement" in run.images
        for field in ("as_status", "stage_name"):
            if comparison[f"{field}_agree"] is False:
                assert "models disagree" in html
    assert any("segmenter_disagreement" in u for u in image_urls(html))
    for url in image_urls(html):
        assert alice.get(url).status_code == 200


def test_comparison_marks_disagreement(app, alice, scan_png):
    """Force a disagreement in the stored summary: the page shows the marker."""
    run_id = run_id_from(upload(alice, scan_png, model_ids=ALL_MODELS))
    with app.app_context():
        run = Run.query.filter_by(public_id=run_id).one()
        run.summary = {**run.summary, "comparison": {**run.summary["comparison"],
                                                     "as_status_agree": False, "stage_name_agree": True}}
        db.session.commit()
    html = alice.get(f"/runs/{run_id}/compare").get_data(as_text=True)
    assert html.count("≠ models disagree") >= 3          # in the agreement list and in both columns
    assert "✓ models agree" in html


def test_compare_with_one_model_per_role_redirects(alice, scan_png):
    run_id = run_id_from(upload(alice, scan_png))
    response = alice.get(f"/runs/{run_id}/compare")
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/runs/{run_id}")


# -- failures after the run started -------------------------------------------------------------
def _assert_failed_run_and_no_files(app, alice, response):
    # The stored, failed run is shown with its reason.
    runs = _runs(app)
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/runs/{runs[0].public_id}")
    response = alice.get(response.headers["Location"])
    assert len(runs) == 1 and runs[0].status == "failed" and runs[0].error
    assert result_files(app) == []
    page = alice.get(f"/runs/{runs[0].public_id}")
    assert page.status_code == 200 and b"This analysis failed." in page.data
    assert runs[0].error[1:].encode() in page.data
    history = alice.get("/history").get_data(as_text=True)
    assert "Failed" in history
    assert alice.get("/upload").status_code == 200                 # the app is still up
    return response


def test_crash_mid_prediction_marks_the_run_failed(app, alice, scan_png, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(sacroiliac.TASK, "run", boom)
    response = _assert_failed_run_and_no_files(app, alice, upload(alice, scan_png))
    assert b"model exploded" not in response.data


@pytest.mark.parametrize("where", ["third_image", "rename", "commit"])
def test_full_disk_marks_the_run_failed_and_keeps_nothing(app, alice, scan_png, monkeypatch, where):
    """The disk fills up at the third image (staging already holds two), at the rename into place, or
    at the database commit after the rename (the run's folder is already in place): in every case the
    run is marked failed and no file is left, staging or final."""
    writes, renamed = [], []
    real_write, real_rename, real_commit = predict._write_png, Path.rename, db.session.commit

    def write_png(path, img):
        writes.append(path.name)
        if where == "third_image" and len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, img)

    def rename(self, target):
        if self.name.startswith(predict.STAGING_PREFIX):
            if where == "rename":
                raise OSError(errno.ENOSPC, "No space left on device")
            renamed.append(Path(target))
        return real_rename(self, target)

    def commit():
        if where == "commit" and renamed and not getattr(commit, "failed", False):
            commit.failed = True
            assert renamed[0].is_dir()                     # the images are in place when the commit fails
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
        return real_commit()

    monkeypatch.setattr(predict, "_write_png", write_png)
    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(db.session, "commit", commit)
    response = _assert_failed_run_and_no_files(app, alice, upload(alice, scan_png))
    assert len(writes) >= 3
    if where == "commit":
        assert getattr(commit, "failed", False)
    else:
        assert b"storage" in response.data
