"""Load and fault drills against the real server: gunicorn, 2 workers, loopback only.

What it does, on a temporary instance folder with a snapshot of the committed models
(models/registry.json; a model whose file is missing or damaged is left out, and the run uses
what is available):

1. Load: >= 8 concurrent clients (threads, one `requests` session per iteration, CSRF tokens
   scraped from the forms) loop  log in -> upload a sacroiliac phantom -> result -> history ->
   log out  for --duration seconds. Then it checks: no 5xx, every successful upload recorded
   exactly once (runs per user in the database against uploads made, ids distinct, all done,
   their files present), and prints throughput and p50/p95 latency per step.
2. Faults, each checked for a clear error and no lost or half-written data:
   - database locked: another connection holds SQLite's write lock for a few seconds while
     uploads arrive (they wait out the busy timeout and succeed), then for longer than the
     timeout (they fail cleanly with 503 and nothing is stored);
   - damaged model file: bytes flipped in the classifier's file: uploads refused with 503 and a
     message, nothing stored; restored, uploads work again;
   - worker killed: SIGKILL to the gunicorn worker whose job pool is running a prediction; the other
     worker's sweep finds the run silent (its heartbeat stopped) and takes it over: it ends done, once,
     on its second attempt, without a restart;
   - full disk: the results folder on a tiny tmpfs (needs root to mount; otherwise reported as
     not run, and tests/test_scans.py::test_full_disk_marks_the_run_failed_and_keeps_nothing
     covers it): the run ends failed with a storage error, no file kept, the app keeps serving.

Only 127.0.0.1 is contacted; every request loop is bounded in time and count.

    .venv/bin/python benchmarks/load_test.py                # 120 s of load, then the drills
    .venv/bin/python benchmarks/load_test.py --duration 30 --clients 8
Exit status 0 when every check passes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from database import User, db  # noqa: E402
from model_loader import ModelRegistry  # noqa: E402
from training.phantoms.sacroiliac import generate_case  # noqa: E402

TASK = "sacroiliac"
PASSWORD = "load test passphrase 7"
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
RUN_RE = re.compile(r"/runs/([0-9a-f]{32})$")
MAX_ITERATIONS = 10_000          # per client, a bound on top of --duration
REQUEST_TIMEOUT = 180
GUNICORN_CONF = f"""
import os, runpy
# The project's settings (threaded workers, time-outs), then this test's hook.
globals().update({{k: v for k, v in runpy.run_path({str(ROOT / "gunicorn.conf.py")!r}).items()
                  if not k.startswith("__")}})
PIDLOG = os.environ["JOINTSCAN_LOADTEST_PIDLOG"]

def pre_request(worker, req):
    if req.method == "POST" and req.path == "/upload":
        with open(PIDLOG, "a") as fh:
            fh.write(f"{{worker.pid}}\\n")
