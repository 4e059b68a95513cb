"""Hardening (ASVS L2 on authentication, sessions, access control): throttling, password policy,
sessions that end for good, closed sign-up, disabled users and models, secret keys, HTTPS cookies."""
from __future__ import annotations

import io
import json
import os
import re
import runpy
import secrets
import shlex
import stat
import time
from pathlib import Path

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.http.parser import RequestParser

from app import create_app
from database import ApiToken, AuditEvent, Run, User, db
from tests.conftest import CLS_OURS, CLS_REF, PASSWORD, SEG_OURS, create_user, login, signup, upload
from web import login as web_login
from web.security import common_passwords, password_problem


# -- login throttling --------------------------------------------------------------------------
def test_failed_logins_per_account_are_throttled(make_app):
    app = make_app(LOGIN_LIMITS_PER_ACCOUNT="3 per minute", LOGIN_LIMITS_PER_ADDRESS="50 per minute")
    create_user(app, "alice")
    client = app.test_client()
    for _ in range(3):
        assert login(client, "alice", "not the password!").status_code == 401
    response = login(client, "alice", PASSWORD)             # even the right password waits now
    assert response.status_code == 429
    assert "Retry-After" in response.headers and b"Too many attempts" in response.data
    assert login(client, "ALICE", PASSWORD).status_code == 429            # the account, in any case
    # another account from the same address is not locked by alice's failures
    create_user(app, "bob")
    assert login(app.test_client(), "bob").status_code == 302


    with app.app_context():
        throttled = AuditEvent.query.filter_by(action="login_failed", outcome="throttled").all()
        assert len(throttled) == 2 and throttled[0].username == "alice"


