"""Timelines: for one patient pseudonym, every task's longitudinal measures over time, as a chart (a PNG drawn
on the server, reports/charts.py) and a table, with changes beyond the smallest detectable change flagged.

Only the signed-in user's own finished runs are read. The pseudonym never appears in a URL: it is sent by a
POST form (CSRF-protected) and the page lives at an opaque key, an HMAC of the user id and the pseudonym under
the app's SECRET_KEY, which cannot be turned back into the pseudonym and means nothing for another user. What a
task follows is declared by the task (`longitudinal`, tasks.base.Measure); the hand's per-joint GUSS has a page
of its own (web/hand_timeline.py), which uses the same keys.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField, SubmitField
from wtforms.validators import DataRequired, Length

from database import Run, RunStatus
from reports.charts import ChartSeries, timeline_png
from tasks import all_tasks, get_task
from tasks.base import SUMMARY_ROLE, Measure, dotted
from web.access import no_store

bp = Blueprint("timeline", __name__, url_prefix="/timeline")

KEY_LENGTH = 32


class PseudonymForm(FlaskForm):
    pseudonym = StringField("Patient pseudonym", validators=[DataRequired("Enter the pseudonym used at upload."),
                                                              Length(max=40)],
                            description="Exactly as entered when the scans were uploaded.")
    submit = SubmitField("Show the timeline")


def pseudonym_key(user_id: int, pseudonym: str) -> str:
    """Opaque, per-user key for a pseudonym: HMAC-SHA256(SECRET_KEY, user id + pseudonym), hex, 32 chars."""
    secret = str(current_app.config["SECRET_KEY"]).encode()
    msg = f"timeline\x00{int(user_id)}\x00{pseudonym.strip()}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:KEY_LENGTH]


def pseudonym_of(run: Run) -> str:
    return str((run.options or {}).get("pseudonym") or "").strip()


def run_date(run: Run) -> date:
    """The scan's date as given at upload, else the upload's."""
    raw = (run.options or {}).get("timepoint")
    if raw:
        try:
            return date.fromisoformat(str(raw))
        except ValueError:
            pass
    return run.created_at.date()


def own_done_runs(user_id: int, task: str | None = None) -> list[Run]:
    query = Run.query.filter_by(user_id=user_id, status=RunStatus.DONE)
    if task:
        query = query.filter_by(task=task)
    return query.order_by(Run.created_at.asc(), Run.id.asc()).all()


def pseudonym_for_key(user_id: int, key: str, runs: list[Run]) -> str | None:
    """The pseudonym among `runs` whose key this is (404 for a malformed or unknown key)."""
    if len(key) != KEY_LENGTH or not all(c in "0123456789abcdef" for c in key):
        abort(404)
    for pseudonym in {pseudonym_of(r) for r in runs}:
        if pseudonym and hmac.compare_digest(pseudonym_key(user_id, pseudonym), key):
            return pseudonym
    abort(404)


# -- the series ------------------------------------------------------------------------------
@dataclass
class TimelinePoint:
    run: Run
    when: date
    dated_by_upload: bool
    value: float
    columns: list[Any]
    change: dict[str, Any] | None = None


@dataclass
class TimelineSeries:
    label: str
    points: list[TimelinePoint] = field(default_factory=list)

    @property
    def flags(self) -> int:
        return sum(1 for p in self.points if p.change and p.change["flag"])


def smallest_detectable_change(measure: Measure) -> float:
    return float(current_app.config.get(measure.sdc_setting, measure.sdc))


def classify_change(measure: Measure, previous: float, current: float, sdc: float) -> dict[str, Any]:
    delta = current - previous
    if abs(delta) <= sdc:
        kind = "stable"
    else:
        worse = delta > 0 if measure.worse_when == "higher" else delta < 0
        kind = "progression" if worse else "improvement"
    return {"delta": delta, "kind": kind, "flag": kind != "stable"}


def measure_series(measure: Measure, runs: list[Run], sdc: float) -> list[TimelineSeries]:
    """One series per value of `split_by` (one series without it), points in date order, each change since the
    series' previous point classified."""
    by_label: dict[str, TimelineSeries] = {}
    for run in runs:
        result = (run.summary or {}) if measure.role == SUMMARY_ROLE else \
            next((r.result or {} for r in run.results if r.role == measure.role), None)
        value = dotted(result, measure.field) if result is not None else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue           # not measured (withheld, or another model role)
        split = str(dotted(result, measure.split_by) or "") if measure.split_by else ""
        label = measure.split_names.get(split, split) or measure.title
        series = by_label.setdefault(label, TimelineSeries(label))
        series.points.append(TimelinePoint(run, run_date(run), not (run.options or {}).get("timepoint"), float(value),
                                           [dotted(result, key) for _, key in measure.columns]))
    for series in by_label.values():
        series.points.sort(key=lambda p: (p.when, p.run.created_at, p.run.id))
        for before, after in zip(series.points, series.points[1:]):
            after.change = classify_change(measure, before.value, after.value, sdc)
    return sorted(by_label.values(), key=lambda s: s.label)


