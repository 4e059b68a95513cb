"""Review: clinicians share runs, reviewers record verdicts, agreement with the models is measured.

- A run's owner shares a finished run with the reviewers' pool (and can take it back).
- Reviewers see the shared runs of others without the uploader's identity (no user name, and
  none of the task options a person typed, such as a pseudonym or a date) and record one verdict
  per run: agree, or disagree with the grade (tasks with a `review_scale`) or score they would
  give, and a comment. They see other reviewers' verdicts only after giving their own.
- The owner's run page lists the verdicts (reviewers are numbered, not named) and whether each
  agrees with the model; the models page shows, per grading model, the quadratic weighted kappa
  between reviewers' grades and the model's across every reviewed run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import RadioField, SelectField, StringField, SubmitField, TextAreaField
from wtforms.validators import InputRequired, Length, Optional

from database import Review, Run, RunStatus, db, utcnow
from tasks import all_tasks, get_task
from tasks.base import model_grade_of, review_scale_of
from tasks.metrics import quadratic_weighted_kappa
from web.access import no_store, owned_run_or_404, reviewable_run_or_404
from web.audit import model_versions_of, record, run_resource
from web.filters import result_context
from web.params import page_arg
from web.security import role_required

bp = Blueprint("reviews", __name__)

PERSONAL_OPTION_KINDS = ("text", "date")     # typed by a person: may identify the patient
VERDICT_CHOICES = [("agree", "Agree with the model"), ("disagree", "Disagree")]


@dataclass
class ModelAgreement:
    model_id: str
    pairs: int
    runs: int
    exact: float | None
    kappa: float | None


def agreement_by_model() -> dict[str, ModelAgreement]:
    """Per grading model: reviewers' grades against the model's grade over every reviewed run."""
    pairs: dict[str, list[tuple[int, int]]] = {}
    runs: dict[str, set[int]] = {}
    n_labels: dict[str, int] = {}
    tasks = all_tasks()
    graded = [name for name, task in tasks.items() if review_scale_of(task)]
    if not graded:
        return {}
    query = (db.select(Review, Run).join(Run, Review.run_id == Run.id)
             .where(Review.grade.isnot(None), Run.task.in_(graded), Run.status == RunStatus.DONE))
    for review, run in db.session.execute(query):
        task = tasks[run.task]
        scale = review_scale_of(task)
        for mr in run.results:
            grade = model_grade_of(task, mr.role, mr.result)
            if grade is None or not 0 <= review.grade < len(scale.labels):
                continue
            pairs.setdefault(mr.model_id, []).append((review.grade, grade))
            runs.setdefault(mr.model_id, set()).add(run.id)
            n_labels[mr.model_id] = len(scale.labels)
    out = {}
    for model_id, items in pairs.items():
        reviewer, model = [p[0] for p in items], [p[1] for p in items]
        out[model_id] = ModelAgreement(
            model_id=model_id, pairs=len(items), runs=len(runs[model_id]),
            exact=sum(x == y for x, y in items) / len(items),
            kappa=quadratic_weighted_kappa(reviewer, model, n_labels[model_id]))
    return out


# -- presentation ---------------------------------------------------------------------
class ReviewerRunView:
    """A run as a reviewer sees it: everything the result templates read, minus who uploaded it
    and the options a person typed (pseudonyms, dates)."""

    _hidden = {"user", "user_id", "reviews"}

    def __init__(self, run: Run):
        self._run = run
        task = get_task(run.task)
        personal = {o.name for o in getattr(task, "options", ()) if o.kind in PERSONAL_OPTION_KINDS}
        self.options = {k: v for k, v in (run.options or {}).items() if k not in personal}

    def __getattr__(self, name: str) -> Any:
        if name in self._hidden:
            raise AttributeError(name)
        return getattr(self._run, name)


def primary_model_grade(run: Run) -> tuple[Any, int | None]:
    """(the first model result with a grade, its grade): the grade "agree" refers to."""
    task = get_task(run.task)
    for mr in run.results:
        grade = model_grade_of(task, mr.role, mr.result)
        if grade is not None:
            return mr, grade
    return None, None


def review_rows(run: Run, viewer_id: int | None = None) -> list[dict[str, Any]]:
    """The run's verdicts for display: numbered reviewers, grade labels, agreement with each model."""
    task = get_task(run.task)
    scale = review_scale_of(task)
    model_grades = [(mr.model_id, model_grade_of(task, mr.role, mr.result)) for mr in run.results]
    model_grades = [(mid, g) for mid, g in model_grades if g is not None]
    rows = []
    for number, review in enumerate(run.reviews, start=1):
        label = scale.labels[review.grade] if scale and review.grade is not None and \
            0 <= review.grade < len(scale.labels) else None
        rows.append({
            "who": "You" if review.reviewer_id == viewer_id else f"Reviewer {number}",
            "mine": review.reviewer_id == viewer_id,
            "verdict": review.verdict,
            "grade": review.grade,
            "grade_label": label,
            "score_text": review.score_text,
            "comment": review.comment,
            "when": review.updated_at or review.created_at,
            "vs_models": [{"model_id": mid, "model_label": scale.labels[g] if scale else str(g),
                           "agrees": review.grade == g} for mid, g in model_grades]
            if review.grade is not None else [],
        })
    return rows


