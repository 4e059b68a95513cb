"""The error every step of reading an upload raises for a file the user can fix, and how its sizes read."""
from __future__ import annotations


class ImageReadError(ValueError):
    """A user-facing rejection.

    ``message`` is a clear sentence for the form; ``status`` is the HTTP status
    to answer with: 400 corrupt/empty/bad, 413 too large, 415 unsupported type.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def size_text(n_bytes: int) -> str:
    """A size as users read it, rounded and exact: "65.2 MiB (68,369,408 bytes)". The exact count keeps an
    upload just over a limit from reading the same as the limit ("64 MB; the limit is 64 MB")."""
    n_bytes = int(n_bytes)
    if abs(n_bytes) < 2**10:
        return f"{n_bytes:,} bytes"
    unit, scale = next((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if abs(n_bytes) >= s)
    return f"{n_bytes / scale:.1f} {unit} ({n_bytes:,} bytes)"
