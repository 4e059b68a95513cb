"""JSON API: bearer tokens, run JSON shape, owner-only runs, CSRF for session auth, error mapping."""
from __future__ import annotations

import io
import re
from datetime import datetime, time, timedelta

import pytest

from database import ApiToken, AuditEvent, Run, User, db, utcnow
from imaging.errors import size_text
from model_loader import UNAVAILABLE_FOR_USERS
from tasks import sacroiliac
from tests.conftest import (ALL_MODELS, CLS_OURS, CLS_REF, PASSWORD, SEG_OURS, SEG_REF, create_user, csrf_from,
                            login)


def issue_token(app, user_id: int, name: str = "script") -> str:
    with app.app_context():
        row, plain = ApiToken.issue(db.session.get(User, user_id), name)
        db.session.add(row)
        db.session.commit()
    return plain


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def analyze(client, data: bytes, headers=None, filename="scan.png", **fields):
    form = {"task": "sacroiliac", "file": (io.BytesIO(data), filename)}
    form.update(fields)
    return client.post("/api/v1/analyze?wait=true", data=form, headers=headers or {}, content_type="multipart/form-data")


def assert_error(response, status: int):
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"]["status"] == status and body["error"]["message"]
    return body["error"]["message"]


@pytest.fixture
def token(app, users):
    return issue_token(app, users["alice"])


def test_analyze_with_a_token_returns_the_run(app, client, token, scan_png):
    response = analyze(client, scan_png, bearer(token), model_ids=",".join(ALL_MODELS))
    assert response.status_code == 201, response.data[:500]
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) >= {"id", "task", "status", "created_at", "timings", "summary", "input", "results", "links"}
    assert len(body["id"]) == 32 and body["task"] == "sacroiliac" and body["status"] == "done"
    assert body["input"] == {"width": 256, "height": 256, "modality": None, "kind": "png"}
    assert "total_ms" in body["timings"] and "comparison" in body["summary"]
    assert [r["model_id"] for r in body["results"]] == [SEG_OURS, SEG_REF, CLS_OURS, CLS_REF]
    assert response.headers["Location"] == body["links"]["self"]
    assert body["links"]["self"].startswith("http://localhost/api/v1/runs/")
    cls = body["results"][2]
    assert cls["role"] == "classifier" and cls["version"] == "0.0.1" and len(cls["sha256"]) == 64
    assert cls["result"]["as_status"] in ("negative", "positive")
    assert set(cls["result"]["stage_probabilities"]) == {"Normal", "Early", "Moderate", "Advanced"}
    assert "gradcam_as" in cls["images"] and "gradcam_stage" in cls["images"]
    seg = body["results"][0]
    assert set(seg["images"]) == {"mask_overlay", "mask"}
    # every image URL is absolute and loads with the same token
    urls = [u for r in body["results"] for u in r["images"].values()] + list(body["images"].values())
    for url in urls:
        assert url.startswith("http://localhost/runs/")
        got = client.get(url.replace("http://localhost", ""), headers=bearer(token))
        assert got.status_code == 200 and got.mimetype == "image/png"

    # the stored run reads back the same, and last_used_at was recorded
    again = client.get(f"/api/v1/runs/{body['id']}", headers=bearer(token))
    assert again.status_code == 200 and again.get_json()["results"] == body["results"]

    with app.app_context():
        assert ApiToken.query.one().last_used_at is not None


def test_analyze_without_heatmaps_keeps_overlays_only(client, token, scan_png):
    response = analyze(client, scan_png, bearer(token), include_heatmaps="false",
                       model_ids=[SEG_OURS, CLS_OURS])           # repeated fields
    assert response.status_code == 201
    body = response.get_json()
    seg, cls = body["results"]
    assert set(seg["images"]) == {"mask_overlay", "mask"}
    assert not any("gradcam" in name for name in cls["images"])
    assert "input" in body["images"]
    stored = client.get(f"/api/v1/runs/{body['id']}?include_heatmaps=false", headers=bearer(token)).get_json()
    assert stored["results"][1]["images"] == cls["images"]


def test_default_models_when_none_given(client, token, scan_png):
    body = analyze(client, scan_png, bearer(token)).get_json()
    assert [r["model_id"] for r in body["results"]] == [SEG_OURS, CLS_OURS]


def test_no_token_bad_token_and_revoked_token_get_401(app, client, token, scan_png, users):
    for headers in ({}, bearer("js_not-a-real-token"), {"Authorization": "Basic YWxpY2U6cHc="},
                    {"Authorization": "Bearer "}):
        response = analyze(client, scan_png, headers)
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(client.get("/api/v1/tasks"), 401)


    with app.app_context():
        row = ApiToken.query.one()
        row.revoked_at = utcnow()
        db.session.commit()
    assert_error(analyze(client, scan_png, bearer(token)), 401)

    with app.app_context():
        assert Run.query.count() == 0


