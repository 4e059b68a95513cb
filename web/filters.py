"""Presentation for the templates: formatting filters, headlines, field labels, image URLs, and what
the result pages show of a run (its task, its results by role, each model's registry entry and availability)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from flask import Flask, url_for

from database import ModelResult, Run, RunStatus
from imaging.errors import rounded_size
from model_loader import UNAVAILABLE_FOR_USERS, ModelRegistry, current_registry
from tasks import all_tasks, get_task
from web.settings import signup_open

DISABLED_BY_ADMIN = "disabled by an administrator"


def image_url(run: Run, file_name: str | None, external: bool = False) -> str | None:
    if not file_name:
        return None
    return url_for("scans.run_image", public_id=run.public_id, name=file_name, _external=external)


def headline(run: Run) -> str:
    """One line for lists, worded by the task itself."""
    if run.status == RunStatus.FAILED:
        return "Failed"
    if run.status != RunStatus.DONE:
        return "Running"
    task = get_task(run.task)
    results = [{"model_id": r.model_id, "role": r.role, "result": r.result or {}} for r in run.results]
    try:
        return task.headline(run.summary or {}, results) if task else "Done"
    except Exception:  # a headline must never break a list page
        return "Done"


def field_label(task: Any, key: str) -> str:
    """A result key as the task names it, else the key made readable."""
    return (getattr(task, "field_labels", None) or {}).get(key) or humanize(key)


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


def problem_for(user: Any, problem: str | None) -> str | None:
    """A model's problem as `user` may read it: the detail (file names, the command that rebuilds the
    file) for administrators, a plain sentence for everyone else."""
    if problem is None or getattr(user, "role", None) == "admin":
        return problem
    return UNAVAILABLE_FOR_USERS


def model_problem(reg: ModelRegistry, model_id: str, disabled: set[str], user: Any) -> str | None:
    """Why a registered model cannot be used now, as `user` may read it; None when it can.
    `disabled` from disabled_model_ids()."""
    return DISABLED_BY_ADMIN if model_id in disabled else problem_for(user, reg.problem(model_id))


def model_entries(run: Run) -> dict[str, Any]:
    """The registry entry of each model that produced one of the run's results (None once unregistered)."""
    reg = current_registry()
    return {r.model_id: reg.get(r.model_id) for r in run.results}


def result_context(run: Run) -> dict[str, Any]:
    """What every result template reads about a run besides the run itself: its task, its results
    by role and the registry entry of each model."""
    task = get_task(run.task)
    return {"task": task, "grouped": group_results(run.results), "entries": model_entries(run),
            "role_titles": {r.name: r.title for r in task.roles} if task else {}}


def group_results(results: Iterable[ModelResult]) -> dict[str, list[ModelResult]]:
    grouped: dict[str, list[ModelResult]] = {}
    for result in results:
        grouped.setdefault(result.role, []).append(result)
    return grouped


def register_template_helpers(app: Flask) -> None:
    app.add_template_filter(humanize, "humanize")
    app.add_template_filter(capfirst, "capfirst")
    app.add_template_filter(fmt_dt, "datetime")
    app.add_template_filter(fmt_percent, "percent")
    app.add_template_filter(rounded_size, "filesize")
    app.add_template_filter(fmt_number, "number")
    app.add_template_filter(fmt_ms, "ms")
    app.add_template_filter(short_sha, "short_sha")

    # Globals (not a context processor) so imported macros see them too.
    app.jinja_env.globals.update(image_url=image_url, headline=headline, field_label=field_label,
                                 signup_is_open=signup_open)

    @app.context_processor
    def _task_list():
        return {"tasks": list(all_tasks().values())}
