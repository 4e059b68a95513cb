"""Error responses: an HTML page for the browser, `{"error": {...}}` for the API, for every HTTP
error and for a database that stayed busy too long."""
from __future__ import annotations

import logging

from flask import Flask, g, jsonify, render_template, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from database import User, db
from imaging.errors import size_text
from web.audit import record

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


def is_api_request() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def json_error(status: int, message: str, headers: dict | None = None, details: dict | None = None):
    """`{"error": {"status", "message", **details}}`; `details` add machine-readable facts (what was recognised)."""
    response = jsonify(error={"status": status, "message": message, **(details or {})})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error_text(exc: HTTPException) -> tuple[str, str]:
    """(title, text) of the page for this error."""
    status = exc.code or 500
    title, text = ERROR_TEXT.get(status, (exc.name, exc.description or ""))
    if status == 413:
        limit = g.get("max_upload")
        sent = request.content_length
        text = ("The upload is larger than the server accepts"
                + (f" ({size_text(sent)} with the form)" if sent else "")
                + (f"; the limit is {limit} per file." if limit else "."))
    return title, text


def handle_http_error(exc: HTTPException):
    status = exc.code or 500
    title, text = error_text(exc)
    if status == 429 and request.endpoint == "auth.login":
        _audit_throttled_login()
    passed = {k: v for k, v in exc.get_headers() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
    if is_api_request():
        message = text if status in (404, 413, 429, 500) else (exc.description or text)
        return json_error(status, message, passed)
    if status == 400 and getattr(exc, "description", "").startswith("The CSRF"):
        text = "The form expired or was not sent from this site. Reload the page and try again."
    # A throttled login brings its own Retry-After; a throttled sign-up gets it, and the X-RateLimit-*
    # headers, from Flask-Limiter's after_request.
    return render_template("error.html", status=status, title=title, text=text), status, passed


def _audit_throttled_login() -> None:
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


def init_app(app: Flask) -> None:
    # HTTPException covers 404/413/...; an unhandled exception reaches it as InternalServerError
    # (outside TESTING/DEBUG), whose page never echoes the exception.
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(OperationalError, _database_busy)

    @app.before_request
    def _limits_for_messages():
        g.max_upload = size_text(app.config["MAX_UPLOAD_BYTES"])