def test_revoking_on_the_account_page_disables_the_token(app, alice, client, scan_png, users):
    page = alice.post("/account/tokens", data={"name": "lab pc", "password": PASSWORD})
    assert page.status_code == 200
    html = page.get_data(as_text=True)

    plain = re.search(r'id="new-token">(js_[^<]+)<', html).group(1)
    assert alice.get("/account/").get_data(as_text=True).count(plain) == 0     # shown once only
    assert client.get("/api/v1/tasks", headers=bearer(plain)).status_code == 200

    with app.app_context():
        token_id = ApiToken.query.filter_by(name="lab pc").one().id
    assert alice.post(f"/account/tokens/{token_id}/revoke").status_code == 302
    assert b"Revoked" in alice.get("/account/").data
    assert_error(client.get("/api/v1/tasks", headers=bearer(plain)), 401)


def _create_on_page(alice, **fields) -> tuple[int, str | None]:
    page = alice.post("/account/tokens", data={"name": "lab pc", **fields})
    found = re.search(r'id="new-token">(js_[^<]+)<', page.get_data(as_text=True))
    return page.status_code, found.group(1) if found else None


def test_creating_a_token_asks_for_the_password(app, alice, users):
    assert _create_on_page(alice) == (400, None)
    status, plain = _create_on_page(alice, password="not my password at all")
    assert status == 400 and plain is None
    assert b"The current password is wrong." in alice.post("/account/tokens", data={
        "name": "lab pc", "password": "not my password at all"}).data
    with app.app_context():
        assert ApiToken.query.count() == 0
        assert {(e.action, e.outcome) for e in AuditEvent.query} >= {("token_create", "failed")}
    status, plain = _create_on_page(alice, password=PASSWORD)
    assert status == 200 and plain.startswith("js_")


