"""Analyses as Celery jobs with a real Redis and real worker processes (`celery -A worker worker`), on SQLite
and on PostgreSQL: an upload and an API call queue their run and a worker runs it to `done`; a worker
process SIGKILLed while it stores a run leaves it `running`, Celery delivers the job again (late
acknowledgement, reject on worker lost), the new attempt takes the run over once its dead holder's heartbeat
is stale, and the run ends `done` exactly once (one set of results, one folder).

Needs the Redis that `make test` starts for its second pass (ops/services.py); skips without it."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from database import ModelResult, Run, RunStatus, db
from jobs import CeleryExecutor, wait_until_settled
from tests.conftest import CLS_OURS, SEG_OURS, create_user, login, run_id_from, upload
from tests.test_api import issue_token

pytestmark = pytest.mark.services
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def redis_url():
    url = os.environ.get("JOINTSCAN_TEST_REDIS_URL")
    if not url:
        pytest.skip("no Redis in this run: `make test` runs these tests again under ops/services.py")
    import redis

    # A database number of its own (Redis has 16) so that no test sees another's queue.
    number = 1 + uuid.uuid4().int % 15
    url = url.rsplit("/", 1)[0] + f"/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'celery.sqlite'}"


class Workers:
    """`celery -A <module> worker` processes sharing the test app's database, results folder and models."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env, self.log_dir, self.procs = env, log_dir, []

    def start(self, module: str = "worker", concurrency: int = 1) -> subprocess.Popen:
        log = (self.log_dir / f"worker{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", module, "worker", "--pool", "prefork",
                                 "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip",
                                 "--without-mingle", "--without-heartbeat", "-n", f"w{len(self.procs)}@%h"],
                                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def children(self, proc: subprocess.Popen) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("worker*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def world(make_app, tmp_path, tiny_models_dir, redis_url, database_url):
    """The web app (Celery executor) and a way to start workers on the same configuration."""
    results = tmp_path / "shared-results"
    settings = {"REDIS_URL": redis_url, "SQLALCHEMY_DATABASE_URI": database_url, "RESULTS_DIR": str(results),
                "JOB_STALE_AFTER_S": 2, "JOB_HEARTBEAT_S": 0.3, "JOB_TIME_LIMIT_S": 60, "UPLOAD_WAIT_S": 0,
                "SWEEP_EVERY_S": 3600}
    app = make_app(**settings)
    assert isinstance(app.extensions["jointscan.executor"], CeleryExecutor)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "SECRET_KEY": "celery-test-key",
           "JOINTSCAN_INSTANCE_PATH": str(tmp_path / "worker-instance"), "DATABASE_URL": database_url,
           "REDIS_URL": redis_url, "JOINTSCAN_RESULTS_DIR": str(results), "JOINTSCAN_MODELS_DIR": str(tiny_models_dir),
           "JOINTSCAN_JOB_STALE_AFTER_S": "2", "JOINTSCAN_JOB_HEARTBEAT_S": "0.3", "JOINTSCAN_JOB_TIME_LIMIT_S": "60",
           "JOINTSCAN_TEST_STORING_MARKER": str(tmp_path / "storing"), "JOINTSCAN_TEST_STORE_PAUSE_S": "4"}
    workers = Workers(env, tmp_path)
    yield app, workers
    workers.stop()


def _settled(app, public_id: str, workers: Workers, timeout_s: float = 120) -> Run:
    with app.app_context():
        run = wait_until_settled(Run.query.filter_by(public_id=public_id).one(), timeout_s)
        assert run.settled, f"run still {run.status} at {run.stage}; worker log:\n{workers.logs()}"
        db.session.expunge(run)
        return run


def test_a_celery_worker_runs_uploads_and_api_calls_to_done(world, scan_png):
    app, workers = world
    create_user(app, "cel")
    client = app.test_client()
    assert login(client, "cel").status_code == 302
    # Queued before any worker runs: the run waits in Redis, unheld.
    public_id = run_id_from(upload(client, scan_png))
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == RunStatus.QUEUED and run.heartbeat_at is None
    assert "Waiting in the queue" in client.get(f"/runs/{public_id}").get_data(as_text=True)
    workers.start()
    run = _settled(app, public_id, workers)
    assert run.status == RunStatus.DONE and run.attempts == 1, run.error
    with app.app_context():
        user_id = Run.query.filter_by(public_id=public_id).one().user_id
    api = app.test_client()
    accepted = api.post("/api/v1/analyze", headers={"Authorization": f"Bearer {issue_token(app, user_id)}"},
                        data={"task": "sacroiliac", "model_ids": f"{SEG_OURS},{CLS_OURS}",
                              "file": (io.BytesIO(scan_png), "scan.png")}, content_type="multipart/form-data")
    assert accepted.status_code == 202
    second = _settled(app, accepted.get_json()["id"], workers)
    assert second.status == RunStatus.DONE
    page = client.get(f"/runs/{public_id}")
    assert page.status_code == 200 and "Waiting in the queue" not in page.get_data(as_text=True)
    for image in (Path(app.config["RESULTS_DIR"]) / public_id).iterdir():
        assert client.get(f"/runs/{public_id}/images/{image.name}").status_code == 200


def test_a_worker_killed_mid_job_is_retried_and_the_run_ends_done_exactly_once(world, scan_png):
    app, workers = world
    create_user(app, "kill")
    client = app.test_client()
    assert login(client, "kill").status_code == 302
    worker = workers.start("tests.slow_store_worker")
    public_id = run_id_from(upload(client, scan_png))
    marker = Path(workers.env["JOINTSCAN_TEST_STORING_MARKER"])
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), workers.logs()
    victim, staging = marker.read_text().split()
    assert int(victim) in workers.children(worker)
    with app.app_context():
        run = Run.query.filter_by(public_id=public_id).one()
        assert run.status == RunStatus.RUNNING and run.attempts == 1 and run.stage == "storing"
    os.kill(int(victim), signal.SIGKILL)              # the pool process dies mid-store; its parent lives on

    run = _settled(app, public_id, workers)
    assert run.status == RunStatus.DONE and run.attempts == 2, (run.error, workers.logs())
    with app.app_context():
        assert Run.query.filter_by(public_id=public_id).count() == 1
        assert ModelResult.query.filter_by(run_id=run.id).count() == 2           # one set of results
    results = Path(app.config["RESULTS_DIR"])
    stored = [p.name for p in results.iterdir() if not p.name.startswith(".")]
    assert stored == [public_id] and (results / public_id / "input.png").is_file()
    assert (results / staging).is_dir()                     # the dead attempt's half: an orphan, never served
    attempts = marker.read_text().split("\n")
    assert len([a for a in attempts if a]) == 2
    assert client.get(f"/runs/{public_id}").status_code == 200
