"""Upload a scan, see its result, compare models, export it, and the image route.

Runs and their pages belong to their owner; the image route also serves a run's images to
reviewers while the owner shares it for review. Every view and upload is audited.
"""
from __future__ import annotations

import functools
from typing import Any

from flask import (Blueprint, abort, current_app, flash, jsonify, make_response, redirect, render_template, request,
                   send_from_directory, url_for)
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileRequired, MultipleFileField
from wtforms import BooleanField, SelectField, SelectMultipleField, SubmitField

from database import RunStatus, disabled_model_ids
from imaging.errors import size_text
from model_loader import current_registry
from jobs import wait_until_settled
from predict import Analysis, ImageReadError, PredictionError
from storage import results_dir
from tasks import all_tasks, get_task
from web.access import no_store, owned_run_or_404, run_download_files, run_image_files, visible_run_or_404
from web.api import authenticated, iso_utc, progress_of, run_json
from web.audit import model_versions_of, record, run_resource
from web.errors import error_text, handle_http_error
from web.filters import group_results, model_problem, result_context
from web.report import report_response
from web.reviews import ShareForm, review_rows, review_summary
from web.uploads import queue_upload
from web.security import analysis_retry_after, role_required, too_many_analyses

bp = Blueprint("scans", __name__)
DICE_AGREEMENT = 0.8     # below this the comparison page marks the segmenters' masks as disagreeing


class UploadForm(FlaskForm):
    task = SelectField("Task")
    # Rendered by hand as checkboxes grouped by task and role (see templates/scans/upload.html).
    model_ids = SelectMultipleField("Models", validate_choice=False)
    # One file, or a whole study for a task that reads studies: the files of a DICOM series, a zip of one,
    # or NIfTI volumes (a STIR and a T1 may come together).
    scan = MultipleFileField("Scan file(s)", validators=[FileRequired("Choose a scan file to upload.")],
                             description="PNG, JPEG or DICOM; for a study also NIfTI, a series or a zip.")
    # Shown only after the recogniser refused an upload: the user's explicit choice to go on.
    analyse_anyway = BooleanField("Analyse anyway")
    submit = SubmitField("Analyse")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.task.choices = [(t.name, t.title) for t in all_tasks().values()]


def model_groups() -> list[dict[str, Any]]:
    """Per task, per role: (entry, problem) for every registered model, for the checkboxes."""
    reg = current_registry()
    disabled = disabled_model_ids()
    groups = []
    for task in all_tasks().values():
        entries = reg.entries(task.name)
        roles = [{"role": role,
                  "models": [{"entry": e, "problem": model_problem(reg, e.id, disabled, current_user)}
                             for e in entries if e.role == role.name]}
                 for role in task.roles]
        groups.append({"task": task, "roles": roles})
    return groups


def option_field(task_name: str, option_name: str) -> str:
    """Form field name of a task option; prefixed by the task because every task's fields are on the page."""
    return f"option-{task_name}-{option_name}"


def _default_ids(groups: list[dict[str, Any]]) -> set[str]:
    return {m["entry"].id for g in groups for r in g["roles"] for m in r["models"]
            if m["entry"].default and not m["problem"]}


def _render_upload(form: UploadForm, error: str | None = None, status: int = 200, body_read: bool = True,
                   refused: bool = False):
    """The upload page. `body_read=False` when the request body must not be touched (a 413); `refused`:
    the recogniser took the upload for another kind, so the page offers to analyse it anyway."""
    groups = model_groups()
    posted = body_read and request.method == "POST"
    if not posted:
        wanted = request.args.get("task")
        if wanted in dict(form.task.choices):
            form.task.data = wanted
    checked = set(form.model_ids.data or []) if posted else _default_ids(groups)
    return render_template("scans/upload.html", form=form, groups=groups, checked=checked, error=error,
                           option_field=option_field, submitted=request.form if posted else {}, refused=refused,
                           max_upload=size_text(current_app.config["MAX_UPLOAD_BYTES"])), status


def render_upload_error(message: str, status: int):
    """The upload form with an error, without reading the request body (used for 413)."""
    if not current_user.is_authenticated:
        return None
    return _render_upload(UploadForm(formdata=None), error=message, status=status, body_read=False)


@bp.errorhandler(413)
def _upload_too_large(exc):
    # A body over MAX_CONTENT_LENGTH is refused before the form is read: show it on the form.
    if request.endpoint == "scans.upload":
        page = render_upload_error(error_text(exc)[1], 413)
        if page is not None:
            return page
    return handle_http_error(exc)


