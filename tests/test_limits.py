"""What one user or one address may cost the server: analyses per minute (429 with Retry-After), a storage
quota per user (set by an admin, shown on the account page), a pixel limit per task (larger uploads shrunk
before anything else) and a floor of free disk space under which nothing is written."""
from __future__ import annotations

import io

import cv2
import numpy as np

from database import ApiToken, Run, User, db
from imaging.io import DecodedImage, fit_pixels
from tests.conftest import CLS_OURS, SEG_OURS, create_user, login, result_files, upload


def token_for(app, user_id: int) -> str:
    with app.app_context():
        row, plain = ApiToken.issue(db.session.get(User, user_id), "limits")
        db.session.add(row)
        db.session.commit()
    return plain


def api_analyze(client, token: str, data: bytes):
    return client.post("/api/v1/analyze?wait=true", headers={"Authorization": f"Bearer {token}"},
                       data={"task": "sacroiliac", "file": (io.BytesIO(data), "scan.png"),
                             "model_ids": f"{SEG_OURS},{CLS_OURS}", "include_heatmaps": "false"},
                       content_type="multipart/form-data")


def test_analyses_are_limited_per_user_with_retry_after(make_app, scan_png):
    app = make_app(ANALYSIS_LIMITS_PER_USER="2 per minute")
    token = token_for(app, create_user(app, "busy"))
    client = app.test_client()
    assert [api_analyze(client, token, scan_png).status_code for _ in range(2)] == [201, 201]
    refused = api_analyze(client, token, scan_png)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Too many analyses" in refused.get_json()["error"]["message"]
    # The page counts against the same limit.
    page = app.test_client()
    assert login(page, "busy").status_code == 302
    response = upload(page, scan_png)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert b"Too many analyses" in response.data
    with app.app_context():
        assert Run.query.count() == 2                 # the refused ones stored nothing


def test_analyses_are_limited_per_address_across_users(make_app, scan_png):
    app = make_app(ANALYSIS_LIMITS_PER_ADDRESS="3 per minute")
    first, second = (token_for(app, create_user(app, name)) for name in ("first", "second"))
    client = app.test_client()
    assert [api_analyze(client, first, scan_png).status_code for _ in range(2)] == [201, 201]
    assert api_analyze(client, second, scan_png).status_code == 201
    assert api_analyze(client, second, scan_png).status_code == 429


def test_a_full_quota_refuses_new_analyses_and_the_account_page_shows_it(make_app, scan_png):
    app = make_app()
    user_id = create_user(app, "keeper")
    token = token_for(app, user_id)
    client = app.test_client()
    assert api_analyze(client, token, scan_png).status_code == 201
    with app.app_context():
        run = Run.query.one()
        on_disk = sum(p.stat().st_size for p in result_files(app) if p.is_file())
        assert run.stored_bytes == on_disk > 0 and Run.stored_by(user_id) == on_disk
        db.session.get(User, user_id).storage_quota_bytes = on_disk      # full now
        db.session.commit()
    refused = api_analyze(client, token, scan_png)
    assert refused.status_code == 403 and "storage quota is full" in refused.get_json()["error"]["message"]
    page = app.test_client()
    assert login(page, "keeper").status_code == 302
    text = page.get("/account/").get_data(as_text=True)
    assert "Storage" in text and "of the" in text and "(the default quota)" not in text


def test_an_admin_sets_and_clears_a_quota(make_app):
    app = make_app()
    create_user(app, "root", role="admin")
    user_id = create_user(app, "someone")
    admin = app.test_client()
    assert login(admin, "root").status_code == 302
    assert admin.post(f"/admin/users/{user_id}/quota", data={"quota_mb": "250"}).status_code == 302
    with app.app_context():
        assert db.session.get(User, user_id).storage_quota_bytes == 250 * 2**20
    assert "250.0 MiB" in admin.get("/admin/users").get_data(as_text=True)
    admin.post(f"/admin/users/{user_id}/quota", data={"quota_mb": "lots"})
    admin.post(f"/admin/users/{user_id}/quota", data={"quota_mb": "9" * 30})
    with app.app_context():
        assert db.session.get(User, user_id).storage_quota_bytes == 250 * 2**20     # refused, unchanged
    assert admin.post(f"/admin/users/{user_id}/quota", data={"quota_mb": ""}).status_code == 302
    with app.app_context():
        assert db.session.get(User, user_id).storage_quota_bytes is None
    clinician = app.test_client()
    assert login(clinician, "someone").status_code == 302
    assert clinician.post(f"/admin/users/{user_id}/quota", data={"quota_mb": "1"}).status_code == 403


def test_a_huge_upload_is_shrunk_to_the_tasks_pixel_limit_first(make_app):
    app = make_app()
    token = token_for(app, create_user(app, "big"))
    rng = np.random.default_rng(0)
    big = cv2.resize((rng.random((300, 300)) * 255).astype(np.uint8), (3000, 3000), interpolation=cv2.INTER_LINEAR)
    ok, png = cv2.imencode(".png", big)
    response = api_analyze(app.test_client(), token, png.tobytes())
    assert response.status_code == 201, response.get_json()
    with app.app_context():
        run = Run.query.one()
        assert run.input_meta["downscaled_from"] == [3000, 3000]
        assert run.input_meta["width"] * run.input_meta["height"] <= 4_000_000
    shown = [p for p in result_files(app) if p.name == "input.png"][0]
    h, w = cv2.imread(str(shown), cv2.IMREAD_UNCHANGED).shape[:2]
    assert h * w <= 4_000_000


def test_shrinking_keeps_the_pixel_spacing_true():
    image = DecodedImage(np.zeros((4000, 2000), np.float32), "dicom", "MR", {"pixel_spacing_mm": [0.5, 0.5]})
    small = fit_pixels(image, 2_000_000)
    assert small.height * small.width <= 2_000_000 and small.meta["downscaled_from"] == [2000, 4000]
    assert small.meta["pixel_spacing_mm"][0] * small.height == 0.5 * 4000
    assert small.meta["pixel_spacing_mm"][1] * small.width == 0.5 * 2000
    assert fit_pixels(image, 10**8) is image


def test_a_nearly_full_disk_refuses_before_anything_is_written(make_app, scan_png):
    app = make_app(MIN_FREE_DISK_BYTES=2**62)          # more than any disk has free
    token = token_for(app, create_user(app, "late"))
    response = api_analyze(app.test_client(), token, scan_png)
    assert response.status_code == 507 and "disk space" in response.get_json()["error"]["message"]
    with app.app_context():
        assert Run.query.count() == 0
    assert [p for p in result_files(app) if p.is_file()] == []
