"""SQLAlchemy models and database setup.

Runs keep what is needed to reopen a result (task, status, timings, the
model ids/versions/checksums that produced it, non-identifying input facts)
and never patient names or ids. Files live under the instance folder,
named by the run's random public id; the input is stored as the PNG pixels
shown on the page, so no DICOM header ever reaches the disk. A SQLite
database file is created readable by the service account only (0600).

Trust: users have a role (clinician, reviewer, admin) and can be
disabled; a run can be shared for review and carries reviewers' verdicts;
administrators switch registered models off (`ModelState`) and close
sign-up (`Setting`); `AuditEvent` is an append-only trail, guarded here in
the ORM and by SQLite triggers in the database itself.
"""
from __future__ import annotations

import enum
import hashlib
import secrets
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flask_login import UserMixin
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DDL, JSON, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from private_files import private_file

db = SQLAlchemy()
migrate = Migrate(render_as_batch=True)  # batch mode: SQLite can only alter tables by copying

PASSWORD_METHOD = "scrypt"  # memory-hard; werkzeug's scrypt with a per-password salt
ROLES = ("clinician", "reviewer", "admin")


class RunStatus(enum.StrEnum):
    """A run's `status` column: stored as these plain strings, so templates may compare to them."""

    QUEUED = "queued"       # accepted and waiting for a job slot (in process, or a worker's queue)
    RUNNING = "running"     # a job is analysing it; `progress` says which stage
    DONE = "done"           # every result and image is stored
    FAILED = "failed"       # nothing was kept; `error` says why


UNSETTLED = (RunStatus.QUEUED, RunStatus.RUNNING)


# How long a write waits for another connection's write lock before "database is locked" (ms).
BUSY_TIMEOUT_MS = 10_000


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@event.listens_for(Engine, "do_connect")
def _private_sqlite_file(dialect, _record, cargs, cparams):
    # SQLite would create a missing database file with the umask's mode, usually world-readable.
    if dialect.name == "sqlite" and cargs and not cparams.get("uri") and cargs[0] not in ("", ":memory:"):
        path = Path(cargs[0])
        if path.parent.is_dir():
            private_file(path)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    # WAL lets readers work while a prediction writes; the busy timeout turns brief
    # lock contention between gunicorn workers into a wait instead of an error.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


class User(UserMixin, db.Model):
    __tablename__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(80), unique=True, nullable=False, index=True)
    password_hash = db.Column(db.String(255), nullable=False)
    role = db.Column(db.String(20), nullable=False, default="clinician")
    # Part of the login cookie's identity: bumping it signs out every session of this user.
    session_version = db.Column(db.Integer, nullable=False, default=1)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    disabled = db.Column(db.Boolean, nullable=False, default=False, server_default="0")
    password_changed_at = db.Column(db.DateTime)
    # Bytes of stored results this user may keep; None: the instance default (STORAGE_QUOTA_BYTES).
    storage_quota_bytes = db.Column(db.BigInteger)

    runs = db.relationship("Run", back_populates="user", lazy="dynamic")
    tokens = db.relationship("ApiToken", back_populates="user", lazy="dynamic")

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password, method=PASSWORD_METHOD)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"

    @property
    def is_active(self) -> bool:          # Flask-Login refuses to log in inactive users
        return not self.disabled

    def end_all_sessions(self) -> None:
        """Every login cookie issued so far stops working (logout, password change, disabling)."""
        self.session_version = (self.session_version or 0) + 1

    def revoke_all_tokens(self) -> int:
        """Every API token of this user that still works stops working (password change, log out
        everywhere, disabling); the rows stay, for the audit trail. Returns how many were revoked."""
        now = utcnow()
        working = [t for t in self.tokens.filter(ApiToken.revoked_at.is_(None)) if t.state == "active"]
        for token in working:
            token.revoked_at = now
        return len(working)


