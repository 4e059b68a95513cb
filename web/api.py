"""JSON API v1: analyze a scan, fetch a stored run, list tasks and models.

Authentication: `Authorization: Bearer <token>` (tokens from the account page;
an expired or revoked one gets 401), or the browser session. Bearer requests carry no cookies to forge, so the
blueprint is exempt from the form CSRF check; a session-authenticated POST must
send the CSRF token in the `X-CSRFToken` header instead.
Errors are always `{"error": {"status": n, "message": "..."}}`.
"""
from __future__ import annotations

import functools
import re
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request, url_for
from flask_login import current_user
from flask_wtf.csrf import ValidationError, validate_csrf

from config import FALSE_WORDS, TRUE_WORDS
from database import ApiToken, Run, RunStatus, User, db, disabled_model_ids
from model_loader import current_registry
from jobs import wait_until_settled
from predict import STUDY_KIND, Analysis, ImageReadError, PredictionError, recognise_upload
from storage import upload_limits
from tasks import all_tasks, get_task
from pacs.client import PacsError
from web.access import owned_run_or_404
from web.audit import model_versions_of, record, run_resource
from web.errors import is_api_request, json_error
from web.filters import image_url, model_problem
from web.login import login_manager
from web.pacs import store_results
from web.report import report_response
from web.uploads import queue_upload
from web.security import analysis_retry_after, too_many_analyses

bp = Blueprint("api", __name__, url_prefix="/api")


def exempt_from_form_csrf(app: Flask) -> None:
    app.extensions["csrf"].exempt(bp)


# -- authentication ------------------------------------------------------------------
def _unauthorized(message: str, invalid_token: bool = False):
    challenge = 'Bearer realm="JointScan"' + (', error="invalid_token"' if invalid_token else "")
    return json_error(401, message, {"WWW-Authenticate": challenge})


def authenticate_request() -> tuple[User | None, Any]:
    """(user, None) or (None, an error response). A bearer header, when present, decides alone."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, _unauthorized("Send the API token as 'Authorization: Bearer <token>'.")
        row = ApiToken.find_active(token)
        if row is None or row.user.disabled:
            return None, _unauthorized("The API token is invalid, expired or has been revoked.", invalid_token=True)
        if row.note_use():      # at most one write a minute per token, not one per request
            db.session.commit()
        g.auth_method = "token"
        return row.user, None
    if current_user.is_authenticated:
        g.auth_method = "session"
        return current_user._get_current_object(), None
    if is_api_request():
        return None, _unauthorized("Authentication required: send 'Authorization: Bearer <token>' "
                                   "(create a token on your account page).")
    return None, login_manager.unauthorized()


def authenticated(view):
    """Call `view(user, ...)` for a request authenticated by token or session; else answer 401."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        user, problem = authenticate_request()
        if problem is not None:
            return problem
        return view(user, *args, **kwargs)

    return wrapper


def _session_csrf_problem():
    """A session-authenticated POST must carry the CSRF token in X-CSRFToken."""
    if g.get("auth_method") != "session" or not current_app.config.get("WTF_CSRF_ENABLED", True):
        return None
    try:
        validate_csrf(request.headers.get("X-CSRFToken"))
    except ValidationError:
        return json_error(400, "A request authenticated by the session cookie must send the CSRF token "
                               "in the X-CSRFToken header (or use a bearer token).")
    return None


# -- serialisation ---------------------------------------------------------------------
def is_heatmap(task: Any, name: str) -> bool:
    """Whether the task declares the image an explanation (its `explanation_images`)."""
    return task is not None and task.is_explanation(name)


def _images(run: Run, images: dict[str, str] | None, task: Any, include_heatmaps: bool) -> dict[str, str]:
    # A study's slice pictures are listed per slice (study_json), not here.
    return {name: image_url(run, file_name, external=True) for name, file_name in (images or {}).items()
            if (include_heatmaps or not is_heatmap(task, name)) and not SLICE_IMAGE.fullmatch(name)}


def iso_utc(value) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def progress_of(run: Run) -> dict[str, Any]:
    """Where the run's job is: its status, each stage with its state (done, current, waiting, or failed where
    it stopped), and the reason of a failure. The status endpoint's body and the progress page's list."""
    stages = [list(s) for s in run.stages or []]
    keys = [key for key, _label in stages]
    at = keys.index(run.stage) if run.stage in keys else (len(keys) if run.status == RunStatus.DONE else 0)
    failed = run.status == RunStatus.FAILED
    rows = []
    for i, (key, label) in enumerate(stages):
        if run.status == RunStatus.DONE or i < at:
            state = "done"
        elif i == at:
            state = "failed" if failed else "current"
        else:
            state = "waiting"
        rows.append({"key": key, "label": label, "state": state})
    return {"id": run.public_id, "status": run.status, "stage": run.stage, "stages": rows,
            "attempts": run.attempts, "error": run.error, "settled": run.settled,
            "created_at": iso_utc(run.created_at), "started_at": iso_utc(run.started_at),
            "finished_at": iso_utc(run.finished_at)}


