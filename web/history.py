"""The user's runs, newest first, paginated."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template
from flask_login import current_user, login_required

from database import Run, db
from web.access import no_store
from web.params import page_arg

bp = Blueprint("history", __name__)


@bp.get("/history")
@login_required
@no_store
def index():
    query = (db.select(Run).filter_by(user_id=current_user.id)
             .order_by(Run.created_at.desc(), Run.id.desc()))
    pagination = db.paginate(query, page=page_arg(), per_page=current_app.config["RUNS_PER_PAGE"],
                             error_out=False, max_per_page=200)
    return render_template("history.html", pagination=pagination, runs=pagination.items)
