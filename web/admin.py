"""Administration: users and roles, registered models on/off, sign-up open/closed, the audit trail.

Every change is audited as `admin_change`. Guards keep the site administrable: an administrator
cannot disable or demote themselves, and the last active administrator stays one. Disabling a
user ends their sessions at once and revokes their API tokens (enabling them again revives none).
"""
from __future__ import annotations

import csv
import io
from datetime import date, datetime, time

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired

from database import (AUDIT_ACTIONS, AUDIT_OUTCOMES, ROLES, AuditEvent, ModelState, Run, RunStatus, User, db,
                      disabled_model_ids, utcnow)
from model_loader import current_registry
from tasks import all_tasks
from web.access import no_store
from web.audit import record
from web.auth import NEW_USERNAME_VALIDATORS, repeat_password_field, revoke_api_tokens
from web.params import as_id, day_arg, page_arg
from web.security import PasswordPolicy, role_required
from web.settings import set_signup_open, signup_open

bp = Blueprint("admin", __name__, url_prefix="/admin")
AUDIT_CSV_COLUMNS = ("time_utc", "user_id", "username", "action", "outcome", "resource", "model_versions",
                     "client_addr", "detail")
CSV_EXPORT_LIMIT = 100_000


class ButtonForm(FlaskForm):
    submit = SubmitField("Save")


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=[(r, r.capitalize()) for r in ROLES])
    submit = SubmitField("Change role")


class QuotaForm(FlaskForm):
    quota_mb = StringField("Storage quota (MiB)")     # empty: the instance default
    submit = SubmitField("Set")


MAX_QUOTA_MB = 10**8          # about 95 TiB: anything larger is a typo


class NewUserForm(FlaskForm):
    username = StringField("Username", validators=NEW_USERNAME_VALIDATORS)
    role = SelectField("Role", choices=[(r, r.capitalize()) for r in ROLES], default="clinician")
    password = PasswordField("Initial password", validators=[DataRequired(), PasswordPolicy(username_field="username")],
                             description="Give it to the person privately; they can change it on their account page.")
    confirm = repeat_password_field("password")
    submit = SubmitField("Create user")


def _save_user_change(user: User, detail: str, message: str) -> None:
    db.session.commit()
    record("admin_change", resource=f"user:{user.id}", detail=detail)
    flash(message, "success")


def _other_active_admins(user: User) -> int:
    return User.query.filter(User.role == "admin", User.disabled.is_(False), User.id != user.id).count()


# -- overview and sign-up ------------------------------------------------------------------
@bp.get("/")
@role_required("admin")
@no_store
def index():
    counts = {role: User.query.filter_by(role=role).count() for role in ROLES}
    return render_template("admin/index.html", signup_open=signup_open(), form=ButtonForm(), counts=counts,
                           disabled_users=User.query.filter_by(disabled=True).count(),
                           runs=Run.query.count(), shared=Run.query.filter(Run.shared_at.isnot(None)).count(),
                           disabled_models=len(disabled_model_ids()), events=AuditEvent.query.count(),
                           signup_default=current_app.config.get("SIGNUP_OPEN", True))


@bp.post("/signup")
@role_required("admin")
def toggle_signup():
    if not ButtonForm().validate_on_submit():
        abort(400)
    wanted = request.form.get("open") == "1"
    if wanted != signup_open():
        set_signup_open(wanted, current_user.id)
        db.session.commit()
        record("admin_change", resource="setting:signup_open", detail=f"sign-up {'opened' if wanted else 'closed'}")
    flash(f"Public sign-up is {'open' if wanted else 'closed'}.", "success")
    return redirect(url_for("admin.index"))


# -- users ------------------------------------------------------------------------------------
def _users_page(new_form: NewUserForm, status: int = 200):
    users = User.query.order_by(User.username).all()
    run_counts = dict(db.session.execute(db.select(Run.user_id, db.func.count(Run.id)).group_by(Run.user_id)).all())
    stored = dict(db.session.execute(db.select(Run.user_id, db.func.sum(Run.stored_bytes))
                                     .where(Run.status == RunStatus.DONE).group_by(Run.user_id)).all())
    return render_template("admin/users.html", users=users, new_form=new_form, button=ButtonForm(),
                           role_form=RoleForm(formdata=None), run_counts=run_counts, roles=ROLES,
                           stored={k: int(v or 0) for k, v in stored.items()},
                           default_quota=int(current_app.config["STORAGE_QUOTA_BYTES"])), status


