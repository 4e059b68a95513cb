"""Flask-Login: the login manager and how a session cookie maps back to a user."""
from __future__ import annotations

from flask import Flask
from flask_login import LoginManager

from database import User, db

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please log in to continue."
login_manager.login_message_category = "info"
login_manager.session_protection = "strong"


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


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