class ApiToken(db.Model):
    """A bearer token for the JSON API. Only a SHA-256 of the random token is stored:
    the token has 256 bits of entropy, so a fast hash is safe here (unlike passwords)."""

    __tablename__ = "api_tokens"
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id"), nullable=False, index=True)
    name = db.Column(db.String(80), nullable=False)
    token_hash = db.Column(db.String(64), unique=True, nullable=False, index=True)
    prefix = db.Column(db.String(12), nullable=False)     # shown so users can tell tokens apart
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_used_at = db.Column(db.DateTime)        # to the minute (LAST_USE_RESOLUTION)
    revoked_at = db.Column(db.DateTime)
    expires_at = db.Column(db.DateTime)          # None: works until revoked

    user = db.relationship("User", back_populates="tokens")

    TOKEN_PREFIX = "js_"
    # A script may call the API many times a second: the last use is written at most once a minute.
    LAST_USE_RESOLUTION = timedelta(minutes=1)

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, user: User, name: str, expires_at: datetime | None = None) -> tuple["ApiToken", str]:
        """Create a token row; the plain token is returned once and never stored."""
        plain = cls.TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = cls(user_id=user.id, name=name, token_hash=cls.hash_token(plain), prefix=plain[:10],
                  expires_at=expires_at)
        return row, plain

    @classmethod
    def find_active(cls, plain: str) -> "ApiToken | None":
        """The token's row when it still works (neither revoked nor expired), else None."""
        row = cls.query.filter_by(token_hash=cls.hash_token(plain)).first()
        if row is None or row.state != "active":
            return None
        return row

    @property
    def state(self) -> str:
        """One of "active", "revoked", "expired"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"

    @property
    def active(self) -> bool:
        return self.state == "active"

    def note_use(self) -> bool:
        """Record a use in `last_used_at` unless one was recorded within the last minute; True when it changed."""
        now = utcnow()
        if self.last_used_at is not None and now - self.last_used_at < self.LAST_USE_RESOLUTION:
            return False
        self.last_used_at = now
        return True


class Run(db.Model):
    __tablename__ = "runs"
    id = db.Column(db.Integer, primary_key=True)
    public_id = db.Column(db.String(32), unique=True, nullable=False, index=True,
                          default=lambda: uuid.uuid4().hex)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id"), nullable=False, index=True)
    task = db.Column(db.String(40), nullable=False)
    status = db.Column(db.String(10), nullable=False, default=RunStatus.QUEUED.value)
    error = db.Column(db.Text)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
    finished_at = db.Column(db.DateTime)
    input_kind = db.Column(db.String(10))           # png | jpeg | dicom
    input_meta = db.Column(JSON, default=dict)      # non-identifying facts (size, modality, window)
    input_image = db.Column(db.String(80))          # generated file name of the input as shown
    options = db.Column(JSON, default=dict)         # validated task options (e.g. the structure explained)
    summary = db.Column(JSON, default=dict)         # task-level result (comparison, focus model ...)
    images = db.Column(JSON, default=dict)          # run-level images: name -> file name
    timings = db.Column(JSON, default=dict)         # decode_ms, predict_ms, store_ms, total_ms
    # Shared with the reviewers' pool by its owner (None: not shared). Reviewers never see the owner.
    shared_at = db.Column(db.DateTime, index=True)
    stored_bytes = db.Column(db.BigInteger, nullable=False, default=0, server_default="0")  # its files on disk
    model_ids = db.Column(JSON, default=list)       # the models chosen at upload, in order (the job runs them)
    # The job (jobs.py): the stage it is at, how many times a job has begun it, when the current attempt
    # began, and when its holder last said it was alive (a holder that stops beating has died).
    stages = db.Column(JSON, default=list)          # [[key, label], ...]: what the job does, in order
    stage = db.Column(db.String(80))                # the key of the stage it is at
    attempts = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    started_at = db.Column(db.DateTime)
    heartbeat_at = db.Column(db.DateTime, index=True)

    user = db.relationship("User", back_populates="runs")
    results = db.relationship("ModelResult", back_populates="run", cascade="all, delete-orphan",
                              order_by="ModelResult.position")
    reviews = db.relationship("Review", back_populates="run", order_by="Review.created_at")

    @property
    def shared(self) -> bool:
        return self.shared_at is not None

    @classmethod
    def stored_by(cls, user_id: int) -> int:
        """Bytes of result files the user's finished runs keep (what the storage quota counts)."""
        total = db.session.execute(db.select(db.func.coalesce(db.func.sum(cls.stored_bytes), 0))
                                   .where(cls.user_id == user_id, cls.status == RunStatus.DONE)).scalar_one()
        return int(total)

    @property
    def settled(self) -> bool:
        return self.status in (RunStatus.DONE, RunStatus.FAILED)

    @classmethod
    def settle(cls, run_id: int, status: RunStatus, attempt: int | None = None, **values) -> bool:
        """Move an unsettled run (queued or running) to `status` (done or failed) in the current transaction,
        as a compare-and-set: True when this call made the change, False when the run was already settled,
        or when `attempt` is given and another attempt has taken the run over since. So a run is settled
        once, by the attempt that holds it: never both done and failed, never two results."""
        where = [cls.id == run_id, cls.status.in_(UNSETTLED)]
        if attempt is not None:
            where.append(cls.attempts == attempt)
        result = db.session.execute(db.update(cls).where(*where)
                                    .values(status=status, finished_at=utcnow(), **values)
                                    .execution_options(synchronize_session=False))
        return result.rowcount == 1

    @classmethod
    def claim(cls, run_id: int, stale_before: datetime) -> int | None:
        """Begin an attempt: a queued run, or a running one whose holder stopped beating before `stale_before`
        (its worker died), becomes running under the next attempt number, which is returned (committed).
        None when the run is settled or a live holder has it: a second delivery of the same job does nothing."""
        result = db.session.execute(
            db.update(cls).where(cls.id == run_id, db.or_(
                cls.status == RunStatus.QUEUED,
                db.and_(cls.status == RunStatus.RUNNING, cls.heartbeat_at < stale_before)))
            .values(status=RunStatus.RUNNING, attempts=cls.attempts + 1, started_at=utcnow(), heartbeat_at=utcnow(),
                    stage="decoding")
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            db.session.rollback()
            return None
        attempt = db.session.execute(db.select(cls.attempts).where(cls.id == run_id)).scalar_one()
        db.session.commit()
        return int(attempt)

    @classmethod
    def note_stage(cls, run_id: int, attempt: int, stage: str) -> bool:
        """Record the stage the holding attempt has reached (and that it is alive), committed at once so that
        the status page sees it while the job works. False when the attempt no longer holds the run (a sweep
        failed it, or another attempt took it over)."""
        result = db.session.execute(db.update(cls).where(cls.id == run_id, cls.status == RunStatus.RUNNING,
                                                cls.attempts == attempt)
                           .values(stage=stage[:80], heartbeat_at=utcnow())
                           .execution_options(synchronize_session=False))
        db.session.commit()
        return result.rowcount == 1

    @classmethod
    def beat(cls, queued: list[str], running: list[tuple[str, int]]) -> None:
        """The holder of these runs is alive (jobs.Heartbeat, every JOB_HEARTBEAT_S): the queued runs it holds,
        and the runs it is running, each under its attempt (a run another attempt took over is not its to beat;
        nor is a silent running run it was handed but has not claimed yet, which must stay silent to be claimed)."""
        now = utcnow()
        if queued:
            db.session.execute(db.update(cls).where(cls.public_id.in_(queued), cls.status == RunStatus.QUEUED)
                               .values(heartbeat_at=now).execution_options(synchronize_session=False))
        for public_id, attempt in running:
            db.session.execute(db.update(cls).where(cls.public_id == public_id, cls.status == RunStatus.RUNNING,
                                                    cls.attempts == attempt)
                               .values(heartbeat_at=now).execution_options(synchronize_session=False))
        db.session.commit()


class ModelResult(db.Model):
    __tablename__ = "model_results"
    id = db.Column(db.Integer, primary_key=True)
    run_id = db.Column(db.Integer, db.ForeignKey("runs.id"), nullable=False, index=True)
    position = db.Column(db.Integer, nullable=False, default=0)
    model_id = db.Column(db.String(80), nullable=False)
    model_version = db.Column(db.String(40), nullable=False)
    model_sha256 = db.Column(db.String(64), nullable=False)
    role = db.Column(db.String(40), nullable=False)
    result = db.Column(JSON, default=dict)
    images = db.Column(JSON, default=dict)          # name -> file name
    elapsed_ms = db.Column(db.Float)

    run = db.relationship("Run", back_populates="results")


class Review(db.Model):
    """One reviewer's verdict on one shared run (a reviewer may revise it; one row per pair).

    `grade` is the grade on the task's review scale that the reviewer would give (the model's own
    grade when they agree); `score_text` holds a score in words for tasks without a scale.
    """

    __tablename__ = "reviews"
    __table_args__ = (db.UniqueConstraint("run_id", "reviewer_id", name="uq_reviews_run_reviewer"),)
    id = db.Column(db.Integer, primary_key=True)
    run_id = db.Column(db.Integer, db.ForeignKey("runs.id"), nullable=False, index=True)
    reviewer_id = db.Column(db.Integer, db.ForeignKey("users.id"), nullable=False, index=True)
    verdict = db.Column(db.String(10), nullable=False)         # agree | disagree
    grade = db.Column(db.Integer)
    score_text = db.Column(db.String(80))
    comment = db.Column(db.Text)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    run = db.relationship("Run", back_populates="reviews")
    reviewer = db.relationship("User")


class ModelState(db.Model):
    """An administrator's switch for a registered model; no row means enabled."""

    __tablename__ = "model_states"
    model_id = db.Column(db.String(80), primary_key=True)
    enabled = db.Column(db.Boolean, nullable=False, default=True)
    changed_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    changed_by_id = db.Column(db.Integer, db.ForeignKey("users.id"))


def disabled_model_ids() -> set[str]:
    """Ids of the registered models an administrator switched off."""
    return {mid for (mid,) in db.session.execute(db.select(ModelState.model_id).filter_by(enabled=False))}


class Setting(db.Model):
    """Site settings an administrator can change at run time (e.g. whether sign-up is open)."""

    __tablename__ = "settings"
    key = db.Column(db.String(40), primary_key=True)
    value = db.Column(db.String(200), nullable=False)
    changed_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    changed_by_id = db.Column(db.Integer, db.ForeignKey("users.id"))


def get_setting(key: str, default: str | None = None) -> str | None:
    row = db.session.get(Setting, key)
    return row.value if row is not None else default


def set_setting(key: str, value: str, user_id: int | None) -> None:
    row = db.session.get(Setting, key)
    if row is None:
        db.session.add(Setting(key=key, value=value, changed_by_id=user_id))
    else:
        row.value, row.changed_by_id = value, user_id


# -- the audit trail -------------------------------------------------------------------------
AUDIT_ACTIONS = (
    "login_ok", "login_failed", "logout", "logout_all", "signup", "password_change",
    "upload", "view_run", "view_image", "export", "share", "unshare", "review",
    "admin_change", "token_create", "token_revoke", "recognise", "pacs_search",
)
AUDIT_OUTCOMES = ("ok", "denied", "failed", "throttled", "error")


class AuditEvent(db.Model):
    """Who did what, when, from where, with which models, and how it ended. Append-only.

    Never patient data: `resource` is a kind and a random id ("run:<public id>", "user:<id>",
    "model:<id>"), `detail` is text the application writes (never a file name, a pseudonym or a
    DICOM value), and a failed login records the account only when it exists.
    """

    __tablename__ = "audit_events"
    id = db.Column(db.Integer, primary_key=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
    user_id = db.Column(db.Integer, index=True)          # no foreign key: the trail outlives anything
    username = db.Column(db.String(80))                  # as it was when the event happened
    action = db.Column(db.String(30), nullable=False, index=True)
    resource = db.Column(db.String(120))
    model_versions = db.Column(JSON)                     # ["model_id@version", ...]
    client_addr = db.Column(db.String(64))
    outcome = db.Column(db.String(12), nullable=False, index=True)
    detail = db.Column(db.String(200))


class AuditTrailIsAppendOnly(RuntimeError):
    pass


AUDIT_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
)
# PostgreSQL: one trigger function refusing both, raised as an error the ORM sees like SQLite's ABORT.
AUDIT_TRIGGERS_POSTGRESQL = (
    "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$",
    "CREATE OR REPLACE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE OR REPLACE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    # TRUNCATE fires no row trigger: a statement trigger refuses it too.
    "CREATE OR REPLACE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
)
# db.create_all() (tests, first start without migrations) gets the same triggers as the migrations.
for _sql in AUDIT_TRIGGERS:
    event.listen(AuditEvent.__table__, "after_create", DDL(_sql).execute_if(dialect="sqlite"))
for _sql in AUDIT_TRIGGERS_POSTGRESQL:
    event.listen(AuditEvent.__table__, "after_create", DDL(_sql).execute_if(dialect="postgresql"))


@event.listens_for(Session, "before_flush")
def _audit_rows_are_immutable(session, _flush_context, _instances):
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, AuditEvent) and (obj in session.deleted or session.is_modified(obj)):
            raise AuditTrailIsAppendOnly("audit events cannot be changed or deleted")


@event.listens_for(Session, "do_orm_execute")
def _no_bulk_audit_changes(state):
    if (state.is_update or state.is_delete) and any(
            getattr(m, "class_", None) is AuditEvent for m in state.all_mappers):
        raise AuditTrailIsAppendOnly("audit events cannot be changed or deleted")
