"""Who may see which run: owner-filtered and reviewer-filtered run lookups (404 for anyone else),
the files a run's image route may serve, `no_store` for pages that show runs, safe `next` targets."""
from __future__ import annotations

import functools
from urllib.parse import urlsplit

from flask import abort, g

from database import Run, RunStatus, User


def _check_public_id(public_id: str) -> None:
    if not public_id or len(public_id) > 32 or not public_id.isalnum():
        abort(404)


def owned_run_or_404(public_id: str, user: User) -> Run:
    """The run with this public id if `user` owns it; 404 otherwise (also for other users' runs)."""
    _check_public_id(public_id)
    run = Run.query.filter_by(public_id=public_id, user_id=user.id).first()
    if run is None:
        abort(404)
    return run


def reviewable_run_or_404(public_id: str, user: User) -> Run:
    """A finished run its owner shared for review, for a reviewer who is not its owner; 404 otherwise."""
    _check_public_id(public_id)
    if user is None or user.role != "reviewer":
        abort(404)
    run = Run.query.filter(Run.public_id == public_id, Run.shared_at.isnot(None), Run.status == RunStatus.DONE,
                           Run.user_id != user.id).first()
    if run is None:
        abort(404)
    return run


def visible_run_or_404(public_id: str, user: User) -> tuple[Run, str]:
    """(run, "owner" | "reviewer") for the run's owner or a reviewer of a shared run; 404 for anyone else."""
    _check_public_id(public_id)
    run = Run.query.filter_by(public_id=public_id).first()
    if run is None:
        abort(404)
    if run.user_id == user.id:
        return run, "owner"
    if user.role == "reviewer" and run.shared_at is not None and run.status == RunStatus.DONE:
        return run, "reviewer"
    abort(404)


def run_image_files(run: Run) -> set[str]:
    """Every file name this run stored: the only names its image route will serve."""
    names: set[str] = set()
    if run.status != RunStatus.DONE:
        return names
    if run.input_image:
        names.add(run.input_image)
    names.update((run.images or {}).values())
    for result in run.results:
        names.update((result.images or {}).values())
    return names


def run_download_files(run: Run) -> dict[str, str]:
    """The downloads a finished run offers (a study's masks as NIfTI), by name: the only ones its file route
    serves."""
    if run.status != RunStatus.DONE:
        return {}
    return dict((run.summary or {}).get("files") or {})


def no_store(view):
    """Mark a view's response `Cache-Control: no-store` (pages and images showing runs)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        g.no_store = True
        return view(*args, **kwargs)

    return wrapper


def is_safe_next(target: str | None) -> bool:
    """Only same-site paths: '/history', not '//evil.example', 'https://...', or '/\\evil'."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc and not any(ord(c) < 32 for c in target)
