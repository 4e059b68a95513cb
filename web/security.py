"""Hardening shared by the blueprints: password policy, roles, login throttling, cookies over HTTPS.

- Passwords: 12 to 256 characters, not one of the common passwords shipped in
  web/data/common_passwords.txt (compared in lower case, with and without
  spaces), not containing the username, not one character class repeated.
- Roles: `role_required("admin")` answers 403 to a signed-in user of another role.
- Throttling: Flask-Limiter counts failed logins per account and per client
  address (in-process memory by default, so each gunicorn worker counts on its
  own; set JOINTSCAN_RATELIMIT_STORAGE_URI=redis://... to share the counts).
- Cookies: the session cookie is Secure when configured, and whenever the
  request itself came over HTTPS (X-Forwarded-Proto is trusted only when
  JOINTSCAN_PROXY_FIX_HOPS is set).
- Response headers: a strict Content-Security-Policy and friends on every
  response, HSTS over HTTPS, `Cache-Control: no-store` where a view asked for it.
"""
from __future__ import annotations

import functools
import math
import re
import time
from pathlib import Path

from flask import Flask, abort, current_app, g, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse_many
from flask_login import current_user
from werkzeug.middleware.proxy_fix import ProxyFix
from wtforms.validators import ValidationError

from web.login import login_manager

MIN_PASSWORD = 12
MAX_PASSWORD = 256
COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent / "data" / "common_passwords.txt"
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


# -- password policy ----------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


def password_problem(password: str | None, username: str | None = None) -> str | None:
    """None when the password meets the policy, else a sentence saying what is wrong."""
    password = password or ""
    if len(password) < MIN_PASSWORD:
        return f"Use at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"Use at most {MAX_PASSWORD} characters."
    lowered = password.lower()
    squeezed = re.sub(r"\s+", "", lowered)
    common = common_passwords()
    if lowered in common or squeezed in common:
        return "This password is one of the most common passwords. Choose another one."
    if username and len(username) >= 3 and username.lower() in lowered:
        return "The password must not contain the username."
    if len(set(squeezed)) < 4:
        return "The password repeats too few different characters. Choose a longer, varied one."
    return None


class PasswordPolicy:
    """WTForms validator; `username_field` names the form field holding the username (if any)."""

    def __init__(self, username_field: str | None = None, username_attr: str | None = None):
        self.username_field = username_field
        self.username_attr = username_attr

    def __call__(self, form, field):
        username = None
        if self.username_field and self.username_field in form:
            username = form[self.username_field].data
        elif self.username_attr:
            username = getattr(form, self.username_attr, None)
        problem = password_problem(field.data, username)
        if problem:
            raise ValidationError(problem)


# -- roles ----------------------------------------------------------------------------
def role_required(*roles: str):
    """Signed in (else the login redirect) and of one of `roles` (else 403)."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorator


# -- login throttling ----------------------------------------------------------------
def login_account_key() -> str:
    """The account a login or signup POST names (lower case), so a lockout follows the account."""
    name = (request.form.get("username") or "").strip().lower()[:80]
    return f"account:{name}"


def login_address_key() -> str:
    return f"address:{get_remote_address()}"


def login_failed(response) -> bool:
    """Only failed logins count (a 401 from the login view)."""
    return response.status_code == 401


def account_limits() -> str:
    return current_app.config["LOGIN_LIMITS_PER_ACCOUNT"]


def address_limits() -> str:
    return current_app.config["LOGIN_LIMITS_PER_ADDRESS"]


def signup_limits() -> str:
    return current_app.config["SIGNUP_LIMITS_PER_ADDRESS"]


# -- analyses per user and per address ---------------------------------------------
def analysis_retry_after(user_id: int) -> int | None:
    """Count one analysis for the user and the client address; None when it is within both limits
    (ANALYSIS_LIMITS_PER_USER, ANALYSIS_LIMITS_PER_ADDRESS), else the seconds until it would be.

    Checked in the views, after authentication (a bearer token names its user only then), on the
    limiter's own storage, so the counts are those every worker shares when the limiter's are.
    """
    strategy = current_app.extensions["jointscan.limiter"].limiter
    keyed = [(item, f"user:{user_id}") for item in parse_many(current_app.config["ANALYSIS_LIMITS_PER_USER"])]
    keyed += [(item, f"address:{get_remote_address()}")
              for item in parse_many(current_app.config["ANALYSIS_LIMITS_PER_ADDRESS"])]
    waits = []
    for item, key in keyed:
        if not strategy.test(item, "analysis", key):
            reset = strategy.get_window_stats(item, "analysis", key).reset_time
            waits.append(max(1, math.ceil(reset - time.time())))
    if waits:
        return max(waits)
    for item, key in keyed:
        strategy.hit(item, "analysis", key)
    return None


def too_many_analyses(retry_after: int) -> str:
    return (f"Too many analyses in a short time: try again in {retry_after} s. The limits keep the server "
            "responsive for everyone.")


# -- cookies over HTTPS ---------------------------------------------------------------
class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, Secure also whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(super().get_cookie_secure(app) or (has_request_context() and request.is_secure))


def install_rate_limits(app: Flask) -> Limiter:
    """One limiter per app (Flask-Limiter keeps per-instance state), wrapped around the views it guards.

    Called after the blueprints are registered. Failed logins are counted per account and per
    address; sign-up attempts per address.
    """
    limiter = Limiter(key_func=get_remote_address, app=app, headers_enabled=True, strategy="moving-window",
                      storage_uri=app.config.get("RATELIMIT_STORAGE_URI") or "memory://")
    app.extensions["jointscan.limiter"] = limiter
    login = app.view_functions["auth.login"]
    login = limiter.limit(address_limits, key_func=login_address_key, methods=["POST"],
                          deduct_when=login_failed, scope="login-address")(login)
    login = limiter.limit(account_limits, key_func=login_account_key, methods=["POST"],
                          deduct_when=login_failed, scope="login-account")(login)
    app.view_functions["auth.login"] = login
    app.view_functions["auth.signup"] = limiter.limit(signup_limits, key_func=login_address_key, methods=["POST"],
                                                      scope="signup-address")(app.view_functions["auth.signup"])
    return limiter


def init_app(app: Flask) -> None:
    app.session_interface = SessionInterface()
    hops = int(app.config.get("PROXY_FIX_HOPS") or 0)
    if hops > 0:
        # Trust X-Forwarded-For/-Proto/-Host from exactly `hops` proxies in front of the app.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)


def install_response_headers(app: Flask) -> None:
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
