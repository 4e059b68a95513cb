"""Roles and review: sharing, reviewers' anonymous view, verdicts, agreement and weighted kappa."""
from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from database import Review, Run, User, db
from tasks.base import model_grade_of, review_scale_of
from tasks.sacroiliac import STAGE_NAMES, TASK
from tests.conftest import ALL_MODELS, CLS_OURS, CLS_REF, SEG_OURS, create_user, login, run_id_from, upload
from tasks.metrics import quadratic_weighted_kappa


@pytest.fixture
def people(app, users):
    """alice and bob (clinicians), quinn and xavi (reviewers), ada (admin): logged-in clients."""
    create_user(app, "quinn", role="reviewer")
    create_user(app, "xavi", role="reviewer")
    create_user(app, "ada", role="admin")
    clients = {}
    for name in ("alice", "bob", "quinn", "xavi", "ada"):
        c = app.test_client()
        assert login(c, name).status_code == 302
        clients[name] = c
    return clients


def _share(client, run_id):
    return client.post(f"/runs/{run_id}/share")


def _stage_of(app, run_id, model_id=CLS_OURS) -> int:
    with app.app_context():
        run = Run.query.filter_by(public_id=run_id).one()
        return next(r.result["stage"] for r in run.results if r.model_id == model_id)


def test_quadratic_weighted_kappa_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 4, 30).tolist()
        b = [min(3, max(0, x + int(rng.integers(-1, 2)))) for x in a]
        ours = quadratic_weighted_kappa(a, b, 4)
        theirs = cohen_kappa_score(a, b, weights="quadratic", labels=[0, 1, 2, 3])
        assert ours == pytest.approx(theirs, abs=1e-9)
    assert quadratic_weighted_kappa([2, 2], [2, 2], 4) is None      # undefined: one grade only
    assert quadratic_weighted_kappa([], [], 4) is None
    assert quadratic_weighted_kappa([0, 3], [0, 3], 4) == pytest.approx(1.0)


def test_sacroiliac_declares_its_review_scale():
    scale = review_scale_of(TASK)
    assert scale.labels == STAGE_NAMES and scale.role == "classifier"
    assert model_grade_of(TASK, "classifier", {"stage": 2}) == 2
    assert model_grade_of(TASK, "segmenter", {"stage": 2}) is None
    assert model_grade_of(TASK, "classifier", {"stage": 9}) is None
    assert model_grade_of(TASK, "classifier", {"stage": True}) is None


def test_share_review_and_agreement_flow(app, people, scan_png):
    alice, quinn, xavi, bob = people["alice"], people["quinn"], people["xavi"], people["bob"]
    run_id = run_id_from(upload(alice, scan_png, model_ids=ALL_MODELS))

    # not shared yet: invisible to reviewers
    assert quinn.get(f"/review/runs/{run_id}").status_code == 404
    assert run_id not in quinn.get("/review?show=all").get_data(as_text=True)
    assert bob.post(f"/runs/{run_id}/share").status_code == 404          # only the owner shares

    assert _share(alice, run_id).status_code == 302
    page = alice.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Shared for review since" in page and "Stop sharing" in page

    queue = quinn.get("/review").get_data(as_text=True)
    assert run_id in queue and "alice" not in queue
    html = quinn.get(f"/review/runs/{run_id}").get_data(as_text=True)
    assert "alice" not in html and "Your verdict" in html
    for stage in ("Normal", "Early", "Moderate", "Advanced"):
        assert f">{stage}</option>" in html
    # the reviewer can open the run's images, never the owner's pages
    urls = sorted(set(re.findall(r'<img src="(/runs/[0-9a-f]{32}/images/[^"]+)"', html)))
    assert urls and all(quinn.get(u).status_code == 200 for u in urls)
    assert quinn.get(f"/runs/{run_id}").status_code == 404
    assert quinn.get(f"/runs/{run_id}/export.json").status_code == 404

    model_stage = _stage_of(app, run_id)
    other = (model_stage + 2) % 4
    # disagree needs a grade
    response = quinn.post(f"/review/runs/{run_id}", data={"verdict": "disagree", "comment": "hmm"})
    assert response.status_code == 400 and b"Stage you would give" in response.data
    response = quinn.post(f"/review/runs/{run_id}", data={"verdict": "disagree", "grade": str(other),
                                                         "comment": "erosions on the left"})
    assert response.status_code == 302
    assert xavi.post(f"/review/runs/{run_id}", data={"verdict": "agree"}).status_code == 302
    # agreeing with a different grade is contradictory
    response = xavi.post(f"/review/runs/{run_id}", data={"verdict": "agree", "grade": str(other)})
    assert response.status_code == 400


    with app.app_context():
        grades = {r.reviewer.username: (r.verdict, r.grade) for r in Review.query.all()}
    assert grades == {"quinn": ("disagree", other), "xavi": ("agree", model_stage)}

    # the owner sees both verdicts, numbered not named, and their agreement with the models
    page = alice.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Reviewer 1" in page and "Reviewer 2" in page and "quinn" not in page and "xavi" not in page
    assert "1</strong> of 2" in page and "erosions on the left" in page
    assert "same grade" in page and CLS_REF in page

    # the reviewer sees others' verdicts once they gave theirs ("You" for their own)
    html = quinn.get(f"/review/runs/{run_id}").get_data(as_text=True)
    assert "You" in html and "Reviewer 2" in html

    # revising keeps one row per reviewer
    assert quinn.post(f"/review/runs/{run_id}", data={"verdict": "agree"}).status_code == 302
    with app.app_context():
        assert Review.query.count() == 2

    # the export carries the verdicts too
    export = alice.get(f"/runs/{run_id}/export.json")
    assert export.status_code == 200 and "attachment" in export.headers["Content-Disposition"]
    body = export.get_json()
    assert body["id"] == run_id and len(body["reviews"]) == 2

    # unsharing hides it from reviewers again; verdicts stay with the run
    assert alice.post(f"/runs/{run_id}/unshare").status_code == 302
    assert quinn.get(f"/review/runs/{run_id}").status_code == 404
    assert all(quinn.get(u).status_code == 404 for u in urls)
    assert "Reviewer 1" in alice.get(f"/runs/{run_id}").get_data(as_text=True)


