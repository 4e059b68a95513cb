"""Sign up, log in, log out."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.security import check_password_hash
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length, Regexp, ValidationError

from database import User, db
from web.helpers import is_safe_next

bp = Blueprint("auth", __name__)

MIN_PASSWORD = 12
LOGIN_FAILED = "Unknown username or wrong password."
# Checked against when the username does not exist, so both failures take about as long.
_DUMMY_HASH = "scrypt:32768:8:1$jointscan$" + "0" * 128


class SignupForm(FlaskForm):
    username = StringField("Username", validators=[
        DataRequired(), Length(min=3, max=80),
        Regexp(r"^[A-Za-z0-9_.-]+$", message="Use letters, digits, dots, dashes and underscores only.")])
    password = PasswordField("Password", validators=[
        DataRequired(), Length(min=MIN_PASSWORD, max=256,
                               message=f"Use at least {MIN_PASSWORD} characters.")])
    confirm = PasswordField("Repeat the password", validators=[
        DataRequired(), EqualTo("password", message="The passwords do not match.")])
    submit = SubmitField("Create account")

    def validate_username(self, field):
        if User.query.filter_by(username=field.data).first() is not None:
            raise ValidationError("That username is taken.")


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=80)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    submit = SubmitField("Log in")


def _start_session(user: User) -> None:
    """A fresh session for the signed-in user: nothing from before the login survives."""
    session.clear()
    login_user(user)


def _next_target() -> str:
    target = request.args.get("next")
    return target if is_safe_next(target) else url_for("scans.upload")


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    if current_user.is_authenticated:
        return redirect(url_for("scans.upload"))
    form = SignupForm()
    if form.validate_on_submit():
        user = User(username=form.username.data, role="clinician")
        user.set_password(form.password.data)
        db.session.add(user)
        db.session.commit()
        _start_session(user)
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
        elif user.check_password(form.password.data):
            _start_session(user)
            return redirect(_next_target())
        error, status = LOGIN_FAILED, 401
    elif form.errors:
        status = 400
    return render_template("auth/login.html", form=form, error=error), status


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/")
def index():
    if current_user.is_authenticated:
        return redirect(url_for("scans.upload"))
    return redirect(url_for("auth.login"))
