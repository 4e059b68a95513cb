"""Writing the audit trail: one call per event, from the views that do the thing.

`record()` adds an `AuditEvent` and commits it with the request's session, so
it is called where a view has finished its own changes (or has rolled back a
failure). Only the application decides what goes in a row: an action, an
outcome, a resource as "kind:random id", the model versions and a short
detail. Never file names, pseudonyms or DICOM values.
"""
from __future__ import annotations

import logging
from typing import Iterable

from flask import has_request_context, request
from flask_login import current_user

from database import AUDIT_ACTIONS, AUDIT_OUTCOMES, AuditEvent, Run, User, db
from model_loader import current_registry

log = logging.getLogger("jointscan.audit")


def client_addr() -> str | None:
    """The client's address (the proxy's X-Forwarded-For only when ProxyFix is configured)."""
    if not has_request_context():
        return None
    return (request.remote_addr or "")[:64] or None


def model_versions_of(run: Run | None) -> list[str] | None:
    """The models that produced the run's results; before they exist (a queued run), the models chosen."""
    if run is None:
        return None
    if run.results:
        return [f"{r.model_id}@{r.model_version}" for r in run.results]
    reg = current_registry()
    return [f"{mid}@{e.version}" for mid in run.model_ids or [] if (e := reg.get(mid)) is not None] or None


def run_resource(run: Run | str) -> str:
    return f"run:{run if isinstance(run, str) else run.public_id}"


def record(action: str, outcome: str = "ok", *, user: User | None = None, resource: str | None = None,
           models: Iterable[str] | None = None, detail: str | None = None, commit: bool = True) -> AuditEvent:
    """Append one event. `user` defaults to the signed-in user (None for anonymous requests)."""
    if action not in AUDIT_ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    if outcome not in AUDIT_OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    if user is None and has_request_context() and current_user and current_user.is_authenticated:
        user = current_user._get_current_object()
    event = AuditEvent(action=action, outcome=outcome, user_id=user.id if user else None,
                       username=user.username if user else None, resource=(resource or None),
                       model_versions=list(models) if models else None, client_addr=client_addr(),
                       detail=(detail or None) and detail[:200])
    db.session.add(event)
    if commit:
        db.session.commit()
    return event


def audit_upload_failure(exc: Exception, model_ids: list[str], user: User | None = None) -> None:
    """An upload that was refused or failed: the status and the models asked for, never the file."""
    status = getattr(exc, "status", 400)
    run_id = getattr(exc, "run_public_id", None)
    reg = current_registry()
    versions = [f"{mid}@{e.version}" for mid in model_ids if (e := reg.get(mid)) is not None]
    recognised = getattr(exc, "recognised", None)
    refused = f"; recognised as {recognised['kind']}" if recognised else ""
    record("upload", "denied" if status == 403 or recognised else "failed", user=user,
           resource=run_resource(run_id) if run_id else None, models=versions or None,
           detail=f"HTTP {status} ({type(exc).__name__}){refused}")


def upload_detail(run: Run, via: str = "") -> str:
    """The audit detail of a stored upload: the task, and an override of the recogniser when there was one."""
    summary = run.summary or {}
    anyway = ""
    if summary.get("analysed_anyway"):
        anyway = f", analysed anyway (recognised as {(summary.get('recognised') or {}).get('kind')})"
    return f"task {run.task}{via}{anyway}"