@bp.get("/users")
@role_required("admin")
@no_store
def users():
    return _users_page(NewUserForm(formdata=None))


@bp.post("/users")
@role_required("admin")
def create_user():
    form = NewUserForm()
    if not form.validate_on_submit():
        return _users_page(form, status=400)
    user = User(username=form.username.data, role=form.role.data)
    user.set_password(form.password.data)
    db.session.add(user)
    _save_user_change(user, f"created {user.role} {user.username}", f"Created {user.role} {user.username}.")
    return redirect(url_for("admin.users"))


def _target(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


@bp.post("/users/<id:user_id>/role")
@role_required("admin")
def change_role(user_id: int):
    user = _target(user_id)
    form = RoleForm()
    if not form.validate_on_submit():
        abort(400)
    new_role = form.role.data
    if user.id == current_user.id:
        flash("You cannot change your own role; ask another administrator.", "error")
    elif user.role == "admin" and new_role != "admin" and _other_active_admins(user) == 0 and not user.disabled:
        flash("This is the last active administrator; make someone else an administrator first.", "error")
    elif new_role != user.role:
        old = user.role
        user.role = new_role
        user.end_all_sessions()     # new rights take effect with a fresh login
        _save_user_change(user, f"role of {user.username}: {old} -> {new_role}", f"{user.username} is now {new_role}.")
    return redirect(url_for("admin.users"))


@bp.post("/users/<id:user_id>/<any(disable, enable):action>")
@role_required("admin")
def set_user_state(user_id: int, action: str):
    user = _target(user_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    disable = action == "disable"
    if user.id == current_user.id:
        flash("You cannot disable your own account.", "error")
    elif disable and user.role == "admin" and _other_active_admins(user) == 0:
        flash("This is the last active administrator; it cannot be disabled.", "error")
    elif user.disabled != disable:
        user.disabled = disable
        if disable:
            user.end_all_sessions()  # signed out everywhere at once
            revoke_api_tokens(user, "account disabled")   # so enabling it again revives none
        _save_user_change(user, f"{action}d {user.username}",
                          f"{user.username} is {'disabled' if disable else 'enabled'}.")
    return redirect(url_for("admin.users"))


@bp.post("/users/<id:user_id>/quota")
@role_required("admin")
def set_quota(user_id: int):
    """A user's storage quota in MiB; empty: back to the instance default (STORAGE_QUOTA_BYTES)."""
    user = _target(user_id)
    form = QuotaForm()
    if not form.validate_on_submit():
        abort(400)
    raw = (form.quota_mb.data or "").strip()
    if raw and not (raw.isdigit() and int(raw) <= MAX_QUOTA_MB):
        flash(f"A quota is a whole number of MiB up to {MAX_QUOTA_MB:,}, or empty for the default.", "error")
        return redirect(url_for("admin.users"))
    user.storage_quota_bytes = int(raw) * 2**20 if raw else None
    shown = f"{raw} MiB" if raw else "the default"
    _save_user_change(user, f"storage quota of {user.username}: {shown}",
                      f"The storage quota of {user.username} is now {shown}.")
    return redirect(url_for("admin.users"))


# -- models -------------------------------------------------------------------------------------
@bp.get("/models")
@role_required("admin")
@no_store
def models():
    reg = current_registry()
    disabled = disabled_model_ids()
    states = {s.model_id: s for s in ModelState.query.all()}
    names = {u.id: u.username for u in User.query.filter(User.id.in_(
        [s.changed_by_id for s in states.values() if s.changed_by_id])).all()} if states else {}
    tasks = all_tasks()
    rows = [{"entry": e, "enabled": e.id not in disabled, "problem": reg.problem(e.id), "state": states.get(e.id),
             "changed_by": names.get(states[e.id].changed_by_id) if e.id in states else None,
             "task_title": tasks[e.task].title if e.task in tasks else e.task}
            for e in reg.entries()]
    return render_template("admin/models.html", rows=rows, button=ButtonForm())


@bp.post("/models/<model_id>/<any(disable, enable):action>")
@role_required("admin")
def set_model_state(model_id: str, action: str):
    entry = current_registry().get(model_id)
    if entry is None:
        abort(404)
    if not ButtonForm().validate_on_submit():
        abort(400)
    enabled = action == "enable"
    state = db.session.get(ModelState, entry.id)
    if state is None:
        state = ModelState(model_id=entry.id, enabled=True)
        db.session.add(state)
    if state.enabled != enabled or state.changed_by_id is None:
        state.enabled = enabled
        state.changed_by_id = current_user.id
        db.session.commit()
        record("admin_change", resource=f"model:{entry.id}", models=[f"{entry.id}@{entry.version}"],
               detail=f"model {action}d")
    flash(f"{entry.title} is {'enabled' if enabled else 'disabled'}"
          + ("." if enabled else ": uploads and the API refuse it."), "success")
    return redirect(url_for("admin.models"))


# -- the audit trail ---------------------------------------------------------------------------------
def audit_filters() -> tuple[dict, list[str]]:
    """The filters from the query string, cleaned, and the problems found with them."""
    args = request.args
    problems = []
    filters = {"user": (args.get("user") or "").strip()[:80],
               "action": args.get("action") if args.get("action") in AUDIT_ACTIONS else "",
               "outcome": args.get("outcome") if args.get("outcome") in AUDIT_OUTCOMES else "",
               "since": "", "until": ""}
    for key in ("since", "until"):
        day, problem = day_arg(key)
        if problem:
            problems.append(problem)
        filters[key] = day.isoformat() if day else ""
    return filters, problems


def audit_query(filters: dict):
    query = db.select(AuditEvent)
    if filters["user"]:
        user, user_id = filters["user"], as_id(filters["user"])
        query = query.where(AuditEvent.username == user if user_id is None
                            else db.or_(AuditEvent.user_id == user_id, AuditEvent.username == user))
    if filters["action"]:
        query = query.where(AuditEvent.action == filters["action"])
    if filters["outcome"]:
        query = query.where(AuditEvent.outcome == filters["outcome"])
    if filters["since"]:
        query = query.where(AuditEvent.created_at >= datetime.combine(date.fromisoformat(filters["since"]), time.min))
    if filters["until"]:   # inclusive: the whole day, up to its last instant (there is no day after 9999-12-31)
        query = query.where(AuditEvent.created_at <= datetime.combine(date.fromisoformat(filters["until"]), time.max))
    return query.order_by(AuditEvent.id.desc())


@bp.get("/audit")
@role_required("admin")
@no_store
def audit():
    filters, problems = audit_filters()
    pagination = db.paginate(audit_query(filters), page=page_arg(), per_page=50, error_out=False)
    return render_template("admin/audit.html", pagination=pagination, events=pagination.items, filters=filters,
                           problems=problems, actions=AUDIT_ACTIONS, outcomes=AUDIT_OUTCOMES,
                           query_args={k: v for k, v in filters.items() if v})


def _csv_cell(value) -> str:
    """A cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@bp.get("/audit.csv")
@role_required("admin")
@no_store
def audit_csv():
    filters, _problems = audit_filters()
    events = db.session.execute(audit_query(filters).limit(CSV_EXPORT_LIMIT)).scalars().all()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(AUDIT_CSV_COLUMNS)
    for e in events:
        writer.writerow([_csv_cell(v) for v in (
            e.created_at.isoformat(timespec="seconds"), e.user_id, e.username, e.action, e.outcome, e.resource,
            " ".join(e.model_versions or []), e.client_addr, e.detail)])
    described = ", ".join(f"{k}={v}" for k, v in filters.items() if v) or "no filter"
    record("export", resource="audit", detail=f"audit CSV, {len(events)} rows ({described})"[:200])
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return Response(buf.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="jointscan-audit-{stamp}.csv"'})
