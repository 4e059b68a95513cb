"""Queue a scan as a run of the signed-in user, the one way every entry point does it (the upload page, the
API, the PACS page): the app's executor, registry, results folder and limits, and the audit row either way."""
from __future__ import annotations

from database import Run, User
from jobs import current_executor
from model_loader import current_registry
from predict import Analysis, ImageReadError, PredictionError, submit
from storage import results_dir, upload_limits
from web.audit import audit_upload_failure, model_versions_of, record, run_resource, upload_detail


def queue_upload(user: User, data: bytes, analysis: Analysis, via: str = "") -> Run:
    """The queued run; raises ImageReadError / PredictionError (audited) when the scan is refused."""
    executor = current_executor()
    try:
        run = submit(user, data, analysis, registry=current_registry(), results_dir=results_dir(),
                     limits=upload_limits(), enqueue=executor.submit, held_here=executor.holds_queue)
    except (ImageReadError, PredictionError) as exc:
        audit_upload_failure(exc, analysis.model_ids, user=user)
        raise
    record("upload", user=user, resource=run_resource(run), models=model_versions_of(run),
           detail=upload_detail(run, via))
    return run
