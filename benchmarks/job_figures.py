"""Analyses as jobs, measured on this machine in one run: throughput and queue latency with the in-process
executor and with 1 and 2 Celery worker processes, the web's page time while they are saturated, a worker
SIGKILLed in the middle of 50 queued jobs, and a batch of 1,000 knees fanned out to the workers.

    .venv/bin/python benchmarks/job_figures.py                       # everything (about 15 minutes)
    .venv/bin/python benchmarks/job_figures.py --jobs 20 --batch-files 100

The set-up is the scaled one of docker-compose.yml, on loopback: a throw-away PostgreSQL and Redis
(ops/services.py; SQLite when PostgreSQL is not installed), gunicorn with gunicorn.conf.py (2 workers, as
`make run`), `celery -A worker worker --concurrency N` with the committed models. The knees are copies of
the real validation radiographs of ../shared/data/knee_kl (knee phantoms when it is absent), sent to
`POST /api/v1/analyze` (202, no waiting) as fast as the API takes them, graded by the task's default models.

- throughput: knees per second from the first upload to the last run done; queue latency: from a run's
  creation to the moment a job began it (`started_at - created_at`), p50 and p95;
- page time: a logged-in clinician loads the history page every 0.2 s while the jobs run, p50/p95/max;
- killed worker: 50 knees queued to 2 worker processes; once a few are done one pool process is SIGKILLed
  mid-job. Then every row is counted: 50 runs, all done, none with two sets of results or two folders;
- batch: `flask batch FOLDER --task knee` with the workers configured (it fans out to them), wall time and
  files per second, then the same command again, which must analyse nothing.
Exit status 0 when the killed-worker and batch checks hold and the page p95 is within 300 ms.
"""
from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.load_test import PASSWORD, Client, Server, create_users, flask_cli, free_port, pct  # noqa: E402
from ops import services  # noqa: E402

PAGE_P95_TARGET_MS = 300


def knee_files(work: Path, n: int) -> list[Path]:
    """n knee radiographs in a folder: the real validation knees cycled, or phantoms."""
    sources = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "knee_kl" / "val" / "*" / "*.jpg")))
    if not sources:
        import cv2

        from training.phantoms.knee import generate_knee

        for seed in range(50):
            path = work / f"phantom{seed}.png"
            cv2.imwrite(str(path), generate_knee(seed).image)
            sources.append(str(path))
        print("no real knees in ../shared/data/knee_kl: knee phantoms instead")
    folder = work / f"knees{n}"
    folder.mkdir()
    out = []
    for i in range(n):
        src = Path(sources[i % len(sources)])
        dest = folder / f"knee{i:05d}{src.suffix}"
        shutil.copy(src, dest)
        out.append(dest)
    return out


class Database:
    """A fresh database per measurement on the PostgreSQL cluster, or a SQLite file."""

    def __init__(self, maintenance_url: str | None, work: Path):
        self.maintenance_url, self.work, self.count = maintenance_url, work, 0

    def fresh(self) -> str:
        self.count += 1
        if self.maintenance_url is None:
            return f"sqlite:///{self.work / f'jobs{self.count}.sqlite'}"
        import psycopg

        name = f"jobs{self.count}"
        plain = self.maintenance_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.maintenance_url.rsplit("/", 1)[0] + f"/{name}"


def rows(url: str, sql: str) -> list[tuple]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return [tuple(r) for r in con.execute(text(sql)).fetchall()]
    finally:
        engine.dispose()


