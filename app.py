"""Application factory: configuration, extensions, blueprints, error pages, CLI commands."""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import click
from flask import Flask, jsonify
from flask_wtf.csrf import CSRFProtect

from database import db, migrate
from model_loader import DEFAULT_MODELS_DIR, ModelRegistry

csrf = CSRFProtect()
DEV_SECRET_FILE = "secret_key"
MIN_SECRET_KEY_LENGTH = 32
# Values seen in tutorials, examples and our own tests: never acceptable in production.
WEAK_SECRET_KEYS = frozenset({
    "secret", "secret-key", "secret_key", "secretkey", "mysecret", "my-secret-key", "your-secret-key",
    "yoursecretkey", "changeme", "change-me", "change_me", "changethis", "change-this", "please-change-me",
    "dev", "development", "dev-secret", "dev-key", "devkey", "default", "test", "testing", "test-secret-key",
    "jointscan", "jointscan-secret", "flask", "flask-secret", "password", "12345678", "insecure",
    "not-secret", "notsecret", "supersecret", "super-secret", "s3cr3t", "xxx", "none", "null",
})


class Config:
    """Defaults; every value can be overridden by an environment variable of the same name prefixed JOINTSCAN_."""

    MAX_UPLOAD_BYTES = 64 * 2**20           # file size limit for one scan
    MAX_IMAGE_PIXELS = 40_000_000           # pixel-count limit, checked before decoding
    MODELS_DIR = str(DEFAULT_MODELS_DIR)
    RUNS_PER_PAGE = 20
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False           # set JOINTSCAN_SESSION_COOKIE_SECURE=1 behind HTTPS
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    WTF_CSRF_TIME_LIMIT = None              # token lives as long as the session
    ENV_NAME = "development"
    SIGNUP_OPEN = True                      # default until an admin changes it on the admin page
    PROXY_FIX_HOPS = 0                      # >0: trust X-Forwarded-For/-Proto/-Host from that many proxies
    # Login throttling (Flask-Limiter syntax); only failed attempts count.
    LOGIN_LIMITS_PER_ACCOUNT = "5 per minute;20 per hour"
    LOGIN_LIMITS_PER_ADDRESS = "20 per minute;100 per hour"
    SIGNUP_LIMITS_PER_ADDRESS = "10 per hour"
    RATELIMIT_STORAGE_URI = "memory://"     # per process; redis://host:6379 shares counts between workers


TRUE_WORDS = ("1", "true", "yes", "on")


def _from_env(app: Flask) -> None:
    for key in ("MAX_UPLOAD_BYTES", "MAX_IMAGE_PIXELS", "RUNS_PER_PAGE", "PROXY_FIX_HOPS"):
        if f"JOINTSCAN_{key}" in os.environ:
            app.config[key] = int(os.environ[f"JOINTSCAN_{key}"])
    for key in ("MODELS_DIR", "ENV_NAME", "RESULTS_DIR", "RATELIMIT_STORAGE_URI", "LOGIN_LIMITS_PER_ACCOUNT",
                "LOGIN_LIMITS_PER_ADDRESS", "SIGNUP_LIMITS_PER_ADDRESS"):
        if f"JOINTSCAN_{key}" in os.environ:
            app.config[key] = os.environ[f"JOINTSCAN_{key}"]
    if os.environ.get("JOINTSCAN_SESSION_COOKIE_SECURE", "").lower() in TRUE_WORDS:
        app.config["SESSION_COOKIE_SECURE"] = app.config["REMEMBER_COOKIE_SECURE"] = True
    if "JOINTSCAN_SIGNUP_OPEN" in os.environ:
        app.config["SIGNUP_OPEN"] = os.environ["JOINTSCAN_SIGNUP_OPEN"].lower() in TRUE_WORDS
    if os.environ.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
    if os.environ.get("DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]


def weak_secret_key(key: str | None) -> str | None:
    """Why `key` must not sign production cookies, or None when it is acceptable."""
    if not key:
        return "SECRET_KEY must be set in the environment when JOINTSCAN_ENV_NAME=production."
    if key.strip().lower() in WEAK_SECRET_KEYS:
        return "SECRET_KEY is a well-known default value; set a random one (python -c 'import secrets; print(secrets.token_hex(32))')."
    if len(key) < MIN_SECRET_KEY_LENGTH or len(set(key)) < 8:
        return (f"SECRET_KEY is too short or too simple (at least {MIN_SECRET_KEY_LENGTH} random characters); "
                "python -c 'import secrets; print(secrets.token_hex(32))' makes one.")
    return None


def _secret_key(app: Flask) -> str:
    """Development: a random key kept in the instance folder. Production: must come from the environment."""
    if app.config["ENV_NAME"] == "production":
        raise RuntimeError(weak_secret_key(None))
    path = Path(app.instance_path) / DEV_SECRET_FILE
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(Config)
    if "JOINTSCAN_INSTANCE_PATH" in os.environ:
        app.instance_path = os.environ["JOINTSCAN_INSTANCE_PATH"]
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{Path(app.instance_path) / 'jointscan.sqlite'}"
    _from_env(app)
    if test_config:
        app.config.update(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(app)
    if app.config["ENV_NAME"] == "production":
        problem = weak_secret_key(app.config["SECRET_KEY"])
        if problem:
            raise RuntimeError(problem)
    # The request body limit sits a little above the file limit, for the multipart envelope.
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPLOAD_BYTES"] + 1 * 2**20
    app.config.setdefault("RESULTS_DIR", str(Path(app.instance_path) / "results"))
    Path(app.config["RESULTS_DIR"]).mkdir(parents=True, exist_ok=True)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent / "migrations"))
    csrf.init_app(app)
    app.extensions["jointscan.registry"] = ModelRegistry(app.config["MODELS_DIR"])

    import web

    web.init_app(app)

    @app.get("/healthz")
    def healthz():
        # Liveness plus a cheap database round trip, for Docker's health check.
        db.session.execute(db.text("SELECT 1"))
        return jsonify(status="ok")

    _register_cli(app)
    return app


