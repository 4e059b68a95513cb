"""Flask-Login: the login manager, how a session cookie maps back to a user, and how long it may.

A session ends after SESSION_IDLE_MINUTES without a request and SESSION_MAX_HOURS after the login,
whichever comes first. The cookie is signed, so the two times it carries cannot be altered; they
are checked before every request. A session without them (issued before this rule) has ended.
"""
from __future__ import annotations

import time

from flask import Flask, current_app, flash, request, session
from flask_login import LoginManager, logout_user

from database import User, db

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please log in to continue."
login_manager.login_message_category = "info"
login_manager.session_protection = "strong"

STARTED, SEEN = "_started", "_seen"      # session keys: epoch seconds of the login and of the last request
SEEN_RESOLUTION_S = 60                   # the last request is noted to the minute: not a new cookie per request
SESSION_ENDED = "Your session ended after a time without activity or at its time limit. Please log in again."


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """The session holds "id:session_version"; a bumped version signs that session out."""
    try:
        raw_id, raw_version = user_id.split(":", 1)
        uid, version = int(raw_id), int(raw_version)
    except (AttributeError, ValueError):
        return None
    user = db.session.get(User, uid)
    if user is None or user.session_version != version or user.disabled:
        return None
    return user


def stamp_new_session() -> None:
    """Called at login: the session's lifetime and idle time start now."""
    session[STARTED] = session[SEEN] = int(time.time())


def session_expired(now: float) -> bool:
    started, seen = session.get(STARTED), session.get(SEEN)
    if not isinstance(started, int) or not isinstance(seen, int):
        return True
    cfg = current_app.config
    return now - seen > cfg["SESSION_IDLE_MINUTES"] * 60 or now - started > cfg["SESSION_MAX_HOURS"] * 3600


def end_expired_session() -> None:
    """Before every request: sign out a session that was idle or lived too long; else note this request."""
    if "_user_id" not in session:
        return
    now = time.time()
    if session_expired(now):
        logout_user()
        session.clear()
        if not request.path.startswith("/api/"):
            flash(SESSION_ENDED, "info")
    elif now - session[SEEN] >= SEEN_RESOLUTION_S:
        session[SEEN] = int(now)


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    app.before_request(end_expired_session)
