"""Run one uploaded scan through a task's pipeline with chosen models -> a stored Run.

`submit` checks an upload and queues its run; `execute_run` is the job that runs it (in a thread of the
web process or in a Celery worker, jobs.py), `sweep_runs` rescues runs whose job died. Nothing is stored
for an upload that fails to decode or does not suit the task. Once a Run row exists it is `queued`, then
`running`, and ends once: `done` with all its images on disk, or `failed` with a reason and no files
(images are written to a temporary folder and moved into place in one rename after the models ran).
"""
from __future__ import annotations

import enum
import io
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from database import UNSETTLED, ModelResult, Run, RunStatus, User, db, disabled_model_ids, utcnow
from imaging.errors import rounded_size
from imaging.io import DecodedImage, ImageReadError, fit_pixels, read_image
from imaging.volume import (ZIP_MAGIC, Study, StudyLimits, is_nifti, read_study, single_slice_study, study_bytes,
                            study_from_bytes)

from imaging.overlay import encode_png, grey_to_rgb
from imaging.normalize import normalise_volume
from model_loader import UNAVAILABLE_FOR_USERS, ModelEntry, ModelRegistry, ModelUnavailable
from private_files import private_dir, write_private
from tasks import TaskInputError, TaskOutput, all_tasks, get_task
from tasks.base import explanation_stage, model_stage, reporting_progress
from tasks.recognition import REFUSE_AT, Recognition, recognise, recogniser_entry, refusal

log = logging.getLogger("jointscan.predict")
# A run's images are written under RESULTS_DIR/<STAGING_PREFIX><public id>-<attempt>-<random>/ and renamed
# into place; a queued run's decoded input waits in RESULTS_DIR/<QUEUE_FOLDER>/<public id>.npy.
STAGING_PREFIX = ".staging-"
QUEUE_FOLDER = ".queue"


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
    study: StudyLimits = field(default_factory=StudyLimits)   # a whole study (series, zip, NIfTI)


@dataclass
class Analysis:
    task: str
    model_ids: list[str] = field(default_factory=list)   # empty: the task's default models
    options: dict[str, Any] = field(default_factory=dict)
    # The user's explicit choice to analyse an upload that the recogniser takes for another kind.
    analyse_anyway: bool = False
    # Where the scan came from when not uploaded (a PACS: its study, series and image UIDs and accession
    # number, nothing else), kept with the run so that results can go back beside it.
    source: dict[str, str] | None = None


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


@dataclass
class JobSettings:
    """How jobs run (config JOB_*): the time one analysis may take, how long a silent holder is taken for dead
    (its heartbeat), how many attempts a run gets before it fails, and how long a run may wait in a queue
    that no process holds (a worker's broker) before it is given up."""
    time_limit_s: int = 120
    stale_after_s: int = 30
    max_attempts: int = 3
    queue_timeout_s: int = 6 * 3600


class Outcome(enum.StrEnum):
    """What one delivery of a job did (`execute_run`)."""
    SETTLED = "settled"            # this attempt ended the run, done or failed
    ALREADY_SETTLED = "already"    # it had ended before: a repeated delivery, nothing done
    HELD = "held"                  # a live attempt holds it: nothing done (try again later, it may die)
    MISSING = "missing"            # no such run


# An upload: one file's bytes, or several files as (bytes, file name) pairs (a series, or STIR and T1 volumes).
# File names only tell which NIfTI volume is which sequence; they are never stored.
UploadFiles = Union[bytes, list[tuple[bytes, Optional[str]]]]


def upload_files(data: UploadFiles) -> list[tuple[bytes, str | None]]:
    return [(bytes(data), None)] if isinstance(data, (bytes, bytearray)) else list(data)


