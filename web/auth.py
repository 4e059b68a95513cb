"""Sign up, log in, log out (here or everywhere).

Login is throttled per account and per address (see web/security.py); every
outcome is audited. Logging out bumps the user's session version, so a copied
session cookie stops working too; a new password, "log out everywhere" and
disabling an account revoke the user's API tokens as well. Sign-up creates clinicians only and can be
closed by an administrator.
"""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.security import check_password_hash
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length, Regexp, ValidationError

from database import User, db
from web.access import is_safe_next
from web.audit import record
from web.login import stamp_new_session
from web.security import MAX_PASSWORD, MIN_PASSWORD, PasswordPolicy
from web.settings import signup_open

bp = Blueprint("auth", __name__)

LOGIN_FAILED = "Unknown username or wrong password."
ACCOUNT_DISABLED = "This account is disabled. Ask an administrator to enable it."
SIGNUP_CLOSED = "Sign-up is closed. Ask an administrator for an account."
# Checked against when the username does not exist, so both failures take about as long.
_DUMMY_HASH = "scrypt:32768:8:1$jointscan$" + "0" * 128
USERNAME_VALIDATORS = [
    DataRequired(), Length(min=3, max=80),
    Regexp(r"^[A-Za-z0-9_.-]+$", message="Use letters, digits, dots, dashes and underscores only.")]


def username_is_free(_form, field) -> None:
    if User.query.filter_by(username=field.data).first() is not None:
        raise ValidationError("That username is taken.")


# For the forms that create an account (sign-up, the admin page).
NEW_USERNAME_VALIDATORS = [*USERNAME_VALIDATORS, username_is_free]


def repeat_password_field(of: str, label: str = "Repeat the password") -> PasswordField:
    """A second password field that must match the field named `of`."""
    return PasswordField(label, validators=[DataRequired(), EqualTo(of, message="The passwords do not match.")])


class SignupForm(FlaskForm):
    username = StringField("Username", validators=NEW_USERNAME_VALIDATORS)
    password = PasswordField("Password", validators=[DataRequired(), PasswordPolicy(username_field="username")])
    confirm = repeat_password_field("password")
    submit = SubmitField("Create account")


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=80)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD)])
    submit = SubmitField("Log in")


def start_session(user: User) -> None:
    """A fresh session for the signed-in user: nothing from before the login survives, and its idle
    time and lifetime start now (web/login.py)."""
    session.clear()
    login_user(user)
    stamp_new_session()


def revoke_api_tokens(user: User, why: str) -> int:
    """Every working API token of `user` stops working, audited with `why`; the caller commits.

    Done wherever every session of a user is ended on purpose (a new password, "log out everywhere",
    disabling the account): a token must not outlive what it stands in for.
    """
    count = user.revoke_all_tokens()
    if count:
        record("token_revoke", resource=f"user:{user.id}", detail=f"{count} API token(s) revoked: {why}",
               commit=False)
    return count


def log_out_everywhere(action: str, message: str):
    """Audit `action`, sign this browser out, make every cookie issued to the signed-in user so far
    worthless, and send them to the login page with `message`."""
    user = current_user._get_current_object()
    record(action, user=user, resource=f"user:{user.id}", commit=False)
    user.end_all_sessions()
    db.session.commit()
    logout_user()
    session.clear()
    flash(message, "info")
    return redirect(url_for("auth.login"))


def _next_target() -> str:
    target = request.args.get("next")
    if is_safe_next(target):
        return target
    return home_for(current_user)


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    if current_user.is_authenticated:
        return redirect(url_for("auth.index"))
    if not signup_open():
        return render_template("auth/signup_closed.html", message=SIGNUP_CLOSED), 403
    form = SignupForm()
    if form.validate_on_submit():
        user = User(username=form.username.data, role="clinician")   # sign-up never grants more
        user.set_password(form.password.data)
        db.session.add(user)
        db.session.commit()
        record("signup", user=user, resource=f"user:{user.id}")
        start_session(user)
        flash("Welcome to JointScan. Your account is ready.", "success")
        return redirect(url_for("scans.upload"))
    return render_template("auth/signup.html", form=form, min_password=MIN_PASSWORD), (400 if form.errors else 200)


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(_next_target())
    form = LoginForm()
    error = None
    status = 200
    if form.validate_on_submit():
        user = User.query.filter_by(username=form.username.data).first()
        if user is None:
            check_password_hash(_DUMMY_HASH, form.password.data)
            # The attempted name is not kept: people type passwords into the username field.
            record("login_failed", "failed", user=None, detail="unknown account")
        elif not user.check_password(form.password.data):
            record("login_failed", "failed", user=user, resource=f"user:{user.id}", detail="wrong password")
        elif user.disabled:
            record("login_failed", "denied", user=user, resource=f"user:{user.id}", detail="account disabled")
            return render_template("auth/login.html", form=form, error=ACCOUNT_DISABLED), 403
        else:
            start_session(user)
            record("login_ok", user=user, resource=f"user:{user.id}")
            return redirect(_next_target())
        error, status = LOGIN_FAILED, 401
    elif form.errors:
        status = 400
    return render_template("auth/login.html", form=form, error=error), status


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    return log_out_everywhere("logout", "You are logged out.")


@bp.route("/")
def index():
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(home_for(current_user))


def home_for(user: User) -> str:
    """Each role's landing page."""
    if user.role == "admin":
        return url_for("admin.index")
    if user.role == "reviewer":
        return url_for("reviews.queue")
    return url_for("scans.upload")
