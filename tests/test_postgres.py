"""The same application on PostgreSQL (DATABASE_URL=postgresql+psycopg://...): the migrations build the
models' schema, the audit trail is append-only in the database itself, the constraints hold, a run is
settled once, uploads and history work, and backup and restore go through pg_dump and pg_restore.

These run in the second pass of `make test`, with a throw-away server started by ops/services.py;
without one they skip."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy.exc import DBAPIError, IntegrityError

from app import create_app
from database import AuditEvent, Run, RunStatus, User, db
from tests.conftest import create_user, login, result_files, run_id_from, upload

pytestmark = pytest.mark.services


def migrated_app(tmp_path, monkeypatch, url: str):
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url, "RESULTS_DIR": str(tmp_path / "results")})
    with app.app_context():
        upgrade()
    return app


def test_the_migrations_build_the_models_schema_on_postgresql(tmp_path, monkeypatch, postgres_url):
    app = migrated_app(tmp_path, monkeypatch, postgres_url)
    with app.app_context():
        assert db.engine.dialect.name == "postgresql"
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
            tables = set(db.inspect(conn).get_table_names())
    assert {"users", "api_tokens", "runs", "model_results", "audit_events", "alembic_version"} <= tables
    assert diff == [], f"models and migrations differ on PostgreSQL: {diff}"


def test_the_audit_trail_is_append_only_in_postgresql_itself(tmp_path, monkeypatch, postgres_url):
    app = migrated_app(tmp_path, monkeypatch, postgres_url)
    with app.app_context():
        db.session.add(AuditEvent(action="login_ok", outcome="ok", username="someone"))
        db.session.commit()
        for sql in ("UPDATE audit_events SET outcome = 'denied'", "DELETE FROM audit_events",
                    "TRUNCATE audit_events"):
            with pytest.raises(DBAPIError, match="append-only"):
                db.session.execute(db.text(sql))
            db.session.rollback()
        assert AuditEvent.query.count() == 1 and AuditEvent.query.one().outcome == "ok"


def test_constraints_hold_on_postgresql(tmp_path, monkeypatch, postgres_url):
    app = migrated_app(tmp_path, monkeypatch, postgres_url)
    create_user(app, "unique")
    with app.app_context():
        twin = User(username="unique")
        twin.set_password("another long password")
        db.session.add(twin)
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()
        db.session.add(Run(user_id=10**6, task="knee", status="queued"))     # no such user
        with pytest.raises(IntegrityError):
            db.session.commit()


def test_uploads_history_and_settling_work_on_postgresql(make_app, postgres_url, scan_png):
    app = make_app(SQLALCHEMY_DATABASE_URI=postgres_url)
    create_user(app, "pg")
    client = app.test_client()
    assert login(client, "pg").status_code == 302
    public_id = run_id_from(upload(client, scan_png))
    assert client.get(f"/runs/{public_id}").status_code == 200
    assert public_id in client.get("/history").get_data(as_text=True)
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == "done" and run.results and run.stored_bytes > 0
        assert not Run.settle(run.id, RunStatus.FAILED, error="too late")          # settled once
        db.session.commit()
        assert db.session.get(Run, run.id).status == "done"
    assert any(p.name == "input.png" for p in result_files(app))


def test_backup_and_restore_use_pg_dump_and_pg_restore(tmp_path, monkeypatch, postgres_url):
    app = migrated_app(tmp_path, monkeypatch, postgres_url)
    create_user(app, "kept")
    with app.app_context():
        db.session.add(AuditEvent(action="signup", outcome="ok", username="kept"))
        db.session.commit()
    runner = app.test_cli_runner()
    dest = tmp_path / "backup"
    result = runner.invoke(args=["backup", str(dest)])
    assert result.exit_code == 0, result.output
    assert (dest / "jointscan.pgdump").is_file() and (dest / "manifest.json").is_file()
    create_user(app, "after the backup")
    refused = runner.invoke(args=["restore", str(dest)])
    assert refused.exit_code != 0 and "--force" in refused.output
    result = runner.invoke(args=["restore", str(dest), "--force"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        db.session.remove()
        assert {u.username for u in User.query.all()} == {"kept"}
        assert [e.username for e in AuditEvent.query.all()] == ["kept"]
        # The restored audit trail is append-only again.
        for sql in ("DELETE FROM audit_events", "TRUNCATE audit_events"):
            with pytest.raises(DBAPIError, match="append-only"):
                db.session.execute(db.text(sql))
            db.session.rollback()