def api_token(env: dict[str, str], username: str) -> str:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        from app import create_app
        from database import ApiToken, User, db

        app = create_app()
        with app.app_context():
            row, plain = ApiToken.issue(User.query.filter_by(username=username).one(), "job figures")
            db.session.add(row)
            db.session.commit()
            db.session.remove()
            db.engine.dispose()
        return plain
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Workers:
    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log, self.proc = env, log, None

    def start(self, concurrency: int, timeout: float = 180) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "prefork", "--concurrency",
             str(concurrency), "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "-n", "bench@%h"],
            cwd=ROOT, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.children()) < concurrency:
            if self.proc.poll() is not None:
                raise SystemExit(f"the Celery worker exited; see {self.log}")
            time.sleep(0.3)

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Setup:
    """One measured set-up: a database, gunicorn, and (with `concurrency`) a Celery worker."""

    def __init__(self, work: Path, name: str, database: Database, redis_url: str | None, concurrency: int):
        self.dir = work / name
        self.dir.mkdir()
        self.db_url = database.fresh()
        self.env = {**os.environ, "JOINTSCAN_INSTANCE_PATH": str(self.dir / "instance"),
                    "SECRET_KEY": secrets.token_hex(32), "JOINTSCAN_ENV_NAME": "production", "FLASK_APP": "wsgi",
                    "TF_CPP_MIN_LOG_LEVEL": "2", "JOINTSCAN_SIGNUP_OPEN": "0", "PYTHONPATH": str(ROOT),
                    "CUDA_VISIBLE_DEVICES": "", "DATABASE_URL": self.db_url,
                    "JOINTSCAN_RESULTS_DIR": str(self.dir / "results"),
                    # Capacity, not the per-user limits; a dead holder is found after 5 s.
                    "JOINTSCAN_ANALYSIS_LIMITS_PER_USER": "100000 per minute",
                    "JOINTSCAN_ANALYSIS_LIMITS_PER_ADDRESS": "100000 per minute",
                    "JOINTSCAN_JOB_HEARTBEAT_S": "1", "JOINTSCAN_JOB_STALE_AFTER_S": "5",
                    "JOINTSCAN_SWEEP_EVERY_S": "2"}
        self.env.pop("JOINTSCAN_MODELS_DIR", None)
        self.env.pop("REDIS_URL", None)
        if concurrency:
            self.env["REDIS_URL"] = redis_url
        flask_cli(self.env, "prepare")
        create_users(self.env, ["reader"])
        self.token = api_token(self.env, "reader")
        self.server = Server(self.env, free_port(), 2, self.dir / "server.log", ROOT / "gunicorn.conf.py")
        self.workers = Workers(self.env, self.dir / "worker.log") if concurrency else None
        self.concurrency = concurrency

    def __enter__(self):
        self.server.start()
        if self.workers:
            self.workers.start(self.concurrency)
        return self

    def __exit__(self, *exc):
        if self.workers:
            self.workers.stop()
        self.server.stop()

    def send(self, path: Path, wait: bool = False) -> str:
        r = requests.post(self.server.base + "/api/v1/analyze" + ("?wait=true" if wait else ""),
                          headers={"Authorization": f"Bearer {self.token}"},
                          data={"task": "knee", "include_heatmaps": "false"},
                          files={"file": (path.name, path.read_bytes())}, timeout=300)
        if r.status_code not in (200, 201, 202):
            raise SystemExit(f"upload refused: HTTP {r.status_code} {r.text[:300]}")
        return r.json()["id"]

    def wait_settled(self, ids: list[str], timeout: float) -> None:
        quoted = ",".join(f"'{i}'" for i in ids)
        deadline = time.time() + timeout
        while time.time() < deadline:
            left = rows(self.db_url, f"SELECT COUNT(*) FROM runs WHERE public_id IN ({quoted}) "
                                     "AND status IN ('queued', 'running')")[0][0]
            if left == 0:
                return
            time.sleep(0.5)
        raise SystemExit(f"{left} runs still unsettled after {timeout:.0f} s; see {self.dir}")


def page_views(base: str, stop: threading.Event, out: list[float]) -> None:
    client = Client(base, "reader")
    client.login()
    while not stop.is_set():
        t0 = time.perf_counter()
        r = client.http.get(base + "/history", timeout=60)
        if r.status_code == 200:
            out.append((time.perf_counter() - t0) * 1000)
        stop.wait(0.2)


def warm(setup: Setup, files: list[Path]) -> None:
    """Two knees per job process at once, waited for: each process loads its models on its first job."""
    setup.wait_settled([setup.send(path) for path in files[:2 * max(2, setup.concurrency)]], timeout=300)


