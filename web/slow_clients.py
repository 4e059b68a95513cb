"""Slow request bodies cannot hold the server: the body is read in full, at a minimum rate, before the app runs.

A client that announces a large body and then sends a byte a second would hold the thread serving it for
as long as it likes (the CSRF check reads the form first, so even a login POST waits for the whole body),
and a few such clients hold every thread: then nothing, not even /healthz, is answered. In the
deployment (docker-compose.yml) nginx buffers every body before it reaches gunicorn, with its own
time-outs; this middleware protects the one-machine set-up (`make run`, gunicorn's threaded workers facing
clients directly) on its own, and costs nothing behind nginx, whose bodies arrive at once.

The body is read into a spooled temporary file (memory up to 1 MiB, then disk) before the app sees it.
After a grace period the client must keep up an average of `min_rate` bytes a second. A read can block
(gunicorn returns a read only once it holds the bytes asked for, and a socket read waits for the next
byte), so a watchdog thread, one per process, checks every reading request four times a second and shuts
the socket of one that falls behind for reading: its blocked read returns at once, the request ends with
408 and the thread is free. Gunicorn has no body time-out of its own, and no maintained WSGI middleware
offers one, hence this module.
"""
from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

log = logging.getLogger("jointscan.slow_clients")

# Small reads: gunicorn returns one only once it holds all the bytes asked for, and progress is counted per read.
CHUNK = 8 * 1024
SPOOL_IN_MEMORY = 2**20


class BodyTooSlow(Exception):
    pass


@dataclass(eq=False)
class _Reading:
    sock: Any                       # the client's socket (gunicorn's environ["gunicorn.socket"]), or None
    deadline_rate: float
    grace_s: float
    start: float = field(default_factory=time.monotonic)
    size: int = 0
    too_slow: bool = False

    def behind(self, now: float) -> bool:
        elapsed = now - self.start
        return elapsed > self.grace_s and self.size + CHUNK < (elapsed - self.grace_s) * self.deadline_rate


class _Watchdog:
    """One thread per process: shuts the socket of any body reading that falls behind its minimum rate."""

    def __init__(self) -> None:
        self._readings: set[_Reading] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, reading: _Reading) -> None:
        with self._lock:
            self._readings.add(reading)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="body-watchdog", daemon=True)
                self._thread.start()

    def forget(self, reading: _Reading) -> None:
        with self._lock:
            self._readings.discard(reading)

    def _run(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                overdue = [r for r in self._readings if not r.too_slow and r.behind(now)]
            for reading in overdue:
                reading.too_slow = True
                try:
                    reading.sock.shutdown(socket.SHUT_RD)   # the blocked read returns; a 408 can still be sent
                except OSError:
                    pass


WATCHDOG = _Watchdog()


class BufferedBody:
    """WSGI middleware: read the request body within time limits, then call the app with it buffered."""

    def __init__(self, app: Callable, max_bytes: int, min_rate: float = 20_000, grace_s: float = 10.0):
        self.app, self.max_bytes = app, max_bytes
        self.min_rate, self.grace_s = min_rate, grace_s

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = _content_length(environ)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if (length is None or length == 0) and not chunked:
            return self.app(environ, start_response)
        if length is not None and length > self.max_bytes:
            return self.app(environ, start_response)     # refused unread by the app's own size limit (413)
        try:
            body, size = self._read(environ, length)
        except BodyTooSlow as exc:
            log.warning("request body too slow, closed: %s", exc)
            start_response("408 Request Timeout", [("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Connection", "close")])
            return [b"The request body arrived too slowly; send it again on a faster connection.\n"]
        environ["wsgi.input"] = body
        environ["CONTENT_LENGTH"] = str(size)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _read(self, environ: dict[str, Any], length: int | None) -> tuple[Any, int]:
        stream = environ["wsgi.input"]
        reading = _Reading(environ.get("gunicorn.socket"), self.min_rate, self.grace_s)
        if reading.sock is not None:
            WATCHDOG.watch(reading)
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        try:
            while length is None or reading.size < length:
                want = CHUNK if length is None else min(CHUNK, length - reading.size)
                try:
                    chunk = stream.read(want)
                except OSError:
                    chunk = b""
                if reading.too_slow or reading.behind(time.monotonic()):
                    raise BodyTooSlow(f"{reading.size} bytes in {time.monotonic() - reading.start:.0f} s")
                if not chunk:
                    break                               # the client closed early: the app sees a short body
                body.write(chunk)
                reading.size += len(chunk)
                if reading.size > self.max_bytes:
                    break                               # chunked and too large: the app refuses it (413)
        finally:
            WATCHDOG.forget(reading)
        body.seek(0)
        return body, reading.size


def _content_length(environ: dict[str, Any]) -> int | None:
    raw = environ.get("CONTENT_LENGTH") or ""
    return int(raw) if raw.isdigit() else None
