"""Sign up, log in, log out; CSRF, cookies, session renewal, stale sessions, headers and error pages."""
from __future__ import annotations

import io

import pytest

from database import ApiToken, User, db
from tests.conftest import PASSWORD, create_user, csrf_from, login, signup


def test_signup_login_logout(app, client):
    response = signup(client, "carol")
    assert response.status_code == 302 and response.headers["Location"].endswith("/upload")
    assert client.get("/upload").status_code == 200            # signed in straight away


    with app.app_context():
        assert User.query.filter_by(username="carol").one().password_hash.startswith("scrypt:")

    response = client.post("/logout")
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    assert client.get("/history").status_code == 302           # signed out

    response = login(client, "carol")
    assert response.status_code == 302 and response.headers["Location"].endswith("/upload")
    assert b"carol" in client.get("/upload").data


@pytest.mark.parametrize("password, confirm, message", [
    ("short", "short", b"at least 12 characters"),
    (PASSWORD, PASSWORD + "x", b"do not match"),
])
def test_signup_rejects_weak_or_mismatched_password(client, password, confirm, message):
    response = signup(client, "dave", password, confirm)
    assert response.status_code == 400 and message in response.data


def test_signup_rejects_taken_username(app, client):
    create_user(app, "erin")
    response = signup(client, "erin")
    assert response.status_code == 400 and b"taken" in response.data


def test_wrong_password_and_unknown_user_get_the_same_message(app, client):
    create_user(app, "frank")
    wrong = login(client, "frank", "not the right password")
    unknown = login(client, "nobody-here", "not the right password")
    assert wrong.status_code == unknown.status_code == 401
    assert b"Unknown username or wrong password." in wrong.data
    assert b"Unknown username or wrong password." in unknown.data
    assert client.get("/history").status_code == 302


@pytest.mark.parametrize("target, expected", [
    ("/history", "/history"),
    ("//evil.example/x", "/upload"),
    ("https://evil.example/", "/upload"),
    ("/\\evil.example", "/upload"),
    ("javascript:alert(1)", "/upload"),
])
def test_next_redirects_stay_on_site(app, client, target, expected):
    create_user(app, "gina")
    response = client.post(f"/login?next={target}", data={"username": "gina", "password": PASSWORD})
    assert response.status_code == 302
    assert response.headers["Location"] == expected


def test_password_hash_is_scrypt(app):
    create_user(app, "hank")
    with app.app_context():
        user = db.session.execute(db.select(User).filter_by(username="hank")).scalar_one()
        assert user.password_hash.startswith("scrypt:")
        assert PASSWORD not in user.password_hash


# -- CSRF -------------------------------------------------------------------------------
@pytest.fixture
def csrf_app(make_app):
    return make_app(WTF_CSRF_ENABLED=True)


def test_csrf_required_on_every_form_post(csrf_app):
    create_user(csrf_app, "ivy")
    client = csrf_app.test_client()
    assert client.post("/login", data={"username": "ivy", "password": PASSWORD}).status_code == 400
    assert client.post("/signup", data={"username": "jo", "password": PASSWORD,
                                        "confirm": PASSWORD}).status_code == 400

    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": "ivy", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302

    upload = {"task": "sacroiliac", "scan": (io.BytesIO(b"\x89PNG"), "x.png")}
    assert client.post("/upload", data=upload, content_type="multipart/form-data").status_code == 400
    assert client.post("/account/tokens", data={"name": "script"}).status_code == 400

    # a token created properly, then a revoke without the CSRF token is refused
    page = client.get("/account/").get_data(as_text=True)
    assert client.post("/account/tokens", data={"name": "script", "csrf_token": csrf_from(page)}).status_code == 200
    assert client.post("/account/tokens/1/revoke").status_code == 400
    assert client.post("/logout").status_code == 400


    with csrf_app.app_context():
        assert ApiToken.query.one().revoked_at is None


# -- cookies and sessions -----------------------------------------------------------------
def test_session_cookie_is_httponly_and_samesite(app, client):
    create_user(app, "kim")
    response = login(client, "kim")
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_session_is_renewed_at_login(app, client):
    create_user(app, "lee")
    client.get("/login")
    with client.session_transaction() as sess:
        sess["planted"] = "attacker-chosen"
    before = client.get_cookie("session").value

    assert login(client, "lee").status_code == 302

    after = client.get_cookie("session").value
    assert after != before
    with client.session_transaction() as sess:
        assert "planted" not in sess
        assert sess["_user_id"].endswith(":1")


def test_stale_session_version_signs_the_user_out(app, client):
    uid = create_user(app, "max")
    login(client, "max")
    assert client.get("/history").status_code == 200
    with app.app_context():
        user = db.session.get(User, uid)
        user.session_version += 1
        db.session.commit()
    response = client.get("/history")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_garbage_session_user_id_is_anonymous(app, client):
    create_user(app, "ned")
    with client.session_transaction() as sess:
        sess["_user_id"] = "not-a-valid-id"
    assert client.get("/history").status_code == 302


# -- headers and error pages ------------------------------------------------------------------
def test_security_headers_on_every_response(client):
    for path in ("/login", "/no-such-page", "/static/css/app.css", "/api/v1/tasks"):
        response = client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data:" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"


def test_pages_have_no_inline_scripts_or_styles(alice):
    for path in ("/upload", "/history", "/models/", "/account/"):
        html = alice.get(path).get_data(as_text=True)
        assert "<script>" not in html and "style=" not in html and "<style" not in html, path
        assert "Research and education use only, not for clinical decisions" in html


def test_404_is_html_for_pages_and_json_for_the_api(client):
    page = client.get("/no-such-page")
    assert page.status_code == 404 and page.mimetype == "text/html"
    api = client.get("/api/v1/no-such-thing")
    assert api.status_code == 404 and api.mimetype == "application/json"
    assert api.get_json()["error"]["status"] == 404


def test_unexpected_errors_render_500_without_details(make_app):
    app = make_app(TESTING=False)

    def boom():
        raise RuntimeError("secret internals")

    app.add_url_rule("/boom", "boom", boom)
    app.add_url_rule("/api/v1/boom", "api_boom", boom)
    client = app.test_client()
    page = client.get("/boom")
    assert page.status_code == 500 and page.mimetype == "text/html"
    assert b"Something went wrong" in page.data and b"secret internals" not in page.data
    api = client.get("/api/v1/boom")
    assert api.status_code == 500 and api.get_json()["error"]["status"] == 500
    assert b"secret internals" not in api.data
