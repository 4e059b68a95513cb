"""Access-control matrix: every route that takes a run (pages, images, exports, reviews, the API),
found in app.url_map so routes added later are covered too, tried by every kind of user.

Allowed: the run's owner; a reviewer while the run is shared for review (review pages and images).
Refused: anonymous (login redirect or 401), another clinician (404, exactly what an unknown run gets), a reviewer while the run is
not shared (404), a reviewer on the owner's own pages (404), an administrator (403/404).
"""
from __future__ import annotations

import re

import pytest
from flask import url_for
from werkzeug.routing import IntegerConverter

from app import create_app
from database import ApiToken, Run, User, db, utcnow
from tests.conftest import ALL_MODELS, PASSWORD, create_user, login, upload

RUN_ARGS = ("public_id", "run_id")
# Routes the matrix must find (others found in the url_map are tried as well).
EXPECTED = {"scans.result", "scans.compare", "scans.run_image", "scans.export", "scans.report", "api.get_run",
            "api.run_report",
            "reviews.run_page", "reviews.submit", "reviews.share", "reviews.unshare"}
# Routes that act on a run for its owner but answer with a redirect.
OWNER_POSTS = {"reviews.share", "reviews.unshare"}
# Another clinician (or a reviewer on the owner's pages) gets the answer an unknown run gets: a 403
# would tell them that the run exists.
HIDDEN = 404
UNKNOWN_RUN = "f" * 32


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models_dir, shared_registry, scan_png):
    root = tmp_path_factory.mktemp("matrix")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JOINTSCAN_INSTANCE_PATH", str(root / "instance"))
        app = create_app({"TESTING": True, "SECRET_KEY": "matrix-secret", "WTF_CSRF_ENABLED": False,
                          "SQLALCHEMY_DATABASE_URI": f"sqlite:///{root / 'm.sqlite'}",
                          "MODELS_DIR": str(tiny_models_dir), "RESULTS_DIR": str(root / "results"),
                          "UPLOAD_WAIT_S": 60})
    app.extensions["jointscan.registry"] = shared_registry
    with app.app_context():
        db.create_all()
    for name, role in (("alice", "clinician"), ("bob", "clinician"), ("rhea", "reviewer"),
                       ("adam", "admin")):
        create_user(app, name, role=role)
    clients = {"anonymous": app.test_client()}
    for name in ("alice", "bob", "rhea", "adam"):
        clients[name] = app.test_client()
        assert login(clients[name], name).status_code == 302
    response = upload(clients["alice"], scan_png, model_ids=ALL_MODELS)
    run_id = re.search(r"/runs/([0-9a-f]{32})$", response.headers["Location"]).group(1)
    # A download as a study's run offers one (its masks as NIfTI), so the file route is in the matrix too.
    with app.app_context():
        run = Run.query.filter_by(public_id=run_id).one()
        (root / "results" / run_id / "file_region.nii.gz").write_bytes(b"\x1f\x8b mask")
        run.summary = {**run.summary, "files": {"region.nii.gz": "file_region.nii.gz"}}
        db.session.commit()
    return app, clients, run_id


def run_routes(app):
    """(endpoint, method, rule) for every route with a run identifier in its URL."""
    found = []
    for rule in app.url_map.iter_rules():
        if not any(arg in rule.arguments for arg in RUN_ARGS):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, rule))
    return found


def build(app, rule, run_id: str) -> str:
    values = {}
    for arg in rule.arguments:
        if arg in RUN_ARGS:
            values[arg] = run_id
        elif arg == "name":
            # a file every finished run stores; the download the matrix's run offers
            values[arg] = "region.nii.gz" if rule.endpoint == "scans.run_file" else "input.png"
        elif isinstance(rule._converters.get(arg), IntegerConverter):
            values[arg] = 0
        else:
            values[arg] = "x"
    with app.test_request_context():
        return url_for(rule.endpoint, **values)


def call(client, method: str, url: str):
    return client.open(url, method=method, data={"verdict": "agree"} if method == "POST" else None)


