"""Analyses as jobs, with the in-process executor (the one `make run` uses): an upload queues its run and
returns at once, the result page and the status endpoint show its progress stage by stage, the API answers
202 (or waits with ?wait=true), a job runs a run exactly once (a second delivery does nothing, a silent
holder's run is taken over, a run that keeps killing its worker fails), the time limit fails a run with the
reason, a broker that is down fails the upload cleanly, and a batch fans out to the executor. The same
job under Celery with a real Redis and real worker processes: tests/test_celery.py."""
from __future__ import annotations

import csv
import io
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest

import database
from database import ModelResult, Run, RunStatus, User, db
from jobs import CeleryExecutor, Heartbeat, current_executor, job_settings, wait_until_settled
from model_loader import current_registry
from ops.batch import run_batch
from tasks.base import explaining
from predict import JobSettings, Limits, Outcome, execute_run
from tests.test_api import issue_token
from tests.conftest import CLS_OURS, SEG_OURS, create_user, login, result_files, run_id_from, upload


@pytest.fixture
def gate(monkeypatch):
    """Holds every sacroiliac analysis as its task begins, until `gate.set()`: the run stays `running`, with
    its models loaded, for as long as a test looks at it."""
    from tasks.sacroiliac import SacroiliacTask

    event, entered = threading.Event(), threading.Event()
    real_run = SacroiliacTask.run

    def held_run(self, image, by_role, options):
        entered.set()
        assert event.wait(60), "the test never opened the gate"
        return real_run(self, image, by_role, options)

    monkeypatch.setattr(SacroiliacTask, "run", held_run)
    event.entered = entered
    yield event
    event.set()


@pytest.fixture
def quick(make_app):
    """An app whose upload page does not wait for the result (as in production), and a logged-in clinician."""
    app = make_app(UPLOAD_WAIT_S=0)
    create_user(app, "quinn")
    client = app.test_client()
    assert login(client, "quinn").status_code == 302
    return app, client


def settled(app, public_id: str, timeout_s: float = 60) -> Run:
    with app.app_context():
        run = wait_until_settled(Run.query.filter_by(public_id=public_id).one(), timeout_s)
        assert run.settled, f"run still {run.status} at {run.stage}"
        db.session.expunge(run)
        return run


