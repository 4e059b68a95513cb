"""The audit trail: a row for every action, no patient data, append-only in the ORM and in SQLite,
and the admin page that filters and exports it (the export audited too)."""
from __future__ import annotations

import csv
import io
import sqlite3
from datetime import timedelta

import pytest
from sqlalchemy.exc import DatabaseError

from database import AuditEvent, AuditTrailIsAppendOnly, db, utcnow
from tests.conftest import PASSWORD, create_user, dicom_bytes, login, run_id_from, upload
from web.audit import record


def _events(app, **filters):
    with app.app_context():
        query = AuditEvent.query.filter_by(**filters).order_by(AuditEvent.id)
        return [{c.name: getattr(e, c.name) for c in AuditEvent.__table__.columns} for e in query]


def test_every_action_leaves_a_row(app, scan_png):
    create_user(app, "alice")
    create_user(app, "rev", role="reviewer")
    create_user(app, "boss", role="admin")
    alice, rev, boss, anon = (app.test_client() for _ in range(4))

    assert login(anon, "alice", "wrong password!!").status_code == 401
    assert login(anon, "nobody-at-all", "wrong password!!").status_code == 401
    assert login(alice, "alice").status_code == 302
    run_id = run_id_from(upload(alice, scan_png))
    html = alice.get(f"/runs/{run_id}").get_data(as_text=True)
    assert alice.get(f"/runs/{run_id}/images/input.png").status_code == 200
    assert alice.get(f"/runs/{run_id}/export.json").status_code == 200
    assert alice.post(f"/runs/{run_id}/share").status_code == 302
    assert alice.post("/account/tokens", data={"name": "script", "password": PASSWORD}).status_code == 200
    assert alice.post("/account/tokens/1/revoke").status_code == 302
    assert login(rev, "rev").status_code == 302
    assert rev.get(f"/review/runs/{run_id}").status_code == 200
    assert rev.post(f"/review/runs/{run_id}", data={"verdict": "agree", "comment": "fine"}).status_code == 302
    assert login(boss, "boss").status_code == 302
    assert boss.post("/admin/signup", data={"open": "0"}).status_code == 302
    assert boss.get("/admin/audit.csv").status_code == 200
    assert alice.post("/logout").status_code == 302
    assert "input.png" in html

    rows = _events(app)
    seen = {(r["action"], r["outcome"]) for r in rows}
    for expected in [("login_failed", "failed"), ("login_ok", "ok"), ("upload", "ok"), ("view_run", "ok"),
                     ("view_image", "ok"), ("export", "ok"), ("share", "ok"), ("token_create", "ok"),
                     ("token_revoke", "ok"), ("review", "ok"), ("admin_change", "ok"), ("logout", "ok")]:
        assert expected in seen, expected

    upload_row = next(r for r in rows if r["action"] == "upload")
    assert upload_row["username"] == "alice" and upload_row["resource"] == f"run:{run_id}"
    assert upload_row["model_versions"] and all("@0.0.1" in m for m in upload_row["model_versions"])
    assert upload_row["client_addr"] == "127.0.0.1"
    failed = [r for r in rows if r["action"] == "login_failed"]
    assert failed[0]["username"] == "alice" and failed[0]["detail"] == "wrong password"
    # an unknown account is not written down (it may be a mistyped password)
    assert failed[1]["username"] is None and failed[1]["user_id"] is None
    assert "nobody" not in repr(rows)
    exports = [r for r in rows if r["action"] == "export"]
    assert {r["resource"] for r in exports} == {f"run:{run_id}", "audit"}
    assert any(r["detail"] == "as reviewer" for r in rows if r["action"] == "view_run")


def test_no_patient_data_in_the_trail(app, alice):
    run_id = run_id_from(upload(alice, dicom_bytes("MR", patient_name="Doe^Jane"), "Doe_Jane_JD-0042.dcm"))
    alice.get(f"/runs/{run_id}")
    alice.get(f"/runs/{run_id}/images/input.png")
    dump = repr(_events(app))
    for secret in ("Doe", "Jane", "JD-0042", ".dcm", "Memorial"):
        assert secret not in dump


def test_failed_and_refused_uploads_are_audited(app, alice, scan_png):
    assert upload(alice, b"not an image at all" * 10, "x.png").status_code == 415
    rows = _events(app, action="upload")
    assert rows and rows[-1]["outcome"] == "failed" and "415" in rows[-1]["detail"]
    assert "x.png" not in repr(rows)


def test_rows_cannot_be_changed_or_deleted(app):
    with app.test_request_context():
        event = record("login_ok", detail="original")
        event_id = event.id
        event.detail = "tampered"
        with pytest.raises(AuditTrailIsAppendOnly):
            db.session.commit()
        db.session.rollback()
        with pytest.raises(AuditTrailIsAppendOnly):
            db.session.delete(db.session.get(AuditEvent, event_id))
            db.session.commit()
        db.session.rollback()
        with pytest.raises(AuditTrailIsAppendOnly):
            db.session.execute(db.update(AuditEvent).values(detail="bulk"))
        db.session.rollback()
        with pytest.raises(AuditTrailIsAppendOnly):
            db.session.execute(db.delete(AuditEvent))
        db.session.rollback()
        # below the ORM: the database's own triggers refuse it
        with pytest.raises(DatabaseError, match="append-only"):
            with db.engine.begin() as conn:
                conn.exec_driver_sql("UPDATE audit_events SET detail = 'raw'")
        with pytest.raises(DatabaseError, match="append-only"):
            with db.engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM audit_events")
        path = db.engine.url.database
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM audit_events")
    raw.close()
    with app.app_context():
        assert db.session.get(AuditEvent, event_id).detail == "original"


def test_admin_filters_and_exports_the_trail(app):
    create_user(app, "alice")
    create_user(app, "boss", role="admin")
    boss = app.test_client()
    login(boss, "boss")
    old = utcnow() - timedelta(days=10)
    with app.app_context():
        db.session.add_all([
            AuditEvent(created_at=old, action="login_failed", outcome="failed", username="alice", user_id=1,
                       detail="=HYPERLINK(\"http://evil\")"),
            AuditEvent(action="upload", outcome="ok", username="alice", user_id=1, resource="run:abc"),
            AuditEvent(action="upload", outcome="failed", username="alice", user_id=1),
        ])
        db.session.commit()
    page = boss.get("/admin/audit?action=upload").get_data(as_text=True)
    assert "run:abc" in page and "HYPERLINK" not in page
    page = boss.get("/admin/audit?action=upload&outcome=failed").get_data(as_text=True)
    assert "1 event" in page
    since = (old + timedelta(days=1)).date().isoformat()
    page = boss.get(f"/admin/audit?user=alice&since={since}").get_data(as_text=True)
    assert "HYPERLINK" not in page and "run:abc" in page
    until = (old + timedelta(days=1)).date().isoformat()
    page = boss.get(f"/admin/audit?user=alice&until={until}").get_data(as_text=True)
    assert "HYPERLINK" in page and "run:abc" not in page
    assert "must be a date" in boss.get("/admin/audit?since=yesterday").get_data(as_text=True)

    response = boss.get("/admin/audit.csv?user=alice")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0][:4] == ["time_utc", "user_id", "username", "action"]
    assert len(rows) == 4
    assert any(cell.startswith("'=HYPERLINK") for row in rows for cell in row)   # no formula injection
    export = _events(app, action="export")
    assert export and export[-1]["username"] == "boss" and "3 rows" in export[-1]["detail"]
