"""From PACS: search the configured DICOMweb server's studies, pick a series, analyse it with a task; and send a
finished run's results back beside its source image (SEG, SR, secondary capture, encapsulated PDF).

Every step is a POST form (CSRF-protected): the patient ID, accession number and UIDs travel in request bodies,
never in URLs. A retrieved image goes through the same checks and de-identifying reader as an upload
(predict.submit); the run keeps the study, series and image UIDs and the accession number, nothing else of its
headers. A PACS that is down, refuses JointScan's credentials, or holds an empty study is said so, and nothing
is stored.
"""
from __future__ import annotations

import io

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from pydicom import dcmwrite
from wtforms import DateField, HiddenField, SelectField, StringField, SubmitField
from wtforms.validators import Length, Optional, Regexp

from database import Run, RunStatus
from jobs import wait_until_settled
from pacs.client import Pacs, PacsError, PacsSettings, pick_image
from pacs.export import ModelFacts, RunFacts, build, kinds
from predict import STUDY_KIND, Analysis, ImageReadError, PredictionError
from reports.pdf import render
from storage import results_dir
from tasks import all_tasks, get_task
from web.access import no_store, owned_run_or_404
from web.audit import model_versions_of, record, run_resource
from web.report import report_of
from web.uploads import queue_upload
from web.security import analysis_retry_after, role_required, too_many_analyses

bp = Blueprint("pacs", __name__, url_prefix="/pacs")
UID = r"^[0-9]+(\.[0-9]+)*$"
MODALITIES = [("", "Any"), ("MR", "MR"), ("CR", "CR"), ("DX", "DX"), ("CT", "CT")]


def pacs_settings() -> PacsSettings:
    c = current_app.config
    return PacsSettings(c.get("DICOMWEB_URL", ""), c.get("DICOMWEB_USER", ""), c.get("DICOMWEB_PASSWORD", ""))


class SearchForm(FlaskForm):
    patient_id = StringField("Patient pseudonym or ID", validators=[Optional(), Length(max=64)],
                             description="As the PACS knows the patient. Sent to the PACS only, never stored.")
    accession = StringField("Accession number", validators=[Optional(), Length(max=16)])
    date_from = DateField("Study date from", validators=[Optional()])
    date_to = DateField("Study date to", validators=[Optional()])
    modality = SelectField("Modality", choices=MODALITIES, validators=[Optional()])
    submit = SubmitField("Search the PACS")


class StudyForm(FlaskForm):
    study_uid = HiddenField(validators=[Regexp(UID), Length(max=64)])
    submit = SubmitField("Show its series")


class AnalyseForm(FlaskForm):
    study_uid = HiddenField(validators=[Regexp(UID), Length(max=64)])
    series_uid = HiddenField(validators=[Regexp(UID), Length(max=64)])
    accession = HiddenField(validators=[Optional(), Length(max=16)])
    task = SelectField("Task")
    submit = SubmitField("Analyse")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.task.choices = [(t.name, t.title) for t in all_tasks().values()]


class StoreForm(FlaskForm):
    submit = SubmitField("Send the results to the PACS")


def _page(**context):
    return render_template("pacs/index.html", configured=pacs_settings().configured, **context)


@bp.route("/", methods=["GET", "POST"])
@role_required("clinician")
@no_store
def index():
    form = SearchForm()
    if not pacs_settings().configured:             # the page says so; not a failure of the request
        return _page(form=form)
    if not form.validate_on_submit():
        return _page(form=form), 400 if form.errors else 200
    try:
        studies = Pacs(pacs_settings()).studies(
            patient_id=(form.patient_id.data or "").strip(), accession=(form.accession.data or "").strip(),
            date_from=form.date_from.data.isoformat() if form.date_from.data else "",
            date_to=form.date_to.data.isoformat() if form.date_to.data else "", modality=form.modality.data or "")
    except PacsError as exc:
        record("pacs_search", "failed", detail=exc.message[:120])
        return _page(form=form, error=exc.message), exc.status
    record("pacs_search", detail=f"{len(studies)} studies")
    return _page(form=form, studies=studies, searched=True, study_form=StudyForm)


@bp.post("/study")
@role_required("clinician")
@no_store
def study():
    form = StudyForm()
    if not pacs_settings().configured:
        return _page(form=SearchForm(formdata=None))
    if not form.validate_on_submit():
        return _page(form=SearchForm(formdata=None), error="Choose a study from the search results."), 400
    try:
        series = Pacs(pacs_settings()).series(form.study_uid.data)
    except PacsError as exc:
        return _page(form=SearchForm(formdata=None), error=exc.message), exc.status
    accession = request.form.get("accession", "")[:16]
    return _page(form=SearchForm(formdata=None), series=series, study_uid=form.study_uid.data, accession=accession,
                 analyse_form=AnalyseForm)


