"""Every registered model, and each model's card."""
from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, abort, render_template
from flask_login import login_required
from markdown_it import MarkdownIt
from markupsafe import Markup

from database import disabled_model_ids
from model_loader import current_registry
from tasks import all_tasks
from tasks.base import review_scale_of
from tasks.recognition import RECOGNITION
from web.filters import flatten, headline_metrics
from web.reviews import agreement_by_model

bp = Blueprint("models", __name__, url_prefix="/models")


@lru_cache(maxsize=1)
def _markdown():
    # CommonMark with raw HTML switched off: any HTML in a card is shown as text, and
    # markdown-it's link validation drops javascript:/vbscript:/data: (except images) URLs.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def render_card(text: str) -> Markup:
    return Markup(_markdown().render(text))


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
                  "models": [{"entry": e, "problem": reg.problem(e.id), "disabled": e.id in disabled,
                              "metrics": headline_metrics(e.metrics), "agreement": agreement.get(e.id)}
                             for e in entries if e.role == role.name]}
                 for role in task.roles]
        groups.append({"task": task, "roles": roles, "scale": scale})
    # The recogniser reads every upload before any task does (tasks/recognition.py).
    checks = [{"entry": e, "problem": reg.problem(e.id), "disabled": e.id in disabled,
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
    return render_template("models/card.html", entry=entry, problem=reg.problem(entry.id),
                           card_html=render_card(text) if text else None,
                           metrics=flatten(entry.metrics or {}, depth=4),
                           training=flatten(entry.training or {}, depth=3),
                           input_rows=flatten(entry.input or {}, depth=2))
