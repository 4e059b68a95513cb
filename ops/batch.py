"""Scoring a folder of scans: `flask batch FOLDER --task knee --user NAME --out results.csv`.

Each file is analysed as an upload of that user would be (the same checks, recogniser, models, storage
and audit trail; the user's quota and the disk floor apply, the per-minute analysis limits do not: they
guard the web from clients, not an administrator's batch). One CSV row per file, written and flushed as
it finishes, so a stopped batch loses nothing: a second call skips every file that already has a row
(done, refused or failed) and goes on with the rest. A file that cannot be read, is refused, or whose
analysis fails gets a row saying so and the batch goes on. The CSV names files by their path relative
to FOLDER and holds no pseudonym or header text (file names are the caller's: choose them so that they
identify nobody). With Celery workers configured (REDIS_URL) the files fan out to them: the runs are queued
a window at a time and each row is written as its run ends; without, this process analyses them in turn.
"""
from __future__ import annotations

import csv
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from database import Run, RunStatus, User, db
from model_loader import ModelRegistry
from predict import Analysis, ImageReadError, JobSettings, Limits, PredictionError, analyze, submit
from tasks import get_task
from tasks.base import SUMMARY_ROLE
from web.audit import model_versions_of, record, run_resource

SCAN_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", "")
STUDY_SUFFIXES = (".nii", ".gz", ".zip")        # a task that reads studies: one study per file
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


def scan_files(folder: Path, studies: bool = False) -> list[Path]:
    """Every file under `folder` that may be a scan (by suffix; DICOM files often have none), sorted; for a task
    that reads studies also NIfTI volumes and zips, each one study."""
    suffixes = SCAN_SUFFIXES + (STUDY_SUFFIXES if studies else ())
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in suffixes and p.name != "DICOMDIR")


def upload_of(task: Any, path: Path):
    """What one file of a batch is as an upload: a study task gets it with its name (which tells a NIfTI volume's
    sequence, and is never stored)."""
    return [(path.read_bytes(), path.name)] if getattr(task, "reads_studies", False) else path.read_bytes()


def already_done(out: Path) -> set[str]:
    if not out.exists():
        return set()
    with out.open(newline="") as fh:
        return {row["file"] for row in csv.DictReader(fh) if row.get("file")}


def columns_of(task: Any) -> tuple[str, ...]:
    return BASE_COLUMNS + tuple(name for name, _role, _key in getattr(task, "batch_columns", ()))


def figures_of(task: Any, run: Run) -> dict[str, Any]:
    """The task's headline figures (its `batch_columns`: column, role, dotted key) from the first model of
    that role whose result has the key (from the run's summary for SUMMARY_ROLE)."""
    out: dict[str, Any] = {}
    for column, role, key in getattr(task, "batch_columns", ()):
        sources = [run.summary or {}] if role == SUMMARY_ROLE else [r.result or {} for r in run.results if r.role == role]
        for source in sources:
            value: Any = source
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                out[column] = value
                break
    return out


def run_batch(folder: Path, task_name: str, user: User, out: Path, *, registry: ModelRegistry, results_dir: Path,
              limits: Limits, model_ids: Iterable[str] = (), progress: Callable[[int], Any] | None = None,
              executor: Any = None, settings: JobSettings = JobSettings(), in_flight: int = 32) -> BatchSummary:
    """Analyse every file of `folder` not yet in `out`. Without `executor`, one after the other in this process;
    with one (Celery workers), up to `in_flight` runs are queued at once for the workers to share, and each
    row is written as its run ends. `progress(total)` is a context manager with `update(n)` (click's bar)."""
    task = get_task(task_name)
    if task is None:
        raise ValueError(f"unknown task {task_name!r}")
    files = scan_files(folder, getattr(task, "reads_studies", False))
    seen = already_done(out)
    todo = [p for p in files if str(p.relative_to(folder)) not in seen]
    columns = columns_of(task)
    fresh = not out.exists() or out.stat().st_size == 0
    counts = {"done": 0, "refused": 0, "failed": 0}
    t0 = time.perf_counter()
    with out.open("a", newline="") as fh, (progress(len(todo)) if progress else nullcontext()) as bar:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if fresh:
            writer.writeheader()

        def write(row: dict[str, Any]) -> None:
            counts[row["status"]] += 1
            writer.writerow(row)
            fh.flush()
            if bar is not None:
                bar.update(1)

        job = _Batch(task, folder, user, list(model_ids), registry, results_dir, limits, settings)
        if executor is None:
            for path in todo:
                write(job.analyse_here(path))
        else:
            job.fan_out(todo, executor, in_flight, write)
    return BatchSummary(len(files), len(files) - len(todo), counts["done"], counts["refused"], counts["failed"],
                        time.perf_counter() - t0)


