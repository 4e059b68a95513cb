"""Throw-away PostgreSQL, Redis and Orthanc for the tests: started on loopback in a temporary folder, stopped after.

    python -m ops.services -- python -m pytest -q -m services

Starts what is installed (Debian's `postgresql`, `redis-server`, `orthanc` and `orthanc-dicomweb` packages;
`.ci/run` installs them when they are missing), puts their URLs in the environment of the command
(JOINTSCAN_TEST_POSTGRES_URL, JOINTSCAN_TEST_REDIS_URL, JOINTSCAN_TEST_ORTHANC_URL with
JOINTSCAN_TEST_ORTHANC_AUTH as "user:password"), runs it, stops the servers and removes their data, and exits with the
command's status. A server that is not installed is reported and left out; the tests that need it skip
and say so. The PostgreSQL cluster trusts local connections from its own user only: it listens on
127.0.0.1 and a socket in the temporary folder, and lives as long as the command.
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

USER = "jointscan"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian keeps them versioned), or one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    # PostgreSQL refuses to run as root: as root, the cluster belongs to the packages' `postgres` user.
    return ["runuser", "-u", owner, "--", *cmd] if owner else cmd


@contextmanager
def postgres(root: Path) -> Iterator[str]:
    """A running cluster; yields the URL of its maintenance database (tests create their own)."""
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian: postgresql)")
    data, port = root / "pgdata", free_port()
    data.mkdir()
    owner = "postgres" if os.geteuid() == 0 else None
    if owner:
        shutil.chown(root, owner)
        shutil.chown(data, owner)
    subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                              "--encoding=UTF8", "--no-sync"], owner), check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "pg.log"),
                              "-w", "-t", "60", "start"], owner), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], owner),
                       capture_output=True)


@contextmanager
def redis(root: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("Redis is not installed (Debian: redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(20)


ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@contextmanager
def orthanc(root: Path) -> Iterator[str]:
    """An Orthanc PACS with its DICOMweb plugin, answering on loopback only and to one user; yields
    "URL user:password" (its DICOMweb root is URL/dicom-web)."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if binary is None or not Path(ORTHANC_DICOMWEB_PLUGIN).exists():
        raise FileNotFoundError("Orthanc with DICOMweb is not installed (Debian: orthanc orthanc-dicomweb)")
    port, password = free_port(), secrets.token_hex(12)
    config = {"Name": "JointScanTestPACS", "StorageDirectory": str(root / "storage"),
              "IndexDirectory": str(root / "index"), "HttpPort": port, "DicomPort": free_port(),
              "DicomAet": "JSTESTPACS", "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
              "RegisteredUsers": {"jointscan": password}, "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
              "StableAge": 1, "HttpCompressionEnabled": False, "LogExportedResources": False}
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        if proc.poll() is not None:
            raise subprocess.CalledProcessError(proc.returncode, binary, stderr=(root / "orthanc.log").read_bytes())
        yield f"http://127.0.0.1:{port} jointscan:{password}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def started(root: Path) -> Iterator[dict[str, str]]:
    """Every installed server, each in a folder of its own under `root`: {environment key: URL}. One that is
    not installed, or does not start, is reported and left out."""
    os.chmod(root, 0o755)       # the cluster's owner (postgres, when run as root) works inside it
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        for name, start, key in (("PostgreSQL", postgres, "JOINTSCAN_TEST_POSTGRES_URL"),
                                 ("Redis", redis, "JOINTSCAN_TEST_REDIS_URL"),
                                 ("Orthanc", orthanc, "JOINTSCAN_TEST_ORTHANC_URL")):
            folder = root / name.lower()
            folder.mkdir()
            try:
                url = stack.enter_context(start(folder))
                if name == "Orthanc":
                    url, urls["JOINTSCAN_TEST_ORTHANC_AUTH"] = url.split(" ", 1)
                urls[key] = url
                print(f"ops.services: {name} at {urls[key]}", flush=True)
            except (FileNotFoundError, subprocess.CalledProcessError) as exc:
                detail = exc.stderr.decode(errors="replace")[-300:] if getattr(exc, "stderr", None) else exc
                print(f"ops.services: {name} not started ({detail}); its tests skip", flush=True)
        yield urls


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print(__doc__.splitlines()[2].strip())
        return 2
    root = Path(tempfile.mkdtemp(prefix="jointscan-services-"))
    try:
        with started(root) as urls:
            return subprocess.run(argv, env={**os.environ, **urls}).returncode
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