def _register_cli(app: Flask) -> None:
    @app.cli.command("prepare")
    def prepare() -> None:
        """Create or migrate the database, mark runs interrupted by a previous stop as failed, remove their files."""
        from flask_migrate import upgrade

        from predict import sweep_interrupted_runs

        upgrade()
        swept = sweep_interrupted_runs()
        removed = remove_orphan_files(app)
        click.echo(f"database ready; {swept} interrupted run(s) marked failed; {removed} orphan file set(s) removed")

    @app.cli.command("backup")
    @click.argument("dest", type=click.Path(path_type=Path))
    def backup_cmd(dest: Path) -> None:
        """Back up the SQLite database (online, consistent) and the stored images into a new folder DEST."""
        from ops.backup import BackupError, backup

        try:
            manifest = backup(app.config["SQLALCHEMY_DATABASE_URI"], Path(app.config["RESULTS_DIR"]), dest)
        except BackupError as exc:
            raise click.ClickException(str(exc))
        click.echo(f"backup written to {dest}: {manifest['runs']} runs, {len(manifest['files'])} files")

    @app.cli.command("restore")
    @click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
    @click.option("--force", is_flag=True, help="replace an existing database")
    def restore_cmd(src: Path, force: bool) -> None:
        """Restore the database and images from a backup folder (verified against its manifest first)."""
        from ops.backup import BackupError, restore

        db.session.remove()
        db.engine.dispose()   # no pooled connection may hold the old file open
        try:
            manifest = restore(src, app.config["SQLALCHEMY_DATABASE_URI"], Path(app.config["RESULTS_DIR"]),
                               force=force)
        except BackupError as exc:
            raise click.ClickException(str(exc))
        click.echo(f"restored {manifest['runs']} runs from {src}")

    def _new_user(username: str, role: str, password: str):
        from database import User
        from web.security import password_problem

        if User.query.filter_by(username=username).first():
            raise click.ClickException(f"user {username} exists")
        problem = password_problem(password, username)
        if problem:
            raise click.ClickException(f"password refused: {problem}")
        user = User(username=username, role=role)
        user.set_password(password)
        db.session.add(user)
        db.session.commit()
        from web.audit import record

        record("admin_change", user=None, resource=f"user:{user.id}",
               detail=f"created {role} {username} from the command line")
        return user

    @app.cli.command("create-user")
    @click.argument("username")
    @click.option("--role", default="clinician", type=click.Choice(["clinician", "reviewer", "admin"]))
    @click.password_option()
    def create_user(username: str, role: str, password: str) -> None:
        """Create an account from the command line (the password policy applies)."""
        _new_user(username, role, password)
        click.echo(f"created {role} {username}")

    @app.cli.command("create-admin")
    @click.argument("username")
    @click.password_option(help="prompted for (hidden, twice) when not given")
    def create_admin(username: str, password: str) -> None:
        """Create an administrator; the password is prompted for and must meet the policy."""
        _new_user(username, "admin", password)
        click.echo(f"created admin {username}")


def remove_orphan_files(app: Flask) -> int:
    """Remove result folders no finished run owns: staging folders left by a killed worker and the
    folders of runs that are not `done` (or no longer exist). Returns how many were removed."""
    import re
    import shutil

    from database import Run

    root = Path(app.config["RESULTS_DIR"])
    if not root.is_dir():
        return 0
    done = {pid for (pid,) in db.session.execute(db.select(Run.public_id).filter_by(status="done"))}
    removed = 0
    for path in root.iterdir():
        orphan = path.name.startswith(".staging-") or (
            re.fullmatch(r"[0-9a-f]{32}", path.name) is not None and path.name not in done)
        if orphan and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