@bp.post("/analyse")
@role_required("clinician")
def analyse():
    form = AnalyseForm()
    if not pacs_settings().configured:
        return _page(form=SearchForm(formdata=None))
    if not form.validate_on_submit():
        return _page(form=SearchForm(formdata=None), error="Choose a series and a task."), 400
    retry_after = analysis_retry_after(current_user.id)
    if retry_after is not None:
        return _page(form=SearchForm(formdata=None), error=too_many_analyses(retry_after)), 429
    try:
        pacs = Pacs(pacs_settings())
        instances = pacs.retrieve_series(form.study_uid.data, form.series_uid.data)
        image = pick_image(instances)
    except PacsError as exc:
        return _page(form=SearchForm(formdata=None), error=exc.message), exc.status
    task = get_task(form.task.data)
    # A task that reads studies analyses the whole series (its middle image stands for it when results go back);
    # the others one image of it. Each file is read and de-identified as an upload is.
    chosen = instances if task is not None and task.reads_studies else [image]
    files = [(_dicom_bytes(ds), None) for ds in chosen]
    source = {"kind": "pacs", "study_uid": form.study_uid.data, "series_uid": form.series_uid.data,
              "sop_uid": str(image.SOPInstanceUID), "accession": (form.accession.data or "")[:16]}
    try:
        run = queue_upload(current_user._get_current_object(), files if task is not None and task.reads_studies
                           else files[0][0], Analysis(form.task.data, source=source), via=" from PACS")
    except (ImageReadError, PredictionError) as exc:
        if getattr(exc, "run_public_id", None):
            flash(exc.message, "error")
            return redirect(url_for("scans.result", public_id=exc.run_public_id))
        return _page(form=SearchForm(formdata=None), error=exc.message), exc.status
    wait_until_settled(run, float(current_app.config["UPLOAD_WAIT_S"]))     # as an upload does
    return redirect(url_for("scans.result", public_id=run.public_id))


def _dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


# -- results back ------------------------------------------------------------------------------------
def run_facts(run: Run) -> RunFacts:
    """The run as pacs.export reads it; the overlay pictures are the report's own (each model's findings)."""
    folder = results_dir() / run.public_id
    report = report_of(run)
    models = [ModelFacts(mr.model_id, str(mr.model_version), mr.model_sha256 or "", mr.role, mr.result or {},
                         {k: folder / v for k, v in (mr.images or {}).items()}) for mr in run.results]
    pictures = [(p.path, p.caption) for section in report.models for p in section.pictures]
    volumes = {name: folder / stored for name, stored in ((run.summary or {}).get("files") or {}).items()}
    return RunFacts(run.public_id, run.task, models, pictures, render(report), volumes)


def store_results(run: Run, user) -> dict[str, int]:
    """Builds the run's DICOM objects on its source image (retrieved again, held in memory only) and stores
    them in the PACS; returns what was stored by kind. Raises PacsError."""
    source = (run.input_meta or {}).get("source") or {}
    if source.get("kind") != "pacs" or run.status != RunStatus.DONE:
        raise PacsError("Only a finished analysis of an image from the PACS can go back to it.", 409)
    pacs = Pacs(pacs_settings())
    image = pacs.retrieve_instance(source["study_uid"], source["series_uid"], source["sop_uid"])
    # A study's run: its masks go back over the whole analysed series, retrieved again (held in memory only).
    series = pacs.retrieve_series(source["study_uid"], source["series_uid"]) if run.input_kind == STUDY_KIND else None
    try:
        objects = build(image, run_facts(run), series)
    except (ValueError, KeyError) as exc:
        raise PacsError(f"The results could not be written as DICOM ({exc}).", 422) from exc
    pacs.store(objects, source["study_uid"])
    stored = kinds(objects)
    record("export", user=user, resource=run_resource(run), models=model_versions_of(run),
           detail="to PACS: " + ", ".join(f"{n} {k}" for k, n in sorted(stored.items())))
    return stored


@bp.post("/runs/<public_id>/store")
@role_required("clinician")
def store(public_id: str):
    run = owned_run_or_404(public_id, current_user)
    if not StoreForm().validate_on_submit():
        flash("The form expired: please send it again.", "error")
        return redirect(url_for("scans.result", public_id=run.public_id))
    try:
        stored = store_results(run, current_user._get_current_object())
    except PacsError as exc:
        flash(f"Nothing was sent: {exc.message}", "error")
    else:
        flash("Sent to the PACS: " + ", ".join(f"{n} {k}" for k, n in sorted(stored.items())) + ".", "info")
    return redirect(url_for("scans.result", public_id=run.public_id))


@bp.app_template_global("pacs_store_form")
def pacs_store_form(run: Run):
    """The result page's "send to the PACS" form, for a finished run whose image came from the PACS."""
    if run.status != RunStatus.DONE or ((run.input_meta or {}).get("source") or {}).get("kind") != "pacs":
        return None
    return StoreForm()


__all__ = ["bp", "pacs_settings", "store_results"]