def test_an_expired_token_is_refused_and_shown_expired(app, alice, client, users):
    today = utcnow().date()
    status, plain = _create_on_page(alice, password=PASSWORD, last_day=today.isoformat())
    assert status == 200
    with app.app_context():
        row = ApiToken.query.one()
        assert row.expires_at == datetime.combine(today + timedelta(days=1), time.min)   # through the last day
        revoke_url = f"/account/tokens/{row.id}/revoke"
    assert client.get("/api/v1/tasks", headers=bearer(plain)).status_code == 200
    page = alice.get("/account/").get_data(as_text=True)
    assert "Active" in page and revoke_url in page

    with app.app_context():
        ApiToken.query.one().expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    response = client.get("/api/v1/tasks", headers=bearer(plain))
    assert_error(response, 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    page = alice.get("/account/").get_data(as_text=True)
    assert "Expired" in page and "Active" not in page and revoke_url not in page
    # a last day in the past is refused
    status, _ = _create_on_page(alice, password=PASSWORD, last_day=(today - timedelta(days=1)).isoformat())
    assert status == 400


def test_last_use_is_written_once_a_minute_and_shown(app, alice, client, token):
    assert alice.get("/account/").get_data(as_text=True).count("never") == 2      # no expiry, never used
    assert client.get("/api/v1/tasks", headers=bearer(token)).status_code == 200
    with app.app_context():
        first = ApiToken.query.one().last_used_at
    assert first is not None and utcnow() - first < timedelta(seconds=30)
    assert client.get("/api/v1/tasks", headers=bearer(token)).status_code == 200
    with app.app_context():
        assert ApiToken.query.one().last_used_at == first          # no second write within the minute
        ApiToken.query.one().last_used_at = first - timedelta(minutes=5)
        db.session.commit()
    assert f"{first - timedelta(minutes=5):%Y-%m-%d %H:%M} UTC" in alice.get("/account/").get_data(as_text=True)
    assert client.get("/api/v1/tasks", headers=bearer(token)).status_code == 200
    with app.app_context():
        assert ApiToken.query.one().last_used_at >= first            # a minute on: written again


def test_other_users_run_is_404_with_their_token(app, client, users, token, scan_png):
    run_id = analyze(client, scan_png, bearer(token)).get_json()["id"]
    bobs = issue_token(app, users["bob"])
    assert_error(client.get(f"/api/v1/runs/{run_id}", headers=bearer(bobs)), 404)
    assert_error(client.get("/api/v1/runs/" + "f" * 32, headers=bearer(token)), 404)
    assert client.get(f"/runs/{run_id}/images/input.png", headers=bearer(bobs)).status_code == 404


def test_session_auth_post_needs_the_csrf_header(make_app, scan_png):
    app = make_app(WTF_CSRF_ENABLED=True)
    create_user(app, "alice")
    client = app.test_client()
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    assert login(client, "alice", csrf_token=csrf).status_code == 302
    assert client.get("/api/v1/tasks").status_code == 200          # GET with the session is fine
    message = assert_error(analyze(client, scan_png), 400)
    assert "X-CSRFToken" in message
    csrf = csrf_from(client.get("/upload").get_data(as_text=True))
    response = analyze(client, scan_png, {"X-CSRFToken": csrf})
    assert response.status_code == 201, response.data[:300]


def test_bearer_requests_need_no_csrf_token(make_app, scan_png):
    app = make_app(WTF_CSRF_ENABLED=True)
    uid = create_user(app, "alice")
    client = app.test_client()
    assert analyze(client, scan_png, bearer(issue_token(app, uid))).status_code == 201


@pytest.mark.parametrize("data, fields, status", [
    (b"", {}, 400),
    (b"GIF89a" + b"\0" * 200, {}, 415),
    (None, {"task": ""}, 400),
    (None, {"task": "knee-nope"}, 400),
    (None, {"model_ids": "no_such_model"}, 400),
    (None, {"include_heatmaps": "maybe"}, 400),
])
def test_error_mapping(app, client, token, scan_png, data, fields, status):
    assert_error(analyze(client, scan_png if data is None else data, bearer(token), **fields), status)

    with app.app_context():
        assert Run.query.count() == 0


def test_missing_file_field_is_400(client, token):
    response = client.post("/api/v1/analyze?wait=true", data={"task": "sacroiliac"}, headers=bearer(token),
                           content_type="multipart/form-data")
    assert "'file'" in assert_error(response, 400)


def test_too_large_is_413_json(make_app, scan_png):
    app = make_app(MAX_UPLOAD_BYTES=len(scan_png) // 2)
    token = issue_token(app, create_user(app, "alice"))
    client = app.test_client()
    message = assert_error(analyze(client, scan_png, bearer(token)), 413)          # over MAX_UPLOAD_BYTES
    limit = app.config["MAX_UPLOAD_BYTES"]
    assert message == f"The file is too large: {size_text(len(scan_png))}; the limit is {size_text(limit)}."
    big = scan_png + b"\0" * (app.config["MAX_CONTENT_LENGTH"] + 10)
    message = assert_error(analyze(client, big, bearer(token)), 413)               # over MAX_CONTENT_LENGTH
    assert f"the limit is {size_text(limit)} per file." in message


@pytest.mark.parametrize("damage", ["delete", "change"])
def test_unavailable_model_is_503(make_app, damaged_models_dir, scan_png, damage):
    path = damaged_models_dir / f"{CLS_OURS}.keras"
    if damage == "delete":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    app = make_app(MODELS_DIR=str(damaged_models_dir))
    token = issue_token(app, create_user(app, "alice"))
    client = app.test_client()
    message = assert_error(analyze(client, scan_png, bearer(token)), 503)
    assert "unavailable" in message and UNAVAILABLE_FOR_USERS in message and ".keras" not in message
    tasks = client.get("/api/v1/tasks", headers=bearer(token)).get_json()["tasks"]
    models = {m["id"]: m for m in tasks[0]["models"]}
    assert models[CLS_OURS]["available"] is False and models[CLS_OURS]["problem"] == UNAVAILABLE_FOR_USERS
    assert models[SEG_OURS]["available"] is True
    admin = issue_token(app, create_user(app, "boss", role="admin"))       # administrators read the detail
    tasks = client.get("/api/v1/tasks", headers=bearer(admin)).get_json()["tasks"]
    problem = {m["id"]: m for m in tasks[0]["models"]}[CLS_OURS]["problem"]
    assert f"model file {CLS_OURS}.keras" in problem


def test_failed_analysis_is_500_json(app, client, token, scan_png, monkeypatch):
    monkeypatch.setattr(sacroiliac.TASK, "run", lambda *a, **k: 1 / 0)
    message = assert_error(analyze(client, scan_png, bearer(token)), 500)
    assert "ZeroDivision" not in message

    with app.app_context():
        assert Run.query.one().status == "failed"


def test_tasks_lists_models_with_availability(client, token):
    body = client.get("/api/v1/tasks", headers=bearer(token)).get_json()
    task = next(t for t in body["tasks"] if t["name"] == "sacroiliac")
    assert [r["name"] for r in task["roles"]] == ["segmenter", "classifier"]
    assert {m["id"] for m in task["models"]} == set(ALL_MODELS)
    assert all(m["available"] for m in task["models"])


def test_api_errors_are_json_for_unknown_routes_and_methods(client, token):
    assert_error(client.get("/api/v1/nothing", headers=bearer(token)), 404)
    assert_error(client.get("/api/v1/analyze?wait=true", headers=bearer(token)), 405)
