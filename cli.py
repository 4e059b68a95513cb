"""Command-line commands: `flask prepare`, `backup`, `restore`, `batch`, `create-user`, `create-admin`."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask
from flask_migrate import upgrade

from database import ROLES, User, db
from model_loader import current_registry
from ops.backup import BackupError, backup, restore
from ops.batch import run_batch
from predict import sweep_interrupted_runs
from storage import remove_orphan_files, results_dir, upload_limits
from tasks import all_tasks
from web.audit import record
from web.security import password_problem


def register(app: Flask) -> None:
    @app.cli.command("prepare")
    def prepare() -> None:
        """Create or migrate the database, mark runs interrupted by a previous stop as failed, remove their files.

        Safe beside a live server: only runs pending longer than any worker may run one are swept, and only
        files older than that are removed, so an analysis in flight is left alone."""
        upgrade()
        stale_after = int(app.config["RUN_STALE_AFTER_S"])
        swept = sweep_interrupted_runs(stale_after, results_dir())
        removed = remove_orphan_files(results_dir(), older_than_s=stale_after)
        click.echo(f"database ready; {swept} interrupted run(s) marked failed; {removed} orphan file set(s) removed")

    @app.cli.command("backup")
    @click.argument("dest", type=click.Path(path_type=Path))
    def backup_cmd(dest: Path) -> None:
        """Back up the SQLite database (online, consistent) and the stored images into a new folder DEST."""
        try:
            manifest = backup(app.config["SQLALCHEMY_DATABASE_URI"], results_dir(), dest)
        except BackupError as exc:
            raise click.ClickException(str(exc))
        click.echo(f"backup written to {dest}: {manifest['runs']} runs, {len(manifest['files'])} files")

    @app.cli.command("restore")
    @click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
    @click.option("--force", is_flag=True, help="replace an existing database")
    def restore_cmd(src: Path, force: bool) -> None:
        """Restore the database and images from a backup folder (verified against its manifest first)."""
        db.session.remove()
        db.engine.dispose()   # no pooled connection may hold the old file open
        try:
            manifest = restore(src, app.config["SQLALCHEMY_DATABASE_URI"], results_dir(), force=force)
        except BackupError as exc:
            raise click.ClickException(str(exc))
        click.echo(f"restored {manifest['runs']} runs from {src}")

    @app.cli.command("batch")
    @click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
    @click.option("--task", "task_name", required=True, type=click.Choice(sorted(all_tasks())))
    @click.option("--user", "username", required=True, help="the clinician account the runs belong to")
    @click.option("--models", default="", help="comma-separated model ids (default: the task's defaults)")
    @click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
                  help="the CSV to write or resume (default: FOLDER/results.csv)")
    def batch_cmd(folder: Path, task_name: str, username: str, models: str, out: Path | None) -> None:
        """Analyse every scan in FOLDER with a task: one CSV row per file, resumable (files with a row are
        skipped), bad files reported in the CSV and skipped."""
        user = User.query.filter_by(username=username).first()
        if user is None or user.disabled or user.role != "clinician":
            raise click.ClickException(f"{username} is not an active clinician account")
        out = out or folder / "results.csv"

        def progress(files):
            return click.progressbar(files, label=f"{task_name} batch", show_eta=True, show_pos=True,
                                     item_show_func=lambda p: p.name if p else "", file=sys.stderr)

        def bar(files):
            with progress(files) as items:
                yield from items

        summary = run_batch(folder, task_name, user, out, registry=current_registry(), results_dir=results_dir(),
                            limits=upload_limits(), model_ids=[m for m in models.split(",") if m.strip()],
                            progress=bar)
        click.echo(f"{summary.files} files: {summary.skipped} already in {out}, {summary.done} done, "
                   f"{summary.refused} refused, {summary.failed} failed; {summary.seconds:.0f} s "
                   f"({summary.rate:.2f} files/s)")

    @app.cli.command("create-user")
    @click.argument("username")
    @click.option("--role", default="clinician", type=click.Choice(list(ROLES)))
    @click.password_option()
    def create_user(username: str, role: str, password: str) -> None:
        """Create an account from the command line (the password policy applies)."""
        new_user(username, role, password)
        click.echo(f"created {role} {username}")

    @app.cli.command("create-admin")
    @click.argument("username")
    @click.password_option(help="prompted for (hidden, twice) when not given")
    def create_admin(username: str, password: str) -> None:
        """Create an administrator; the password is prompted for and must meet the policy."""
        new_user(username, "admin", password)
        click.echo(f"created admin {username}")


def new_user(username: str, role: str, password: str) -> User:
    """An account made from the command line, audited like one an administrator makes on the admin page."""
    if User.query.filter_by(username=username).first():
        raise click.ClickException(f"user {username} exists")
    problem = password_problem(password, username)
    if problem:
        raise click.ClickException(f"password refused: {problem}")
    user = User(username=username, role=role)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    record("admin_change", user=None, resource=f"user:{user.id}",
           detail=f"created {role} {username} from the command line")
    return user
