"""Small pieces shared by the blueprints: owner-filtered run lookup, template filters, headlines."""
from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Iterable
from urllib.parse import urlsplit

from flask import Flask, abort, g, url_for

from database import ModelResult, Run, User


# -- access ------------------------------------------------------------------------
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
    run = Run.query.filter(Run.public_id == public_id, Run.shared_at.isnot(None), Run.status == "done",
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
    if user.role == "reviewer" and run.shared_at is not None and run.status == "done":
        return run, "reviewer"
    abort(404)


def run_image_files(run: Run) -> set[str]:
    """Every file name this run stored: the only names its image route will serve."""
    names: set[str] = set()
    if run.status != "done":
        return names
    if run.input_image:
        names.add(run.input_image)
    names.update((run.images or {}).values())
    for result in run.results:
        names.update((result.images or {}).values())
    return names


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


def image_url(run: Run, file_name: str | None, external: bool = False) -> str | None:
    if not file_name:
        return None
    return url_for("scans.run_image", public_id=run.public_id, name=file_name, _external=external)


# -- presentation ------------------------------------------------------------------
def headline(run: Run) -> str:
    """One line for lists, worded by the task itself."""
    if run.status == "failed":
        return "Failed"
    if run.status != "done":
        return "Running"
    from tasks import get_task

    task = get_task(run.task)
    results = [{"model_id": r.model_id, "role": r.role, "result": r.result or {}} for r in run.results]
    try:
        return task.headline(run.summary or {}, results) if task else "Done"
    except Exception:  # a headline must never break a list page
        return "Done"


def field_label(task: Any, key: str) -> str:
    """A result key as the task names it, else the key made readable."""
    return (getattr(task, "field_labels", None) or {}).get(key) or humanize(key)


def fmt_mib(n_bytes: int) -> str:
    mib = n_bytes / 2**20
    return f"{mib:.0f} MiB" if abs(mib - round(mib)) < 0.05 else f"{mib:.1f} MiB"


def capfirst(text: Any) -> str:
    text = str(text or "")
    return text[:1].upper() + text[1:]


def humanize(name: str) -> str:
    text = str(name).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def fmt_dt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def fmt_percent(value: Any, digits: int = 0) -> str:
    try:
        return f"{float(value) * 100:.{digits}f}%"
    except (TypeError, ValueError):
        return "n/a"


def fmt_bytes(value: Any) -> str:
    if value is None:
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def fmt_number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def fmt_ms(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s"


def flatten(data: Any, prefix: str = "", depth: int = 3) -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, scalar value) rows; lists are joined."""
    rows: list[tuple[str, Any]] = []
    if isinstance(data, dict) and depth > 0:
        for key, value in data.items():
            rows += flatten(value, f"{prefix}.{key}" if prefix else str(key), depth - 1)
    elif isinstance(data, (list, tuple)):
        rows.append((prefix, ", ".join(str(v) for v in data)))
    else:
        rows.append((prefix, data))
    return rows


def headline_metrics(metrics: dict[str, Any] | None, limit: int = 4) -> list[tuple[str, Any]]:
    """The first few numeric metrics of a registry entry, for the models list."""
    rows = [(k, v) for k, v in flatten(metrics or {}) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return rows[:limit]


def short_sha(value: str | None) -> str:
    return (value or "")[:12]


def group_results(results: Iterable[ModelResult]) -> dict[str, list[ModelResult]]:
    grouped: dict[str, list[ModelResult]] = {}
    for result in results:
        grouped.setdefault(result.role, []).append(result)
    return grouped


def _signup_is_open() -> bool:
    from web.auth import signup_open

    return signup_open()


def register_template_helpers(app: Flask) -> None:
    app.add_template_filter(humanize, "humanize")
    app.add_template_filter(capfirst, "capfirst")
    app.add_template_filter(fmt_dt, "datetime")
    app.add_template_filter(fmt_percent, "percent")
    app.add_template_filter(fmt_bytes, "filesize")
    app.add_template_filter(fmt_number, "number")
    app.add_template_filter(fmt_ms, "ms")
    app.add_template_filter(short_sha, "short_sha")

    # Globals (not a context processor) so imported macros see them too.
    app.jinja_env.globals.update(image_url=image_url, headline=headline, field_label=field_label,
                                 signup_is_open=_signup_is_open)

    @app.context_processor
    def _task_list():
        from tasks import all_tasks

        return {"tasks": list(all_tasks().values())}
