"""The web layer: blueprints per area, login, error pages and response headers.

`init_app(app)` is called by `app.create_app`. Web code never imports
TensorFlow: it talks to `predict`, `model_loader` and `tasks` only.
"""
from __future__ import annotations

import logging

from flask import Flask, g, jsonify, render_template, request
from flask_login import LoginManager
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from database import User, db

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please log in to continue."
login_manager.login_message_category = "info"
login_manager.session_protection = "strong"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


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


def is_api_request() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def json_error(status: int, message: str, headers: dict | None = None):
    response = jsonify(error={"status": status, "message": message})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


ERROR_TEXT = {
    400: ("Bad request", "The request could not be understood. Go back, reload the page and try again."),
    401: ("Not signed in", "Please log in to continue."),
    403: ("Forbidden", "You do not have access to this page."),
    404: ("Not found", "There is nothing here, or it belongs to someone else."),
    405: ("Method not allowed", "This page cannot be used that way."),
    413: ("File too large", "The upload is larger than the server accepts."),
    415: ("Unsupported file type", "The file type is not supported."),
    429: ("Too many attempts", "Too many attempts in a short time. Wait a few minutes and try again."),
    500: ("Something went wrong", "The server hit an internal error. Nothing was kept; please try again."),
    503: ("Unavailable", "The service is temporarily unavailable."),
}


def _handle_http_error(exc: HTTPException):
    status = exc.code or 500
    title, text = ERROR_TEXT.get(status, (exc.name, exc.description or ""))
    if status == 413:
        limit = g.get("max_upload")
        text = "The upload is larger than the server accepts" + (f" ({limit})." if limit else ".")
    if status == 429 and request.endpoint == "auth.login":
        _audit_throttled_login()
    if is_api_request():
        message = text if status in (404, 413, 429, 500) else (exc.description or text)
        passed = {k: v for k, v in exc.get_headers() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        return json_error(status, message, passed)
    if status == 413 and request.endpoint == "scans.upload":
        # A body over MAX_CONTENT_LENGTH is refused before the form is read: show it on the form.
        from web.scans import render_upload_error

        page = render_upload_error(text, 413)
        if page is not None:
            return page
    if status == 400 and getattr(exc, "description", "").startswith("The CSRF"):
        text = "The form expired or was not sent from this site. Reload the page and try again."
    # A 429 gets its Retry-After and X-RateLimit-* headers from Flask-Limiter's after_request.
    return render_template("error.html", status=status, title=title, text=text), status


def _audit_throttled_login() -> None:
    from web.audit import record

    try:
        user = User.query.filter_by(username=(request.form.get("username") or "")[:80]).first()
        record("login_failed", "throttled", user=user, resource=f"user:{user.id}" if user else None,
               detail="login throttled (too many failed attempts)")
    except Exception:  # the 429 must go out even when the database is busy
        db.session.rollback()
        logging.getLogger("jointscan.audit").exception("could not record a throttled login")


def _database_busy(exc: OperationalError):
    """A write that waited the whole busy timeout: nothing was saved; say so instead of a bare 500."""
    db.session.rollback()
    if "locked" not in str(exc.orig if hasattr(exc, "orig") else exc).lower():
        raise exc
    logging.getLogger("jointscan.web").warning("database busy on %s", request.endpoint)
    title = "The database is busy"
    text = "The database was busy for too long and nothing was saved. Please try again in a moment."
    headers = {"Retry-After": "5"}
    if is_api_request():
        return json_error(503, text, headers)
    return render_template("error.html", status=503, title=title, text=text), 503, headers


# Blueprints other modules add (each registered when its module exists), so access tests cover them.
def init_app(app: Flask) -> None:
    login_manager.init_app(app)

    from web import account, admin, api, auth, hand, history, knee, models_page, reviews, scans, security

    app.register_blueprint(auth.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(scans.bp)
    app.register_blueprint(history.bp)
    app.register_blueprint(models_page.bp)
    app.register_blueprint(hand.bp)
    app.register_blueprint(knee.bp)
    app.register_blueprint(reviews.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(api.bp)
    api.exempt_from_form_csrf(app)
    security.init_app(app)
    security.install_rate_limits(app)

    # HTTPException covers 404/413/...; an unhandled exception reaches it as InternalServerError
    # (outside TESTING/DEBUG), whose page never echoes the exception.
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(OperationalError, _database_busy)

    from web.helpers import register_template_helpers

    register_template_helpers(app)

    @app.before_request
    def _limits_for_messages():
        from web.helpers import fmt_mib

        g.max_upload = fmt_mib(app.config["MAX_UPLOAD_BYTES"])

    @app.after_request
    def _security_headers(response):
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if g.get("no_store"):
            response.headers["Cache-Control"] = "no-store"
            response.headers.pop("Expires", None)
            response.headers.pop("ETag", None)
            response.headers.pop("Last-Modified", None)
        return response
