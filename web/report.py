"""The PDF report of a run (reports/pdf.py lays it out): the page's facts gathered from the stored run.

GET /runs/<id>/report.pdf for its owner (the result page links it) and GET /api/v1/runs/<id>/report.pdf with a
token; both audited as an export. The report names the run by its id and the user by their account name, and
holds no header text of the scan (none is stored)."""
from __future__ import annotations

from typing import Any

from flask import Response

from database import Run, RunStatus, utcnow
from reports.pdf import ModelSection, Picture, Report, TableData, render
from storage import results_dir
from tasks import get_task
from web.audit import model_versions_of, record, run_resource
from web.reviews import review_rows, review_summary


def _role_title(task: Any, role: str) -> str:
    return next((r.title for r in getattr(task, "roles", ()) if r.name == role), role.capitalize())


def _facts(run: Run, task: Any) -> list[tuple[str, str]]:
    meta = run.input_meta or {}
    facts = [("Input", f"{(run.input_kind or '?').upper()}, {meta.get('width', '?')} x {meta.get('height', '?')} px"
                       + (f", {meta['modality']}" if meta.get("modality") else ""))]
    labels = {spec.name: spec.label for spec in getattr(task, "options", ())}
    facts += [(labels.get(k, k), str(v)) for k, v in (run.options or {}).items() if v not in (None, "")]
    recognised = (run.summary or {}).get("recognised") or {}
    if recognised.get("kind"):
        facts.append(("Image recognised as", f"{recognised['kind']}"
                      + (" (analysed anyway)" if (run.summary or {}).get("analysed_anyway") else "")))
    return facts


def report_of(run: Run) -> Report:
    task = get_task(run.task)
    folder = results_dir() / run.public_id
    pictures = []
    if run.status == RunStatus.DONE and run.input_image:
        pictures.append(Picture(folder / run.input_image, "The scan as analysed"))
    sections = []
    for mr in run.results:
        found = task.report_findings(mr.role, mr.result or {})
        images = mr.images or {}
        sections.append(ModelSection(
            title=f"{_role_title(task, mr.role)}: {mr.model_id}", model_id=mr.model_id, version=str(mr.model_version),
            sha256=mr.model_sha256 or "-", lines=found.lines, notes=found.notes,
            tables=[TableData(*t) for t in found.tables],
            pictures=[Picture(folder / images[key], caption) for key, caption in found.images if key in images]))
    reviews = [(r["when"].strftime("%Y-%m-%d") if r["when"] else "-", r["who"], r["verdict"]
                + (f", grade {r['grade_label']}" if r["grade_label"] else "")
                + (f", score {r['score_text']}" if r["score_text"] else "")
                + "".join(f"; {'agrees' if v['agrees'] else 'differs'} with {v['model_id']} ({v['model_label']})"
                          for v in r["vs_models"]),
                r["comment"] or "") for r in review_rows(run)]
    counts = review_summary(run)
    summary_lines = ([f"{counts['count']} reviewer verdict(s): {counts['agree']} agree, {counts['disagree']} disagree."]
                     if counts["count"] else [])
    headline = task.headline(run.summary or {}, [{"model_id": r.model_id, "role": r.role, "result": r.result}
                                                  for r in run.results]) if run.status == RunStatus.DONE else ""
    notes = [f"The analysis failed: {run.error}"] if run.status == RunStatus.FAILED else []
    if run.status not in (RunStatus.DONE, RunStatus.FAILED):
        notes.append("The analysis has not finished: this report shows no findings yet.")
    return Report(run_id=run.public_id, task_title=task.title, status=run.status, user=run.user.username,
                  created_at=run.created_at, finished_at=run.finished_at, generated_at=utcnow(),
                  facts=_facts(run, task), headline=headline, run_notes=notes, pictures=pictures, models=sections,
                  reviews=reviews, review_summary=summary_lines)


def report_response(run: Run, user=None) -> Response:
    body = render(report_of(run))
    record("export", user=user, resource=run_resource(run), models=model_versions_of(run), detail="PDF report")
    response = Response(body, mimetype="application/pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="jointscan-report-{run.public_id[:8]}.pdf"'
    return response


__all__ = ["report_of", "report_response"]