"""


# -- set-up -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot_models(dest: Path) -> tuple[list[str], list[str]]:
    """Copy registry.json, cards and the sacroiliac model files that are present and intact.
    Returns (segmenter ids, classifier ids) usable, defaults first."""
    src = ROOT / "models"
    dest.mkdir(parents=True)
    shutil.copy2(src / "registry.json", dest / "registry.json")
    if (src / "cards").is_dir():
        shutil.copytree(src / "cards", dest / "cards")
    reg = ModelRegistry(src)
    usable: dict[str, list[str]] = {"segmenter": [], "classifier": []}
    for entry in reg.entries(TASK):
        problem = reg.problem(entry.id)
        if problem:
            print(f"  model {entry.id}: left out ({problem})")
            continue
        shutil.copy2(reg.path_of(entry), dest / entry.file)
        if entry.ood:                                   # its training-data check goes with it
            shutil.copy2(src / entry.ood["file"], dest / entry.ood["file"])
        usable.setdefault(entry.role, []).append(entry.id)
    for role in usable:
        defaults = [m for m in usable[role] if reg.get(m).default]
        usable[role] = defaults[:1] or usable[role][:1]
    if not usable["segmenter"] or not usable["classifier"]:
        raise SystemExit("no usable sacroiliac segmenter and classifier in models/: train them first (make models)")
    return usable["segmenter"], usable["classifier"]


def phantom_pngs(n: int) -> list[bytes]:
    out = []
    for seed in range(9000, 9000 + n):
        ok, buf = cv2.imencode(".png", generate_case(seed).image)
        assert ok
        out.append(buf.tobytes())
    return out


class Server:
    """gunicorn serving wsgi:app with its own environment; start, stop, kill a worker."""

    def __init__(self, env: dict[str, str], port: int, workers: int, log: Path, conf: Path):
        self.env, self.port, self.workers, self.log, self.conf = env, port, workers, log, conf
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 120) -> None:
        fh = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
             "--graceful-timeout", "10", "-c", str(self.conf), "wsgi:app"],
            cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited ({self.proc.returncode}); see {self.log}")
            try:
                if requests.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise SystemExit(f"gunicorn did not answer within {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


def flask_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flask", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def create_users(env: dict[str, str], names: list[str]) -> None:
    """Users straight into the database, through the application's own models."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        app = create_app()
        with app.app_context():
            for name in names:
                user = User(username=name, role="clinician")
                user.set_password(PASSWORD)
                db.session.add(user)
            db.session.commit()
            db.session.remove()
            db.engine.dispose()
    finally:
        os.environ.clear()
        os.environ.update(saved)


# -- a client -------------------------------------------------------------------------------------
@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latency: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    def add(self, step: str, seconds: float, statuses: list[int]) -> None:
        with self.lock:
            self.latency.setdefault(step, []).append(seconds)
            for s in statuses:
                self.statuses[s] = self.statuses.get(s, 0) + 1
                self.requests += 1
                if s >= 500:
                    self.server_errors.append(f"{step}: HTTP {s}")


class Client:
    def __init__(self, base: str, username: str):
        self.base, self.username = base, username
        self.http = requests.Session()

    def _csrf(self, path: str) -> tuple[str, int]:
        r = self.http.get(self.base + path, timeout=REQUEST_TIMEOUT)
        match = CSRF_RE.search(r.text)
        if not match:
            raise RuntimeError(f"no CSRF token on {path} (HTTP {r.status_code})")
        return match.group(1), r.status_code

    def login(self) -> list[int]:
        token, s1 = self._csrf("/login")
        r = self.http.post(self.base + "/login", data={"username": self.username, "password": PASSWORD,
                                                       "csrf_token": token}, allow_redirects=False,
                           timeout=REQUEST_TIMEOUT)
        if r.status_code != 302:
            raise RuntimeError(f"login failed: HTTP {r.status_code}")
        return [s1, r.status_code]

    def upload_form(self) -> tuple[str, int]:
        return self._csrf("/upload")

    def upload(self, png: bytes, model_ids: list[str], token: str | None = None) -> tuple[requests.Response, list[int]]:
        statuses = []
        if token is None:
            token, s = self.upload_form()
            statuses.append(s)
        r = self.http.post(self.base + "/upload", allow_redirects=False, timeout=REQUEST_TIMEOUT,
                           data={"csrf_token": token, "task": TASK, "model_ids": model_ids},
                           files={"scan": ("phantom.png", png, "image/png")})
        statuses.append(r.status_code)
        return r, statuses

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.base + path, timeout=REQUEST_TIMEOUT, allow_redirects=False)

    def logout(self) -> int:
        token, _ = self._csrf("/history")
        r = self.http.post(self.base + "/logout", data={"csrf_token": token}, allow_redirects=False,
                           timeout=REQUEST_TIMEOUT)
        return r.status_code