def submit(user: User, data: UploadFiles, request: Analysis, *, registry: ModelRegistry,
           results_dir: Path, limits: Limits = Limits(), enqueue: Callable[[str], None], held_here: bool) -> Run:
    """Check an upload and queue its run: decode, the task's input checks, the models and options, the
    recogniser, then a `queued` Run and its decoded input on disk, then `enqueue(public id)`. A task that reads
    studies (`reads_studies`) takes several files (a DICOM series, a zip, NIfTI volumes) or one slice.

    Raises ImageReadError / PredictionError before anything is stored. `held_here`: the caller's process holds
    the queue (the in-process executor beats for its queued runs; a broker holds Celery's, which no process
    beats for), so the sweep knows whether a silent run was lost with its process or waits in a broker.
    """
    t0 = time.perf_counter()
    task = get_task(request.task)
    if task is None:
        raise PredictionError(f"Unknown task '{request.task}'.", 400)
    _check_free_space(results_dir, limits.min_free_disk_bytes)
    _check_quota(user, limits.storage_quota_bytes)
    files = upload_files(data)
    options = clean_options(request.task, request.options)
    study: Study | None = None
    if getattr(task, "reads_studies", False):
        study = read_study_upload(files, limits, options)
        try:
            task.check_study(study)
        except TaskInputError as exc:
            raise PredictionError(exc.message, exc.status) from exc
        image = study_picture(study)
    else:
        if len(files) != 1:
            raise PredictionError(f"{task.title} reads one image per upload; send a single file.", 400)
        image = fit_pixels(read_image(files[0][0], max_bytes=limits.max_bytes, max_pixels=limits.max_pixels),
                           task.max_pixels)
        try:
            task.check_input(image)
        except TaskInputError as exc:
            raise PredictionError(exc.message, exc.status) from exc
    entries = choose_models(registry, request.task, request.model_ids)
    t_check = time.perf_counter()
    checks = recognition_summary(task, *recognise_image(registry, image), request.analyse_anyway)
    timings = {"decode_ms": _ms(t0, t_check), "check_ms": _ms(t_check, time.perf_counter())}

    public_id = uuid.uuid4().hex
    queued = queued_input(results_dir, public_id)
    try:
        if study is not None:
            private_dir(queued.parent)
            write_private(queued, study_bytes(study))
        else:
            _save_input(queued, image.pixels)
    except OSError as exc:
        queued.unlink(missing_ok=True)
        log.error("could not queue an upload: %s", type(exc).__name__)
        raise PredictionError(f"The upload could not be queued: {_failure_reason(exc)}", 507) from exc
    facts = _study_facts(study) if study is not None else _input_facts(image)
    run = Run(public_id=public_id, user_id=user.id, task=task.name, status=RunStatus.QUEUED,
              input_kind=STUDY_KIND if study is not None else image.kind,
              input_meta={**facts, **({"source": dict(request.source)} if request.source else {})},
              options=options, summary=checks, timings=timings,
              model_ids=[e.id for e in entries], stages=job_stages(task, entries), stage=QUEUED_STAGE,
              heartbeat_at=utcnow() if held_here else None)
    try:
        db.session.add(run)
        db.session.commit()
    except Exception:
        db.session.rollback()
        queued.unlink(missing_ok=True)
        raise
    try:
        enqueue(public_id)
    except Exception as exc:       # the queue (a broker) is down: the run cannot start, so it ends here
        log.error("run %s could not be queued: %s", public_id, type(exc).__name__)
        queued.unlink(missing_ok=True)
        if Run.settle(run.id, RunStatus.FAILED, error=QUEUE_DOWN):
            db.session.commit()
        raise PredictionError(f"The analysis could not be started: {QUEUE_DOWN}", 503, public_id) from exc
    return run


QUEUED_STAGE = "queued"
QUEUE_DOWN = "the job queue is unavailable. Nothing was kept; please try again later or tell an administrator."


def job_stages(task: Any, entries: list[ModelEntry]) -> list[list[str]]:
    """The stages a run's job goes through, in order, as [key, label]: reading the queued input, loading the
    models, each model in the order the task runs them (with its Grad-CAM as a stage of its own when it has
    one), storing. The task reports each model and explanation as it begins it (tasks.base)."""
    stages = [[QUEUED_STAGE, "Waiting for a free analysis slot"], ["decoding", "Reading the scan"],
              ["loading", "Loading the models"]]
    for role in task.roles:
        for entry in entries:
            if entry.role == role.name:
                stages.append([model_stage(entry.id), f"{role.title}: {entry.title}"])
                if entry.gradcam_layer:
                    stages.append([explanation_stage(entry.id), f"{role.title}: {entry.title}, explanation"])
    stages.append(["storing", "Storing the results"])
    return stages


