"""The user's runs, newest first, paginated."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request
from flask_login import current_user, login_required

from database import Run, db
from web.access import no_store

bp = Blueprint("history", __name__)


@bp.get("/history")
@login_required
@no_store
def index():
    page = request.args.get("page", 1, type=int)
    query = (db.select(Run).filter_by(user_id=current_user.id)
             .order_by(Run.created_at.desc(), Run.id.desc()))
    pagination = db.paginate(query, page=max(page, 1), per_page=current_app.config["RUNS_PER_PAGE"],
                             error_out=False, max_per_page=200)
    return render_template("history.html", pagination=pagination, runs=pagination.items)
