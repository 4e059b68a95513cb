"""Run one uploaded scan through a task's pipeline with chosen models -> a stored Run.

Nothing is stored for an upload that fails to decode or does not suit the
task. Once a Run row exists, it ends either `done` with all its images on
disk, or `failed` with a reason and no files: images are written to a
temporary folder and moved into place in one rename after the models ran.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from database import ModelResult, Run, RunStatus, User, db, disabled_model_ids, utcnow
from imaging.errors import rounded_size
from imaging.io import DecodedImage, ImageReadError, fit_pixels, read_image

from imaging.overlay import encode_png, grey_to_rgb
from model_loader import UNAVAILABLE_FOR_USERS, ModelEntry, ModelRegistry, ModelUnavailable
from private_files import private_dir, write_private
from tasks import TaskInputError, TaskOutput, all_tasks, get_task
from tasks.recognition import REFUSE_AT, Recognition, recognise, recogniser_entry, refusal

log = logging.getLogger("jointscan.predict")
# A run's images are written under RESULTS_DIR/<STAGING_PREFIX><public id>-<random>/ and renamed into place.
STAGING_PREFIX = ".staging-"
# Analyses one process runs at once (the others wait): a threaded server has many more threads than the
# CPU and memory can give to concurrent model runs, which each use every core already.
ANALYSES_AT_ONCE = 2
_ANALYSES = threading.BoundedSemaphore(ANALYSES_AT_ONCE)


class PredictionError(Exception):
    """A request that cannot be served; `message` is safe to show, `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400, run_public_id: str | None = None,
                 recognised: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.run_public_id = run_public_id   # set when a stored run failed (it shows in history)
        self.recognised = recognised         # what the recogniser took the upload for, when it refused it


@dataclass
class Limits:
    max_bytes: int = 64 * 2**20
    max_pixels: int = 40_000_000
    min_free_disk_bytes: int = 0                 # refuse analyses when the results disk has less free space
    storage_quota_bytes: int | None = None       # a user's stored results, unless their account sets another


@dataclass
class Analysis:
    task: str
    model_ids: list[str] = field(default_factory=list)   # empty: the task's default models
    options: dict[str, Any] = field(default_factory=dict)
    # The user's explicit choice to analyse an upload that the recogniser takes for another kind.
    analyse_anyway: bool = False


def clean_options(task_name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Task options from a form or API request, validated against the task's OptionSpecs."""
    task = get_task(task_name)
    if task is None:
        raise PredictionError(f"Unknown task '{task_name}'.", 400)
    cleaned: dict[str, Any] = {}
    for spec in task.options:
        value = str(raw.get(spec.name) or spec.default).strip()
        if spec.kind == "choice" and value not in {v for v, _ in spec.choices}:
            raise PredictionError(f"{spec.label}: choose one of the listed values.", 400)
        if len(value) > spec.max_length:
            raise PredictionError(f"{spec.label}: at most {spec.max_length} characters.", 400)
        if spec.kind == "date" and value:
            try:
                date.fromisoformat(value)
            except ValueError:
                raise PredictionError(f"{spec.label}: use a date like 2026-01-31.", 400) from None
        cleaned[spec.name] = value
    return cleaned


def choose_models(registry: ModelRegistry, task_name: str, model_ids: list[str]) -> list[ModelEntry]:
    """The registry entries to run, validated against the task; defaults when none were chosen."""
    task = get_task(task_name)
    if task is None:
        raise PredictionError(f"Unknown task '{task_name}'.", 400)
    disabled = disabled_model_ids()   # switched off by an administrator (admin page)
    if not model_ids:
        model_ids = [e.id for e in registry.entries(task_name) if e.default and e.id not in disabled]
    chosen: list[ModelEntry] = []
    for mid in dict.fromkeys(model_ids):  # keep order, drop repeats
        entry = registry.get(mid)
        if entry is None or entry.task != task_name:
            raise PredictionError(f"Model '{mid}' is not a {task.title} model.", 400)
        if entry.id in disabled:
            raise PredictionError(f"Model '{entry.title}' has been disabled by an administrator "
                                  "and cannot be used. Choose another model.", 403)
        chosen.append(entry)
    for role in task.roles:
        if role.required and not any(e.role == role.name for e in chosen):
            raise PredictionError(f"Choose at least one model for: {role.title}.", 400)
    for entry in chosen:
        problem = registry.problem(entry.id)
        if problem:
            raise _unavailable(entry, problem)
    return chosen


def _unavailable(entry: ModelEntry, problem: str) -> PredictionError:
    """The 503 for a model that cannot be used: the detail goes to the log, the user reads a plain sentence."""
    log.warning("model %s unavailable: %s", entry.id, problem)
    return PredictionError(f"Model '{entry.title}' is unavailable: {UNAVAILABLE_FOR_USERS}.", 503)


def analyze(user: User, data: bytes, request: Analysis, *, registry: ModelRegistry,
            results_dir: Path, limits: Limits = Limits()) -> Run:
    """Decode, run and store. Raises ImageReadError / PredictionError before anything is stored."""
    t0 = time.perf_counter()
    task = get_task(request.task)
    if task is None:
        raise PredictionError(f"Unknown task '{request.task}'.", 400)
    _check_free_space(results_dir, limits.min_free_disk_bytes)
    _check_quota(user, limits.storage_quota_bytes)
    image = fit_pixels(read_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels), task.max_pixels)
    try:
        task.check_input(image)
    except TaskInputError as exc:
        raise PredictionError(exc.message, exc.status) from exc
    entries = choose_models(registry, request.task, request.model_ids)
    options = clean_options(request.task, request.options)
    t_check = time.perf_counter()
    checks = recognition_summary(task, *recognise_image(registry, image), request.analyse_anyway)
    check_ms = _ms(t_check, time.perf_counter())
    t_decoded = time.perf_counter()
    try:
        loaded = [registry.load(e.id) for e in entries]
    except ModelUnavailable as exc:
        raise _unavailable(registry.get(exc.model_id), exc.message) from exc
    t_ready = time.perf_counter()

    run = Run(user_id=user.id, task=task.name, status=RunStatus.PENDING, input_kind=image.kind,
              input_meta=_input_facts(image), options=options)
    db.session.add(run)
    db.session.commit()

    staging = results_dir / f"{STAGING_PREFIX}{run.public_id}-{uuid.uuid4().hex[:6]}"
    try:
        by_role: dict[str, list] = {}
        for lm in loaded:
            by_role.setdefault(lm.entry.role, []).append(lm)
        with _ANALYSES:
            output = task.run(image, by_role, options)
        t_pred = time.perf_counter()
        _store(run, image, output, {**output.summary, **checks}, {e.id: e for e in entries}, staging, results_dir)
        db.session.flush()
        timings = {"check_ms": check_ms, "decode_ms": _ms(t0, t_decoded), "load_ms": _ms(t_decoded, t_ready),
                   "predict_ms": _ms(t_ready, t_pred),
                   "store_ms": _ms(t_pred, time.perf_counter()), "total_ms": _ms(t0, time.perf_counter())}
        if not Run.settle(run.id, RunStatus.DONE, timings=timings):
            raise RunSettled(run.public_id)
        db.session.commit()
        return run
    except RunSettled:
        # A sweep marked the run failed while it ran (it outlived the worker time-out): that verdict stands,
        # and what this call stored goes with the rolled-back transaction and the removed folder.
        db.session.rollback()
        shutil.rmtree(results_dir / run.public_id, ignore_errors=True)
        log.error("run %s finished after it was marked failed; its results were discarded", run.public_id)
        raise PredictionError("The analysis took longer than the server allows and was stopped. Nothing was kept.",
                              500, run.public_id) from None
    except Exception as exc:
        db.session.rollback()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(results_dir / run.public_id, ignore_errors=True)
        reason = _failure_reason(exc)
        # Log the run id and the exception type only: never file names or header values.
        log.error("run %s failed: %s", run.public_id, type(exc).__name__, exc_info=not isinstance(exc, OSError))
        _mark_failed(run.id, reason)
        raise PredictionError(f"The analysis failed: {reason}", 500, run.public_id) from exc


def _check_free_space(results_dir: Path, floor: int) -> None:
    """Refuse before anything is written when the results disk is nearly full (507: the server's storage)."""
    if floor <= 0:
        return
    free = shutil.disk_usage(results_dir).free
    if free < floor:
        log.error("refusing an analysis: %d bytes free under %s, the floor is %d", free, results_dir, floor)
        raise PredictionError("The server is nearly out of disk space, so no analysis can be stored now. "
                              "Nothing was kept; please tell an administrator.", 507)


def _check_quota(user: User, default_quota: int | None) -> None:
    """Refuse a user whose stored results already fill their quota (a run begun under it is kept whole)."""
    quota = user.storage_quota_bytes if user.storage_quota_bytes is not None else default_quota
    if quota is None:
        return
    used = Run.stored_by(user.id)
    if used >= quota:
        raise PredictionError(f"Your storage quota is full: your runs keep {rounded_size(used)} of the "
                              f"{rounded_size(quota)} you may keep. An administrator can raise the quota.", 403)


def recognise_image(registry: ModelRegistry, image: DecodedImage) -> tuple[Recognition | None, str | None]:
    """What the registry's recogniser takes the image for, or None with the reason it did not look."""
    entry = recogniser_entry(registry, disabled_model_ids())
    if entry is None:
        return None, "no image recogniser is available"
    try:
        return recognise(registry.load(entry.id), image.pixels, image.meta), None
    except ModelUnavailable as exc:
        log.warning("model %s unavailable: %s", entry.id, exc.message)
        return None, "the image recogniser is unavailable"


def recognition_summary(task: Any, found: Recognition | None, not_checked: str | None,
                        analyse_anyway: bool) -> dict[str, Any]:
    """The run summary's account of the recogniser, or the refusal (422) when it takes the upload for another
    kind and the user has not chosen to analyse it anyway."""
    if found is None:
        return {"recognised": None, "recognition_note": f"Not checked: {not_checked}."}
    refused = refusal(task, found)
    if refused and not analyse_anyway:
        raise PredictionError(refused, 422, recognised=found.as_dict())
    summary: dict[str, Any] = {"recognised": found.as_dict()}
    if refused:
        summary["analysed_anyway"] = (f"This looks like {found.label} ({100 * found.probability:.0f}% sure); "
                                      "analysed anyway at the user's request.")
    return summary


def recognise_upload(data: bytes, *, registry: ModelRegistry, limits: Limits = Limits()) -> dict[str, Any]:
    """What an upload looks like and which task suits it, storing nothing (the upload page's suggestion)."""
    image = read_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
    t0 = time.perf_counter()
    found, not_checked = recognise_image(registry, image)
    if found is None:
        raise PredictionError(f"Cannot recognise the image: {not_checked}.", 503)
    tasks = all_tasks()
    suggested = next((name for name, task in tasks.items() if task.recognised_as == found.kind), None)
    return {"recognised": found.as_dict(), "suggested_task": suggested if found.probability >= REFUSE_AT else None,
            "refusals": {name: refusal(task, found) for name, task in tasks.items()},
            "elapsed_ms": _ms(t0, time.perf_counter()),
            "input": {"width": image.width, "height": image.height, "modality": image.modality}}


def _store(run: Run, image: DecodedImage, output: TaskOutput, summary: dict[str, Any],
           entries: dict[str, ModelEntry], staging: Path, results_dir: Path) -> None:
    private_dir(staging)      # 0700, its images 0600: scans are health data
    _write_png(staging / "input.png", grey_to_rgb(image.pixels))
    run.input_image = "input.png"
    run.summary = summary
    run.images = {name: _write_png(staging / f"run_{name}.png", img) for name, img in output.images.items()}
    for position, mo in enumerate(output.models):
        entry = entries[mo.model_id]
        files = {name: _write_png(staging / f"m{position}_{name}.png", img) for name, img in mo.images.items()}
        run.results.append(ModelResult(position=position, model_id=entry.id, model_version=entry.version,
                                       model_sha256=entry.sha256, role=mo.role, result=mo.result,
                                       images=files, elapsed_ms=round(mo.elapsed_ms, 1)))
    run.stored_bytes = sum(f.stat().st_size for f in staging.iterdir())
    staging.rename(results_dir / run.public_id)   # one atomic step: all images or none


def _write_png(path: Path, img) -> str:
    write_private(path, encode_png(img))
    return path.name


class RunSettled(Exception):
    """The run left `pending` before this process could settle it."""


def _mark_failed(run_id: int, reason: str) -> None:
    try:
        if Run.settle(run_id, RunStatus.FAILED, error=reason):   # unless a sweep settled it first
            db.session.execute(db.delete(ModelResult).where(ModelResult.run_id == run_id))
        db.session.commit()
    except Exception:  # the database itself is failing; the sweep will mark it later
        db.session.rollback()
        log.exception("could not mark run %s failed", run_id)


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return "the result could not be saved (storage error, for example a full disk). Nothing was kept."
    return "the model pipeline raised an internal error. Nothing was kept; please try again or report it."


def _input_facts(image: DecodedImage) -> dict[str, Any]:
    return {"width": image.width, "height": image.height, "modality": image.modality, **image.meta}


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 1)


INTERRUPTED = ("the analysis was interrupted: it did not finish within the time the server allows (its server "
               "process stopped, or it ran too long). Nothing was kept.")


def sweep_interrupted_runs(older_than_s: int, results_dir: Path | None = None) -> int:
    """Mark failed the runs still `pending` after `older_than_s` seconds (RUN_STALE_AFTER_S, the time an
    analysis may take): their worker died, or they ran too long. Returns how many.

    Each is settled by compare-and-set, so a run that finished first keeps its `done`, and one that finishes
    after it was swept finds itself settled and discards its result (`analyze`); the folder a dead worker
    may have renamed into place is removed. Safe beside a live server, which runs it periodically
    (web/upkeep.py), and at start-up (`flask prepare`).
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stale = db.session.execute(db.select(Run.id, Run.public_id).where(Run.status == RunStatus.PENDING,
                                                                      Run.created_at <= cutoff)).all()
    swept = [public_id for run_id, public_id in stale if Run.settle(run_id, RunStatus.FAILED, error=INTERRUPTED)]
    db.session.commit()
    for public_id in swept:
        if results_dir is not None:
            shutil.rmtree(results_dir / public_id, ignore_errors=True)
        log.warning("run %s marked failed: its worker stopped", public_id)
    return len(swept)


__all__ = ["Analysis", "Limits", "PredictionError", "analyze", "choose_models", "clean_options",
           "recognise_upload", "sweep_interrupted_runs",
           "ImageReadError"]
