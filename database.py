"""SQLAlchemy models and database setup.

Runs keep what is needed to reopen a result (task, status, timings, the
model ids/versions/checksums that produced it, non-identifying input facts)
and never patient names or ids. Files live under the instance folder,
named by the run's random public id.
"""
from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime, timezone

from flask_login import UserMixin
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON, event
from sqlalchemy.engine import Engine
from werkzeug.security import check_password_hash, generate_password_hash

db = SQLAlchemy()
migrate = Migrate(render_as_batch=True)  # batch mode: SQLite can only alter tables by copying

PASSWORD_METHOD = "scrypt"  # memory-hard; werkzeug's scrypt with a per-password salt
RUN_STATUSES = ("pending", "done", "failed")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    # WAL lets readers work while a prediction writes; the busy timeout turns brief
    # lock contention between gunicorn workers into a wait instead of an error.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
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

    runs = db.relationship("Run", back_populates="user", lazy="dynamic")
    tokens = db.relationship("ApiToken", back_populates="user", lazy="dynamic")

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password, method=PASSWORD_METHOD)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"


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
    last_used_at = db.Column(db.DateTime)
    revoked_at = db.Column(db.DateTime)

    user = db.relationship("User", back_populates="tokens")

    TOKEN_PREFIX = "js_"

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, user: User, name: str) -> tuple["ApiToken", str]:
        """Create a token row; the plain token is returned once and never stored."""
        plain = cls.TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = cls(user_id=user.id, name=name, token_hash=cls.hash_token(plain), prefix=plain[:10])
        return row, plain

    @classmethod
    def find_active(cls, plain: str) -> "ApiToken | None":
        row = cls.query.filter_by(token_hash=cls.hash_token(plain)).first()
        if row is None or row.revoked_at is not None:
            return None
        return row

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Run(db.Model):
    __tablename__ = "runs"
    id = db.Column(db.Integer, primary_key=True)
    public_id = db.Column(db.String(32), unique=True, nullable=False, index=True,
                          default=lambda: uuid.uuid4().hex)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id"), nullable=False, index=True)
    task = db.Column(db.String(40), nullable=False)
    status = db.Column(db.String(10), nullable=False, default="pending")
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

    user = db.relationship("User", back_populates="runs")
    results = db.relationship("ModelResult", back_populates="run", cascade="all, delete-orphan",
                              order_by="ModelResult.position")

    def model_versions(self) -> list[dict]:
        return [{"model_id": r.model_id, "version": r.model_version, "sha256": r.model_sha256}
                for r in self.results]


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
