"""Longitudinal view of the hand task: each finger joint's GUSS over time for one patient pseudonym.

Only the signed-in user's own hand runs are read. The pseudonym never appears in a URL: the page lives
at the same opaque key as the patient's timeline (web/timeline.py: an HMAC of the user id and the
pseudonym). A change between consecutive scored timepoints larger than the smallest
detectable change (config HAND_SDC, default 20 GUSS points) is flagged: a fall as progression, a
rise as remodelling.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from flask import Blueprint, current_app, render_template, request, url_for
from flask_login import current_user, login_required
from markupsafe import Markup

from database import Run
from tasks.hand import DEFAULT_SDC, JOINT_NAMES
from web.access import no_store
from web.timeline import own_done_runs, pseudonym_for_key, pseudonym_key, pseudonym_of, pseudonym_page, run_date

bp = Blueprint("hand", __name__, url_prefix="/hand")

def _sdc() -> float:
    return float(current_app.config.get("HAND_SDC", DEFAULT_SDC))


@dataclass
class Point:
    run: Run
    when: date
    dated_by_upload: bool
    scores: dict[str, dict[str, Any]]          # joint -> the scorer's joint entry


@dataclass
class JointSeries:
    name: str
    values: list[int | None] = field(default_factory=list)
    changes: list[dict[str, Any] | None] = field(default_factory=list)   # per point, vs the previous scored one
    flags: int = 0


def _scorer_result(run: Run, model_id: str | None) -> dict[str, Any] | None:
    for r in run.results:
        if r.role == "scorer" and (model_id is None or r.model_id == model_id):
            return r.result or {}
    return None


def classify_change(previous: int, current: int, sdc: float) -> dict[str, Any]:
    delta = current - previous
    if abs(delta) > sdc:
        kind = "progression" if delta < 0 else "remodelling"
    else:
        kind = "stable"
    return {"delta": delta, "kind": kind, "flag": kind != "stable"}


def build_timeline(runs: list[Run], model_id: str | None, sdc: float) -> tuple[list[Point], list[JointSeries]]:
    points = []
    for run in runs:
        result = _scorer_result(run, model_id)
        if result is None:
            continue
        raw = (run.options or {}).get("timepoint")
        points.append(Point(run, run_date(run), not raw, {j["name"]: j for j in result.get("joints", [])}))
    points.sort(key=lambda p: (p.when, p.run.created_at, p.run.id))
    series = []
    for name in JOINT_NAMES:
        s = JointSeries(name)
        last = None
        for p in points:
            g = (p.scores.get(name) or {}).get("guss")
            s.values.append(g)
            if g is None:
                s.changes.append(None)
                continue
            if last is not None:
                ch = classify_change(last, g, sdc)
                s.changes.append(ch)
                s.flags += ch["flag"]
            else:
                s.changes.append(None)
            last = g
        series.append(s)
    return points, series


def chart(series: JointSeries, points: list[Point], width: int = 260, height: int = 110) -> dict[str, Any]:
    """SVG geometry for one joint (attributes only: the CSP forbids inline styles)."""
    pad_l, pad_r, pad_t, pad_b = 30, 8, 8, 18
    n = max(len(points), 1)
    days = [(p.when - points[0].when).days for p in points] if points else [0]
    span = max(days[-1] - days[0], 1) if points else 1

    def xy(i: int, g: float) -> tuple[float, float]:
        x = pad_l + (width - pad_l - pad_r) * ((days[i] - days[0]) / span if n > 1 else 0.5)
        y = pad_t + (height - pad_t - pad_b) * (1 - g / 200.0)
        return round(x, 1), round(y, 1)

    dots, segs, prev = [], [], None
    for i, g in enumerate(series.values):
        if g is None:
            continue
        x, y = xy(i, g)
        ch = series.changes[i]
        dots.append({"x": x, "y": y, "g": g, "kind": ch["kind"] if ch else "first"})
        if prev is not None:
            segs.append({"x1": prev[0], "y1": prev[1], "x2": x, "y2": y, "kind": ch["kind"] if ch else "stable"})
        prev = (x, y)
    grid = [{"y": xy(0, g)[1], "label": g} for g in (0, 100, 200)]
    return {"width": width, "height": height, "dots": dots, "segs": segs, "grid": grid,
            "x0": pad_l, "x1": width - pad_r}


@bp.app_template_global("hand_timeline_url")
def hand_timeline_url(run: Run) -> str | None:
    """The opaque timeline URL for a run's pseudonym (None without one)."""
    pseudonym = pseudonym_of(run)
    if not pseudonym:
        return None
    return url_for("hand.timeline", key=pseudonym_key(run.user_id, pseudonym))


@bp.app_template_global("hand_timeline_form")
def hand_timeline_form(run: Run):
    url = hand_timeline_url(run)
    if not url:
        return ""
    return Markup('<p class="hand-timeline-link"><a class="button small secondary" href="{}">'
                  'Follow this patient over time</a></p>').format(url)


@bp.route("/timeline", methods=["GET", "POST"])
@login_required
@no_store
def index():
    return pseudonym_page(own_done_runs(current_user.id, "hand"), "hand.timeline", "Hand OA over time: GUSS per joint",
                          "hand analyses")


@bp.get("/timeline/<key>")
@login_required
@no_store
def timeline(key: str):
    runs = own_done_runs(current_user.id, "hand")
    pseudonym = pseudonym_for_key(current_user.id, key, runs)
    runs = [r for r in runs if pseudonym_of(r) == pseudonym]
    scorer_ids = Counter(r.model_id for run in runs for r in run.results if r.role == "scorer")
    model_id = request.args.get("model")
    if model_id not in scorer_ids:
        model_id = scorer_ids.most_common(1)[0][0] if scorer_ids else None
    sdc = _sdc()
    points, series = build_timeline(runs, model_id, sdc)
    charts = {s.name: chart(s, points) for s in series}
    return render_template("hand/timeline.html", pseudonym=pseudonym, key=key, points=points, series=series,
                           charts=charts, sdc=sdc, model_id=model_id, scorer_ids=sorted(scorer_ids))
