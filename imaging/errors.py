"""The error every step of reading an upload raises for a file the user can fix."""
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