def _sections(runs: list[Run]) -> list[dict[str, Any]]:
    sections = []
    for task in all_tasks().values():
        task_runs = [r for r in runs if r.task == task.name]
        for measure in task.longitudinal:
            sdc = smallest_detectable_change(measure)
            series = measure_series(measure, task_runs, sdc)
            if series:
                sections.append({"task": task, "measure": measure, "series": series, "sdc": sdc})
    return sections


# -- pages -------------------------------------------------------------------------------------
def pseudonym_page(runs: list[Run], found_endpoint: str, heading: str, what: str):
    """The form that finds a pseudonym among `runs` (POSTed, then a redirect to `found_endpoint` at its key)
    and the list of the user's pseudonyms; the general timeline and the hand's GUSS pages both use it."""
    form = PseudonymForm()
    runs = [r for r in runs if pseudonym_of(r)]
    if form.validate_on_submit():
        pseudonym = form.pseudonym.data.strip()
        if any(pseudonym_of(r) == pseudonym for r in runs):
            return redirect(url_for(found_endpoint, key=pseudonym_key(current_user.id, pseudonym)))
        form.pseudonym.errors.append(f"None of your {what} has this pseudonym.")
    seen: dict[str, dict[str, Any]] = {}
    for r in runs:
        item = seen.setdefault(pseudonym_of(r), {"count": 0, "last": run_date(r), "tasks": set(),
                                                 "key": pseudonym_key(current_user.id, pseudonym_of(r))})
        item["count"] += 1
        item["last"] = max(item["last"], run_date(r))
        item["tasks"].add(get_task(r.task).title if get_task(r.task) else r.task)
    patients = sorted(seen.items(), key=lambda kv: kv[1]["last"], reverse=True)
    return render_template("timeline/index.html", form=form, patients=patients, found_endpoint=found_endpoint,
                           heading=heading, what=what), 400 if request.method == "POST" else 200


@bp.route("/", methods=["GET", "POST"])
@login_required
@no_store
def index():
    return pseudonym_page(own_done_runs(current_user.id), "timeline.patient", "Patients over time", "analyses")


@bp.get("/<key>")
@login_required
@no_store
def patient(key: str):
    runs = own_done_runs(current_user.id)
    pseudonym = pseudonym_for_key(current_user.id, key, runs)
    runs = [r for r in runs if pseudonym_of(r) == pseudonym]
    hand_runs = sum(1 for r in runs if r.task == "hand")
    return render_template("timeline/patient.html", pseudonym=pseudonym, key=key, sections=_sections(runs),
                           runs=runs, hand_runs=hand_runs)


@bp.get("/<key>/<task_name>/<measure_name>.png")
@login_required
@no_store
def chart(key: str, task_name: str, measure_name: str):
    task = get_task(task_name)
    measure = next((m for m in getattr(task, "longitudinal", ()) if m.name == measure_name), None)
    if measure is None:
        abort(404)
    runs = own_done_runs(current_user.id, task.name)       # a pseudonym without runs of this task: 404
    pseudonym = pseudonym_for_key(current_user.id, key, runs)
    series = measure_series(measure, [r for r in runs if pseudonym_of(r) == pseudonym],
                            smallest_detectable_change(measure))
    if not series:
        abort(404)
    png = timeline_png([ChartSeries(s.label, [p.when for p in s.points], [p.value for p in s.points],
                                    [bool(p.change and p.change["flag"]) for p in s.points]) for s in series],
                       measure.title, measure.unit, measure.axis)
    return Response(png, mimetype="image/png")
