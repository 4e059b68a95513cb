"""Every registered model, and each model's card."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from flask import Blueprint, abort, render_template
from flask_login import current_user, login_required
from markdown_it import MarkdownIt
from markupsafe import Markup

from database import disabled_model_ids
from model_loader import current_registry
from tasks import all_tasks
from tasks.base import review_scale_of
from tasks.recognition import RECOGNITION
from web.filters import flatten, headline_metrics, problem_for
from web.reviews import agreement_by_model

bp = Blueprint("models", __name__, url_prefix="/models")


@lru_cache(maxsize=1)
def _markdown():
    # CommonMark with raw HTML switched off: any HTML in a card is shown as text, and
    # markdown-it's link validation drops javascript:/vbscript:/data: (except images) URLs.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def render_card(text: str) -> Markup:
    return Markup(_markdown().render(text))


# The reliability diagram's geometry (SVG user units): a square plot of side PLOT, inset by PAD.
PLOT, PAD = 200, 34
SERIES = (("reliability_before", "before", "#d95f02"), ("reliability_after", "after", "#1b6fb5"))


def _xy(confidence: float, accuracy: float) -> tuple[float, float]:
    return round(PAD + confidence * PLOT, 1), round(PAD / 2 + (1.0 - accuracy) * PLOT, 1)


def reliability_diagram(spec: dict[str, Any]) -> dict[str, Any]:
    """What the template draws for one head: the diagonal (perfect calibration) and, before and after, a line
    through each bin's (mean confidence, accuracy) with a dot sized by the bin's count."""
    rows = {key: [r for r in spec.get(key) or [] if len(r) == 3] for key, _, _ in SERIES}
    biggest = max((r[2] for rs in rows.values() for r in rs), default=1) or 1
    series = []
    for key, label, colour in SERIES:
        dots = [{"x": x, "y": y, "r": round(1.5 + 3.5 * math.sqrt(n / biggest), 1),
                 "title": f"{label}: confidence {c:.2f}, accuracy {a:.2f}, {n} inputs"}
                for c, a, n in rows[key] for x, y in [_xy(c, a)]]
        series.append({"label": label, "colour": colour, "dots": dots,
                       "points": " ".join(f"{d['x']},{d['y']}" for d in dots)})
    ticks = [{"value": v, "x": _xy(v, 0)[0], "y": _xy(0, v)[1]} for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return {"width": PAD + PLOT + 10, "height": PAD / 2 + PLOT + PAD, "plot": PLOT, "pad": PAD,
            "x0": PAD, "y0": PAD / 2, "x1": PAD + PLOT, "y1": PAD / 2 + PLOT, "ticks": ticks, "series": series}


def calibration_rows(entry) -> list[dict[str, Any]]:
    """One row per calibrated head of the entry: its figures and its reliability diagram."""
    return [{"head": head, "spec": spec, "diagram": reliability_diagram(spec)}
            for head, spec in (entry.calibration or {}).items() if isinstance(spec, dict)]


@bp.get("/")
@login_required
def index():
    reg = current_registry()
    disabled = disabled_model_ids()
    agreement = agreement_by_model()
    groups = []
    known = set()
    for task in all_tasks().values():
        entries = reg.entries(task.name)
        known.update(e.id for e in entries)
        scale = review_scale_of(task)
        roles = [{"role": role, "graded": bool(scale and scale.role == role.name),
                  "models": [{"entry": e, "problem": problem_for(current_user, reg.problem(e.id)),
                              "disabled": e.id in disabled,
                              "metrics": headline_metrics(e.metrics), "agreement": agreement.get(e.id)}
                             for e in entries if e.role == role.name]}
                 for role in task.roles]
        groups.append({"task": task, "roles": roles, "scale": scale})
    # The recogniser reads every upload before any task does (tasks/recognition.py).
    checks = [{"entry": e, "problem": problem_for(current_user, reg.problem(e.id)), "disabled": e.id in disabled,
               "metrics": headline_metrics(e.metrics)} for e in reg.entries(RECOGNITION)]
    known.update(c["entry"].id for c in checks)
    orphans = [e for e in reg.entries() if e.id not in known]   # registered for a task that is not installed
    return render_template("models/index.html", groups=groups, checks=checks, orphans=orphans)


@bp.get("/<model_id>")
@login_required
def card(model_id: str):
    reg = current_registry()
    entry = reg.get(model_id)
    if entry is None:
        abort(404)
    text = reg.card_text(entry)
    return render_template("models/card.html", entry=entry,
                           problem=problem_for(current_user, reg.problem(entry.id)),
                           card_html=render_card(text) if text else None,
                           metrics=flatten(entry.metrics or {}, depth=4),
                           training=flatten(entry.training or {}, depth=3),
                           input_rows=flatten(entry.input or {}, depth=2),
                           calibration=calibration_rows(entry))
