"""Replay the outside attack of issue #16 against a real server and print held / not held for each finding.

    .venv/bin/python benchmarks/attack_replay.py                  # every finding, then 60 s of load
    .venv/bin/python benchmarks/attack_replay.py --load-seconds 0 # the findings only

The server is the project's own: gunicorn with gunicorn.conf.py (2 threaded workers), on a temporary
instance folder, with the committed models, started the way `make run` starts it, on 127.0.0.1 only. It
trusts one proxy hop (JOINTSCAN_PROXY_FIX_HOPS=1) so that the replay can speak from several client
addresses (X-Forwarded-For); a job's holder beats every second and is taken for dead after 5 s
(JOB_HEARTBEAT_S, JOB_STALE_AFTER_S), swept every second, so that the killed-worker finding settles within
the replay. Each finding:

1. slow clients: 20 connections send POST /login and /api/v1/analyze with Content-Length: 1000000 and then
   a byte a second; /healthz must keep answering in under 1 s (sampled for 15 s).
2. limits: analyses beyond the per-user limit get 429 with Retry-After; a user at their storage quota (set
   by the admin on the admin page) gets a refusal; a 36-megapixel PNG is shrunk to the task's limit.
3. tokens: a token made before a password change, and one made before "log out everywhere", are refused.
4. login throttling across workers: 30 wrong passwords for one account from one address give exactly 5
   401s before the 429s; the right password from another address still logs in, from the attacker's not.
5. DICOM free text: names and numbers in every text field of an uploaded DICOM appear nowhere afterwards
   (the database file, the result folder, the server log).
6. huge parameters: page, id and date parameters of 20 digits, negative or malformed: never a 500.
7. a worker SIGKILLed mid-analysis: the other worker's sweep takes its run over, which ends done, once, on
   its second attempt (never stays running, never two results) while the server keeps running.
8. a deflated DICOM bomb (a few hundred kB inflating to 320 MB): refused, and the workers' peak memory
   grows by less than 100 MB.
9. then the load of benchmarks/load_test.py (8 clients) for --load-seconds, its figures as before.
Exit status 0 when every finding held.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402

from load_test import PASSWORD, Server, create_users, flask_cli, free_port, phantom_pngs  # noqa: E402

CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
TOKEN_RE = re.compile(r"(js_[A-Za-z0-9_\-]{20,})")
PHI = ("Maria Gonzalez", "MRN 5544", "19700101", "Dr Hibbert", "St Elsewhere", "Jane Roe")
HOOK = """
import os, runpy
globals().update({k: v for k, v in runpy.run_path(%r).items() if not k.startswith("__")})
PIDLOG = os.environ["JOINTSCAN_REPLAY_PIDLOG"]

def pre_request(worker, req):
    if req.method == "POST" and req.path == "/api/v1/analyze":
        with open(PIDLOG, "a") as fh:
            fh.write(f"{worker.pid}\\n")
