"""Ids, page numbers and days from the URL are bounded (web.params): huge, negative or malformed values
are a 400 or a 404, never a 500. Every route of the url_map is walked, so routes added later are too."""
from __future__ import annotations

import re

import pytest
from werkzeug.routing import AnyConverter, IntegerConverter

from database import AuditEvent, db
from tests.conftest import create_user, login
from web.params import MAX_ID, IdConverter

HUGE = "99999999999999999999"                       # 20 digits: past SQLite's 64-bit integers
BAD_PATH_VALUES = (HUGE, str(MAX_ID + 1), "-1", "0", "abc", "1.5", "9" * 5000, "%00", "..")
QUERY_STRINGS = (
    f"page={HUGE}&user={HUGE}&id={HUGE}&since=0001-01-01&until=9999-12-31",
    f"page=-{HUGE}&user=-1&id=-1&since=9999-12-31&until=0001-01-01",
    "page=abc&user=abc&id=abc&since=abc&until=2026-02-30",
    "page=0&user=0&id=0&since=10000-01-01&until=",
    f"page={'9' * 5000}&user={'9' * 5000}&id={'9' * 5000}",
    "since=9999-12-31&until=9999-12-31",
    f"user={HUGE}",
    "page=1.5&since=2026-01-31T10:00",
)
# POSTs that end the signed-in session: walked last, so the other routes are tried with the session.
SESSION_ENDERS = {"auth.logout", "account.logout_everywhere"}
ABSENT_ID = "424242"                                # inside the range, no such row


def valid_value(rule, name: str) -> str:
    """A value the rule accepts for `name` that names nothing existing (so no POST changes anything)."""
    converter = rule._converters[name]
    if isinstance(converter, AnyConverter):
        return re.search(r"any\(([^,)]+)", rule.rule).group(1).strip()
    if isinstance(converter, IntegerConverter):
        return ABSENT_ID if isinstance(converter, IdConverter) else "0"
    return {"public_id": "f" * 32, "key": "0" * 32, "name": "input.png"}.get(name, "nothing-here")


def path_of(rule, values: dict[str, str]) -> str:
    return re.sub(r"<(?:[^<>:]+:)?([a-z_]+)>", lambda m: values[m.group(1)], rule.rule)


def requests_of(app):
    """(method, path, what) for every route, method, URL variable and bad value, then the query strings."""
    rules = sorted(app.url_map.iter_rules(), key=lambda r: (r.endpoint in SESSION_ENDERS, r.rule))
    for rule in rules:
        valid = {name: valid_value(rule, name) for name in rule.arguments}
        for method in sorted((rule.methods or set()) & {"GET", "POST"}):
            for name in sorted(rule.arguments):
                for bad in BAD_PATH_VALUES:
                    yield method, path_of(rule, {**valid, name: bad}), f"{rule.endpoint} {name}={bad[:24]}"
            for query in QUERY_STRINGS:
                yield method, f"{path_of(rule, valid)}?{query}", f"{rule.endpoint} ?{query[:60]}"


@pytest.fixture
def clients(make_app):
    app = make_app()
    for name, role in (("adam", "admin"), ("alice", "clinician"), ("rhea", "reviewer")):
        create_user(app, name, role=role)
    signed_in = {"anonymous": app.test_client()}
    for name in ("adam", "alice", "rhea"):
        signed_in[name] = app.test_client()
        assert login(signed_in[name], name).status_code == 302
    return app, signed_in


def test_no_route_answers_500_to_huge_negative_or_malformed_values(clients):
    app, signed_in = clients
    rules = list(app.url_map.iter_rules())
    assert {"admin.set_user_state", "admin.change_role", "account.revoke_token", "history.index",
            "reviews.queue", "admin.audit"} <= {r.endpoint for r in rules}
    failures, tried = [], 0
    for who, client in signed_in.items():
        for method, path, what in requests_of(app):
            tried += 1
            try:
                status = client.open(path, method=method).status_code
            except Exception as exc:            # TESTING propagates what would be a 500
                status = f"raised {type(exc).__name__}"
            if not isinstance(status, int) or status >= 500:
                failures.append(f"{who} {method} {what}: {status}")
    assert tried > 1000
    assert not failures, f"{len(failures)} failures, e.g. " + "; ".join(failures[:8])


def test_ids_pages_and_days_get_the_answer_their_meaning_gives(clients):
    app, signed_in = clients
    admin, alice, rhea = signed_in["adam"], signed_in["alice"], signed_in["rhea"]
    # an id past the database's range is no row: 404, like an id that does not exist
    for path in (f"/admin/users/{HUGE}/disable", f"/admin/users/{HUGE}/role", f"/admin/users/{MAX_ID + 1}/enable",
                 "/admin/users/0/disable", "/admin/users/-3/disable"):
        assert admin.post(path).status_code == 404, path
    assert alice.post(f"/account/tokens/{HUGE}/revoke").status_code == 404
    assert admin.post(f"/admin/users/{ABSENT_ID}/disable").status_code == 404
    # a page past the end is an empty page; before the start, or not a number, the first
    for client, path in ((alice, "/history"), (rhea, "/review"), (admin, "/admin/audit")):
        for page in (HUGE, f"-{HUGE}", "abc", "9" * 5000):
            assert client.get(f"{path}?page={page}").status_code == 200, (path, page)
    # the audit filters: a huge user number is a name to look for, the last day of the calendar a day
    with app.app_context():
        db.session.add(AuditEvent(action="login_ok", outcome="ok", username=HUGE))
        db.session.commit()
    response = admin.get(f"/admin/audit?user={HUGE}")
    assert response.status_code == 200 and "1 event matches the filter" in response.get_data(as_text=True)
    with app.app_context():
        events = AuditEvent.query.count()
    page = admin.get("/admin/audit?since=0001-01-01&until=9999-12-31").get_data(as_text=True)
    assert "it was ignored" not in page
    assert f"{events} events match the filter" in page            # the whole calendar: every event
    page = admin.get("/admin/audit?until=9999-99-99").get_data(as_text=True)
    assert "“until” must be a date like 2026-01-31; it was ignored." in page