def test_failed_logins_per_address_are_throttled(make_app):
    app = make_app(LOGIN_LIMITS_PER_ACCOUNT="50 per minute", LOGIN_LIMITS_PER_ADDRESS="4 per minute")
    create_user(app, "carol")
    client = app.test_client()
    for i in range(4):                                       # spraying different accounts
        assert login(client, f"user{i}", "not the password!").status_code == 401
    assert login(client, "carol", PASSWORD).status_code == 429
    other = app.test_client()
    response = other.post("/login", data={"username": "carol", "password": PASSWORD},
                          environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert response.status_code == 302                       # another address is not affected


ATTACKER, OWNER = {"REMOTE_ADDR": "203.0.113.66"}, {"REMOTE_ADDR": "198.51.100.7"}


def _post_login(client, address: dict, password: str, username: str = "boss"):
    return client.post("/login", data={"username": username, "password": password}, environ_base=address)


def test_a_locked_account_still_lets_its_owner_in_from_a_clean_address(make_app):
    """Guessing from one address cannot lock the administrator out; the guesser stays throttled."""
    app = make_app(LOGIN_LIMITS_PER_ACCOUNT="3 per minute", LOGIN_LIMITS_PER_ADDRESS="50 per minute")
    create_user(app, "boss", role="admin")
    attacker = app.test_client()
    assert [_post_login(attacker, ATTACKER, "guess number one").status_code for _ in range(3)] == [401] * 3
    locked = _post_login(attacker, ATTACKER, "guess number four")
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert _post_login(attacker, ATTACKER, PASSWORD).status_code == 429     # not even the right one

    owner = app.test_client()
    response = _post_login(owner, OWNER, PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    assert owner.get("/admin/", environ_base=OWNER).status_code == 200
    assert _post_login(app.test_client(), ATTACKER, "guess number five").status_code == 429


def test_a_locked_account_still_stops_every_address_that_fails(make_app):
    """No unlimited guessing from many addresses: every failure counts against the account, and once it
    is locked an address gets one checked guess at most before it is refused too."""
    app = make_app(LOGIN_LIMITS_PER_ACCOUNT="3 per minute", LOGIN_LIMITS_PER_ADDRESS="50 per minute")
    create_user(app, "boss", role="admin")
    spread = [{"REMOTE_ADDR": f"203.0.113.{n}"} for n in range(1, 4)]
    for address in spread:                      # one failure each, far below the per-address limit
        assert _post_login(app.test_client(), address, "a wrong password").status_code == 401
    for address in spread:                      # the account's limit stops each of them now
        assert _post_login(app.test_client(), address, "another wrong one").status_code == 429
        assert _post_login(app.test_client(), address, PASSWORD).status_code == 429
    fresh = {"REMOTE_ADDR": "203.0.113.99"}
    assert _post_login(app.test_client(), fresh, "a fresh wrong guess").status_code == 401
    assert _post_login(app.test_client(), fresh, "and one more guess").status_code == 429
    with app.app_context():
        assert AuditEvent.query.filter_by(action="login_failed", outcome="throttled").count() == 7


def test_default_limits_throttle_after_five_failures(app):
    create_user(app, "dave")
    client = app.test_client()
    statuses = [login(client, "dave", "wrong password!!").status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]


def test_successful_logins_are_not_counted(make_app):
    app = make_app(LOGIN_LIMITS_PER_ACCOUNT="2 per minute")
    create_user(app, "erin")
    for _ in range(4):
        client = app.test_client()
        assert login(client, "erin").status_code == 302


# -- password policy -------------------------------------------------------------------------------
@pytest.mark.parametrize("password, username, fragment", [
    ("short pass", None, "at least 12"),
    ("password1234", None, "most common"),
    ("Password1234", None, "most common"),
    ("qwertyuiop123", None, "most common"),
    ("correct horse battery staple", None, "most common"),
    ("Summer2024!!", None, "most common"),
    ("111111111111", None, "most common"),
    ("ababababababab", None, "too few different"),
    ("frank-is-my-own-name", "frank", "username"),
    ("x" * 257, None, "at most 256"),
])
def test_password_policy_refuses(password, username, fragment):
    problem = password_problem(password, username)
    assert problem and fragment in problem


def test_password_policy_accepts_a_passphrase():
    assert len(common_passwords()) > 3000
    assert password_problem(PASSWORD, "alice") is None
    assert password_problem("tulip marble fjord 42", "alice") is None


def test_signup_refuses_a_common_password(client):
    response = signup(client, "gina", "password123456")
    assert response.status_code == 400 and b"most common passwords" in response.data


def test_create_admin_prompts_and_enforces_the_policy(app):
    runner = app.test_cli_runner()
    weak = runner.invoke(args=["create-admin", "root"], input="password12345\npassword12345\n")
    assert weak.exit_code != 0 and "most common" in weak.output
    ok = runner.invoke(args=["create-admin", "root"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert ok.exit_code == 0, ok.output
    assert "created admin root" in ok.output

    with app.app_context():
        assert User.query.filter_by(username="root").one().role == "admin"
        assert AuditEvent.query.filter_by(action="admin_change").count() == 1
    again = runner.invoke(args=["create-admin", "root"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert again.exit_code != 0 and "exists" in again.output
    client = app.test_client()
    assert login(client, "root").headers["Location"] == "/admin/"


# -- sessions -----------------------------------------------------------------------------------------
def _copy_of(client, app):
    thief = app.test_client()
    thief.set_cookie("session", client.get_cookie("session").value)
    return thief


def test_logout_invalidates_a_copied_session_cookie(app, alice):
    thief = _copy_of(alice, app)
    assert thief.get("/history").status_code == 200          # the copy works while alice is signed in
    assert alice.post("/logout").status_code == 302
    response = thief.get("/history")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_password_change_ends_other_sessions_and_keeps_this_one(app, alice):
    other_device = _copy_of(alice, app)
    bad = alice.post("/account/password", data={"current": "not it at all", "new": "tulip marble fjord 42",
                                                 "confirm": "tulip marble fjord 42"})
    assert bad.status_code == 400 and b"current password is wrong" in bad.data
    weak = alice.post("/account/password", data={"current": PASSWORD, "new": "password123456",
                                                  "confirm": "password123456"})
    assert weak.status_code == 400 and b"most common" in weak.data
    response = alice.post("/account/password", data={"current": PASSWORD, "new": "tulip marble fjord 42",
                                                      "confirm": "tulip marble fjord 42"})
    assert response.status_code == 302
    assert alice.get("/history").status_code == 200
    assert other_device.get("/history").status_code == 302
    assert login(app.test_client(), "alice", "tulip marble fjord 42").status_code == 302


def test_log_out_everywhere(app, alice):
    second = app.test_client()
    assert login(second, "alice").status_code == 302
    assert alice.post("/account/logout-everywhere").status_code == 302
    assert alice.get("/history").status_code == 302
    assert second.get("/history").status_code == 302


class Clock:
    """Stands in for the `time` module of web/login.py: the session checks see this clock only."""

    def __init__(self):
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(web_login, "time", fake)
    return fake


def test_a_session_ends_after_its_idle_time(make_app, clock):
    app = make_app(SESSION_IDLE_MINUTES=30)
    create_user(app, "alice")
    client = app.test_client()
    assert login(client, "alice").status_code == 302
    clock.now += 29 * 60
    assert client.get("/history").status_code == 200          # 29 minutes idle: still signed in
    clock.now += 29 * 60
    assert client.get("/history").status_code == 200          # the last request counts, not the login
    clock.now += 31 * 60
    response = client.get("/history")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert b"Your session ended" in client.get("/login").data
    with client.session_transaction() as sess:
        assert "_user_id" not in sess
    assert login(client, "alice").status_code == 302          # a new login starts a new session


def test_a_busy_session_still_ends_at_its_time_limit(make_app, clock):
    app = make_app(SESSION_IDLE_MINUTES=30, SESSION_MAX_HOURS=12)
    create_user(app, "alice")
    client = app.test_client()
    login(client, "alice")
    for _ in range(12 * 3 - 1):                                # a request every 20 minutes, for 11 h 40
        clock.now += 20 * 60
        assert client.get("/history").status_code == 200
    clock.now += 21 * 60
    assert client.get("/history").status_code == 302          # 12 h 01 after the login


def test_a_session_without_its_times_has_ended(app, alice):
    with alice.session_transaction() as sess:                 # e.g. a cookie issued before the rule
        del sess["_started"], sess["_seen"]
    assert alice.get("/history").status_code == 302


def _token_for(app, username: str) -> str:
    with app.app_context():
        row, plain = ApiToken.issue(User.query.filter_by(username=username).one(), "script")
        db.session.add(row)
        db.session.commit()
    assert _tasks_status(app, plain) == 200
    return plain


def _tasks_status(app, token: str) -> int:
    return app.test_client().get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}).status_code


def _revoked_rows(app, username: str) -> list[ApiToken]:
    with app.app_context():
        user = User.query.filter_by(username=username).one()
        return [t for t in user.tokens if t.revoked_at is not None]


def test_password_change_revokes_api_tokens(app, alice):
    page = alice.get("/account/").get_data(as_text=True)
    assert "revokes all your API tokens" in page                   # said before the user confirms
    old, older = _token_for(app, "alice"), _token_for(app, "alice")
    response = alice.post("/account/password", data={"current": PASSWORD, "new": "tulip marble fjord 42",
                                                      "confirm": "tulip marble fjord 42"}, follow_redirects=True)
    assert b"your 2 API token(s) are revoked" in response.data
    assert _tasks_status(app, old) == _tasks_status(app, older) == 401
    assert len(_revoked_rows(app, "alice")) == 2                   # kept, for the audit trail
    with app.app_context():
        event = AuditEvent.query.filter_by(action="token_revoke").one()
        assert event.detail == "2 API token(s) revoked: password change" and event.username == "alice"
    assert alice.post("/account/tokens", data={"name": "new", "password": "tulip marble fjord 42"}).status_code == 200


def test_log_out_everywhere_revokes_api_tokens_and_a_plain_logout_does_not(app, alice):
    kept = _token_for(app, "alice")
    assert alice.post("/logout").status_code == 302                # this browser only: scripts keep working
    assert _tasks_status(app, kept) == 200
    login(alice, "alice")
    assert "revokes all your API tokens" in alice.get("/account/").get_data(as_text=True)
    assert alice.post("/account/logout-everywhere").status_code == 302
    assert _tasks_status(app, kept) == 401
    with app.app_context():
        assert AuditEvent.query.filter_by(action="token_revoke").one().detail.endswith("log out everywhere")


def test_disabling_revokes_api_tokens_so_enabling_revives_none(app, alice):
    create_user(app, "boss", role="admin")
    boss = app.test_client()
    login(boss, "boss")
    assert "revokes its API tokens" in boss.get("/admin/users").get_data(as_text=True)
    token = _token_for(app, "alice")
    with app.app_context():
        alice_id = User.query.filter_by(username="alice").one().id
    assert boss.post(f"/admin/users/{alice_id}/disable").status_code == 302
    assert _tasks_status(app, token) == 401
    assert boss.post(f"/admin/users/{alice_id}/enable").status_code == 302
    assert login(app.test_client(), "alice").status_code == 302       # the account is back...
    assert _tasks_status(app, token) == 401                            # ...its old token is not
    assert len(_revoked_rows(app, "alice")) == 1
    with app.app_context():
        event = AuditEvent.query.filter_by(action="token_revoke").one()
        assert event.username == "boss" and event.resource == f"user:{alice_id}"


# -- sign-up, users, models -------------------------------------------------------------------------
def test_admin_closes_signup(app, client):
    create_user(app, "boss", role="admin")
    boss = app.test_client()
    login(boss, "boss")
    assert b"Sign up" in client.get("/login").data
    assert boss.post("/admin/signup", data={"open": "0"}).status_code == 302
    assert client.get("/signup").status_code == 403
    response = signup(client, "newbie")
    assert response.status_code == 403 and b"Sign-up is closed" in response.data
    assert b"Sign up</a>" not in client.get("/login").data

    with app.app_context():
        assert User.query.filter_by(username="newbie").first() is None
    boss.post("/admin/signup", data={"open": "1"})
    assert signup(client, "newbie").status_code == 302


def test_signup_default_from_the_environment(make_app, monkeypatch):
    monkeypatch.setenv("JOINTSCAN_SIGNUP_OPEN", "0")
    app = make_app()
    assert app.test_client().get("/signup").status_code == 403


def test_signup_creates_clinicians_only(app, client):
    response = client.post("/signup", data={"username": "sneaky", "password": PASSWORD, "confirm": PASSWORD,
                                            "role": "admin"})
    assert response.status_code == 302

    with app.app_context():
        assert User.query.filter_by(username="sneaky").one().role == "clinician"


def test_admin_manages_users(app, alice):
    create_user(app, "boss", role="admin")
    boss = app.test_client()
    login(boss, "boss")
    with app.app_context():
        alice_id = User.query.filter_by(username="alice").one().id
        boss_id = User.query.filter_by(username="boss").one().id
        row, token = ApiToken.issue(db.session.get(User, alice_id), "t")
        db.session.add(row)
        db.session.commit()
    api = app.test_client()
    assert api.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    assert boss.post(f"/admin/users/{alice_id}/disable").status_code == 302
    assert alice.get("/history").status_code == 302                        # signed out at once
    response = login(app.test_client(), "alice")
    assert response.status_code == 403 and b"disabled" in response.data
    assert api.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert boss.post(f"/admin/users/{alice_id}/enable").status_code == 302
    assert login(app.test_client(), "alice").status_code == 302

    assert boss.post(f"/admin/users/{alice_id}/role", data={"role": "reviewer"}).status_code == 302
    with app.app_context():
        assert db.session.get(User, alice_id).role == "reviewer"
    # guards: no self-disable, no self-demotion, the last admin stays
    boss.post(f"/admin/users/{boss_id}/disable")
    boss.post(f"/admin/users/{boss_id}/role", data={"role": "clinician"})
    with app.app_context():
        boss_row = db.session.get(User, boss_id)
        assert boss_row.role == "admin" and not boss_row.disabled
    # an admin creates a user; the policy applies
    weak = boss.post("/admin/users", data={"username": "newdoc", "role": "reviewer", "password": "password123456",
                                           "confirm": "password123456"})
    assert weak.status_code == 400 and b"most common" in weak.data
    assert boss.post("/admin/users", data={"username": "newdoc", "role": "reviewer", "password": PASSWORD,
                                           "confirm": PASSWORD}).status_code == 302
    with app.app_context():
        assert User.query.filter_by(username="newdoc").one().role == "reviewer"

    with app.app_context():
        details = [e.detail for e in AuditEvent.query.filter_by(action="admin_change")]
    assert "disabled alice" in details and "enabled alice" in details
    assert "role of alice: clinician -> reviewer" in details and "created reviewer newdoc" in details


def test_disabled_model_is_refused_by_the_form_and_the_api(app, alice, scan_png):
    create_user(app, "boss", role="admin")
    boss = app.test_client()
    login(boss, "boss")
    assert boss.post(f"/admin/models/{CLS_OURS}/disable").status_code == 302
    assert "Disabled" in boss.get("/admin/models").get_data(as_text=True)

    page = alice.get("/upload").get_data(as_text=True)
    assert "disabled by an administrator" in page
    response = upload(alice, scan_png, model_ids=[SEG_OURS, CLS_OURS])
    assert response.status_code == 403 and b"disabled by an administrator" in response.data

    with app.app_context():
        row, token = ApiToken.issue(User.query.filter_by(username="alice").one(), "t")
        db.session.add(row)
        db.session.commit()

    headers = {"Authorization": f"Bearer {token}"}
    api = app.test_client()
    response = api.post("/api/v1/analyze?wait=true", headers=headers, content_type="multipart/form-data",
                        data={"task": "sacroiliac", "model_ids": f"{SEG_OURS},{CLS_OURS}",
                              "file": (io.BytesIO(scan_png), "s.png")})
    assert response.status_code == 403 and "disabled by an administrator" in response.get_json()["error"]["message"]
    tasks = api.get("/api/v1/tasks", headers=headers).get_json()["tasks"]
    model = next(m for t in tasks for m in t["models"] if m["id"] == CLS_OURS)
    assert model["available"] is False and "disabled" in model["problem"]
    # the defaults skip it: with the default classifier off, no classifier is chosen
    response = api.post("/api/v1/analyze?wait=true", headers=headers, content_type="multipart/form-data",
                        data={"task": "sacroiliac", "file": (io.BytesIO(scan_png), "s.png")})
    assert response.status_code == 400 and "AS status and stage" in response.get_json()["error"]["message"]
    with app.app_context():
        assert Run.query.count() == 0
    # another classifier still works, and switching it back on restores it
    assert upload(alice, scan_png, model_ids=[SEG_OURS, CLS_REF]).status_code == 302
    assert boss.post(f"/admin/models/{CLS_OURS}/enable").status_code == 302
    assert upload(alice, scan_png, model_ids=[SEG_OURS, CLS_OURS]).status_code == 302
    assert "disabled by an administrator" not in alice.get("/upload").get_data(as_text=True)


# -- configuration -----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", [None, "changeme", "dev", "test-secret-key", "short-but-random-7f3a"])
def test_production_refuses_missing_or_weak_secret_keys(tmp_path, monkeypatch, key):
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("JOINTSCAN_ENV_NAME", "production")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    config = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'p.sqlite'}"}
    if key:
        config["SECRET_KEY"] = key
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        create_app(config)


def test_production_accepts_a_random_secret_key(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTSCAN_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("JOINTSCAN_ENV_NAME", "production")
    monkeypatch.setenv("SECRET_KEY", secrets.token_hex(32))
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'p.sqlite'}"})
    assert app.config["ENV_NAME"] == "production"


def test_the_instance_folder_database_and_result_images_are_private(make_app, tmp_path, scan_png):
    """Folders 0700 and files 0600 under the usual umask, which made them world-readable; an instance
    folder from before the rule is tightened at start."""
    instance = tmp_path / "instance"                 # make_app's instance folder
    instance.mkdir(mode=0o755)
    old_umask = os.umask(0o022)
    try:
        app = make_app(SECRET_KEY="", SQLALCHEMY_DATABASE_URI=f"sqlite:///{instance / 'jointscan.sqlite'}",
                       RESULTS_DIR=str(instance / "results"))
        create_user(app, "alice")
        client = app.test_client()
        assert login(client, "alice", "a wrong password").status_code == 401       # a throttling count
        assert login(client, "alice").status_code == 302
        assert upload(client, scan_png).status_code == 302
    finally:
        os.umask(old_umask)
    modes = {str(p.relative_to(instance)): stat.S_IMODE(p.stat().st_mode) for p in instance.rglob("*")}
    images = [name for name in modes if name.endswith(".png")]
    assert {"jointscan.sqlite", "ratelimits.sqlite", "secret_key", "results"} <= set(modes) and len(images) >= 3
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    assert {name: mode for name, mode in modes.items()
            if mode != (0o700 if (instance / name).is_dir() else 0o600)} == {}


def _session_cookie(response) -> str:
    return next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("session="))


def test_cookies_are_secure_over_https_behind_a_configured_proxy(make_app):
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    app = make_app(PROXY_FIX_HOPS=1)
    create_user(app, "alice")
    client = app.test_client()
    response = client.post("/login", data={"username": "alice", "password": PASSWORD}, headers=https)
    assert "Secure" in _session_cookie(response)
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")

    with app.app_context():
        assert AuditEvent.query.filter_by(action="login_ok").one().client_addr == "203.0.113.9"

    plain = make_app()                        # no proxy configured: forwarded headers are ignored
    create_user(plain, "alice")
    response = plain.test_client().post("/login", data={"username": "alice", "password": PASSWORD}, headers=https)
    assert "Secure" not in _session_cookie(response)
    assert "Strict-Transport-Security" not in response.headers
    with plain.app_context():
        assert AuditEvent.query.filter_by(action="login_ok").one().client_addr == "127.0.0.1"

    direct = make_app()                       # served over HTTPS directly
    create_user(direct, "alice")
    response = direct.test_client().post("https://localhost/login", data={"username": "alice", "password": PASSWORD})
    assert "Secure" in _session_cookie(response)


ROOT = Path(__file__).resolve().parent.parent


def gunicorn_command(where: str) -> list[str]:
    """The arguments gunicorn gets from `make run` or from the Docker image, variables filled in."""
    if where == "Makefile":
        line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "bin/gunicorn " in line)
    else:
        cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
        line = json.loads(cmd[len("CMD "):])[-1]
    return shlex.split(re.sub(r"\$\(\w+\)|\$\{\w+(:-\w+)?\}", "2", line.split("gunicorn ", 1)[1]))


def gunicorn_config(args: list[str]) -> GunicornConfig:
    """gunicorn's settings from `args`: the config file named by -c (run as gunicorn runs it), then the flags."""
    cfg = GunicornConfig()
    parsed = vars(cfg.parser().parse_args(args))
    if parsed.get("config"):
        for key, value in runpy.run_path(str(ROOT / parsed["config"])).items():
            if key in cfg.settings:
                cfg.set(key, value)
    for key, value in parsed.items():
        if key not in ("args", "config") and value is not None:
            cfg.set(key.lower(), value)
    return cfg


def served_by_gunicorn(app, args: list[str], raw_request: bytes, peer: str = "127.0.0.1") -> dict:
    """The response headers of `app` to `raw_request` as gunicorn, started with `args`, would hand it on."""
    cfg = gunicorn_config(args)

    class Socket:
        def __init__(self):
            self.chunks = [raw_request]

        def recv(self, _size):
            return self.chunks.pop(0) if self.chunks else b""

    request = next(iter(RequestParser(cfg, Socket(), (peer, 40000))))
    _response, environ = gunicorn_wsgi.create(request, Socket(), (peer, 40000), ("127.0.0.1", 8000), cfg)
    seen = {}
    body = app(environ, lambda status, headers, *_: seen.update(headers))
    b"".join(body)
    return seen


@pytest.mark.parametrize("where", ["Makefile", "Dockerfile"])
def test_x_forwarded_proto_from_localhost_is_ignored_without_proxy_hops(make_app, where):
    """gunicorn's own default trusts X-Forwarded-Proto from 127.0.0.1: the commands that start it turn
    that off, so only JOINTSCAN_PROXY_FIX_HOPS (ProxyFix) decides whether the header counts."""
    form = b"username=alice&password=" + PASSWORD.replace(" ", "+").encode()
    raw = (b"POST /login HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: https\r\n"
           b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(form), form))
    args = gunicorn_command(where)
    assert gunicorn_config(args).forwarded_allow_ips == []
    plain = make_app()
    create_user(plain, "alice")
    headers = served_by_gunicorn(plain, args, raw)
    assert headers["Location"] == "/upload"                                  # signed in...
    assert "Secure" not in headers["Set-Cookie"] and "Strict-Transport-Security" not in headers   # ...not as HTTPS
    assert "Strict-Transport-Security" in served_by_gunicorn(plain, [], raw)   # what gunicorn's default did
    behind_proxy = make_app(PROXY_FIX_HOPS=1)                                # configured: the header counts
    create_user(behind_proxy, "alice")
    headers = served_by_gunicorn(behind_proxy, args, raw)
    assert "Secure" in headers["Set-Cookie"] and "Strict-Transport-Security" in headers


def test_security_headers_on_new_pages(app):
    create_user(app, "boss", role="admin")
    boss = app.test_client()
    login(boss, "boss")
    for path in ("/admin/", "/admin/users", "/admin/models", "/admin/audit"):
        response = boss.get(path)
        assert response.status_code == 200
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        html = response.get_data(as_text=True)
        assert "<script>" not in html and "style=" not in html and "<style" not in html, path
