"""Slow clients cannot stop the app: a dribbled request body ends with 408 within seconds and frees its
thread (web/slow_clients.py), gunicorn's threaded workers keep answering /healthz meanwhile, and the nginx
configuration of the deployment is valid and matches the app's limits."""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from web.slow_clients import BufferedBody

REPO = Path(__file__).resolve().parent.parent


class Dribble(io.RawIOBase):
    """A request body that arrives `per_read` bytes at a time, `pause` seconds apart."""

    def __init__(self, total: int, per_read: int = 1, pause: float = 0.05):
        self.left, self.per_read, self.pause = total, per_read, pause

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        time.sleep(self.pause)
        k = min(self.per_read, self.left, n if n and n > 0 else self.per_read)
        self.left -= k
        return b"x" * k


def call(middleware, body, length: int) -> tuple[str, bytes, dict]:
    seen: dict = {}

    def app(environ, start_response):
        seen["body"] = environ["wsgi.input"].read()
        seen["length"] = environ["CONTENT_LENGTH"]
        start_response("200 OK", [])
        return [b"ok"]

    status = {}
    out = b"".join(middleware(app)({"CONTENT_LENGTH": str(length), "wsgi.input": body},
                                   lambda s, h: status.setdefault("s", s)))
    return status["s"], out, seen


def test_a_body_below_the_minimum_rate_gets_408_and_never_reaches_the_app():
    slow = lambda app: BufferedBody(app, max_bytes=10**6, min_rate=50_000, grace_s=0.3)  # noqa: E731
    t0 = time.monotonic()
    status, out, seen = call(slow, Dribble(10**5), 10**5)
    assert status.startswith("408") and b"too slowly" in out and not seen
    assert time.monotonic() - t0 < 3


def test_a_body_at_speed_reaches_the_app_whole_and_buffered():
    fast = lambda app: BufferedBody(app, max_bytes=10**6, min_rate=50_000, grace_s=0.3)  # noqa: E731
    status, out, seen = call(fast, io.BytesIO(b"a" * 300_000), 300_000)
    assert status.startswith("200") and seen["body"] == b"a" * 300_000 and seen["length"] == "300000"


def test_a_body_over_the_limit_is_left_to_the_app_unread():
    status, _, seen = call(lambda app: BufferedBody(app, max_bytes=10), Dribble(10**6, pause=10), 10**6)
    assert status.startswith("200") and seen["body"] == b"x"     # the app's own 413 never reads it all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slow_post(port: int, path: str, stop: threading.Event, outcome: list) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                  "Content-Length: 1000000\r\n\r\n".encode())
        s.settimeout(0.5)
        while not stop.is_set():
            try:
                s.sendall(b"a")
                data = s.recv(200)
                if data:
                    outcome.append(data.split(b"\r\n", 1)[0].decode())
                    return
            except socket.timeout:
                continue
            except OSError:
                outcome.append("closed")
                return


def test_gunicorn_keeps_answering_while_slow_clients_dribble(tmp_path):
    """Six slow uploads on a server of 2 workers x 8 threads (with sync workers, two stopped it): /healthz
    answers within a second throughout, and each slow one ends with 408 after the grace period."""
    port = _free_port()
    env = {**os.environ, "JOINTSCAN_INSTANCE_PATH": str(tmp_path), "PORT": str(port), "WORKERS": "2",
           "THREADS": "8", "JOINTSCAN_BODY_GRACE_S": "1", "JOINTSCAN_BODY_MIN_RATE": "20000",
"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "prepare"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=REPO,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    stop, outcomes, threads = threading.Event(), [], []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        threads = [threading.Thread(target=_slow_post, args=(port, "/login", stop, outcomes)) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        latencies = []
        for _ in range(8):
            t0 = time.monotonic()
            assert requests.get(base + "/healthz", timeout=5).status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.4)
        assert max(latencies) < 1.0, latencies
        for t in threads:
            t.join(15)
        assert len(outcomes) == 6 and all("408" in o for o in outcomes), outcomes
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        server.stderr.close()


NGINX = shutil.which("nginx")


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: nginx-light)")
def test_the_deployments_nginx_configuration_is_valid_and_matches_the_app(tmp_path):
    from config import Config

    conf = (REPO / "ops" / "nginx" / "jointscan.conf").read_text()
    body_mb = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1))
    assert body_mb * 2**20 >= Config.MAX_UPLOAD_BYTES + 2**20      # the app's MAX_CONTENT_LENGTH gets through
    assert int(re.search(r"proxy_read_timeout (\d+)s;", conf).group(1)) > Config.WORKER_TIMEOUT_S
    assert "proxy_request_buffering on;" in conf
    # The upstream's name resolves inside compose only; the syntax check needs an address.
    (tmp_path / "site.conf").write_text(conf.replace("server web:8000;", "server 127.0.0.1:9;"))
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                                         f"events {{}}\nhttp {{\n include {tmp_path}/site.conf;\n}}\n")
    result = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