""" % str(ROOT / "gunicorn.conf.py")


class Replay:
    def __init__(self, work: Path):
        self.work = work
        self.instance = work / "instance"
        self.instance.mkdir()
        self.pidlog = work / "pids.log"
        self.pidlog.write_text("")
        conf = work / "gunicorn_replay.py"
        conf.write_text(HOOK)
        self.env = {**os.environ, "JOINTSCAN_INSTANCE_PATH": str(self.instance), "SECRET_KEY": secrets.token_hex(32),
                    "JOINTSCAN_ENV_NAME": "production", "FLASK_APP": "wsgi", "TF_CPP_MIN_LOG_LEVEL": "2",
                    "JOINTSCAN_SIGNUP_OPEN": "0", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
                    "JOINTSCAN_PROXY_FIX_HOPS": "1", "JOINTSCAN_JOB_HEARTBEAT_S": "1", "JOINTSCAN_JOB_STALE_AFTER_S": "5",
                    "JOINTSCAN_SWEEP_EVERY_S": "1", "JOINTSCAN_REPLAY_PIDLOG": str(self.pidlog)}
        self.env.pop("JOINTSCAN_RESULTS_DIR", None)
        self.env.pop("JOINTSCAN_MODELS_DIR", None)
        flask_cli(self.env, "prepare")
        # One user per finding: each finding starts from a user the others have not rate-limited.
        create_users(self.env, ["alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank"])
        flask_cli(self.env, "create-user", "root", "--role", "admin", "--password", PASSWORD)
        self.log = work / "server.log"
        self.server = Server(self.env, free_port(), 2, self.log, conf)
        self.server.start()
        self.base = self.server.base
        self.results: list[tuple[str, bool, str]] = []

    # -- helpers ------------------------------------------------------------------------------------
    def session(self, user: str | None, address: str) -> requests.Session:
        http = requests.Session()
        http.headers["X-Forwarded-For"] = address
        if user:
            token = self.csrf(http, "/login")
            r = http.post(self.base + "/login", data={"username": user, "password": PASSWORD, "csrf_token": token},
                          allow_redirects=False, timeout=30)
            if r.status_code != 302:
                raise RuntimeError(f"login of {user} failed: HTTP {r.status_code}")
        return http

    def csrf(self, http: requests.Session, path: str) -> str:
        match = CSRF_RE.search(http.get(self.base + path, timeout=30).text)
        if not match:
            raise RuntimeError(f"no CSRF token on {path}")
        return match.group(1)

    def token(self, http: requests.Session, name: str, password: str = PASSWORD) -> str | None:
        """A new API token from the account page (the form asks for the current password)."""
        csrf = self.csrf(http, "/account/")
        r = http.post(self.base + "/account/tokens", data={"csrf_token": csrf, "name": name, "password": password},
                      timeout=30)
        match = TOKEN_RE.search(r.text)
        return match.group(1) if match else None

    def analyze(self, token: str, data: bytes, address: str, task: str = "sacroiliac", **fields) -> requests.Response:
        return requests.post(self.base + "/api/v1/analyze?wait=true", headers={"Authorization": f"Bearer {token}",
                                                                      "X-Forwarded-For": address},
                             data={"task": task, "include_heatmaps": "false", **fields},
                             files={"file": ("scan", data)}, timeout=120)

    def record(self, finding: str, held: bool, observed: str) -> None:
        self.results.append((finding, held, observed))
        print(f"- {finding}: {'HELD' if held else 'NOT HELD'} ({observed})", flush=True)

    def worker_peaks(self) -> dict[int, int]:
        peaks = {}
        for pid in self.server.worker_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                peaks[pid] = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
            except (OSError, AttributeError):
                continue
        return peaks

    # -- the findings ---------------------------------------------------------------------------------
    def slow_clients(self) -> None:
        stop, outcomes = threading.Event(), []

        def dribble(path: str) -> None:
            try:
                with socket.create_connection(("127.0.0.1", self.server.port), timeout=60) as s:
                    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                              "\r\nContent-Length: 1000000\r\n\r\n".encode())
                    s.settimeout(1.0)
                    while not stop.is_set():
                        try:
                            s.sendall(b"a")
                            data = s.recv(100)
                            if data:
                                outcomes.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                                return
                        except socket.timeout:
                            continue
            except OSError as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=dribble, args=("/login" if i % 2 else "/api/v1/analyze?wait=true",), daemon=True)
                   for i in range(20)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        latencies, t_end = [], time.time() + 15
        while time.time() < t_end:
            t0 = time.monotonic()
            try:
                ok = requests.get(self.base + "/healthz", timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            latencies.append(time.monotonic() - t0 if ok else 10.0)
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(5)
        cut = sum("408" in o for o in outcomes)
        self.record("1. 20 slow clients, /healthz under 1 s", max(latencies) < 1.0,
                    f"/healthz max {1000 * max(latencies):.0f} ms, median {1000 * float(np.median(latencies)):.0f} ms "
                    f"over {len(latencies)} samples; {cut} of 20 slow bodies ended with 408")

    def limits(self, pngs: list[bytes]) -> None:
        alice = self.token(self.session("alice", "10.0.0.2"), "limits")
        statuses, retry = [], None
        for i in range(30):
            r = self.analyze(alice, pngs[i % len(pngs)], "10.0.0.2")
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry = r.headers.get("Retry-After")
                break
        self.record("2a. analyses per user: 429 with Retry-After", statuses[-1] == 429 and bool(retry),
                    f"{len(statuses) - 1} analyses accepted, then HTTP {statuses[-1]} with Retry-After {retry}")
        admin = self.session("root", "10.0.0.3")
        users_page = admin.get(self.base + "/admin/users", timeout=30).text
        bob_id = re.search(r"<strong>bob</strong>.*?user:(\d+)", users_page, re.S).group(1)
        csrf = self.csrf(admin, "/admin/users")
        admin.post(self.base + f"/admin/users/{bob_id}/quota", data={"csrf_token": csrf, "quota_mb": "1"}, timeout=30)
        bob = self.token(self.session("bob", "10.0.0.4"), "quota")
        seen = [self.analyze(bob, pngs[0], "10.0.0.4").status_code for _ in range(4)]
        last = self.analyze(bob, pngs[1], "10.0.0.4")
        quota_held = last.status_code == 403 and "quota" in last.text
        self.record("2b. storage quota set by the admin", quota_held,
                    f"bob at a 1 MB quota: HTTP {seen} then {last.status_code}")
        big = cv2.resize(cv2.imdecode(np.frombuffer(pngs[2], np.uint8), cv2.IMREAD_GRAYSCALE), (6000, 6000))
        ok, png = cv2.imencode(".png", big)
        carol = self.token(self.session("carol", "10.0.0.5"), "big")
        t0 = time.monotonic()
        r = self.analyze(carol, png.tobytes(), "10.0.0.5")
        seconds = time.monotonic() - t0
        body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
        shown = (body.get("input") or {})
        self.record("2c. a 36-megapixel PNG is shrunk to the task's pixel limit", r.status_code == 201 and
                    (shown.get("width", 0) * shown.get("height", 0)) <= 4_000_000,
                    f"HTTP {r.status_code} in {seconds:.1f} s; {len(png.tobytes()) // 1024} KB upload analysed at "
                    f"{shown.get('width')}x{shown.get('height')}")

    def tokens(self, pngs: list[bytes]) -> None:
        http = self.session("dave", "10.0.0.6")
        before_password = self.token(http, "before password")
        new_password = PASSWORD + " changed"
        csrf = self.csrf(http, "/account/")
        http.post(self.base + "/account/password", data={"csrf_token": csrf, "current": PASSWORD, "new": new_password,
                                                         "confirm": new_password}, timeout=30)
        after = requests.get(self.base + "/api/v1/tasks", headers={"Authorization": f"Bearer {before_password}"},
                             timeout=30).status_code if before_password else None
        http2 = requests.Session()
        http2.headers["X-Forwarded-For"] = "10.0.0.7"
        csrf = self.csrf(http2, "/login")
        http2.post(self.base + "/login", data={"username": "dave", "password": new_password, "csrf_token": csrf},
                   timeout=30)
        before_everywhere = self.token(http2, "before everywhere", new_password)
        csrf = self.csrf(http2, "/account/")
        http2.post(self.base + "/account/logout-everywhere", data={"csrf_token": csrf}, timeout=30)
        after2 = requests.get(self.base + "/api/v1/tasks", headers={"Authorization": f"Bearer {before_everywhere}"},
                              timeout=30).status_code if before_everywhere else None
        self.record("3. tokens die with the password and with 'log out everywhere'", after == 401 and after2 == 401,
                    f"token made before the password change: HTTP {after}; before log-out-everywhere: HTTP {after2}"
                    + ("" if before_password and before_everywhere else "; a token could not be created"))

    def throttling(self) -> None:
        attacker = requests.Session()
        attacker.headers["X-Forwarded-For"] = "10.6.6.6"
        codes = []
        for _ in range(30):
            csrf = self.csrf(attacker, "/login")
            codes.append(attacker.post(self.base + "/login", data={"username": "erin", "password": "wrong " * 3,
                                                                   "csrf_token": csrf},
                                       allow_redirects=False, timeout=30).status_code)
        before_429 = codes.index(429) if 429 in codes else len(codes)
        friend = requests.Session()
        friend.headers["X-Forwarded-For"] = "10.0.0.8"
        csrf = self.csrf(friend, "/login")
        clean = friend.post(self.base + "/login", data={"username": "erin", "password": PASSWORD, "csrf_token": csrf},
                            allow_redirects=False, timeout=30).status_code
        csrf = self.csrf(attacker, "/login")
        dirty = attacker.post(self.base + "/login", data={"username": "erin", "password": PASSWORD, "csrf_token": csrf},
                              allow_redirects=False, timeout=30).status_code
        self.record("4. login throttling shared by the workers, lockout no weapon",
                    before_429 == 5 and clean == 302 and dirty == 429,
                    f"{before_429} 401s before the first 429; right password from a clean address HTTP {clean}, "
                    f"from the attacker's HTTP {dirty}")

    def dicom_free_text(self) -> None:
        data = phi_dicom()
        frank = self.token(self.session("frank", "10.0.0.9"), "dicom")
        r = self.analyze(frank, data, "10.0.0.9", analyse_anyway="true")
        time.sleep(0.5)
        found = []
        haystacks = [("database", (self.instance / "jointscan.sqlite").read_bytes())]
        for extra in ("jointscan.sqlite-wal",):
            if (self.instance / extra).exists():
                haystacks.append(("database log", (self.instance / extra).read_bytes()))
        haystacks += [(str(p.relative_to(self.instance)), p.read_bytes())
                      for p in (self.instance / "results").rglob("*") if p.is_file()]
        haystacks.append(("server log", self.log.read_bytes()))
        for where, blob in haystacks:
            for text in PHI:
                if text.encode() in blob or text.upper().encode() in blob:
                    found.append(f"{text!r} in {where}")
        self.record("5. DICOM free text kept nowhere", not found,
                    f"upload HTTP {r.status_code}; " + (", ".join(found[:4]) if found else
                                                         f"none of {len(PHI)} strings in {len(haystacks)} files"))

    def huge_parameters(self) -> None:
        admin = self.session("root", "10.0.0.10")
        clinician = self.session("alice", "10.0.0.11")
        huge, errors, tried = "9" * 20, [], 0
        gets = [f"/history?page={huge}", "/history?page=-1", "/history?page=abc", f"/review?page={huge}",
                f"/admin/audit?page={huge}", f"/admin/audit?user={huge}", "/admin/audit?until=9999-12-31",
                "/admin/audit?since=0000-00-00", f"/runs/{huge}", f"/knee/phenotypes/x/{huge}"]
        for path in gets:
            for http in (admin, clinician):
                tried += 1
                status = http.get(self.base + path, timeout=30).status_code
                if status >= 500:
                    errors.append(f"GET {path} {status}")
        csrf = self.csrf(admin, "/admin/users")
        for path in (f"/admin/users/{huge}/disable", f"/admin/users/{huge}/role", f"/account/tokens/{huge}/revoke",
                     "/admin/users/-1/disable", f"/admin/users/{huge}/quota"):
            tried += 1
            status = admin.post(self.base + path, data={"csrf_token": csrf, "role": "clinician"}, timeout=30).status_code
            if status >= 500:
                errors.append(f"POST {path} {status}")
        self.record("6. huge, negative and malformed parameters: no 500", not errors,
                    f"{tried} requests; " + (", ".join(errors[:4]) if errors else "no 5xx"))

    def killed_worker(self, pngs: list[bytes]) -> None:
        alice = self.token(self.session("gina", "10.0.1.2"), "kill")
        self.pidlog.write_text("")
        db = self.instance / "jointscan.sqlite"
        before = set(runs_of(db))
        outcome = {}

        def go():
            try:
                outcome["status"] = self.analyze(alice, pngs[3], "10.0.1.2",
                                                 model_ids="sij-attention-unet,sij-unet-ref,sij-dual-head,sij-cnn3-ref"
                                                 ).status_code
            except requests.RequestException as exc:
                outcome["error"] = type(exc).__name__

        th = threading.Thread(target=go)
        th.start()
        victim, run_id, deadline = None, None, time.time() + 30
        while time.time() < deadline and th.is_alive():
            running = [pid for pid, status in runs_of(db).items() if pid not in before and status == "running"]
            lines = self.pidlog.read_text().split()
            if lines and running:
                victim, run_id = int(lines[-1]), running[0]
                os.kill(victim, signal.SIGKILL)
                break
            time.sleep(0.005)
        th.join(60)
        if run_id is None:
            self.record("7. a worker killed mid-analysis", False, "could not catch an analysis in flight")
            return
        t0, status = time.time(), "running"
        while time.time() < t0 + 60 and status in ("queued", "running"):
            requests.get(self.base + "/healthz", timeout=10)
            status = runs_of(db).get(run_id)
            time.sleep(1.0)
        attempts = attempts_of(db, run_id)
        self.record("7. a worker killed mid-analysis: its run taken over, done once, server up",
                    status == "done" and attempts == 2,
                    f"client saw {outcome.get('error') or outcome.get('status')}; run running -> {status} on attempt "
                    f"{attempts}, {time.time() - t0:.0f} s after the kill, without a restart")

    def deflate_bomb(self) -> None:
        bomb = deflated_bomb(320 * 2**20)
        before = self.worker_peaks()
        alice = self.token(self.session("hank", "10.0.1.3"), "bomb")
        t0 = time.monotonic()
        r = self.analyze(alice, bomb, "10.0.1.3")
        seconds = time.monotonic() - t0
        after = self.worker_peaks()
        grown = max((after[p] - before.get(p, after[p]) for p in after), default=0)
        self.record("8. deflated DICOM bomb refused without inflating it", 400 <= r.status_code < 500 and grown < 100 * 2**20,
                    f"{len(bomb) // 1024} KB inflating to 320 MB: HTTP {r.status_code} in {seconds:.1f} s; "
                    f"workers' peak memory grew by {grown / 2**20:.0f} MB")


def runs_of(db: Path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        return dict(con.execute("SELECT public_id, status FROM runs").fetchall())


def attempts_of(db: Path, public_id: str) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        return con.execute("SELECT attempts FROM runs WHERE public_id=?", (public_id,)).fetchone()[0]


def phi_dicom() -> bytes:
    """An MR slice with names and numbers in every text field a scanner may fill."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    from training.phantoms.sacroiliac import generate_case

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Gonzalez^Maria", "MRN 5544", "19700101"
    ds.SeriesDescription = "Knee Maria Gonzalez 1970-01-01 MRN 5544"
    ds.StudyDescription = ds.ProtocolName = "SIJ Maria Gonzalez MRN 5544"
    ds.BodyPartExamined = "MARIA GONZALEZ"
    ds.ImageComments = "Jane Roe called, MRN 5544"
    ds.InstitutionName, ds.ReferringPhysicianName, ds.OperatorsName = "St Elsewhere", "Dr Hibbert", "Jane Roe"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "MARIA GONZALEZ"]
    pixels = generate_case(9100).image.astype(np.uint16) * 16
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def deflated_bomb(inflated: int) -> bytes:
    """A Deflated Explicit VR Little Endian file whose dataset inflates to `inflated` bytes of zeros."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    side = int((inflated // 2) ** 0.5)
    # The dataset by hand: Modality, Rows, Columns, BitsAllocated... then PixelData, all deflated.
    elements = (b"\x08\x00\x60\x00CS\x02\x00MR" + b"\x28\x00\x10\x00US\x02\x00" + side.to_bytes(2, "little")
                + b"\x28\x00\x11\x00US\x02\x00" + side.to_bytes(2, "little") + b"\x28\x00\x00\x01US\x02\x00\x10\x00"
                + b"\xe0\x7f\x10\x00OW\x00\x00" + (side * side * 2).to_bytes(4, "little"))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(elements)
    zeros = bytes(2**20)
    for _ in range(side * side * 2 // len(zeros)):
        deflated += compressor.compress(zeros)
    deflated += compressor.flush()
    return buf.getvalue() + deflated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-seconds", type=float, default=60.0, help="seconds of the 8-client load (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="jointscan-replay-"))
    print(f"Replaying issue #16 against gunicorn (gunicorn.conf.py, 2 threaded workers) on 127.0.0.1; work {work}",
          flush=True)
    replay = Replay(work)
    pngs = phantom_pngs(6)
    try:
        for step in (replay.slow_clients, lambda: replay.limits(pngs), lambda: replay.tokens(pngs), replay.throttling,
                     replay.dicom_free_text, replay.huge_parameters, lambda: replay.killed_worker(pngs),
                     replay.deflate_bomb):
            try:
                step()
            except Exception as exc:  # one finding's failure must not hide the others
                replay.record(getattr(step, "__name__", "a finding"), False, f"the replay itself failed: {exc!r}")
    finally:
        replay.server.stop()
    held = sum(h for _, h, _ in replay.results)
    print(f"\n{held} of {len(replay.results)} findings held.", flush=True)
    load_ok = True
    if args.load_seconds > 0:
        print(f"\n## The 8-client load ({args.load_seconds:.0f} s, benchmarks/load_test.py --skip-faults)\n", flush=True)
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_test.py"), "--duration",
                               str(args.load_seconds), "--clients", "8", "--skip-faults"], cwd=ROOT)
        load_ok = done.returncode == 0
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if held == len(replay.results) and load_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