def test_an_upload_returns_at_once_and_its_page_shows_the_progress(quick, gate, scan_png):
    app, client = quick
    public_id = run_id_from(upload(client, scan_png))
    assert gate.entered.wait(30)
    status = client.get(f"/api/v1/runs/{public_id}/status")
    assert status.status_code == 200 and "no-store" in status.headers["Cache-Control"]
    body = status.get_json()
    assert body["status"] == "running" and not body["settled"] and body["attempts"] == 1
    states = {s["key"]: s["state"] for s in body["stages"]}
    keys = [s["key"] for s in body["stages"]]
    assert keys[:3] == ["queued", "decoding", "loading"] and keys[-1] == "storing"
    assert f"model:{SEG_OURS}" in keys and f"model:{CLS_OURS}" in keys and f"explain:{CLS_OURS}" in keys
    assert states["queued"] == states["decoding"] == "done" and states["loading"] == "current"
    assert list(states.values()).count("current") == 1 and states["storing"] == "waiting"

    page = client.get(f"/runs/{public_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Running" in html
    assert "Loading the models" in html and "Storing the results" in html
    assert re.search(r'<noscript>.*http-equiv="refresh"', html, re.S)           # works without JavaScript
    assert f"/api/v1/runs/{public_id}/status" in html and "progress.js" in html
    assert 'aria-current="step"' in html

    gate.set()
    run = settled(app, public_id)
    assert run.status == "done" and run.stage == "done"
    body = client.get(f"/api/v1/runs/{public_id}/status").get_json()
    assert body["settled"] and {s["state"] for s in body["stages"]} == {"done"}
    html = client.get(f"/runs/{public_id}").get_data(as_text=True)
    assert "progress.js" not in html and "http-equiv=\"refresh\"" not in html
    assert set(run.timings) >= {"decode_ms", "queue_ms", "load_ms", "predict_ms", "store_ms", "total_ms"}


def test_the_status_of_a_run_is_its_owners_only(quick, scan_png):
    app, client = quick
    public_id = run_id_from(upload(client, scan_png))
    settled(app, public_id)
    create_user(app, "mallory")
    other = app.test_client()
    assert login(other, "mallory").status_code == 302
    assert other.get(f"/api/v1/runs/{public_id}/status").status_code == 404
    assert app.test_client().get(f"/api/v1/runs/{public_id}/status").status_code == 401


def test_a_failed_run_shows_where_it_stopped(quick, monkeypatch, scan_png):
    from tasks.sacroiliac import SacroiliacTask

    def broken(self, image, by_role, options):
        explaining(by_role["classifier"][0])     # as far as the classifier's explanation, then a crash
        raise RuntimeError("boom")

    monkeypatch.setattr(SacroiliacTask, "run", broken)
    app, client = quick
    public_id = run_id_from(upload(client, scan_png))
    run = settled(app, public_id)
    assert run.status == "failed" and "internal error" in run.error
    body = client.get(f"/api/v1/runs/{public_id}/status").get_json()
    states = [s["state"] for s in body["stages"]]
    keys = [s["key"] for s in body["stages"]]
    at = keys.index(f"explain:{CLS_OURS}")
    assert set(states[:at]) == {"done"} and states[at] == "failed" and set(states[at + 1:]) == {"waiting"}
    assert "internal error" in body["error"]


def test_the_api_answers_202_and_waits_when_asked(quick, gate, scan_png):
    app, client = quick
    with app.app_context():
        user = User.query.filter_by(username="quinn").one()
    form = lambda: {"task": "sacroiliac", "model_ids": f"{SEG_OURS},{CLS_OURS}",  # noqa: E731
                    "file": (io.BytesIO(scan_png), "scan.png")}
    api = app.test_client()                   # a token client, as scripts use the API
    headers = {"Authorization": f"Bearer {issue_token(app, user.id)}"}

    accepted = api.post("/api/v1/analyze", data=form(), headers=headers, content_type="multipart/form-data")
    assert accepted.status_code == 202 and accepted.headers["Retry-After"] == "1"
    body = accepted.get_json()
    assert body["status"] in ("queued", "running") and accepted.headers["Location"].endswith(f"/runs/{body['id']}")
    assert body["links"]["status"].endswith(f"/api/v1/runs/{body['id']}/status") and not body["results"]
    assert gate.entered.wait(30)
    # ?wait=true waits up to API_WAIT_S; when the run is still going it answers 202 as without it.
    app.config["API_WAIT_S"] = 0.2
    slow = api.post("/api/v1/analyze?wait=true", data=form(), headers=headers, content_type="multipart/form-data")
    assert slow.status_code == 202 and slow.get_json()["status"] in ("queued", "running")
    gate.set()
    app.config["API_WAIT_S"] = 60
    waited = api.post("/api/v1/analyze?wait=true", data=form(), headers=headers, content_type="multipart/form-data")
    assert waited.status_code == 201 and waited.get_json()["status"] == "done" and waited.get_json()["results"]
    for public_id in (body["id"], slow.get_json()["id"]):
        assert settled(app, public_id).status == "done"
        polled = api.get(f"/api/v1/runs/{public_id}", headers=headers).get_json()
        assert polled["status"] == "done" and len(polled["results"]) == 2
    assert api.post("/api/v1/analyze?wait=perhaps", data=form(), headers=headers,
                    content_type="multipart/form-data").status_code == 400
    with app.app_context():
        assert Run.query.filter_by(user_id=user.id).count() == 3


def _queued(app, username="owner", *, attempts=0, status="queued", heartbeat_age_s=0.0) -> str:
    user_id = create_user(app, username)
    with app.app_context():
        beat = database.utcnow() - timedelta(seconds=heartbeat_age_s)
        run = Run(user_id=user_id, task="sacroiliac", status=status, attempts=attempts, model_ids=[SEG_OURS, CLS_OURS],
                  heartbeat_at=beat, started_at=beat if status == "running" else None)
        db.session.add(run)
        db.session.commit()
        return run.public_id


def _execute(app, public_id, **settings) -> Outcome:
    with app.app_context():
        return execute_run(public_id, registry=current_registry(), results_dir=Path(app.config["RESULTS_DIR"]),
                           settings=JobSettings(**{"stale_after_s": 30, **settings}))


def test_a_second_delivery_of_a_job_does_nothing(quick, scan_png):
    app, client = quick
    public_id = run_id_from(upload(client, scan_png))
    run = settled(app, public_id)
    assert run.status == "done" and run.attempts == 1
    assert _execute(app, public_id) is Outcome.ALREADY_SETTLED
    assert _execute(app, "0" * 32) is Outcome.MISSING
    with app.app_context():
        again = Run.query.filter_by(public_id=public_id).one()
        assert again.attempts == 1 and ModelResult.query.filter_by(run_id=again.id).count() == 2


def test_a_run_held_by_a_live_attempt_is_left_alone_and_a_silent_ones_is_taken_over(quick):
    app, _client = quick
    live = _queued(app, "live", status="running", attempts=1, heartbeat_age_s=1)
    assert _execute(app, live) is Outcome.HELD
    silent = _queued(app, "silent", status="running", attempts=1, heartbeat_age_s=31)
    assert _execute(app, silent) is Outcome.SETTLED        # taken over: its queued input is gone, so it fails
    with app.app_context():
        assert Run.query.filter_by(public_id=live).one().status == "running"
        run = Run.query.filter_by(public_id=silent).one()
        assert run.attempts == 2 and run.status == "failed" and "no longer on the server's disk" in run.error


def test_a_run_that_keeps_killing_its_worker_fails_after_the_last_attempt(quick):
    app, _client = quick
    public_id = _queued(app, status="running", attempts=3, heartbeat_age_s=60)
    assert _execute(app, public_id, max_attempts=3) is Outcome.SETTLED
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == "failed" and "interrupted 3 times" in run.error and run.attempts == 4


def test_a_job_past_its_time_limit_fails_with_the_reason_and_keeps_nothing(make_app, scan_png):
    app = make_app(UPLOAD_WAIT_S=60, JOB_TIME_LIMIT_S=0)
    create_user(app, "slow")
    client = app.test_client()
    assert login(client, "slow").status_code == 302
    public_id = run_id_from(upload(client, scan_png))
    run = settled(app, public_id)
    assert run.status == "failed" and "longer than the time limit of 0 s" in run.error
    assert [p for p in result_files(app) if p.is_file()] == []
    html = client.get(f"/runs/{public_id}").get_data(as_text=True)
    assert "time limit" in html


def test_a_broker_that_is_down_fails_the_upload_cleanly(quick, scan_png):
    app, client = quick
    app.extensions["jointscan.executor"] = CeleryExecutor("redis://127.0.0.1:9/0", 60)   # nothing listens there
    public_id = run_id_from(upload(client, scan_png))       # the failed run's page, kept in the history
    assert "job queue is unavailable" in client.get(f"/runs/{public_id}").get_data(as_text=True)
    with app.app_context():
        user_id = Run.query.one().user_id
    api = app.test_client().post("/api/v1/analyze", headers={"Authorization": f"Bearer {issue_token(app, user_id)}"},
                                 data={"task": "sacroiliac", "file": (io.BytesIO(scan_png), "scan.png")},
                                 content_type="multipart/form-data")
    assert api.status_code == 503 and "job queue is unavailable" in api.get_json()["error"]["message"]
    with app.app_context():
        runs = Run.query.all()
        assert len(runs) == 2 and all(r.status == "failed" and "job queue is unavailable" in r.error for r in runs)
    assert [p for p in result_files(app) if p.is_file()] == []


def test_the_in_process_holder_beats_for_its_queued_and_running_runs(quick):
    app, _client = quick
    queued, running = _queued(app, "q", heartbeat_age_s=100), _queued(app, "r", status="running", attempts=1,
                                                                        heartbeat_age_s=100)
    other = _queued(app, "o", heartbeat_age_s=100)
    beat = Heartbeat(app, 0.05)
    beat.hold(queued)
    beat.hold(running, attempt=1)
    with app.app_context():
        deadline = database.utcnow() - timedelta(seconds=5)
        for _ in range(100):
            db.session.expire_all()
            ages = {r.public_id: r.heartbeat_at for r in Run.query.all()}
            if ages[queued] > deadline and ages[running] > deadline:
                break
            threading.Event().wait(0.05)
        assert ages[queued] > deadline and ages[running] > deadline and ages[other] < deadline
    beat.release(queued)
    beat.release(running)
    threading.Event().wait(0.2)
    assert beat.held() == {}


def test_a_batch_fans_out_to_the_executor_and_resumes(quick, scan_png, tmp_path):
    app, _client = quick
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(4):
        (folder / f"s{i}.png").write_bytes(scan_png)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out.csv"
    with app.app_context():
        user = User.query.filter_by(username="quinn").one()
        args = dict(registry=current_registry(), results_dir=Path(app.config["RESULTS_DIR"]),
                    limits=Limits(), model_ids=[SEG_OURS, CLS_OURS], executor=current_executor(),
                    settings=job_settings(app.config), in_flight=2)
        first = run_batch(folder, "sacroiliac", user, out, **args)
        assert (first.files, first.done, first.refused, first.failed) == (5, 4, 1, 0)
        second = run_batch(folder, "sacroiliac", user, out, **args)
        assert (second.skipped, second.done, second.refused) == (5, 0, 0)
        with out.open(newline="") as fh:
            rows = {r["file"]: r for r in csv.DictReader(fh)}
        assert len(rows) == 5 and rows["bad.png"]["status"] == "refused"
        ids = [rows[f"s{i}.png"]["run_id"] for i in range(4)]
        assert len(set(ids)) == 4
        runs = Run.query.filter(Run.public_id.in_(ids)).all()
        assert {r.status for r in runs} == {RunStatus.DONE} and Run.query.count() == 4