def _refused(world, name: str, endpoint: str, method: str, rule) -> None:
    """`name` is refused the run at this route, and cannot even tell that it exists: the answer is the
    one an unknown run id gets (404 for another clinician on the clinicians' routes; a 403 only where
    the route refuses the user's role whatever the run)."""
    app, clients, run_id = world
    url = build(app, rule, run_id)
    response = call(clients[name], method, url)
    status = response.status_code
    if name == "anonymous":
        ok = status == 401 or (status == 302 and "/login" in response.headers["Location"])
    else:
        unknown = call(clients[name], method, build(app, rule, UNKNOWN_RUN)).status_code
        ok = status in (HIDDEN, 403) and status == unknown
        if name == "bob" and endpoint.split(".")[0] in ("scans", "api"):
            ok = ok and status == HIDDEN
    assert ok, f"{name} {method} {url} -> {status}"
    assert b"input.png" not in response.data or status == 302, f"{name} saw the run at {url}"


def test_the_matrix_finds_the_run_routes(world):
    app, _clients, _run_id = world
    endpoints = {endpoint for endpoint, _m, _r in run_routes(app)}
    missing = EXPECTED - endpoints
    assert not missing, f"routes not found in the url_map: {missing}"


def test_unshared_run_only_its_owner(world):
    app, clients, run_id = world

    with app.app_context():
        Run.query.filter_by(public_id=run_id).update({"shared_at": None})
        db.session.commit()
    for endpoint, method, rule in run_routes(app):
        if endpoint in OWNER_POSTS:
            continue                                           # tried in the shared test below
        url = build(app, rule, run_id)
        for name in ("anonymous", "bob", "rhea", "adam"):
            _refused(world, name, endpoint, method, rule)
        if method == "GET" and not endpoint.startswith("reviews."):
            assert clients["alice"].get(url).status_code == 200, url
    # an unknown run is a 404 for its would-be owner as well
    assert clients["alice"].get("/runs/" + UNKNOWN_RUN).status_code == 404


def test_shared_run_owner_and_reviewers(world):
    app, clients, run_id = world

    with app.app_context():
        Run.query.filter_by(public_id=run_id).update({"shared_at": utcnow()})
        db.session.commit()
    reviewer_ok = {"reviews.run_page", "reviews.submit", "scans.run_image", "scans.run_file"}
    for endpoint, method, rule in run_routes(app):
        url = build(app, rule, run_id)
        if endpoint in OWNER_POSTS:
            for name in ("anonymous", "bob", "rhea", "adam"):
                _refused(world, name, endpoint, method, rule)
            continue
        for name in ("anonymous", "bob", "adam"):
            _refused(world, name, endpoint, method, rule)
        if endpoint in reviewer_ok:
            response = call(clients["rhea"], method, url)
            assert response.status_code in (200, 302), (endpoint, response.status_code)
        else:
            _refused(world, "rhea", endpoint, method, rule)
        if method == "GET" and endpoint not in ("reviews.run_page",):
            expected = {200} if not endpoint.startswith("reviews.") else {403}
            assert clients["alice"].get(url).status_code in expected, url


def test_api_tokens_follow_the_same_rules(world):
    app, clients, run_id = world

    with app.app_context():
        Run.query.filter_by(public_id=run_id).update({"shared_at": None})
        tokens = {}
        for name in ("alice", "bob", "rhea"):
            row, plain = ApiToken.issue(User.query.filter_by(username=name).one(), "t")
            db.session.add(row)
            tokens[name] = plain
        db.session.commit()
    anon = app.test_client()
    for name, expected in (("alice", 200), ("bob", 404), ("rhea", 404)):
        headers = {"Authorization": f"Bearer {tokens[name]}"}
        assert anon.get(f"/api/v1/runs/{run_id}", headers=headers).status_code == expected
        assert anon.get(f"/runs/{run_id}/images/input.png", headers=headers).status_code == expected
    assert anon.get(f"/api/v1/runs/{run_id}").status_code == 401


def test_admin_only_exports_and_pages(world):
    app, clients, _run_id = world
    admin_paths = [rule.rule for rule in app.url_map.iter_rules()
                   if rule.endpoint.startswith("admin.") and "GET" in rule.methods and not rule.arguments]
    assert "/admin/audit.csv" in admin_paths
    for path in admin_paths:
        for name in ("alice", "bob", "rhea"):
            assert clients[name].get(path).status_code == 403, (name, path)
        anonymous = clients["anonymous"].get(path)
        assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
        assert clients["adam"].get(path).status_code == 200, path