def queued_input(results_dir: Path, public_id: str) -> Path:
    """Where a queued run's decoded input waits for its job (under RESULTS_DIR, which web and workers share)."""
    return results_dir / QUEUE_FOLDER / f"{public_id}.npy"


def _save_input(path: Path, pixels) -> None:
    # The decoded pixels only (no header ever reaches the disk), 0600 in a 0700 folder; removed when the run ends.
    private_dir(path.parent)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels, dtype=np.float32), allow_pickle=False)
    write_private(path, buffer.getvalue())


STUDY_KIND = "study"


def read_study_upload(files: list[tuple[bytes, str | None]], limits: Limits, options: dict[str, Any]) -> Study:
    """A study from an upload: NIfTI volumes, a DICOM series or a zip (imaging.volume), or one image (a PNG,
    JPEG or single DICOM slice, read and de-identified as every single upload is) as a study of one slice.
    The `sequence` option names the sequence of a volume whose file does not say."""
    blobs = [b for b, _ in files]
    if len(files) == 1 and not (is_nifti(blobs[0]) or blobs[0][:4] == ZIP_MAGIC):
        image = read_image(blobs[0], max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
        if image.pixels.ndim != 2:
            raise PredictionError("Expected a grey MRI slice or a study.", 400)
        study = single_slice_study(image.pixels, {**image.meta, "modality": image.modality, "format": image.kind})
    else:
        study = read_study(blobs, limits.study, [n for _, n in files])
    named = options.get("sequence") or ""
    unknown = [v for v in study.volumes if v.sequence is None]
    if named and len(unknown) == 1 and study.by_sequence(named) is None:
        study = Study(tuple(replace(v, sequence=named) if v is unknown[0] else v for v in study.volumes), study.kind)
    return study


def study_picture(study: Study) -> DecodedImage:
    """The study's middle slice as one image (what the recogniser looks at, and the run's input picture)."""
    volume = study.volumes[0]
    # Windowed over the whole volume, as the study's slice pictures are.
    pixels = normalise_volume(volume.voxels, ceiling=1.0)[volume.n_slices // 2]
    return DecodedImage(pixels=pixels, kind=STUDY_KIND, modality=volume.meta.get("modality") or "MR",
                        meta={"format": study.kind})


def _study_facts(study: Study) -> dict[str, Any]:
    first = study.volumes[0]
    return {"width": int(first.voxels.shape[2]), "height": int(first.voxels.shape[1]),
            "modality": first.meta.get("modality") or "MR", "format": study.kind, "slices": first.n_slices,
            "series": [{"sequence": v.sequence, **{k: v.meta[k] for k in ("slices", "rows", "cols", "spacing_mm",
                                                                           "plane") if k in v.meta}}
                       for v in study.volumes]}


def _load_input(run: Run, path: Path) -> DecodedImage | Study:
    if run.input_kind == STUDY_KIND:
        return study_from_bytes(path.read_bytes())
    pixels = np.load(path, allow_pickle=False)
    meta = {k: v for k, v in (run.input_meta or {}).items() if k not in ("width", "height", "modality")}
    return DecodedImage(pixels=pixels, kind=run.input_kind, modality=(run.input_meta or {}).get("modality"), meta=meta)


def execute_run(public_id: str, *, registry: ModelRegistry, results_dir: Path,
                settings: JobSettings = JobSettings(), on_claim: Callable[[int], None] | None = None) -> Outcome:
    """The job: run a queued run's models and store the result, exactly once.

    Idempotent by run: an attempt begins only by `Run.claim` (a queued run, or a running one whose holder has
    gone silent for `stale_after_s`), so a second delivery of the job does nothing while the first lives, and
    takes over when it died. Every write the attempt makes names its attempt number, so one that was taken
    over can no longer settle the run or record a stage: a run ends once, `done` with one result or `failed`
    with a reason. After `max_attempts` attempts (a scan that kills its worker each time) the run fails.
    """
    row = db.session.execute(db.select(Run.id, Run.status).where(Run.public_id == public_id)).first()
    if row is None:
        return Outcome.MISSING
    if row.status in (RunStatus.DONE, RunStatus.FAILED):
        return Outcome.ALREADY_SETTLED
    stale_before = utcnow() - timedelta(seconds=settings.stale_after_s)
    attempt = Run.claim(row.id, stale_before)
    if attempt is None:
        status = db.session.execute(db.select(Run.status).where(Run.id == row.id)).scalar_one()
        return Outcome.HELD if status == RunStatus.RUNNING else Outcome.ALREADY_SETTLED
    if on_claim is not None:
        on_claim(attempt)
    queued = queued_input(results_dir, public_id)
    if attempt > settings.max_attempts:
        log.error("run %s failed: interrupted %d times", public_id, attempt - 1)
        _end_failed(row.id, attempt, TOO_MANY_ATTEMPTS.format(n=attempt - 1), queued)
        return Outcome.SETTLED
    run = db.session.get(Run, row.id)
    task = get_task(run.task)
    t0 = time.perf_counter()
    staging = results_dir / f"{STAGING_PREFIX}{public_id}-{attempt}-{uuid.uuid4().hex[:6]}"
    target = results_dir / public_id
    placed = False
    try:
        Run.note_stage(run.id, attempt, "decoding")
        image = _load_input(run, queued)
        t_read = time.perf_counter()
        Run.note_stage(run.id, attempt, "loading")
        entries = [registry.get(mid) for mid in run.model_ids or []]
        if task is None or any(e is None for e in entries):
            raise ModelUnavailable(next((m for m in run.model_ids or [] if registry.get(m) is None), "?"),
                                   "no longer registered")
        loaded = [registry.load(e.id) for e in entries]
        t_ready = time.perf_counter()
        by_role: dict[str, list] = {}
        for lm in loaded:
            by_role.setdefault(lm.entry.role, []).append(lm)
        with reporting_progress(lambda stage: Run.note_stage(run.id, attempt, stage)):
            output = task.run(image, by_role, run.options or {})
        t_pred = time.perf_counter()
        if t_pred - t0 > settings.time_limit_s:
            raise TimeLimitExceeded()
        if not Run.note_stage(run.id, attempt, "storing"):
            raise RunSettled(public_id)        # lost while the models ran: write nothing for it
        db.session.refresh(run)
        _store(run, image, output, {**output.summary, **(run.summary or {})}, {e.id: e for e in entries}, staging)
        timings = {**(run.timings or {}), "read_ms": _ms(t0, t_read), "load_ms": _ms(t_read, t_ready),
                   "predict_ms": _ms(t_ready, t_pred), "store_ms": _ms(t_pred, time.perf_counter()),
                   "queue_ms": _ms_between(run.created_at, run.started_at),
                   "total_ms": _ms_between(run.created_at, utcnow())}    # from the upload to the stored result
        db.session.flush()
        # The compare-and-set first (it holds the run's row until the commit), then the folder into place.
        if not Run.settle(run.id, RunStatus.DONE, attempt=attempt, stage="done", timings=timings):
            raise RunSettled(public_id)
        if target.exists():            # left by an attempt that was taken over: never a settled result
            shutil.rmtree(target)
        staging.rename(target)         # one atomic step: all images or none
        placed = True
        db.session.commit()
        queued.unlink(missing_ok=True)
        return Outcome.SETTLED
    except RunSettled:
        # Another attempt took the run over, or a sweep failed it, while this one worked: that verdict stands.
        db.session.rollback()
        shutil.rmtree(staging, ignore_errors=True)
        log.error("run %s: attempt %d finished after it lost the run; its results were discarded",
                  public_id, attempt)
        return Outcome.HELD
    except Exception as exc:
        db.session.rollback()
        shutil.rmtree(staging, ignore_errors=True)
        if placed:
            shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, ModelUnavailable):
            problem = exc.message
            log.warning("model %s unavailable: %s", exc.model_id, problem)
            entry = registry.get(exc.model_id)
            reason = (f"model '{entry.title if entry else exc.model_id}' is unavailable: {UNAVAILABLE_FOR_USERS}. "
                      "Nothing was kept.")
        elif isinstance(exc, TimeLimitExceeded) or time.perf_counter() - t0 >= settings.time_limit_s:
            reason = TIME_LIMIT.format(s=settings.time_limit_s)
        elif isinstance(exc, FileNotFoundError) and not queued.exists():
            reason = INPUT_LOST
        else:
            reason = _failure_reason(exc)
        # Log the run id and the exception type only: never file names or header values.
        log.error("run %s failed: %s", public_id, type(exc).__name__,
                  exc_info=not isinstance(exc, (OSError, ModelUnavailable, TimeLimitExceeded)))
        _end_failed(run.id, attempt, reason, queued)
        return Outcome.SETTLED


TOO_MANY_ATTEMPTS = ("the analysis was interrupted {n} times (its worker process stopped each time, for example "
                     "out of memory). Nothing was kept.")
TIME_LIMIT = "the analysis took longer than the time limit of {s} s and was stopped. Nothing was kept."
INPUT_LOST = "the queued scan was no longer on the server's disk. Nothing was kept; please upload it again."


class TimeLimitExceeded(Exception):
    """The models ran past JOB_TIME_LIMIT_S."""


def _end_failed(run_id: int, attempt: int, reason: str, queued: Path) -> None:
    try:
        if Run.settle(run_id, RunStatus.FAILED, attempt=attempt, error=reason):
            db.session.execute(db.delete(ModelResult).where(ModelResult.run_id == run_id))
            queued.unlink(missing_ok=True)
        db.session.commit()
    except Exception:  # the database itself is failing; the sweep settles it later
        db.session.rollback()
        log.exception("could not mark run %d failed", run_id)


def analyze(user: User, data: UploadFiles, request: Analysis, *, registry: ModelRegistry, results_dir: Path,
            limits: Limits = Limits(), settings: JobSettings = JobSettings()) -> Run:
    """Submit and run at once, in this thread (the batch command without workers). The stored run, done or
    failed; raises PredictionError (with the run's id) when it failed, as an upload's page would show."""
    run = submit(user, data, request, registry=registry, results_dir=results_dir, limits=limits,
                 enqueue=lambda _public_id: None, held_here=True)
    execute_run(run.public_id, registry=registry, results_dir=results_dir, settings=settings)
    db.session.expire_all()
    run = db.session.get(Run, run.id)
    if run.status == RunStatus.FAILED:
        raise PredictionError(f"The analysis failed: {run.error}", 500, run.public_id)
    return run


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
    if is_nifti(data) or data[:4] == ZIP_MAGIC:       # a study: its middle slice is what it looks like
        image = study_picture(read_study([data], limits.study))
    else:
        image = read_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
    t0 = time.perf_counter()
    found, not_checked = recognise_image(registry, image)
    if found is None:
        raise PredictionError(f"Cannot recognise the image: {not_checked}.", 503)
    tasks = all_tasks()
    # A study goes to a task that reads studies; one image to the first task that reads its kind.
    readers = sorted((name for name, task in tasks.items() if task.recognised_as == found.kind),
                     key=lambda name: getattr(tasks[name], "reads_studies", False) != (image.kind == STUDY_KIND))
    suggested = readers[0] if readers else None
    return {"recognised": found.as_dict(), "suggested_task": suggested if found.probability >= REFUSE_AT else None,
            "refusals": {name: refusal(task, found) for name, task in tasks.items()},
            "elapsed_ms": _ms(t0, time.perf_counter()),
            "input": {"width": image.width, "height": image.height, "modality": image.modality}}


def _store(run: Run, image: DecodedImage, output: TaskOutput, summary: dict[str, Any],
           entries: dict[str, ModelEntry], staging: Path) -> None:
    private_dir(staging)      # 0700, its images 0600: scans are health data
    picture = output.input_picture if output.input_picture is not None else image.pixels
    _write_png(staging / "input.png", grey_to_rgb(picture))
    run.input_image = "input.png"
    run.images = {name: _write_png(staging / f"run_{name}.png", img) for name, img in output.images.items()}
    if output.files:        # masks as NIfTI volumes on the input's grid: listed in the summary, served as downloads
        summary = {**summary, "files": {name: _write_file(staging / f"file_{name}", blob)
                                        for name, blob in output.files.items()}}
    run.summary = summary
    for position, mo in enumerate(output.models):
        entry = entries[mo.model_id]
        files = {name: _write_png(staging / f"m{position}_{name}.png", img) for name, img in mo.images.items()}
        run.results.append(ModelResult(position=position, model_id=entry.id, model_version=entry.version,
                                       model_sha256=entry.sha256, role=mo.role, result=mo.result,
                                       images=files, elapsed_ms=round(mo.elapsed_ms, 1)))
    run.stored_bytes = sum(f.stat().st_size for f in staging.iterdir())


def _write_png(path: Path, img) -> str:
    write_private(path, encode_png(img))
    return path.name


def _write_file(path: Path, blob: bytes) -> str:
    write_private(path, blob)
    return path.name


class RunSettled(Exception):
    """Another attempt (or a sweep) settled the run, or took it over, before this attempt could settle it."""


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return "the result could not be saved (storage error, for example a full disk). Nothing was kept."
    return "the model pipeline raised an internal error. Nothing was kept; please try again or report it."


def _input_facts(image: DecodedImage) -> dict[str, Any]:
    return {"width": image.width, "height": image.height, "modality": image.modality, **image.meta}


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 1)