def test_kappa_on_the_models_page(app, people, scan_png):
    """Three reviewed runs whose classifier said stages 0, 1 and 3 (set in the database: the tiny
    untrained model always gives one stage); the reviewer agrees twice and says 2 instead of 3.
    Quadratic weighted kappa by hand, 4 stages: observed weighted disagreement (2-3)^2 = 1; expected,
    from the margins (reviewer 0,1,2 / model 0,1,3; every cell 1/3): (0+1+9+1+0+4+4+1+1)/3 = 7;
    kappa = 1 - 1/7 = 0.857."""
    alice, quinn = people["alice"], people["quinn"]
    for model_stage, verdict, grade in ((0, "agree", None), (1, "agree", None), (3, "disagree", 2)):
        run_id = run_id_from(upload(alice, scan_png, model_ids=[SEG_OURS, CLS_OURS]))
        with app.app_context():
            run = Run.query.filter_by(public_id=run_id).one()
            result = next(r for r in run.results if r.model_id == CLS_OURS)
            result.result = {**result.result, "stage": model_stage}
            db.session.commit()
        assert _share(alice, run_id).status_code == 302
        form = {"verdict": verdict, **({"grade": str(grade)} if grade is not None else {})}
        assert quinn.post(f"/review/runs/{run_id}", data=form).status_code == 302
    html = alice.get("/models/").get_data(as_text=True)
    row = re.search(rf'<tr[^>]*>(?:(?!</tr>).)*<code class="small">{CLS_OURS}</code>(?:(?!</tr>).)*</tr>', html, re.S)
    assert row, "no row for the classifier"
    cell = re.sub(r"\s+", " ", row.group(0))
    assert "weighted κ</span> 0.86</span>" in cell
    assert "same grade</span> 67%</span>" in cell
    assert "3 verdicts on 3 runs" in cell
    assert quadratic_weighted_kappa([0, 1, 2], [0, 1, 3], 4) == pytest.approx(6 / 7)


def test_roles_keep_to_their_pages(app, people):
    alice, quinn, ada = people["alice"], people["quinn"], people["ada"]
    for path in ("/admin/", "/admin/users", "/admin/models", "/admin/audit", "/admin/audit.csv"):
        assert alice.get(path).status_code == 403, path
        assert quinn.get(path).status_code == 403, path
        assert ada.get(path).status_code == 200, path
    for path in ("/review", "/review?show=all"):
        assert alice.get(path).status_code == 403
        assert ada.get(path).status_code == 403
        assert quinn.get(path).status_code == 200
    # uploads are for clinicians
    assert quinn.get("/upload").status_code == 403
    assert ada.get("/upload").status_code == 403
    assert alice.get("/upload").status_code == 200
    # landing pages
    assert quinn.get("/").headers["Location"].endswith("/review")
    assert ada.get("/").headers["Location"].endswith("/admin/")
    # anonymous: to the login page
    anon = app.test_client()
    for path in ("/admin/", "/review", "/admin/audit.csv"):
        response = anon.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_reviewer_cannot_review_their_own_or_unfinished_runs(app, people):
    with app.app_context():
        quinn = User.query.filter_by(username="quinn").one()
        alice = User.query.filter_by(username="alice").one()
        own = Run(user_id=quinn.id, task="sacroiliac", status="done", shared_at=db.func.now())
        pending = Run(user_id=alice.id, task="sacroiliac", status="running", shared_at=db.func.now())
        db.session.add_all([own, pending])
        db.session.commit()
        ids = own.public_id, pending.public_id
    for run_id in ids:
        assert people["quinn"].get(f"/review/runs/{run_id}").status_code == 404
        assert people["quinn"].post(f"/review/runs/{run_id}", data={"verdict": "agree"}).status_code == 404