def throughput(setup: Setup, files: list[Path], jobs: int) -> dict:
    warm(setup, files)
    stop, page_ms = threading.Event(), []
    viewer = threading.Thread(target=page_views, args=(setup.server.base, stop, page_ms), daemon=True)
    viewer.start()
    time.sleep(1.0)
    t0 = time.time()
    ids = [setup.send(files[i % len(files)]) for i in range(jobs)]
    sent_s = time.time() - t0
    setup.wait_settled(ids, timeout=60 + jobs * 20)
    stop.set()
    viewer.join(70)
    quoted = ",".join(f"'{i}'" for i in ids)
    found = rows(setup.db_url, f"SELECT status, created_at, started_at, finished_at FROM runs "
                               f"WHERE public_id IN ({quoted})")
    done = [r for r in found if r[0] == "done"]
    first = min(r[1] for r in found)
    last = max(r[3] for r in found)
    waits = [(r[2] - r[1]).total_seconds() for r in done]
    span = (last - first).total_seconds()
    return {"jobs": jobs, "done": len(done), "sent_s": sent_s, "span_s": span, "rate": len(done) / span,
            "wait_p50": pct(waits, 50), "wait_p95": pct(waits, 95), "page_n": len(page_ms),
            "page_p50": pct(page_ms, 50), "page_p95": pct(page_ms, 95), "page_max": max(page_ms, default=float("nan"))}