def _ms_between(a: datetime | None, b: datetime | None) -> float | None:
    return round((b - a).total_seconds() * 1000, 1) if a and b else None


OVERDUE = ("the analysis did not finish within the time limit of {s} s (its worker stopped answering, or the "
           "models ran too long). Nothing was kept.")
QUEUE_LOST = ("the analysis waited {waited} without a worker taking it (the workers may be stopped, or the "
              "queue lost it). Nothing was kept; please upload it again.")


def _duration(seconds: float) -> str:
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or unit == "second":
            n = round(seconds / size, 1)
            return f"{n:g} {unit}{'' if n == 1 else 's'}"
    raise AssertionError("unreachable")


@dataclass
class Swept:
    overdue: int = 0      # running past the time limit: failed
    adopted: int = 0      # whose holder went silent (its process died): handed to `resubmit`
    lost: int = 0         # queued in a broker longer than the queue time-out: failed


def sweep_runs(settings: JobSettings, results_dir: Path, resubmit: Callable[[str], None] | None = None) -> Swept:
    """Settle or rescue the runs that lost their job. Safe beside live servers and workers, and from several
    processes at once (each run is settled by compare-and-set, and a rescued run is claimed by one attempt):

    - a run `running` longer than the time limit plus the heartbeat's patience fails with that reason (a late
      result of its attempt is discarded);
    - a queued or running run whose holder has not beaten for `stale_after_s` lost its process: it is handed
      to `resubmit` (the live server's executor), whose job takes it over (`execute_run`) - or, after
      `max_attempts`, fails it;
    - a run queued in a broker (no holder beats for it) for longer than `queue_timeout_s` fails.
    """
    now = utcnow()
    swept = Swept()
    overdue = db.session.execute(db.select(Run.id, Run.public_id).where(
        Run.status == RunStatus.RUNNING,
        Run.started_at < now - timedelta(seconds=settings.time_limit_s + settings.stale_after_s))).all()
    for run_id, public_id in overdue:
        if _sweep_failed(run_id, public_id, OVERDUE.format(s=settings.time_limit_s), results_dir):
            swept.overdue += 1
    lost = db.session.execute(db.select(Run.id, Run.public_id).where(
        Run.status == RunStatus.QUEUED, Run.heartbeat_at.is_(None),
        Run.created_at < now - timedelta(seconds=settings.queue_timeout_s))).all()
    for run_id, public_id in lost:
        if _sweep_failed(run_id, public_id, QUEUE_LOST.format(waited=_duration(settings.queue_timeout_s)), results_dir):
            swept.lost += 1
    if resubmit is not None:
        silent = db.session.execute(db.select(Run.public_id).where(
            Run.status.in_(UNSETTLED), Run.heartbeat_at < now - timedelta(seconds=settings.stale_after_s))).scalars()
        for public_id in silent:
            log.warning("run %s lost its process; handed to a new job", public_id)
            resubmit(public_id)
            swept.adopted += 1
    return swept


def _sweep_failed(run_id: int, public_id: str, reason: str, results_dir: Path) -> bool:
    settled = Run.settle(run_id, RunStatus.FAILED, error=reason)
    db.session.commit()
    if settled:
        shutil.rmtree(results_dir / public_id, ignore_errors=True)
        queued_input(results_dir, public_id).unlink(missing_ok=True)
        log.warning("run %s marked failed: %s", public_id, reason.split(":")[0])
    return settled


__all__ = ["Analysis", "JobSettings", "Limits", "Outcome", "PredictionError", "analyze", "choose_models",
           "clean_options", "execute_run", "recognise_upload", "submit", "sweep_runs", "ImageReadError"]
