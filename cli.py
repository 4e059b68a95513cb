"""Command-line commands: `flask prepare`, `backup`, `restore`, `batch`, `create-user`, `create-admin`."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from flask import Flask
from flask_migrate import upgrade

from database import ROLES, User, db
from model_loader import current_registry
from ops.backup import BackupError, backup, restore
from ops.batch import run_batch
from jobs import current_executor, job_settings
from predict import sweep_runs
from storage import remove_orphan_files, results_dir, upload_limits
from tasks import all_tasks
from web.audit import record
from web.security import password_problem


class RateBar:
    """click's progress bar (position, percent, time left) with the rate so far in files per second."""

    def __init__(self, bar):
        self._bar, self._t0, self._done = bar, time.perf_counter(), 0

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def update(self, n: int) -> None:
        self._done += n
        rate = self._done / max(time.perf_counter() - self._t0, 1e-6)
        self._bar.update(n, current_item=f"{rate:.1f} files/s")


def register(app: Flask) -> None:
    @app.cli.command("prepare")
    def prepare() -> None:
        """Create or migrate the database, fail the runs that ran past the time limit or waited in the broker too
        long, remove the files no run owns.

        Safe beside a live server and workers: runs whose job died are left for a live server's sweep, which
        hands them to a new job (web/upkeep.py), and only files older than an analysis may take are removed."""
        upgrade()
        settings = job_settings(app.config)
        swept = sweep_runs(settings, results_dir())
        removed = remove_orphan_files(results_dir(), older_than_s=settings.time_limit_s + settings.stale_after_s)
        click.echo(f"database ready; {swept.overdue + swept.lost} run(s) that lost their job marked failed; "
                   f"{removed} orphan file set(s) removed")

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

        def bar(total: int):
            return RateBar(click.progressbar(length=total, label=f"{task_name} batch", show_eta=True, show_pos=True,
                                             show_percent=True, item_show_func=lambda text: text, file=sys.stderr))

        executor = current_executor()
        summary = run_batch(folder, task_name, user, out, registry=current_registry(), results_dir=results_dir(),
                            limits=upload_limits(), model_ids=[m for m in models.split(",") if m.strip()],
                            progress=bar, settings=job_settings(app.config),
                            executor=executor if not executor.holds_queue else None)
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
