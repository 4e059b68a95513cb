"""The error every step of reading an upload raises for a file the user can fix, and how its sizes read."""
from __future__ import annotations

from typing import Any


class ImageReadError(ValueError):
    """A user-facing rejection.

    ``message`` is a clear sentence for the form; ``status`` is the HTTP status
    to answer with: 400 corrupt/empty/bad, 413 too large, 415 unsupported type.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def rounded_size(n_bytes: Any) -> str:
    """A size for people, in powers of 1024 as the limits are set: 512 B, 12.0 KiB, 340.5 MiB, 1.2 GiB."""
    if n_bytes is None:
        return "n/a"
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def size_text(n_bytes: int) -> str:
    """A size as users read it, rounded and exact: "65.2 MiB (68,369,408 bytes)". The exact count keeps an
    upload just over a limit from reading the same as the limit ("64 MB; the limit is 64 MB")."""
    n_bytes = int(n_bytes)
    if abs(n_bytes) < 2**10:
        return f"{n_bytes:,} bytes"
    return f"{rounded_size(n_bytes)} ({n_bytes:,} bytes)"