def review_summary(run: Run) -> dict[str, Any]:
    rows = list(run.reviews)
    agree = sum(r.verdict == "agree" for r in rows)
    return {"count": len(rows), "agree": agree, "disagree": len(rows) - agree}


# -- forms ------------------------------------------------------------------------------
class ReviewForm(FlaskForm):
    verdict = RadioField("Verdict", choices=VERDICT_CHOICES, validators=[InputRequired("Choose agree or disagree.")])
    grade = SelectField("The grade you would give", choices=[], validate_choice=False, validators=[Optional()])
    score_text = StringField("The score you would give", validators=[Optional(), Length(max=80)],
                             description="In words or figures, for example “7 vertebrae, disc L4/L5 narrowed”.")
    comment = TextAreaField("Comment", validators=[Optional(), Length(max=2000)],
                            description="Optional. No patient names or identifiers, please.")
    submit = SubmitField("Save verdict")


class ShareForm(FlaskForm):
    submit = SubmitField("Share")


def _grade_choices(scale) -> list[tuple[str, str]]:
    return [("", "—")] + [(str(i), label) for i, label in enumerate(scale.labels)]


# -- reviewer pages ---------------------------------------------------------------------
@bp.get("/review")
@role_required("reviewer")
@no_store
def queue():
    mine = db.select(Review.run_id).filter_by(reviewer_id=current_user.id)
    show = request.args.get("show", "todo")
    query = db.select(Run).where(Run.shared_at.isnot(None), Run.status == RunStatus.DONE,
                                 Run.user_id != current_user.id)
    if show == "todo":
        query = query.where(Run.id.not_in(mine))
    elif show == "done":
        query = query.where(Run.id.in_(mine))
    query = query.order_by(Run.shared_at.desc(), Run.id.desc())
    pagination = db.paginate(query, page=page_arg(), per_page=current_app.config["RUNS_PER_PAGE"],
                             error_out=False, max_per_page=200)
    my_reviews = {r.run_id: r for r in Review.query.filter_by(reviewer_id=current_user.id)
                  .filter(Review.run_id.in_([r.id for r in pagination.items])).all()} if pagination.items else {}
    return render_template("review/queue.html", pagination=pagination, runs=pagination.items,
                           my_reviews=my_reviews, show=show)


def _render_review(run: Run, form: ReviewForm, status: int = 200):
    context = result_context(run)
    scale = review_scale_of(context["task"])
    primary, primary_grade = primary_model_grade(run)
    mine = Review.query.filter_by(run_id=run.id, reviewer_id=current_user.id).first()
    return render_template(
        "review/run.html", **context, run=ReviewerRunView(run), disagree=set(), comparable=[], form=form,
        scale=scale, mine=mine, primary=primary,
        primary_label=(scale.labels[primary_grade] if scale and primary_grade is not None else None),
        rows=review_rows(run, current_user.id) if mine else [], summary=review_summary(run)), status


