"""Knee phenotype catalogue pages: per knee grader, one page per KL grade with its phenotype clusters.

    /knee/phenotypes                                   the knee graders and their catalogues
    /knee/phenotypes/<model_id>/<grade>                 one grade: every cluster's card
    /knee/phenotypes/<model_id>/<grade>/<cluster>/<kind>.png   a cluster's thumbnails (medoids, mean, cam)

The catalogue is a model asset (read with NumPy beside the model file, checked against the checksums
in the registry entry); no TensorFlow here. The thumbnails are small downscaled training radiographs,
served to signed-in users only. `knee_catalogue_url(model_id, grade)` is a template global so the
result partial can link here when this blueprint is registered.
"""
from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, abort, render_template, url_for
from flask_login import current_user, login_required

from imaging.overlay import encode_png, heatmap_overlay
from model_loader import current_registry
from tasks.knee import N_GRADES, CatalogueUnavailable, catalogue_at
from web.filters import problem_for

bp = Blueprint("knee", __name__, url_prefix="/knee")

THUMB_KINDS = ("medoids", "mean", "cam")


@bp.app_template_global()
def knee_catalogue_url(model_id: str, grade: int) -> str:
    return url_for("knee.grade_page", model_id=model_id, grade=int(grade))


def _graders():
    reg = current_registry()
    return [e for e in reg.entries("knee") if e.role == "grader"]


def _catalogue(model_id: str):
    """(entry, catalogue or None, problem sentence or None); 404 for an unknown or non-knee model."""
    reg = current_registry()
    entry = reg.get(model_id)
    if entry is None or entry.task != "knee":
        abort(404)
    problem = reg.problem(entry.id)
    if problem:
        return entry, None, problem_for(current_user, problem)
    try:
        return entry, catalogue_at(reg.path_of(entry), entry), None
    except CatalogueUnavailable as exc:
        return entry, None, str(exc)


@bp.get("/phenotypes")
@login_required
def index():
    rows = []
    for entry in _graders():
        _, cat, problem = _catalogue(entry.id)
        grades = cat.meta.get("grades", []) if cat else []
        rows.append({"entry": entry, "problem": problem, "grades": grades})
    return render_template("knee/index.html", rows=rows)


@bp.get("/phenotypes/<model_id>/<int:grade>")
@login_required
def grade_page(model_id: str, grade: int):
    if not 0 <= grade < N_GRADES:
        abort(404)
    entry, cat, problem = _catalogue(model_id)
    gmeta = cat.grade_meta(grade) if cat else None
    return render_template("knee/grade.html", entry=entry, grade=grade, gmeta=gmeta, problem=problem,
                           has_mean=bool(cat and f"g{grade}_mean" in cat.images),
                           built_from=(cat.meta.get("built_from") if cat else None),
                           grades=range(N_GRADES))


@bp.get("/phenotypes/<model_id>/<int:grade>/<int:cluster>/<kind>.png")
@login_required
def thumbnail(model_id: str, grade: int, cluster: int, kind: str):
    if kind not in THUMB_KINDS and kind != "grade_mean":
        abort(404)
    _, cat, _ = _catalogue(model_id)
    if cat is None:
        abort(404)
    if kind == "grade_mean":
        img = cat.images.get(f"g{grade}_mean")
    elif kind == "medoids":
        med = cat.images.get(f"g{grade}_c{cluster}_medoids")
        img = None if med is None else np.concatenate(
            [np.pad(m, ((0, 0), (0, 3)), constant_values=255) for m in med], axis=1)[:, :-3]
    elif kind == "cam":
        mean, cam = cat.images.get(f"g{grade}_c{cluster}_mean"), cat.images.get(f"g{grade}_c{cluster}_cam")
        img = None if mean is None or cam is None else heatmap_overlay(mean.astype(np.float32) / 255.0,
                                                                      cam.astype(np.float32) / 255.0)
    else:
        img = cat.images.get(f"g{grade}_c{cluster}_mean")
    if img is None:
        abort(404)
    resp = Response(encode_png(np.ascontiguousarray(img)), mimetype="image/png")
    resp.headers["Cache-Control"] = "private, max-age=3600"
    return resp
