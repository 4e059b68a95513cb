"""History: the user's own runs, newest first, paginated, each reopens."""
from __future__ import annotations

import re
from datetime import timedelta

from database import ModelResult, Run, db, utcnow
from tests.conftest import CLS_OURS, SEG_OURS, create_user, login, run_id_from, upload


def _seed_runs(app, user_id: int, n: int, task: str = "sacroiliac") -> list[str]:
    """n finished runs written straight to the database, oldest first (no model call needed)."""
    ids = []
    with app.app_context():
        start = utcnow() - timedelta(hours=n)
        for i in range(n):
            run = Run(user_id=user_id, task=task, status="done", created_at=start + timedelta(minutes=i),
                      input_kind="png", input_meta={"width": 256, "height": 256, "modality": None},
                      summary={}, images={}, timings={"total_ms": 10.0})
            run.results.append(ModelResult(position=0, model_id=CLS_OURS, model_version="0.0.1",
                                           model_sha256="0" * 64, role="classifier", images={},
                                           result={"as_status": "positive" if i % 2 else "negative",
                                                   "stage_name": ("Normal", "Early", "Moderate", "Advanced")[i % 4]}))
            db.session.add(run)
            db.session.commit()
            ids.append(run.public_id)
    return ids


def _listed(html: str) -> list[str]:
    return re.findall(r'href="/runs/([0-9a-f]{32})"', html)


def test_history_lists_own_runs_newest_first_with_a_headline(app, alice, users):
    ids = _seed_runs(app, users["alice"], 3)
    response = alice.get("/history")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    assert _listed(html) == ids[::-1]
    assert "AS negative, Moderate" in html          # run 2 (the newest)
    assert "AS positive, Early" in html
    assert CLS_OURS in html and "Sacroiliac MRI" in html


def test_history_paginates(make_app):
    app = make_app(RUNS_PER_PAGE=2)
    uid = create_user(app, "alice")
    client = app.test_client()
    login(client, "alice")
    ids = _seed_runs(app, uid, 5)[::-1]             # newest first
    pages = [_listed(client.get(f"/history?page={p}").get_data(as_text=True)) for p in (1, 2, 3)]
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    first = client.get("/history").get_data(as_text=True)
    assert "Page 1 of 3" in first and "page=2" in first
    assert _listed(client.get("/history?page=9").get_data(as_text=True)) == []
    assert client.get("/history?page=abc").status_code == 200


def test_history_shows_only_own_runs(app, alice, bob, users):
    mine = _seed_runs(app, users["alice"], 2)
    theirs = _seed_runs(app, users["bob"], 2)
    assert sorted(_listed(alice.get("/history").get_data(as_text=True))) == sorted(mine)
    assert sorted(_listed(bob.get("/history").get_data(as_text=True))) == sorted(theirs)


def test_each_row_reopens_its_run(app, alice, scan_png):
    created = [run_id_from(upload(alice, scan_png)) for _ in range(2)]
    listed = _listed(alice.get("/history").get_data(as_text=True))
    assert listed == created[::-1]
    for run_id in listed:
        page = alice.get(f"/runs/{run_id}")
        assert page.status_code == 200 and SEG_OURS.encode() in page.data


def test_history_requires_login(client):
    response = client.get("/history")
    assert response.status_code == 302 and "/login?next=" in response.headers["Location"]
