"""Site settings an administrator changes at run time, each over its configured default."""
from __future__ import annotations

from flask import current_app

from database import get_setting, set_setting

SIGNUP_OPEN = "signup_open"     # the settings row; "1" open, "0" closed


def signup_open() -> bool:
    """The administrator's setting when there is one, else the configured default (SIGNUP_OPEN)."""
    value = get_setting(SIGNUP_OPEN)
    if value is None:
        return bool(current_app.config.get("SIGNUP_OPEN", True))
    return value == "1"


def set_signup_open(wanted: bool, user_id: int | None) -> None:
    """Record the administrator's choice (committed by the caller)."""
    set_setting(SIGNUP_OPEN, "1" if wanted else "0", user_id)
