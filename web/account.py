"""The account page: password change, log out everywhere, API tokens (create, list, revoke).

A new password and "log out everywhere" end every session and revoke every API token of the user
(the page says so next to each form). Creating a token asks for the password again, so a session
left open cannot mint credentials that outlive it; a token may carry an expiry date.
"""
from __future__ import annotations

from datetime import datetime, time, timedelta

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import DateField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from database import ApiToken, Run, db, utcnow
from web.audit import record
from web.auth import log_out_everywhere, repeat_password_field, revoke_api_tokens, start_session
from web.security import MAX_PASSWORD, PasswordPolicy

bp = Blueprint("account", __name__, url_prefix="/account")
WRONG_PASSWORD = "The current password is wrong."


def current_password_is_right(_form, field) -> None:
    if not current_user.check_password(field.data or ""):
        raise ValidationError(WRONG_PASSWORD)


def current_password_field(label: str = "Current password") -> PasswordField:
    return PasswordField(label, validators=[DataRequired(), Length(max=MAX_PASSWORD), current_password_is_right])


def expires_at(last_day) -> datetime | None:
    """A token valid through `last_day` (UTC) stops working at the midnight that ends it."""
    return datetime.combine(last_day + timedelta(days=1), time.min) if last_day else None


class TokenForm(FlaskForm):
    name = StringField("Token name", validators=[DataRequired(), Length(max=80)],
                       description="For example the script or machine that will use it.")
    last_day = DateField("Valid until (optional)", validators=[Optional()],
                         description="The last day it works (UTC). Empty: until you revoke it.")
    password = current_password_field("Your password")
    submit = SubmitField("Create token")

    def validate_last_day(self, field):
        if field.data and field.data < utcnow().date():
            raise ValidationError("Choose today or a later day.")


class RevokeForm(FlaskForm):
    submit = SubmitField("Revoke")


class PasswordForm(FlaskForm):
    current = current_password_field()
    new = PasswordField("New password", validators=[DataRequired(), PasswordPolicy(username_attr="username")])
    confirm = repeat_password_field("new", "Repeat the new password")
    submit = SubmitField("Change password")

    @property
    def username(self) -> str:
        return current_user.username


class EverywhereForm(FlaskForm):
    submit = SubmitField("Log out everywhere")


def _page(form: TokenForm | None = None, new_token: str | None = None, status: int = 200,
          password_form: PasswordForm | None = None):
    tokens = current_user.tokens.order_by(ApiToken.created_at.desc(), ApiToken.id.desc()).all()
    g.no_store = True   # the page may show a fresh token once: never cache it
    own = current_user.storage_quota_bytes
    storage = {"used": Run.stored_by(current_user.id), "default": own is None,
               "quota": own if own is not None else int(current_app.config["STORAGE_QUOTA_BYTES"])}
    return render_template("account.html", form=form or TokenForm(formdata=None), revoke_form=RevokeForm(),
                           storage=storage,
                           tokens=tokens, new_token=new_token,
                           password_form=password_form or PasswordForm(formdata=None),
                           everywhere_form=EverywhereForm(formdata=None)), status


@bp.get("/")
@login_required
def index():
    return _page()


@bp.post("/password")
@login_required
def change_password():
    """A new password ends every other session (the session version moves on); this one is renewed."""
    form = PasswordForm()
    if not form.validate_on_submit():
        if form.current.errors:
            record("password_change", "failed", detail="wrong current password")
        return _page(password_form=form, status=400)
    user = current_user._get_current_object()
    user.set_password(form.new.data)
    user.password_changed_at = utcnow()
    user.end_all_sessions()
    revoked = revoke_api_tokens(user, "password change")
    db.session.commit()
    record("password_change", user=user, resource=f"user:{user.id}")
    start_session(user)
    flash("Your password is changed. Every other session of yours is signed out"
          + (f" and your {revoked} API token(s) are revoked." if revoked else "."), "success")
    return redirect(url_for("account.index"))


@bp.post("/logout-everywhere")
@login_required
def logout_everywhere():
    if not EverywhereForm().validate_on_submit():
        abort(400)
    revoke_api_tokens(current_user._get_current_object(), "log out everywhere")
    return log_out_everywhere("logout_all", "You are logged out on every device and browser, "
                                            "and your API tokens are revoked.")


@bp.post("/tokens")
@login_required
def create_token():
    form = TokenForm()
    if not form.validate_on_submit():
        if form.password.errors and form.password.data:
            record("token_create", "failed", detail="wrong current password")
        return _page(form, status=400)
    row, plain = ApiToken.issue(current_user, form.name.data.strip(), expires_at(form.last_day.data))
    db.session.add(row)
    db.session.commit()
    record("token_create", resource=f"token:{row.id}",
           detail=f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else None)
    # Shown in this response only; the database keeps its SHA-256.
    return _page(TokenForm(formdata=None), new_token=plain)


@bp.post("/tokens/<id:token_id>/revoke")
@login_required
def revoke_token(token_id: int):
    form = RevokeForm()
    if not form.validate_on_submit():
        abort(400)
    row = ApiToken.query.filter_by(id=token_id, user_id=current_user.id).first_or_404()
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.commit()
        record("token_revoke", resource=f"token:{row.id}")
        flash(f"Token “{row.name}” revoked. Requests that use it now get 401.", "success")
    return redirect(url_for("account.index"))
