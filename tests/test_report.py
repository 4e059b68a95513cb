"""The PDF report of a run: what it holds (read back with pypdf), who may download it, and each task's
findings in words."""
from __future__ import annotations

import io

import pytest
from pypdf import PdfReader

from database import AuditEvent, ModelResult, Review, Run, RunStatus, User, db
from reports.pdf import NOTICE
from tasks import all_tasks, get_task
from tests.conftest import ALL_MODELS, create_user, login, run_id_from, upload
from tests.test_api import bearer, issue_token

A4 = (595.28, 841.89)


def _pdf(response) -> PdfReader:
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/pdf"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    return PdfReader(io.BytesIO(response.data))


def _text(reader: PdfReader) -> str:
    return "\n".join(page.extract_text() for page in reader.pages)


@pytest.fixture
def done_run(app, client, scan_png):
    create_user(app, "rita")
    assert login(client, "rita").status_code == 302
    public_id = run_id_from(upload(client, scan_png, model_ids=list(ALL_MODELS)))
    with app.app_context():
        assert Run.query.filter_by(public_id=public_id).one().status == RunStatus.DONE
    return public_id


def test_the_report_holds_the_findings_models_time_user_and_notice(app, client, done_run):
    reader = _pdf(client.get(f"/runs/{done_run}/report.pdf"))
    text = _text(reader)
    with app.app_context():
        run = Run.query.filter_by(public_id=done_run).one()
        results = ModelResult.query.filter_by(run_id=run.id).all()
        created = run.created_at.strftime("%Y-%m-%d %H:%M")
        classifier = next(r.result for r in results if r.role == "classifier")
    # One page for the run, then at most one per model (a single image).
    assert 2 <= len(reader.pages) <= 1 + len(results)
    for page in reader.pages:
        assert (float(page.mediabox.width), float(page.mediabox.height)) == pytest.approx(A4, abs=0.5)
        assert NOTICE in page.extract_text().replace("\n", " ")
    assert done_run in text and "rita" in text and created in text
    flat = text.replace("\n", "")
    for r in results:
        assert r.model_id in text and r.model_sha256 in flat and f"version {r.model_version}" in text
    if not classifier.get("withheld"):
        assert f"AS {classifier['as_status']}" in text
    else:
        assert "withheld" in text
    assert "Joint region" in text
    assert len(reader.pages[0].images) >= 1            # the scan as analysed
    assert sum(len(p.images) for p in reader.pages[1:]) >= len(results)   # each model's pictures


def test_reviewers_verdicts_appear_in_the_report(app, client, done_run):
    create_user(app, "vera", role="reviewer")
    with app.app_context():
        run = Run.query.filter_by(public_id=done_run).one()
        run.shared_at = db.func.now()
        db.session.add(Review(run_id=run.id, reviewer_id=User.query.filter_by(username="vera").one().id,
                              verdict="disagree", grade=1, comment="The stage looks earlier to me"))
        db.session.commit()
    text = _text(_pdf(client.get(f"/runs/{done_run}/report.pdf")))
    assert "1 reviewer verdict(s): 0 agree, 1 disagree" in text
    assert "Reviewer 1" in text and "The stage looks earlier to me" in text and "vera" not in text


def test_only_the_owner_gets_the_report_and_it_is_audited(app, client, done_run):
    assert "report.pdf" in client.get(f"/runs/{done_run}").get_data(as_text=True)
    create_user(app, "other")
    stranger = app.test_client()
    assert login(stranger, "other").status_code == 302
    assert stranger.get(f"/runs/{done_run}/report.pdf").status_code == 404
    assert app.test_client().get(f"/runs/{done_run}/report.pdf").status_code in (302, 401)
    with app.app_context():
        events = AuditEvent.query.filter_by(action="export", detail="PDF report").all()
    assert len(events) == 0
    client.get(f"/runs/{done_run}/report.pdf")
    with app.app_context():
        assert AuditEvent.query.filter_by(action="export", detail="PDF report").count() == 1


def test_the_api_serves_the_report_to_the_owner_only(app, client, done_run):
    with app.app_context():
        owner = User.query.filter_by(username="rita").one().id
        stranger = create_user(app, "mallory")
    api = app.test_client()
    reader = _pdf(api.get(f"/api/v1/runs/{done_run}/report.pdf", headers=bearer(issue_token(app, owner))))
    assert done_run in _text(reader)
    assert api.get(f"/api/v1/runs/{done_run}/report.pdf",
                   headers=bearer(issue_token(app, stranger))).status_code == 404
    assert api.get(f"/api/v1/runs/{done_run}/report.pdf").status_code == 401
    links = api.get(f"/api/v1/runs/{done_run}", headers=bearer(issue_token(app, owner))).get_json()["links"]
    assert links["report"].endswith(f"/api/v1/runs/{done_run}/report.pdf")


def test_a_failed_run_reports_its_reason(app, client):
    user_id = create_user(app, "fay")
    with app.app_context():
        run = Run(user_id=user_id, task="knee", status=RunStatus.FAILED, error="the scan could not be read",
                  input_kind="png", input_meta={"width": 10, "height": 10})
        db.session.add(run)
        db.session.commit()
        public_id = run.public_id
    assert login(client, "fay").status_code == 302
    text = _text(_pdf(client.get(f"/runs/{public_id}/report.pdf")))
    assert "The analysis failed: the scan could not be read" in text and "failed" in text


@pytest.mark.parametrize("name", sorted(all_tasks()))
def test_every_task_says_a_withheld_answer_in_words(name):
    task = get_task(name)
    for role in task.roles:
        found = task.report_findings(role.name, {"withheld": "outside the model's training data"})
        assert any("outside the model's training data" in note for note in found.notes), (name, role.name)


def test_task_findings_carry_the_numbers():
    knee = get_task("knee").report_findings("grader", {
        "grade": 2, "grade_name": "KL 2", "grade_meaning": "definite osteophytes", "value": 2.31, "confidence": 0.62,
        "side": "L", "side_name": "left", "side_source": "form", "phenotype": {"assigned": False, "reason": "noise"},
        "grade_probabilities": {"KL 0": 0.05, "KL 1": 0.13, "KL 2": 0.62, "KL 3": 0.15, "KL 4": 0.05}})
    assert ("Continuous grade", "2.31") in knee.lines and knee.tables[0][2][2] == ["KL 2", "62%"]
    hand = get_task("hand").report_findings("scorer", {"n_scored": 1, "guss_total": 140, "joints": [
        {"name": "PIP2", "plate": 70, "space": 70, "guss": 140, "peak_probability": 0.1},
        {"name": "DIP2", "guss": None, "withheld": "unsure detection"}]})
    assert hand.tables[0][2] == [["PIP2", "70", "70", "140", "10%"], ["DIP2", "-", "-", "unsure detection", "-"]]
    spine = get_task("spine").report_findings("segmenter", {
        "counts": {"vertebrae": 5, "discs": 4}, "areas_px": {"vertebra": 1200, "disc": 300, "canal": 250},
        "areas_mm2": None, "mean_confidence": {"vertebra": 0.9}, "structure": "disc"})
    assert ("Vertebrae found", "5") in spine.lines and spine.tables[0][2][0][:2] == ["Vertebrae", "1,200"]
    assert any("pixel spacing" in n for n in spine.notes)