def client_loop(base: str, username: str, pngs: list[bytes], models: list[str], stop_at: float,
                stats: Stats, made: dict[str, list[str]]) -> None:
    i = 0
    while time.time() < stop_at and i < MAX_ITERATIONS:
        i += 1
        client = Client(base, username)
        try:
            t = time.perf_counter()
            statuses = client.login()
            stats.add("login", time.perf_counter() - t, statuses)

            t = time.perf_counter()
            r, statuses = client.upload(pngs[i % len(pngs)], models)
            stats.add("upload", time.perf_counter() - t, statuses)
            match = RUN_RE.search(r.headers.get("Location", "")) if r.status_code == 302 else None
            if match is None:
                stats.errors.append(f"{username}: upload answered HTTP {r.status_code}")
                continue
            made[username].append(match.group(1))

            t = time.perf_counter()
            page = client.get(f"/runs/{match.group(1)}")
            stats.add("result", time.perf_counter() - t, [page.status_code])
            if page.status_code != 200 or "This analysis failed" in page.text:
                stats.errors.append(f"{username}: result page HTTP {page.status_code}")

            t = time.perf_counter()
            hist = client.get("/history")
            stats.add("history", time.perf_counter() - t, [hist.status_code])

            t = time.perf_counter()
            status = client.logout()
            stats.add("logout", time.perf_counter() - t, [status])
        except (requests.RequestException, RuntimeError) as exc:
            stats.errors.append(f"{username}: {type(exc).__name__}: {str(exc)[:120]}")
            time.sleep(0.5)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


