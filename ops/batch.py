"""Scoring a folder of scans: `flask batch FOLDER --task knee --user NAME --out results.csv`.

Each file is analysed as an upload of that user would be (the same checks, recogniser, models, storage
and audit trail; the user's quota and the disk floor apply, the per-minute analysis limits do not: they
guard the web from clients, not an administrator's batch). One CSV row per file, written and flushed as
it finishes, so a stopped batch loses nothing: a second call skips every file that already has a row
(done, refused or failed) and goes on with the rest. A file that cannot be read, is refused, or whose
analysis fails gets a row saying so and the batch goes on. The CSV names files by their path relative
to FOLDER and holds no pseudonym or header text (file names are the caller's: choose them so that they
identify nobody).
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from database import Run, User
from model_loader import ModelRegistry
from predict import Analysis, ImageReadError, Limits, PredictionError, analyze
from tasks import get_task
from web.audit import model_versions_of, record, run_resource

SCAN_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", "")
BASE_COLUMNS = ("file", "status", "run_id", "headline", "recognised", "message", "seconds")


@dataclass
class BatchSummary:
    files: int
    skipped: int
    done: int
    refused: int
    failed: int
    seconds: float

    @property
    def rate(self) -> float:
        analysed = self.done + self.refused + self.failed
        return analysed / self.seconds if self.seconds > 0 else 0.0


def scan_files(folder: Path) -> list[Path]:
    """Every file under `folder` that may be a scan (by suffix; DICOM files often have none), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in SCAN_SUFFIXES and p.name != "DICOMDIR")


def already_done(out: Path) -> set[str]:
    if not out.exists():
        return set()
    with out.open(newline="") as fh:
        return {row["file"] for row in csv.DictReader(fh) if row.get("file")}


def columns_of(task: Any) -> tuple[str, ...]:
    return BASE_COLUMNS + tuple(name for name, _role, _key in getattr(task, "batch_columns", ()))


def figures_of(task: Any, run: Run) -> dict[str, Any]:
    """The task's headline figures (its `batch_columns`: column, role, dotted key) from the first model of
    that role whose result has the key."""
    out: dict[str, Any] = {}
    for column, role, key in getattr(task, "batch_columns", ()):
        for result in run.results:
            if result.role != role:
                continue
            value: Any = result.result or {}
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                out[column] = value
                break
    return out


def run_batch(folder: Path, task_name: str, user: User, out: Path, *, registry: ModelRegistry, results_dir: Path,
              limits: Limits, model_ids: Iterable[str] = (), progress: Callable[[Iterable[Path]], Any] | None = None
              ) -> BatchSummary:
    task = get_task(task_name)
    if task is None:
        raise ValueError(f"unknown task {task_name!r}")
    files = scan_files(folder)
    seen = already_done(out)
    todo = [p for p in files if str(p.relative_to(folder)) not in seen]
    columns = columns_of(task)
    fresh = not out.exists() or out.stat().st_size == 0
    counts = {"done": 0, "refused": 0, "failed": 0}
    t0 = time.perf_counter()
    with out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if fresh:
            writer.writeheader()
        for path in (progress(todo) if progress else todo):
            row = analyse_one(task, path, folder, user, list(model_ids), registry, results_dir, limits)
            counts[row["status"]] += 1
            writer.writerow(row)
            fh.flush()
    return BatchSummary(len(files), len(files) - len(todo), counts["done"], counts["refused"], counts["failed"],
                        time.perf_counter() - t0)


def analyse_one(task: Any, path: Path, folder: Path, user: User, model_ids: list[str], registry: ModelRegistry,
                results_dir: Path, limits: Limits) -> dict[str, Any]:
    row: dict[str, Any] = {"file": str(path.relative_to(folder))}
    t0 = time.perf_counter()
    try:
        run = analyze(user, path.read_bytes(), Analysis(task.name, model_ids), registry=registry,
                      results_dir=results_dir, limits=limits)
    except (ImageReadError, PredictionError) as exc:
        stored_failure = getattr(exc, "run_public_id", None)
        row.update(status="failed" if stored_failure else "refused", run_id=stored_failure or "",
                   message=exc.message, recognised=(getattr(exc, "recognised", None) or {}).get("kind", ""))
        record("upload", "failed" if stored_failure else "denied", user=user, detail=f"batch: {exc.message[:120]}")
    except OSError as exc:          # the file itself could not be read
        row.update(status="refused", message=f"the file could not be read ({type(exc).__name__})")
    else:
        summary = run.summary or {}
        row.update(status="done", run_id=run.public_id, recognised=(summary.get("recognised") or {}).get("kind", ""),
                   headline=task.headline(summary, [{"model_id": r.model_id, "role": r.role, "result": r.result}
                                                    for r in run.results]),
                   **figures_of(task, run))
        record("upload", user=user, resource=run_resource(run), models=model_versions_of(run),
               detail=f"{task.name} via batch")
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row