@bp.get("/review/runs/<public_id>")
@role_required("reviewer")
@no_store
def run_page(public_id: str):
    run = reviewable_run_or_404(public_id, current_user)
    form = ReviewForm()
    scale = review_scale_of(get_task(run.task))
    form.grade.choices = _grade_choices(scale) if scale else []
    mine = Review.query.filter_by(run_id=run.id, reviewer_id=current_user.id).first()
    if mine is not None and request.method == "GET":
        form.verdict.data = mine.verdict
        form.grade.data = "" if mine.grade is None else str(mine.grade)
        form.score_text.data = mine.score_text
        form.comment.data = mine.comment
    record("view_run", resource=run_resource(run), models=model_versions_of(run), detail="as reviewer")
    return _render_review(run, form)


@bp.post("/review/runs/<public_id>")
@role_required("reviewer")
@no_store
def submit(public_id: str):
    run = reviewable_run_or_404(public_id, current_user)
    task = get_task(run.task)
    scale = review_scale_of(task)
    form = ReviewForm()
    form.grade.choices = _grade_choices(scale) if scale else []
    valid = form.validate_on_submit()
    grade: int | None = None
    if valid:
        _primary, model_grade = primary_model_grade(run)
        if scale:
            raw = (form.grade.data or "").strip()
            if raw and (not raw.isdigit() or not 0 <= int(raw) < len(scale.labels)):
                form.grade.errors.append("Choose one of the listed grades.")
                valid = False
            elif raw:
                grade = int(raw)
            if valid and form.verdict.data == "disagree" and grade is None:
                form.grade.errors.append(f"Give the {scale.title.lower()} you would give.")
                valid = False
            if valid and form.verdict.data == "agree":
                if grade is not None and model_grade is not None and grade != model_grade:
                    form.grade.errors.append("You agree with the model, so your grade is the model's; "
                                             "choose Disagree to give another grade.")
                    valid = False
                grade = model_grade
        elif form.verdict.data == "disagree" and not (form.score_text.data or "").strip():
            form.score_text.errors.append("Give the score you would give.")
            valid = False
    if not valid:
        return _render_review(run, form, status=400)
    review = Review.query.filter_by(run_id=run.id, reviewer_id=current_user.id).first()
    created = review is None
    if created:
        review = Review(run_id=run.id, reviewer_id=current_user.id)
        db.session.add(review)
    review.verdict = form.verdict.data
    review.grade = grade
    review.score_text = None if scale else ((form.score_text.data or "").strip() or None)
    review.comment = (form.comment.data or "").strip() or None
    review.updated_at = utcnow()
    db.session.commit()
    record("review", resource=run_resource(run), models=model_versions_of(run),
           detail=f"{'recorded' if created else 'revised'} verdict {review.verdict}"
                  + (f", grade {grade}" if grade is not None else ""))
    flash("Your verdict is saved." if created else "Your verdict is updated.", "success")
    return redirect(url_for("reviews.run_page", public_id=run.public_id))


# -- sharing (the run's owner) -------------------------------------------------------------
def _run_to_share(public_id: str) -> Run:
    """The signed-in owner's run, for a share/unshare button whose form must validate (else 400)."""
    run = owned_run_or_404(public_id, current_user)
    if not ShareForm().validate_on_submit():
        abort(400)
    return run


def _set_shared(run: Run, shared_at, action: str) -> None:
    run.shared_at = shared_at
    db.session.commit()
    record(action, resource=run_resource(run), models=model_versions_of(run))


@bp.post("/runs/<public_id>/share")
@role_required("clinician")
def share(public_id: str):
    run = _run_to_share(public_id)
    if run.status != RunStatus.DONE:
        flash("Only a finished analysis can be shared for review.", "error")
    elif run.shared_at is None:
        _set_shared(run, utcnow(), "share")
        flash("Shared for review. Reviewers see the images and results, never your name.", "success")
    return redirect(url_for("scans.result", public_id=run.public_id))


@bp.post("/runs/<public_id>/unshare")
@role_required("clinician")
def unshare(public_id: str):
    run = _run_to_share(public_id)
    if run.shared_at is not None:
        _set_shared(run, None, "unshare")
        flash("No longer shared. Reviewers cannot open it; verdicts already given are kept.", "info")
    return redirect(url_for("scans.result", public_id=run.public_id))
