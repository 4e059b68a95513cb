"""Backup and restore round trip through the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app
from database import Run, User, db


@pytest.fixture()
def ops_app(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path / "instance"))
    app = create_app({"TESTING": True,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'instance' / 'jointscan.sqlite'}"})
    with app.app_context():
        db.create_all()
    return app


def _add_run(app, name: str) -> str:
    with app.app_context():
        user = User.query.filter_by(username="alice").first()
        if user is None:
            user = User(username="alice")
            user.set_password("correct horse battery")
            db.session.add(user)
            db.session.commit()
        run = Run(user_id=user.id, task="sacroiliac", status="done", input_image="input.png")
        db.session.add(run)
        db.session.commit()
        folder = Path(app.config["RESULTS_DIR"]) / run.public_id
        folder.mkdir(parents=True)
        (folder / "input.png").write_bytes(name.encode())
        return run.public_id


def _state(app):
    with app.app_context():
        ids = sorted(r.public_id for r in Run.query.all())
    files = sorted(str(p.relative_to(app.config["RESULTS_DIR"]))
                   for p in Path(app.config["RESULTS_DIR"]).rglob("*") if p.is_file())
    return ids, files


def test_round_trip(ops_app, tmp_path):
    runner = ops_app.test_cli_runner()
    _add_run(ops_app, "first")
    _add_run(ops_app, "second")
    before = _state(ops_app)
    dest = tmp_path / "backup1"
    result = runner.invoke(args=["backup", str(dest)])
    assert result.exit_code == 0, result.output
    assert "2 runs" in result.output

    _add_run(ops_app, "after the backup")   # changes after the backup are undone by the restore
    assert _state(ops_app) != before
    refused = runner.invoke(args=["restore", str(dest)])
    assert refused.exit_code != 0 and "--force" in refused.output
    result = runner.invoke(args=["restore", str(dest), "--force"])
    assert result.exit_code == 0, result.output
    assert _state(ops_app) == before


def test_damaged_backup_is_refused_and_nothing_changes(ops_app, tmp_path):
    runner = ops_app.test_cli_runner()
    run_id = _add_run(ops_app, "only")
    dest = tmp_path / "backup2"
    assert runner.invoke(args=["backup", str(dest)]).exit_code == 0
    (dest / "results" / run_id / "input.png").write_bytes(b"tampered")
    before = _state(ops_app)
    result = runner.invoke(args=["restore", str(dest), "--force"])
    assert result.exit_code != 0 and "damaged" in result.output
    assert _state(ops_app) == before


def test_backup_refuses_existing_destination(ops_app, tmp_path):
    (tmp_path / "exists").mkdir()
    result = ops_app.test_cli_runner().invoke(args=["backup", str(tmp_path / "exists")])
    assert result.exit_code != 0 and "exists" in result.output