@dataclass
class _Batch:
    task: Any
    folder: Path
    user: User
    model_ids: list[str]
    registry: ModelRegistry
    results_dir: Path
    limits: Limits
    settings: JobSettings

    def analyse_here(self, path: Path) -> dict[str, Any]:
        """One file, analysed in this process: its row."""
        row, t0 = self._row(path), time.perf_counter()
        try:
            run = analyze(self.user, upload_of(self.task, path), Analysis(self.task.name, self.model_ids),
                          registry=self.registry, results_dir=self.results_dir, limits=self.limits,
                          settings=self.settings)
        except (ImageReadError, PredictionError, OSError) as exc:
            row.update(self._refused(exc))
        else:
            self._audit(run)
            row.update(self._ended(run))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return row

    def fan_out(self, todo: list[Path], executor: Any, in_flight: int, write: Callable[[dict[str, Any]], None]) -> None:
        """Queue the files for the workers, at most `in_flight` at a time, and write each row as its run ends."""
        waiting: dict[int, tuple[dict[str, Any], float]] = {}      # run id -> (its row so far, when queued)
        pending = list(reversed(todo))
        while pending or waiting:
            while pending and len(waiting) < in_flight:
                path = pending.pop()
                row, t0 = self._row(path), time.perf_counter()
                try:
                    run = submit(self.user, upload_of(self.task, path), Analysis(self.task.name, self.model_ids),
                                 registry=self.registry, results_dir=self.results_dir, limits=self.limits,
                                 enqueue=executor.submit, held_here=executor.holds_queue)
                except (ImageReadError, PredictionError, OSError) as exc:
                    row.update(self._refused(exc), seconds=round(time.perf_counter() - t0, 2))
                    write(row)
                    continue
                self._audit(run)
                waiting[run.id] = (row, t0)
            if not waiting:
                continue
            db.session.expire_all()
            ended = db.session.execute(db.select(Run).where(Run.id.in_(list(waiting)),
                                                            Run.status.in_((RunStatus.DONE, RunStatus.FAILED)))
                                       ).scalars().all()
            for run in ended:
                row, t0 = waiting.pop(run.id)
                row.update(self._ended(run), seconds=round(time.perf_counter() - t0, 2))
                write(row)
            if not ended:
                time.sleep(0.05)

    def _row(self, path: Path) -> dict[str, Any]:
        return {"file": str(path.relative_to(self.folder))}

    def _refused(self, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, OSError) and not isinstance(exc, (ImageReadError, PredictionError)):
            return {"status": "refused", "message": f"the file could not be read ({type(exc).__name__})"}
        stored_failure = getattr(exc, "run_public_id", None)
        record("upload", "failed" if stored_failure else "denied", user=self.user,
               detail=f"batch: {exc.message[:120]}")
        return {"status": "failed" if stored_failure else "refused", "run_id": stored_failure or "",
                "message": exc.message, "recognised": (getattr(exc, "recognised", None) or {}).get("kind", "")}

    def _audit(self, run: Run) -> None:
        record("upload", user=self.user, resource=run_resource(run), models=model_versions_of(run),
               detail=f"{self.task.name} via batch")

    def _ended(self, run: Run) -> dict[str, Any]:
        summary = run.summary or {}
        recognised = (summary.get("recognised") or {}).get("kind", "")
        if run.status == RunStatus.FAILED:
            return {"status": "failed", "run_id": run.public_id, "recognised": recognised,
                    "message": f"The analysis failed: {run.error}"}
        return {"status": "done", "run_id": run.public_id, "recognised": recognised,
                "headline": self.task.headline(summary, [{"model_id": r.model_id, "role": r.role, "result": r.result}
                                                          for r in run.results]),
                **figures_of(self.task, run)}