@bp.route("/upload", methods=["GET", "POST"])
@role_required("clinician")
def upload():
    form = UploadForm()
    if not form.validate_on_submit():
        return _render_upload(form, status=400 if form.errors else 200)
    task_name = form.task.data
    reg = current_registry()
    # The page lists every task's models; only the chosen task's ticked ones count.
    model_ids = [mid for mid in form.model_ids.data or []
                 if (entry := reg.get(mid)) is not None and entry.task == task_name]
    if not model_ids:
        return _render_upload(form, error="Choose at least one model for each step of the task.", status=400)
    retry_after = analysis_retry_after(current_user.id)
    if retry_after is not None:
        response = make_response(_render_upload(form, error=too_many_analyses(retry_after), status=429))
        response.headers["Retry-After"] = str(retry_after)
        return response
    task = get_task(task_name)
    options = {spec.name: request.form.get(option_field(task_name, spec.name), "")
               for spec in task.options}
    uploaded = [f for f in form.scan.data if f]
    # The file name only tells a NIfTI volume's sequence (tasks that read studies); it is never stored.
    files = [(f.read(), f.filename) for f in uploaded]
    data = files[0][0] if len(files) == 1 and not task.reads_studies else files
    try:
        run = queue_upload(current_user._get_current_object(), data,
                           Analysis(task_name, model_ids, options, analyse_anyway=bool(form.analyse_anyway.data)))
    except (ImageReadError, PredictionError) as exc:
        if getattr(exc, "run_public_id", None):   # a stored run failed: show it with its reason
            flash(exc.message, "error")
            return redirect(url_for("scans.result", public_id=exc.run_public_id))
        return _render_upload(form, error=exc.message, status=exc.status,
                              refused=getattr(exc, "recognised", None) is not None)
    # The run is queued: its page shows the progress (or, after a short wait where configured, the result).
    wait_until_settled(run, float(current_app.config["UPLOAD_WAIT_S"]))
    return redirect(url_for("scans.result", public_id=run.public_id))


def _disagreements(run) -> set[str]:
    """Result fields the models disagree on: the task's `agreement_fields` read in summary["comparison"]."""
    task = get_task(run.task)
    comparison = (run.summary or {}).get("comparison") or {}
    return task.disagreements(comparison) if task else set()


def _comparable_roles(run) -> list[str]:
    return [role for role, items in group_results(run.results).items() if len(items) >= 2]


def owned_run_page(rule: str):
    """A GET page of one of the signed-in user's own runs: login required, never cached, and 404 for a
    run that is not theirs; the view receives the run."""

    def decorate(view):
        @functools.wraps(view)
        def page(public_id: str):
            return view(owned_run_or_404(public_id, current_user))

        return bp.get(rule)(login_required(no_store(page)))

    return decorate


@owned_run_page("/runs/<public_id>")
def result(run):
    record("view_run", resource=run_resource(run), models=model_versions_of(run))
    return render_template("scans/result.html", run=run, **result_context(run), disagree=set(), progress=progress_of(run),
                           comparable=_comparable_roles(run), share_form=ShareForm(), reviews=review_rows(run),
                           review_summary=review_summary(run))


@owned_run_page("/runs/<public_id>/compare")
def compare(run):
    comparable = _comparable_roles(run)
    if run.status != RunStatus.DONE or not comparable:
        flash("Only one model per step ran for this scan: there is nothing to compare.", "info")
        return redirect(url_for("scans.result", public_id=run.public_id))
    record("view_run", resource=run_resource(run), models=model_versions_of(run), detail="comparison")
    return render_template("scans/compare.html", run=run, **result_context(run), disagree=_disagreements(run),
                           comparable=comparable, comparison=(run.summary or {}).get("comparison") or {},
                           dice_threshold=DICE_AGREEMENT)


@owned_run_page("/runs/<public_id>/report.pdf")
def report(run):
    """The run as a PDF report (web/report.py), as a download."""
    return report_response(run)


@bp.get("/runs/<public_id>/images/<name>")
@no_store
@authenticated
def run_image(user, public_id: str, name: str):
    run, as_role = visible_run_or_404(public_id, user)
    # Serve only names this run stored; never join a name from the URL that the run does not list.
    if name not in run_image_files(run):
        abort(404)
    record("view_image", user=user, resource=f"{run_resource(run)}/{name}", models=model_versions_of(run),
           detail=None if as_role == "owner" else "as reviewer")
    return send_from_directory(results_dir() / run.public_id, name, mimetype="image/png", max_age=0)


@bp.get("/runs/<public_id>/files/<name>")
@no_store
@authenticated
def run_file(user, public_id: str, name: str):
    """A study's mask as a NIfTI volume on the input's grid, as a download (owner, or a reviewer of a shared run)."""
    run, as_role = visible_run_or_404(public_id, user)
    stored = run_download_files(run).get(name)
    if stored is None:
        abort(404)
    record("export", user=user, resource=f"{run_resource(run)}/{name}", models=model_versions_of(run),
           detail="mask as NIfTI" if as_role == "owner" else "mask as NIfTI, as reviewer")
    download = f"jointscan-{run.public_id[:8]}-{name}"
    return send_from_directory(results_dir() / run.public_id, stored, mimetype="application/gzip", max_age=0,
                               as_attachment=True, download_name=download)


@owned_run_page("/runs/<public_id>/export.json")
def export(run):
    """The run as JSON (the API's representation plus the verdicts), as a download."""
    body = run_json(run)
    body["reviews"] = [{k: (iso_utc(v) if k == "when" else v)
                        for k, v in row.items() if k not in ("mine",)} for row in review_rows(run)]
    record("export", resource=run_resource(run), models=model_versions_of(run), detail="run as JSON")
    response = jsonify(body)
    response.headers["Content-Disposition"] = f'attachment; filename="jointscan-run-{run.public_id[:8]}.json"'
    return response