def busiest(pids: list[int]) -> int:
    """The process that used the most CPU over a fifth of a second (the one in the middle of a job)."""
    def cpu(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    start = {pid: cpu(pid) for pid in pids}
    time.sleep(0.2)
    return max(pids, key=lambda pid: cpu(pid) - start[pid])


def killed_worker(setup: Setup, files: list[Path], jobs: int) -> dict:
    """All jobs wait in Redis before the worker starts, so that the kill lands with most of them still queued."""
    warm(setup, files)
    setup.workers.stop()
    before = {r[0] for r in rows(setup.db_url, "SELECT public_id FROM runs")}
    ids = [setup.send(files[i % len(files)]) for i in range(jobs)]
    quoted = ",".join(f"'{i}'" for i in ids)
    setup.workers.start(setup.concurrency)
    deadline = time.time() + 300
    while time.time() < deadline:
        done = rows(setup.db_url, f"SELECT COUNT(*) FROM runs WHERE public_id IN ({quoted}) AND status='done'")[0][0]
        if done >= 5:
            break
        time.sleep(0.05)
    victim = busiest(setup.workers.children())
    running_at_kill = rows(setup.db_url, f"SELECT public_id FROM runs WHERE public_id IN ({quoted}) "
                                         "AND status='running'")
    queued_at_kill = rows(setup.db_url, f"SELECT COUNT(*) FROM runs WHERE public_id IN ({quoted}) "
                                        "AND status='queued'")[0][0]
    os.kill(victim, signal.SIGKILL)
    t_kill = time.time()
    setup.wait_settled(ids, timeout=120 + jobs * 20)
    found = rows(setup.db_url, f"SELECT public_id, status, attempts FROM runs WHERE public_id IN ({quoted})")
    results = rows(setup.db_url, "SELECT r.public_id, COUNT(*) FROM model_results m JOIN runs r ON r.id = m.run_id "
                                 f"WHERE r.public_id IN ({quoted}) GROUP BY r.public_id, m.model_id "
                                 "HAVING COUNT(*) > 1")
    folders = [p.name for p in (setup.dir / "results").iterdir() if p.name in set(ids)]
    all_rows = rows(setup.db_url, "SELECT COUNT(*) FROM runs")[0][0]
    retried = [r for r in found if r[2] > 1]
    statuses = {}
    for _pid, status, _a in found:
        statuses[status] = statuses.get(status, 0) + 1
    ok = (len(found) == jobs and statuses.get("done") == jobs and not results and len(folders) == jobs
          and len(set(folders)) == jobs and all_rows == len(before) + jobs and len(retried) >= 1)
    return {"ok": ok, "jobs": jobs, "statuses": statuses, "duplicates": len(results), "folders": len(folders),
            "rows_added": all_rows - len(before), "retried": len(retried), "running_at_kill": len(running_at_kill),
            "queued_at_kill": queued_at_kill,
            "settled_s": time.time() - t_kill}


def batch(setup: Setup, files: list[Path]) -> dict:
    folder = files[0].parent
    out = setup.dir / "batch.csv"
    t0 = time.perf_counter()
    first = flask_cli(setup.env, "batch", str(folder), "--task", "knee", "--user", "reader", "--out", str(out))
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = flask_cli(setup.env, "batch", str(folder), "--task", "knee", "--user", "reader", "--out", str(out))
    second_s = time.perf_counter() - t0
    import csv

    lines = out.read_text().splitlines()
    with out.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    done = sum(1 for row in table if row["status"] == "done")
    others = sorted({f"{row['status']}: {row['message'][:160]}" for row in table if row["status"] != "done"})
    return {"files": len(files), "first": first, "first_s": first_s, "rate": len(files) / first_s,
            "second": second, "second_s": second_s, "rows": len(lines) - 1, "done": done, "others": others,
            "ok": len(lines) - 1 == len(files) and " 0 done" in second and f"{len(files)} already" in second}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="knees per throughput measurement")
    parser.add_argument("--kill-jobs", type=int, default=50)
    parser.add_argument("--batch-files", type=int, default=1000)
    parser.add_argument("--parts", default="throughput,kill,batch", help="which of throughput,kill,batch to run")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="jointscan-jobs-"))
    (work / "services").mkdir()
    os.chmod(work, 0o755)
    status = 0
    try:
        with ExitStack() as stack:
            urls = stack.enter_context(services.started(work / "services"))
            redis_url, pg_url = urls.get("JOINTSCAN_TEST_REDIS_URL"), urls.get("JOINTSCAN_TEST_POSTGRES_URL")
            if redis_url is None:
                raise SystemExit("Redis is needed (Debian: redis-server)")
            database = Database(pg_url, work)
            print(f"database: {'PostgreSQL' if pg_url else 'SQLite'}; broker: Redis; web: gunicorn, 2 workers; "
                  f"{os.cpu_count()} CPU cores")
            files = knee_files(work, 60)
            print(f"\n{'executor':<22}{'knees':>6}{'knees/s':>9}{'queue p50':>11}{'queue p95':>11}"
                  f"{'page p50':>10}{'page p95':>10}{'page max':>10}")
            worst_page = 0.0
            modes = (("in-process", 0), ("celery, 1 process", 1), ("celery, 2 processes", 2))
            for name, concurrency in modes if "throughput" in args.parts else ():
                with Setup(work, name.replace(", ", "-").replace(" ", "_"), database, redis_url, concurrency) as s:
                    f = throughput(s, files, args.jobs)
                worst_page = max(worst_page, f["page_p95"]) if concurrency else worst_page
                print(f"{name:<22}{f['done']:>3}/{f['jobs']:<2}{f['rate']:>9.2f}{f['wait_p50']:>10.1f}s"
                      f"{f['wait_p95']:>10.1f}s{f['page_p50']:>8.0f}ms{f['page_p95']:>8.0f}ms{f['page_max']:>8.0f}ms")
            print(f"(page: GET /history every 0.2 s while the knees run; target p95 <= {PAGE_P95_TARGET_MS} ms "
                  "with workers)")
            if worst_page > PAGE_P95_TARGET_MS:
                status = 1

            if "kill" in args.parts:
                with Setup(work, "killed", database, redis_url, 2) as s:
                    k = killed_worker(s, files, args.kill_jobs)
                print(f"\nkilled worker: {k['jobs']} knees queued to 2 worker processes, the busy one SIGKILLed with "
                      f"{k['running_at_kill']} running and {k['queued_at_kill']} queued; all settled {k['settled_s']:.0f} s "
                      f"later: {k['statuses']}, {k['rows_added']} rows added, {k['folders']} result folders, "
                      f"{k['duplicates']} duplicated results, {k['retried']} run(s) on a second attempt -> "
                      f"{'HELD' if k['ok'] else 'NOT HELD'}")
                status |= 0 if k["ok"] else 1

            if args.batch_files and "batch" in args.parts:
                with Setup(work, "batch", database, redis_url, 2) as s:
                    b = batch(s, knee_files(work, args.batch_files))
                print(f"\nbatch: {b['files']} knees fanned out to 2 worker processes: {b['first_s']:.0f} s, "
                      f"{b['rate']:.2f} files/s; CSV {b['rows']} rows ({b['done']} done)\n  first:  {b['first']}\n"
                      f"  second: {b['second']} ({b['second_s']:.1f} s) -> {'HELD' if b['ok'] else 'NOT HELD'}")
                for line in b["others"]:
                    print(f"  not done: {line}")
                status |= 0 if b["ok"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
