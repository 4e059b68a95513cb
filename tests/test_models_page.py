"""The models page, availability, the upload form with a broken model, and model cards."""
from __future__ import annotations

import re

from model_loader import UNAVAILABLE_FOR_USERS
from tests.conftest import (ALL_MODELS, CARD_HTML, CLS_OURS, CLS_REF, SEG_OURS, create_user, login,
                            run_id_from, upload)


def test_models_page_lists_every_model_with_availability(alice, shared_registry):
    response = alice.get("/models/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Sacroiliac MRI" in html
    assert "Joint-region segmentation" in html and "AS status and stage" in html
    for mid in ALL_MODELS:
        entry = shared_registry.get(mid)
        assert mid in html and entry.title in html
        assert f"{entry.params:,}" in html
    assert html.count("Available") >= len(ALL_MODELS)
    assert "reference" in html and "ours" in html
    assert "test.dice" in html                                   # headline metrics


def _app_with_missing(make_app, damaged_models_dir, model_id):
    (damaged_models_dir / f"{model_id}.keras").unlink()
    app = make_app(MODELS_DIR=str(damaged_models_dir))
    create_user(app, "alice")
    client = app.test_client()
    login(client, "alice")
    return app, client


def _admin_client(app):
    create_user(app, "boss", role="admin")
    boss = app.test_client()
    login(boss, "boss")
    return boss


def test_missing_model_is_shown_and_disabled_while_others_work(make_app, damaged_models_dir, scan_png):
    app, client = _app_with_missing(make_app, damaged_models_dir, CLS_REF)
    missing, rebuild = f"model file {CLS_REF}.keras is missing", f"python -m training.sacroiliac --model {CLS_REF}"
    html = client.get("/models/").get_data(as_text=True)
    assert "Unavailable" in html and UNAVAILABLE_FOR_USERS in html
    assert missing not in html and "regenerate it with" not in html   # the detail is the administrators'
    boss = _admin_client(app)
    for path in ("/models/", "/admin/models"):                          # ...who read it, and how to rebuild it
        admin_page = boss.get(path).get_data(as_text=True)
        assert missing in admin_page and rebuild in admin_page, path

    form = client.get("/upload").get_data(as_text=True)
    box = re.search(rf'<input type="checkbox" name="model_ids" value="{CLS_REF}"[^>]*>', form).group(0)
    assert "disabled" in box and "checked" not in box
    assert f"Unavailable: {UNAVAILABLE_FOR_USERS}" in form and missing not in form
    ok = re.search(rf'<input type="checkbox" name="model_ids" value="{CLS_OURS}"[^>]*>', form).group(0)
    assert "disabled" not in ok and "checked" in ok

    # a crafted request for the broken model is refused with 503 in plain words, the others still run
    refused = upload(client, scan_png, model_ids=[SEG_OURS, CLS_REF])
    text = refused.get_data(as_text=True)
    assert refused.status_code == 503 and "is unavailable" in text and UNAVAILABLE_FOR_USERS in text
    assert f"{CLS_REF}.keras" not in text and "python -m training" not in text
    run_id = run_id_from(upload(client, scan_png, model_ids=[SEG_OURS, CLS_OURS]))
    assert client.get(f"/runs/{run_id}").status_code == 200


def test_changed_model_file_is_reported_to_administrators(make_app, damaged_models_dir):
    path = damaged_models_dir / f"{SEG_OURS}.keras"
    path.write_bytes(path.read_bytes() + b"tampered")
    app = make_app(MODELS_DIR=str(damaged_models_dir))
    create_user(app, "alice")
    client = app.test_client()
    login(client, "alice")
    for page in (client.get("/models/"), client.get(f"/models/{SEG_OURS}")):
        html = page.get_data(as_text=True)
        assert UNAVAILABLE_FOR_USERS in html and "checksum mismatch" not in html
    boss = _admin_client(app)
    for page in (boss.get("/models/"), boss.get(f"/models/{SEG_OURS}")):
        html = page.get_data(as_text=True)
        assert "checksum mismatch" in html and UNAVAILABLE_FOR_USERS not in html


def test_model_card_renders_markdown_and_escapes_html(alice, shared_registry):
    response = alice.get(f"/models/{CLS_OURS}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<h2>Intended use</h2>" in html                       # Markdown rendered
    assert "<strong>bold</strong>" in html
    assert "Research and education only" in html
    assert CARD_HTML not in html and "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html                              # shown as text
    assert shared_registry.get(CLS_OURS).sha256 in html
    assert "test.as_auc" in html and "python -m training.sacroiliac" in html


def test_unknown_model_card_is_404(alice):
    assert alice.get("/models/no_such_model").status_code == 404
    assert alice.get("/models/..%2Fregistry.json").status_code == 404


def test_models_page_requires_login(client):
    assert client.get("/models/").status_code == 302