def run_json(run: Run, include_heatmaps: bool = True) -> dict[str, Any]:
    task = get_task(run.task)
    meta = run.input_meta or {}
    done = run.status == RunStatus.DONE
    images = {}
    if done:
        if run.input_image:
            images["input"] = image_url(run, run.input_image, external=True)
        images.update(_images(run, run.images, task, include_heatmaps))
    body: dict[str, Any] = {
        "id": run.public_id,
        "task": run.task,
        "status": run.status,
        "created_at": iso_utc(run.created_at),
        "finished_at": iso_utc(run.finished_at),
        "options": run.options or {},
        "progress": {k: v for k, v in progress_of(run).items() if k in ("stage", "stages", "attempts")},
        "timings": run.timings or {},
        "summary": run.summary or {},
        # What the image recogniser took the upload for (null: not checked), and an override of it.
        "recognised": (run.summary or {}).get("recognised"),
        "analysed_anyway": bool((run.summary or {}).get("analysed_anyway")),
        "input": {"width": meta.get("width"), "height": meta.get("height"),
                  "modality": meta.get("modality"), "kind": run.input_kind,
                  # a PACS image: its study, series and image UIDs and accession number (no other header)
                  **({"source": meta["source"]} if meta.get("source") else {})},
        "images": images,
        "results": [{
            "model_id": r.model_id,
            "version": r.model_version,
            "sha256": r.model_sha256,
            "role": r.role,
            "elapsed_ms": r.elapsed_ms,
            "result": r.result or {},
            "images": _images(run, r.images, task, include_heatmaps) if done else {},
        } for r in run.results],
        "links": {"self": url_for("api.get_run", public_id=run.public_id, _external=True),
                  "status": url_for("api.run_status", public_id=run.public_id, _external=True),
                  "report": url_for("api.run_report", public_id=run.public_id, _external=True),
                  "html": url_for("scans.result", public_id=run.public_id, _external=True)},
    }
    if run.input_kind == STUDY_KIND:
        body["study"] = study_json(run, meta, done, task, include_heatmaps)
    if run.status == RunStatus.FAILED:
        body["error"] = run.error
    return body


SLICE_IMAGE = re.compile(r"s(\d{2,3})_(image|region|oedema|gradcam)")


def study_json(run: Run, meta: dict[str, Any], done: bool, task: Any, include_heatmaps: bool) -> dict[str, Any]:
    """A study's run: its series (coded facts), one row per slice with the slice viewer's pictures, and the
    masks as NIfTI volumes on the input's grid."""
    summary = run.summary or {}
    pictures: dict[int, dict[str, str]] = {}
    for name, file_name in (run.images or {}).items() if done else ():
        match = SLICE_IMAGE.fullmatch(name)
        if match and (include_heatmaps or not is_heatmap(task, name)):
            pictures.setdefault(int(match.group(1)) + 1, {})[match.group(2)] = image_url(run, file_name,
                                                                                       external=True)
    return {"series": meta.get("series") or [], "slices": meta.get("slices"),
            "per_slice": [{**row, "images": pictures.get(row["slice"], {})} for row in summary.get("per_slice") or []],
            "files": {name: url_for("scans.run_file", public_id=run.public_id, name=name, _external=True)
                      for name in (summary.get("files") or {})} if done else {}}


def _flag(raw: str | None, default: bool) -> bool | None:
    if raw is None or raw.strip() == "":
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


# -- routes ----------------------------------------------------------------------------
@bp.get("/v1/tasks")
@authenticated
def list_tasks(user):
    reg = current_registry()
    disabled = disabled_model_ids()
    tasks = []
    for task in all_tasks().values():
        models = []
        for e in reg.entries(task.name):
            issue = model_problem(reg, e.id, disabled, user)
            models.append({"id": e.id, "title": e.title, "role": e.role, "version": e.version,
                           "reference": e.reference, "default": e.default, "sha256": e.sha256,
                           "available": issue is None, "problem": issue})
        tasks.append({"name": task.name, "title": task.title, "description": task.description,
                      "roles": [{"name": r.name, "title": r.title, "required": r.required} for r in task.roles],
                      "options": [{"name": o.name, "label": o.label, "kind": o.kind, "default": o.default,
                                   "choices": [{"value": v, "label": lab} for v, lab in o.choices],
                                   "help": o.help, "max_length": o.max_length}
                                  for o in getattr(task, "options", ())],
                      "models": models})
    return jsonify(tasks=tasks)


def _clinician_uploads(user):
    """(refusal, uploads): the request's uploaded files, or why they are not taken (CSRF, role, rate, none sent)
    as the response to give."""
    problem = _session_csrf_problem()
    if problem is not None:
        return problem, []
    if user.role != "clinician":
        return json_error(403, "Only clinician accounts can analyse scans."), []
    retry_after = analysis_retry_after(user.id)
    if retry_after is not None:
        return json_error(429, too_many_analyses(retry_after), {"Retry-After": str(retry_after)}), []
    uploads = [f for f in request.files.getlist("file") if f]    # a body over MAX_CONTENT_LENGTH raises 413 here
    if not uploads:
        return json_error(400, "Send the scan as the multipart form field 'file' (repeat it for the files of a "
                               "study)."), []
    return None, uploads


