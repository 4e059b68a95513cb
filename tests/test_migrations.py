"""The committed migrations build exactly the schema the models declare, so an upgrade keeps history."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade

from app import create_app
from database import Run, User, db


def test_upgrade_from_empty_matches_models(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'm.sqlite'}"})
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
            tables = set(db.inspect(conn).get_table_names())
    assert {"users", "api_tokens", "runs", "model_results", "alembic_version"} <= tables
    assert diff == [], f"models and migrations differ; run flask db migrate: {diff}"


def test_prepare_command_migrates_and_sweeps(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'p.sqlite'}",
                      "RUN_STALE_AFTER_S": 0})      # start-up after a stop: nothing is in flight
    runner = app.test_cli_runner()
    assert runner.invoke(args=["prepare"]).exit_code == 0
    with app.app_context():
        user = User(username="u1")
        user.set_password("a long enough password")
        db.session.add(user)
        db.session.commit()
        db.session.add(Run(user_id=user.id, task="sacroiliac", status="pending"))
        db.session.commit()
    result = runner.invoke(args=["prepare"])
    assert result.exit_code == 0 and "1 interrupted" in result.output
    with app.app_context():
        run = Run.query.one()
        assert run.status == "failed" and "interrupted" in run.error
