"""The account page: API tokens (create, list, revoke)."""
from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField, SubmitField
from wtforms.validators import DataRequired, Length

from database import ApiToken, db, utcnow

bp = Blueprint("account", __name__, url_prefix="/account")


class TokenForm(FlaskForm):
    name = StringField("Token name", validators=[DataRequired(), Length(max=80)],
                       description="For example the script or machine that will use it.")
    submit = SubmitField("Create token")


class RevokeForm(FlaskForm):
    submit = SubmitField("Revoke")


def _page(form: TokenForm, new_token: str | None = None, status: int = 200):
    tokens = current_user.tokens.order_by(ApiToken.created_at.desc(), ApiToken.id.desc()).all()
    g.no_store = True   # the page may show a fresh token once: never cache it
    return render_template("account.html", form=form, revoke_form=RevokeForm(), tokens=tokens,
                           new_token=new_token), status


@bp.get("/")
@login_required
def index():
    return _page(TokenForm())


@bp.post("/tokens")
@login_required
def create_token():
    form = TokenForm()
    if not form.validate_on_submit():
        return _page(form, status=400)
    row, plain = ApiToken.issue(current_user, form.name.data.strip())
    db.session.add(row)
    db.session.commit()
    # Shown in this response only; the database keeps its SHA-256.
    return _page(TokenForm(formdata=None), new_token=plain)


@bp.post("/tokens/<int:token_id>/revoke")
@login_required
def revoke_token(token_id: int):
    form = RevokeForm()
    if not form.validate_on_submit():
        abort(400)
    row = ApiToken.query.filter_by(id=token_id, user_id=current_user.id).first_or_404()
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.commit()
        flash(f"Token “{row.name}” revoked. Requests that use it now get 401.", "success")
    return redirect(url_for("account.index"))