@bp.post("/v1/analyze")
@authenticated
def analyze_scan(user):
    refusal, uploads = _clinician_uploads(user)
    if refusal is not None:
        return refusal
    task_name = (request.form.get("task") or "").strip()
    if not task_name:
        names = ", ".join(all_tasks())
        return json_error(400, f"The field 'task' is required (one of: {names}).")
    task = get_task(task_name)
    if task is None:
        return json_error(400, f"Unknown task '{task_name[:40]}'.")
    model_ids = [part.strip() for raw in request.form.getlist("model_ids") for part in raw.split(",")
                 if part.strip()]
    include_heatmaps = _flag(request.form.get("include_heatmaps"), default=True)
    if include_heatmaps is None:
        return json_error(400, "include_heatmaps must be true or false.")
    analyse_anyway = _flag(request.form.get("analyse_anyway"), default=False)
    if analyse_anyway is None:
        return json_error(400, "analyse_anyway must be true or false.")
    # Task options (see GET /api/v1/tasks) are plain form fields named as the option.
    options = {spec.name: request.form.get(spec.name, "") for spec in getattr(task, "options", ())}
    wait = _flag(request.args.get("wait"), default=False)
    if wait is None:
        return json_error(400, "wait must be true or false.")
    files = [(f.read(), f.filename) for f in uploads]
    data = files[0][0] if len(files) == 1 and not task.reads_studies else files
    try:
        run = queue_upload(user, data, Analysis(task_name, model_ids, options, analyse_anyway=analyse_anyway),
                           via=" via API")
    except (ImageReadError, PredictionError) as exc:
        recognised = getattr(exc, "recognised", None)
        return json_error(exc.status, exc.message, details={"recognised": recognised} if recognised else None)
    g.no_store = True
    location = url_for("api.get_run", public_id=run.public_id, _external=True)
    if wait:
        run = wait_until_settled(run, float(current_app.config["API_WAIT_S"]))
        if run.status == RunStatus.FAILED:
            return json_error(500, f"The analysis failed: {run.error}", {"Location": location},
                              details={"run": run_json(run, include_heatmaps)})
        if run.status == RunStatus.DONE:
            response = jsonify(run_json(run, include_heatmaps))
            response.status_code = 201
            response.headers["Location"] = location
            return response
    # Accepted: the run is queued or running; poll its status (or the run) until it is done or failed.
    response = jsonify(run_json(run, include_heatmaps))
    response.status_code = 202
    response.headers["Location"] = location
    response.headers["Retry-After"] = "1"
    return response


@bp.get("/v1/runs/<public_id>/status")
@authenticated
def run_status(user, public_id: str):
    """A small body to poll while a run is queued or running: its status and stages (no results)."""
    run = owned_run_or_404(public_id, user)
    g.no_store = True
    body = progress_of(run)
    body["links"] = {"run": url_for("api.get_run", public_id=run.public_id, _external=True),
                     "html": url_for("scans.result", public_id=run.public_id, _external=True)}
    return jsonify(body)


@bp.post("/v1/recognise")
@authenticated
def recognise_scan(user):
    """What an upload looks like and which task suits it. Stores nothing but the audit row."""
    refusal, uploads = _clinician_uploads(user)
    if refusal is not None:
        return refusal
    try:
        # A study's files are alike: the first one tells what the upload is.
        found = recognise_upload(uploads[0].read(), registry=current_registry(), limits=upload_limits())
    except (ImageReadError, PredictionError) as exc:
        record("recognise", "failed", user=user, detail=f"HTTP {exc.status} ({type(exc).__name__})")
        return json_error(exc.status, exc.message)
    record("recognise", user=user, detail=f"recognised as {found['recognised']['kind']}")
    g.no_store = True
    return jsonify(found)


@bp.get("/v1/runs/<public_id>/report.pdf")
@authenticated
def run_report(user, public_id: str):
    """The run's PDF report (web/report.py), for its owner."""
    run = owned_run_or_404(public_id, user)
    g.no_store = True
    return report_response(run, user)


@bp.post("/v1/runs/<public_id>/pacs")
@authenticated
def store_in_pacs(user, public_id: str):
    """Send a finished run's results back to the PACS its image came from: SEG, SR, secondary capture, PDF."""
    problem = _session_csrf_problem()
    if problem is not None:
        return problem
    run = owned_run_or_404(public_id, user)
    try:
        stored = store_results(run, user)
    except PacsError as exc:
        return json_error(exc.status, f"Nothing was sent: {exc.message}")
    return jsonify({"id": run.public_id, "stored": stored})


@bp.get("/v1/runs/<public_id>")
@authenticated
def get_run(user, public_id: str):
    include_heatmaps = _flag(request.args.get("include_heatmaps"), default=True)
    if include_heatmaps is None:
        return json_error(400, "include_heatmaps must be true or false.")
    run = owned_run_or_404(public_id, user)
    record("view_run", user=user, resource=run_resource(run), models=model_versions_of(run), detail="via API")
    g.no_store = True
    return jsonify(run_json(run, include_heatmaps))