# -- checks against the database -------------------------------------------------------------------
def db_rows(db_path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def folders(results: Path) -> set[str]:
    """Run folders under results (the job machinery's own, hidden, folders are not runs)."""
    return {p.name for p in results.iterdir() if not p.name.startswith(".")} if results.exists() else set()


# -- drills ------------------------------------------------------------------------------------------
class HoldWriteLock:
    """Another connection holding SQLite's write lock (BEGIN IMMEDIATE) for `seconds`."""

    def __init__(self, db_path: Path, seconds: float):
        self.db_path, self.seconds = db_path, seconds
        self.taken = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO settings(key, value, changed_at) VALUES ('load-test-lock', '1', '2026-01-01')")
        self.taken.set()
        time.sleep(self.seconds)
        conn.execute("ROLLBACK")
        conn.close()

    def __enter__(self):
        self.thread.start()
        self.taken.wait(30)
        return self

    def __exit__(self, *exc):
        self.thread.join(self.seconds + 30)


def uploads_in_parallel(clients: list[Client], pngs: list[bytes], models: list[str],
                        tokens: list[str]) -> list[tuple[int, float, str]]:
    out: list = [None] * len(clients)

    def one(i):
        t = time.perf_counter()
        try:
            r, _ = clients[i].upload(pngs[i % len(pngs)], models, token=tokens[i])
            out[i] = (r.status_code, time.perf_counter() - t, r.text if r.status_code != 302 else r.headers["Location"])
        except requests.RequestException as exc:
            out[i] = (0, time.perf_counter() - t, str(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(REQUEST_TIMEOUT + 30)
    return out


def drill_locked_db(server: Server, db_path: Path, results: Path, pngs, models, user: str) -> list[dict]:
    rows = []
    for seconds, expect_ok in ((4.0, True), (12.5, False)):
        clients = [Client(server.base, user) for _ in range(2)]
        tokens = []
        for c in clients:                 # log in and fetch the form before the lock (login writes)
            c.login()
            tokens.append(c.upload_form()[0])
        before = db_rows(db_path, "SELECT COUNT(*) FROM runs")[0][0]
        with HoldWriteLock(db_path, seconds):
            outcomes = uploads_in_parallel(clients, pngs, models, tokens)
        after = db_rows(db_path, "SELECT COUNT(*) FROM runs")[0][0]
        pending = db_rows(db_path, "SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running')")[0][0]
        ok = [o for o in outcomes if o[0] == 302]
        refused = [o for o in outcomes if o[0] == 503 and "nothing was saved" in o[2]]
        done = {r[0] for r in db_rows(db_path, "SELECT public_id FROM runs WHERE status='done'")}
        orphan = {f for f in folders(results) if f not in done}
        if expect_ok:
            passed = len(ok) == len(clients) and after - before == len(ok) and not orphan and pending == 0
            observed = (f"{len(ok)}/{len(clients)} uploads waited and succeeded "
                        f"(latency {max(o[1] for o in outcomes):.1f} s), {after - before} runs stored"
                        + ("" if passed else f"; first answer HTTP {outcomes[0][0]} {outcomes[0][2][:120]!r}"))
        else:
            passed = len(refused) == len(clients) and after == before and not orphan and pending == 0
            observed = (f"{len(refused)}/{len(clients)} refused with 503 'database busy, nothing was saved' "
                        f"after {min(o[1] for o in outcomes):.1f} s; {after - before} runs, {len(orphan)} stray files"
                        + ("" if passed else f"; first answer HTTP {outcomes[0][0]} {outcomes[0][2][:120]!r}"))
        rows.append({"drill": f"database write-locked {seconds:.0f} s",
                     "expected": "wait and succeed" if expect_ok else "clean 503, nothing stored",
                     "observed": observed, "passed": passed})
    return rows


def drill_damaged_model(server: Server, db_path: Path, models_dir: Path, cls_id: str, pngs, models, user) -> dict:
    entry = json.loads((models_dir / "registry.json").read_text())
    file_name = next(m["file"] for m in entry["models"] if m["id"] == cls_id)
    path = models_dir / file_name
    original = path.read_bytes()
    damaged = bytearray(original)
    for k in range(64, min(len(damaged), 64 + 4096), 97):
        damaged[k] ^= 0xFF
    client = Client(server.base, user)
    client.login()
    before = db_rows(db_path, "SELECT COUNT(*) FROM runs")[0][0]
    try:
        path.write_bytes(bytes(damaged))
        r, _ = client.upload(pngs[0], models)
        models_page = client.get("/models/").text
        after = db_rows(db_path, "SELECT COUNT(*) FROM runs")[0][0]
    finally:
        path.write_bytes(original)
    again, _ = client.upload(pngs[1], models)
    passed = (r.status_code == 503 and "damaged" in r.text and after == before and "Unavailable" in models_page
              and again.status_code == 302)
    return {"drill": "damaged model file (bytes flipped)", "expected": "503 with the reason, nothing stored",
            "observed": f"HTTP {r.status_code} '{cls_id} ... damaged or was replaced'; {after - before} runs stored; "
                        f"restored file: HTTP {again.status_code}", "passed": passed}


def drill_kill_worker(server: Server, env: dict[str, str], db_path: Path, results: Path, pidlog: Path,
                      pngs, models, user: str) -> dict:
    uid = db_rows(db_path, "SELECT id FROM users WHERE username=?", (user,))[0][0]
    for attempt in range(1, 4):
        client = Client(server.base, user)
        client.login()
        token = client.upload_form()[0]
        pidlog.write_text("")
        known = {r[0] for r in db_rows(db_path, "SELECT public_id FROM runs WHERE user_id=?", (uid,))}
        outcome: dict = {}

        def go():
            try:
                r, _ = client.upload(pngs[attempt], models, token=token)
                outcome["status"] = r.status_code
            except requests.RequestException as exc:
                outcome["error"] = type(exc).__name__

        th = threading.Thread(target=go)
        th.start()
        victim, run_id = None, None
        deadline = time.time() + 60
        while time.time() < deadline and th.is_alive():
            lines = pidlog.read_text().split()
            running = [r[0] for r in db_rows(db_path, "SELECT public_id FROM runs WHERE user_id=? AND status='running'",
                                            (uid,)) if r[0] not in known]
            if lines and running:
                victim, run_id = int(lines[-1]), running[0]
                os.kill(victim, signal.SIGKILL)
                break
            time.sleep(0.005)
        th.join(REQUEST_TIMEOUT)
        if victim is not None:
            break
    else:
        return {"drill": "worker SIGKILLed mid-prediction", "expected": "run taken over, done once",
                "observed": "could not catch a prediction in flight in 3 tries", "passed": False}

    at_kill = db_rows(db_path, "SELECT status FROM runs WHERE public_id=?", (run_id,))[0][0]
    time.sleep(1.0)
    serving = requests.get(server.base + "/healthz", timeout=10).status_code   # the master started a new worker
    # No restart: a live worker's sweep finds the run silent after JOB_STALE_AFTER_S and takes it over.
    stale_after = int(env["JOINTSCAN_JOB_STALE_AFTER_S"])
    t_killed, status, attempts = time.time(), at_kill, 0
    while time.time() < t_killed + stale_after + 60 and status in ("queued", "running"):
        requests.get(server.base + "/healthz", timeout=10)        # any request may run the sweep
        status, attempts = db_rows(db_path, "SELECT status, attempts FROM runs WHERE public_id=?", (run_id,))[0]
        time.sleep(1.0)
    settled_after = time.time() - t_killed
    rows_for_run = db_rows(db_path, "SELECT COUNT(*) FROM runs WHERE public_id=?", (run_id,))[0][0]
    files = [f for f in folders(results) if run_id in f]
    client = Client(server.base, user)
    client.login()
    r, _ = client.upload(pngs[5], models)
    passed = (at_kill == "running" and status == "done" and attempts == 2 and rows_for_run == 1 and len(files) == 1
              and serving == 200 and r.status_code == 302)
    return {"drill": "worker SIGKILLed mid-prediction",
            "expected": "run taken over by the live sweep, done once on attempt 2, no restart",
            "observed": f"client saw {outcome.get('error') or outcome.get('status')}; other worker served "
                        f"/healthz {serving}; run {at_kill} -> {status} on attempt {attempts} {settled_after:.0f} s "
                        f"after the kill (JOB_STALE_AFTER_S {stale_after}); {rows_for_run} row, {len(files)} result "
                        f"folder; next upload HTTP {r.status_code}",
            "passed": passed}


def drill_full_disk(make_server, env: dict[str, str], work: Path, db_path: Path, pngs, models, user: str) -> dict:
    mount = work / "tinydisk"
    mount.mkdir()
    name = "full disk (results on a 2 MiB tmpfs, filled)"
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True,
                       capture_output=True, timeout=30)
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return {"drill": name, "expected": "run failed with a storage error, no files",
                "observed": f"not run: cannot mount a tmpfs here ({type(exc).__name__}); covered by "
                            "tests/test_scans.py::test_full_disk_marks_the_run_failed_and_keeps_nothing",
                "passed": True, "skipped": True}
    server = None
    try:
        results = mount / "results"
        results.mkdir()
        # The disk floor (MIN_FREE_DISK_BYTES) would refuse every upload on a 2 MiB disk: this drill is about a
        # write that fails for want of space, so the floor is off here.
        server = make_server({**env, "JOINTSCAN_RESULTS_DIR": str(results), "JOINTSCAN_MIN_FREE_DISK_BYTES": "0"})
        server.start()
        client = Client(server.base, user)
        client.login()
        warm, _ = client.upload(pngs[2], models)      # room enough: works
        stat = os.statvfs(mount)
        free = stat.f_bavail * stat.f_frsize
        filler = mount / "filler"
        with filler.open("wb") as fh:                 # leave a few KiB: the first PNG fits, the rest do not
            fh.write(b"\0" * max(0, free - 24 * 1024))
        before = db_rows(db_path, "SELECT COUNT(*) FROM runs")[0][0]
        r, _ = client.upload(pngs[3], models)
        match = RUN_RE.search(r.headers.get("Location", ""))
        run_status = db_rows(db_path, "SELECT status, error FROM runs WHERE public_id=?", (match.group(1),))[0] \
            if match else ("none", "")
        page = client.get(r.headers["Location"]).text if match else ""
        left = sorted(p.name for p in results.iterdir())
        done = {x[0] for x in db_rows(db_path, "SELECT public_id FROM runs WHERE status='done'")}
        stray = [f for f in left if f not in done]
        filler.unlink()
        again, _ = client.upload(pngs[4], models)
        after = db_rows(db_path, "SELECT COUNT(*) FROM runs")[0][0]
        passed = (warm.status_code == 302 and run_status[0] == "failed" and "storage" in (run_status[1] or "")
                  and "The analysis failed" in page and not stray and again.status_code == 302
                  and after - before == 2)
        return {"drill": name, "expected": "run failed with a storage error, no files, app keeps serving",
                "observed": f"run {run_status[0]} ('{(run_status[1] or '')[:48]}...'); {len(stray)} stray files; "
                            f"after freeing space HTTP {again.status_code}", "passed": passed}
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", str(mount)], capture_output=True)


# -- main -------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--skip-faults", action="store_true", help="load only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jointscan-load-"))
    instance, models_dir = work / "instance", work / "models"
    instance.mkdir()
    print(f"JointScan load and fault test: gunicorn {args.workers} workers on 127.0.0.1, "
          f"{args.clients} clients, {args.duration:.0f} s; work folder {work}")
    segs, clss = snapshot_models(models_dir)
    models = segs + clss
    print(f"  models: {', '.join(models)}")
    pngs = phantom_pngs(16)
    pidlog = work / "upload-pids.log"
    conf = work / "gunicorn_conf.py"
    conf.write_text(GUNICORN_CONF)
    env = {**os.environ, "JOINTSCAN_INSTANCE_PATH": str(instance), "JOINTSCAN_MODELS_DIR": str(models_dir),
           "SECRET_KEY": secrets.token_hex(32), "JOINTSCAN_ENV_NAME": "production", "FLASK_APP": "wsgi",
           "TF_CPP_MIN_LOG_LEVEL": "2", "JOINTSCAN_SIGNUP_OPEN": "0", "JOINTSCAN_LOADTEST_PIDLOG": str(pidlog),
           "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
           # A load test measures capacity: the per-user and per-address analysis limits are lifted. The upload
           # waits for its result (UPLOAD_WAIT_S), so the upload step is the time to a result, as a clinician
           # waits for it; a job's holder beats every second and is taken for dead after 5 s, swept every 2 s,
           # so the killed-worker drill is short.
           "JOINTSCAN_ANALYSIS_LIMITS_PER_USER": "100000 per minute",
           "JOINTSCAN_ANALYSIS_LIMITS_PER_ADDRESS": "100000 per minute", "JOINTSCAN_UPLOAD_WAIT_S": "60",
           "JOINTSCAN_JOB_HEARTBEAT_S": "1", "JOINTSCAN_JOB_STALE_AFTER_S": "5", "JOINTSCAN_SWEEP_EVERY_S": "2"}
    env.pop("JOINTSCAN_RESULTS_DIR", None)
    db_path = instance / "jointscan.sqlite"
    results = instance / "results"
    flask_cli(env, "prepare")
    users = [f"load{i:02d}" for i in range(args.clients)] + ["drill"]
    create_users(env, users)
    port = free_port()

    def make_server(server_env):
        return Server(server_env, port, args.workers, work / "gunicorn.log", conf)

    server = make_server(env)
    server.start()
    failures = 0
    try:
        # warm-up: each worker loads TensorFlow and the models once (not counted)
        t = time.perf_counter()
        warm = [Client(server.base, "drill") for _ in range(args.workers * 2)]
        tokens = []
        for c in warm:
            c.login()
            tokens.append(c.upload_form()[0])
        uploads_in_parallel(warm, pngs, models, tokens)
        print(f"  warm-up: {time.perf_counter() - t:.1f} s (model loading in each worker, not counted)")

        stats = Stats()
        made: dict[str, list[str]] = {u: [] for u in users}
        start = time.time()
        stop_at = start + args.duration
        threads = [threading.Thread(target=client_loop, args=(server.base, u, pngs, models, stop_at, stats, made))
                   for u in users[:args.clients]]
        for th in threads:
            th.start()
        for th in threads:
            th.join(args.duration + REQUEST_TIMEOUT + 60)
        elapsed = time.time() - start

        # integrity: every successful upload recorded exactly once
        per_user_db = dict(db_rows(db_path, "SELECT u.username, COUNT(r.id) FROM users u LEFT JOIN runs r "
                                            "ON r.user_id = u.id GROUP BY u.username"))
        mismatched = [u for u in users[:args.clients] if per_user_db.get(u, 0) != len(made[u])]
        all_ids = [i for u in users[:args.clients] for i in made[u]]
        statuses = dict(db_rows(db_path, "SELECT public_id, status FROM runs"))
        not_done = [i for i in all_ids if statuses.get(i) != "done"]
        missing_files = [i for i in all_ids if not (results / i / "input.png").exists()]
        uploads = len(all_ids)
        audit_uploads = db_rows(db_path, "SELECT COUNT(*) FROM audit_events WHERE action='upload' AND outcome='ok' "
                                         "AND username LIKE 'load%'")[0][0]

        print()
        print(f"Load: {args.clients} clients x (log in -> upload -> result -> history -> log out), "
              f"{elapsed:.0f} s, gunicorn {args.workers} threaded workers (gunicorn.conf.py), {os.cpu_count()} CPU cores")
        print(f"{'step':<10}{'count':>7}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
        for step in ("login", "upload", "result", "history", "logout"):
            v = stats.latency.get(step, [])
            if v:
                print(f"{step:<10}{len(v):>7}{pct(v, 50) * 1000:>10.0f}{pct(v, 95) * 1000:>10.0f}{max(v) * 1000:>10.0f}")
        print(f"requests: {stats.requests} ({stats.requests / elapsed:.1f}/s); uploads: {uploads} "
              f"({uploads / elapsed:.2f}/s, {uploads / elapsed * 60:.0f}/min); "
              f"HTTP statuses: {dict(sorted(stats.statuses.items()))}")
        checks = [
            ("no 5xx responses", not stats.server_errors, f"{len(stats.server_errors)} server errors"),
            ("no client-side errors", not stats.errors, f"{len(stats.errors)}: {stats.errors[:3]}"),
            ("each upload recorded exactly once (runs per user = uploads made)", not mismatched and
             len(set(all_ids)) == len(all_ids), f"{len(mismatched)} users differ, {len(all_ids) - len(set(all_ids))} duplicate ids"),
            ("every run done with its files", not not_done and not missing_files,
             f"{len(not_done)} not done, {len(missing_files)} without files"),
            ("every upload audited", audit_uploads == uploads, f"{audit_uploads} audit rows for {uploads} uploads"),
        ]
        for name, ok, detail in checks:
            failures += not ok
            print(f"  [{'ok' if ok else 'FAIL'}] {name}" + ("" if ok else f": {detail}"))

        if not args.skip_faults:
            drills = []
            drills += drill_locked_db(server, db_path, results, pngs, models, "drill")
            drills.append(drill_damaged_model(server, db_path, models_dir, clss[0], pngs, models, "drill"))
            drills.append(drill_kill_worker(server, env, db_path, results, pidlog, pngs, models, "drill"))
            server.stop()
            drills.append(drill_full_disk(make_server, env, work, db_path, pngs, models, "drill"))
            print()
            print("Fault drills")
            print(f"{'drill':<46}{'result':<8}observed")
            for d in drills:
                label = "skipped" if d.get("skipped") else ("ok" if d["passed"] else "FAIL")
                failures += not d["passed"]
                print(f"{d['drill']:<46}{label:<8}{d['observed']}")
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("all checks passed" if not failures else f"{failures} check(s) failed")
    print("measured: latency per step as the client sees it (queueing included), on this machine's CPU only; "
          "rerun: .venv/bin/python benchmarks/load_test.py --duration 120")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
