"""Timelines per pseudonym: the knee's continuous KL grade per side over time, flagged beyond its smallest
detectable change, as a server-drawn chart and a table; only the user's own runs, the pseudonym never in a URL."""
from __future__ import annotations

import re
from datetime import datetime

import cv2
import numpy as np
import pytest

from database import ModelResult, Run, RunStatus, db
from tasks import get_task
from tests.conftest import create_user, login
from web.timeline import classify_change, measure_series

PSEUDONYM = "TRIAL-042"
KL = get_task("knee").longitudinal[0]


def knee_run(user_id: int, when: str, side: str, value: float | None, pseudonym: str = PSEUDONYM,
             status: str = RunStatus.DONE) -> Run:
    result = {"withheld": "outside the grader's data"} if value is None else \
        {"value": value, "grade": int(round(value)), "grade_name": f"KL {int(round(value))}", "side": side}
    run = Run(user_id=user_id, task="knee", status=status, created_at=datetime(2026, 1, 1),
              options={"pseudonym": pseudonym, "timepoint": when, "side": side}, input_image="input.png")
    run.results.append(ModelResult(model_id="knee-kl-grader", model_version="1", model_sha256="0" * 64,
                                   role="grader", position=0, result=result))
    db.session.add(run)
    return run


@pytest.fixture
def knees(app):
    alice, bob = create_user(app, "alice"), create_user(app, "bob")
    with app.app_context():
        for when, side, value in (("2024-01-10", "L", 1.1), ("2025-01-12", "L", 1.4), ("2026-01-15", "L", 2.2),
                                  ("2024-01-10", "R", 2.9), ("2026-01-15", "R", 2.1), ("2025-06-01", "R", None)):
            knee_run(alice, when, side, value)
        knee_run(alice, "2025-03-03", "L", 3.9, status=RunStatus.FAILED)     # not finished: not a point
        knee_run(bob, "2025-01-01", "L", 0.2)                                # bob's, same pseudonym
        db.session.commit()
    return alice, bob


def _key(client) -> str:
    response = client.post("/timeline/", data={"pseudonym": PSEUDONYM})
    assert response.status_code == 302
    location = response.headers["Location"]
    assert PSEUDONYM not in location
    return re.search(r"/timeline/([0-9a-f]{32})$", location).group(1)


def test_changes_beyond_the_smallest_detectable_change_are_flagged():
    assert classify_change(KL, 1.4, 2.2, 0.5) == {"delta": pytest.approx(0.8), "kind": "progression", "flag": True}
    assert classify_change(KL, 2.9, 2.1, 0.5)["kind"] == "improvement"
    assert classify_change(KL, 1.1, 1.4, 0.5)["kind"] == "stable"


def test_the_patient_page_shows_each_side_with_its_flags(app, client, knees):
    assert login(client, "alice").status_code == 302
    key = _key(client)
    page = client.get(f"/timeline/{key}")
    assert page.status_code == 200 and page.headers["Cache-Control"].startswith("no-store")
    html = page.get_data(as_text=True)
    assert "Left knee" in html and "Right knee" in html
    assert "progression (+0.80)" in html and "improvement (-0.80)" in html and "stable (+0.30)" in html
    assert "3.90" not in html and "0.20" not in html          # the failed run and bob's run are not points
    assert html.count('class="change-progression"') == 1 and html.count('class="change-improvement"') == 1
    chart = client.get(f"/timeline/{key}/knee/kl.png")
    assert chart.status_code == 200 and chart.mimetype == "image/png"
    img = cv2.imdecode(np.frombuffer(chart.data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (280, 640) and img.std() > 10


def test_the_smallest_detectable_change_is_a_setting(app, client, knees):
    app.config["KNEE_KL_SDC"] = 1.0
    assert login(client, "alice").status_code == 302
    html = client.get(f"/timeline/{_key(client)}").get_data(as_text=True)
    assert "progression" not in html.split("<table", 1)[1] and "stable (+0.80)" in html


def test_another_user_cannot_use_the_key_and_sees_only_their_own(app, client, knees):
    assert login(client, "alice").status_code == 302
    alice_key = _key(client)
    bob = app.test_client()
    assert login(bob, "bob").status_code == 302
    assert bob.get(f"/timeline/{alice_key}").status_code == 404
    assert bob.get(f"/timeline/{alice_key}/knee/kl.png").status_code == 404
    bob_key = _key(bob)
    assert bob_key != alice_key
    html = bob.get(f"/timeline/{bob_key}").get_data(as_text=True)
    assert "0.20" in html and "2.20" not in html
    assert app.test_client().get(f"/timeline/{alice_key}").status_code == 302       # to the login page


def test_unknown_pseudonyms_keys_and_measures(app, client, knees):
    assert login(client, "alice").status_code == 302
    refused = client.post("/timeline/", data={"pseudonym": "nobody"})
    assert refused.status_code == 400 and "None of your analyses has this pseudonym" in refused.get_data(as_text=True)
    assert client.get("/timeline/" + "0" * 32).status_code == 404
    assert client.get("/timeline/not-a-key").status_code == 404
    key = _key(client)
    assert client.get(f"/timeline/{key}/knee/nothing.png").status_code == 404
    assert client.get(f"/timeline/{key}/hand/kl.png").status_code == 404
    listed = client.get("/timeline/").get_data(as_text=True)
    assert PSEUDONYM in listed and f"/timeline/{key}" in listed


def test_series_skip_withheld_answers_and_order_by_scan_date(app, knees):
    alice, _ = knees
    with app.app_context():
        runs = Run.query.filter_by(user_id=alice, status=RunStatus.DONE).all()
        series = {s.label: s for s in measure_series(KL, runs, 0.5)}
        assert [p.value for p in series["right knee"].points] == [2.9, 2.1]
        assert [p.when.isoformat() for p in series["left knee"].points] == ["2024-01-10", "2025-01-12", "2026-01-15"]
        assert series["left knee"].flags == 1 and series["left knee"].points[0].columns == ["KL 1"]


def test_knee_uploads_take_a_pseudonym_and_a_date():
    names = [spec.name for spec in get_task("knee").options]
    assert {"pseudonym", "timepoint"} <= set(names)
