"""The committed migrations build exactly the schema the models declare, so an upgrade keeps history."""
from __future__ import annotations

from datetime import timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade

from app import create_app
from database import Run, User, db, utcnow


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
                      "JOB_TIME_LIMIT_S": 60, "JOB_STALE_AFTER_S": 30})
    runner = app.test_cli_runner()
    assert runner.invoke(args=["prepare"]).exit_code == 0
    with app.app_context():
        user = User(username="u1")
        user.set_password("a long enough password")
        db.session.add(user)
        db.session.commit()
        long_ago = utcnow() - timedelta(seconds=91)
        db.session.add_all([Run(user_id=user.id, task="sacroiliac", status="running", attempts=1,
                                started_at=long_ago, heartbeat_at=long_ago),
                            Run(user_id=user.id, task="knee", status="running", attempts=1,
                                started_at=utcnow(), heartbeat_at=utcnow())])
        db.session.commit()
    result = runner.invoke(args=["prepare"])
    assert result.exit_code == 0 and "1 run(s) that lost their job marked failed" in result.output, result.output
    with app.app_context():
        overdue, live = Run.query.order_by(Run.id).all()
        assert overdue.status == "failed" and "time limit of 60 s" in overdue.error
        assert live.status == "running"
