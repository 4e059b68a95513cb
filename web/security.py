"""Hardening shared by the blueprints: password policy, roles, login throttling, cookies over HTTPS.

- Passwords: 12 to 256 characters, not one of the common passwords shipped in
  web/data/common_passwords.txt (compared in lower case, with and without
  spaces), not containing the username, not one character class repeated.
- Roles: `role_required("admin")` answers 403 to a signed-in user of another role.
- Throttling: failed logins are counted per account and per client address
  (`throttle_login`; a locked account still lets in a correct password from an
  address without failures of its own), sign-ups per address. The counts live in
  a SQLite file in the instance folder that every gunicorn worker shares
  (web/ratelimit_sqlite.py), or where JOINTSCAN_RATELIMIT_STORAGE_URI says, or
  in the jobs' Redis when REDIS_URL is set (shared by every web node).
- Cookies: the session cookie is Secure when configured, and whenever the
  request itself came over HTTPS (X-Forwarded-Proto is trusted only when
  JOINTSCAN_PROXY_FIX_HOPS is set, by ProxyFix; gunicorn is started with
  `--forwarded-allow-ips=` in the Makefile and the Dockerfile, because its
  default would trust the header from 127.0.0.1 whatever the setting).
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
from flask_login import current_user
from limits import RateLimitItem, parse_many
from limits.strategies import RateLimiter
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix
from wtforms.validators import ValidationError

# Imported for its storage scheme, which `limits` registers on import.
from web.ratelimit_sqlite import SCHEME as SQLITE_STORAGE_SCHEME
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
ADDRESS_SCOPE = "login-address"
ACCOUNT_SCOPE = "login-account"
RATELIMIT_FILE = "ratelimits.sqlite"


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


def _full(strategy: RateLimiter, limits: list[RateLimitItem], *key: str) -> list[RateLimitItem]:
    """The limits whose window has no room left for one more failure."""
    return [item for item in limits if not strategy.test(item, *key)]


def _retry_after(strategy: RateLimiter, full: list[RateLimitItem], *key: str) -> int:
    """Seconds until every full window has room again."""
    return max(1, math.ceil(max(strategy.get_window_stats(item, *key).reset_time for item in full) - time.time()))


def throttle_login(limiter: Limiter, view):
    """The login view, with failed attempts counted per address and per account.

    Every failure (a 401) counts against both. An address over its limit is refused whatever it
    sends. An account over its limit is refused only to addresses with failures of their own in
    the per-address windows: so a correct password from an address that has not failed recently
    still logs in, and nobody can lock the administrator out by guessing from elsewhere. That does
    not open unlimited guessing: each address stays under the per-address limit, and after its first
    failure against a locked account it is refused like any address with failures.
    (Flask-Limiter's decorators either count and enforce a limit or skip it; this rule needs both
    halves separately, so it is written out here, on the same storage.)
    """

    @functools.wraps(view)
    def throttled(*args, **kwargs):
        if request.method != "POST":
            return view(*args, **kwargs)
        strategy = limiter.limiter
        by_address = parse_many(address_limits())
        by_account = parse_many(account_limits())
        address, account = (ADDRESS_SCOPE, login_address_key()), (ACCOUNT_SCOPE, login_account_key())
        full = _full(strategy, by_address, *address)
        if full:
            raise TooManyRequests(retry_after=_retry_after(strategy, full, *address))
        full = _full(strategy, by_account, *account)
        if full and any(strategy.get_window_stats(item, *address).remaining < item.amount for item in by_address):
            raise TooManyRequests(retry_after=_retry_after(strategy, full, *account))
        response = current_app.make_response(view(*args, **kwargs))
        if login_failed(response):
            for item in by_address:
                strategy.hit(item, *address)
            for item in by_account:
                strategy.hit(item, *account)
        return response

    return throttled


# -- analyses per user and per address ---------------------------------------------
def analysis_retry_after(user_id: int) -> int | None:
    """Count one analysis for the user and the client address; None when it is within both limits
    (ANALYSIS_LIMITS_PER_USER, ANALYSIS_LIMITS_PER_ADDRESS), else the seconds until it would be.

    Checked in the views, after authentication (a bearer token names its user only then), on the
    limiter's own storage, so the counts are those every worker shares when the limiter's are.
    """
    strategy = current_app.extensions["jointscan.limiter"].limiter
    by_key = [(parse_many(current_app.config["ANALYSIS_LIMITS_PER_USER"]), f"user:{user_id}"),
              (parse_many(current_app.config["ANALYSIS_LIMITS_PER_ADDRESS"]), f"address:{get_remote_address()}")]
    keyed = [(item, key) for items, key in by_key for item in items]
    waits = [_retry_after(strategy, full, "analysis", key) for items, key in by_key
             if (full := _full(strategy, items, "analysis", key))]
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


def ratelimit_storage_uri(app: Flask) -> str:
    """The configured storage; else the job Redis, which every web node shares (stateless web nodes); else a
    SQLite file in the instance folder that the workers of this one host share."""
    shared_file = Path(app.instance_path) / RATELIMIT_FILE
    return (app.config.get("RATELIMIT_STORAGE_URI") or app.config.get("REDIS_URL")
            or f"{SQLITE_STORAGE_SCHEME}:///{shared_file}")


def install_rate_limits(app: Flask) -> Limiter:
    """One limiter per app (Flask-Limiter keeps per-instance state), wrapped around the views it guards.

    Called after the blueprints are registered. Failed logins are counted per account and per
    address (`throttle_login`); sign-up attempts per address.
    """
    limiter = Limiter(key_func=get_remote_address, app=app, headers_enabled=True, strategy="moving-window",
                      storage_uri=ratelimit_storage_uri(app))
    app.extensions["jointscan.limiter"] = limiter
    app.view_functions["auth.login"] = throttle_login(limiter, app.view_functions["auth.login"])
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
