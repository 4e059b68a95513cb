"""Knee radiograph (AP/PA, a crop centred on the tibiofemoral joint): Kellgren-Lawrence grade and phenotype.

One role, "grader": a compact CNN (training/knee/model.py) trained on the real OAI radiographs of
../shared/data/knee_kl. Per knee it gives the KL grade 0-4 with the continuous value and the
per-grade probabilities, the knee's side (from the form or detected by the model), a Grad-CAM of
the grade, and the phenotype within the grade from the catalogue stored beside the model
(tasks/knee_catalogue.py, fitted by training/knee/phenotypes.py): a cluster of similar knees of that grade, or "no phenotype" when the
knee lies in the low-density noise between clusters.

Orientation: the model's canonical orientation is a LEFT knee as radiographed (medial compartment on
the image left, fibular head on the image right). A right knee is mirrored before it is read. The
model sees the upload and its mirror image in one batch: both readings are averaged for the grade
(test-time flip), and the "mirrored" head (or the side chosen on the form) says which of the two is
canonical, whose embedding gives the phenotype.

The preprocessing (`grader_input`, `canonical`) and the decoding (`decode_value`, `decide`, with the
CORAL helpers of tasks/metrics.py) here are the single definitions used by training (training/knee/),
evaluation (benchmarks/knee_figures.py) and serving.
"""
from __future__ import annotations

import threading
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from imaging.gradcam import grad_cams
from imaging.io import DecodedImage
from imaging.normalize import to_model_input
from imaging.overlay import heatmap_overlay
from model_loader import LoadedModel, sha256_of
from tasks.base import (PSEUDONYM_OPTION, TIMEPOINT_OPTION, Findings, Measure, ModelOutput, OptionSpec, RoleSpec,
                        TaskBase, TaskInputError, TaskOutput, explaining, percent, run_role, timed_model)
from tasks.calibration import calibrated_probabilities, calibration_record, head_spec
from tasks.knee_catalogue import load_catalogue
from tasks.metrics import coral_expected, coral_rank
from tasks.ood import run_checked, withheld_reason

N_GRADES = 5
GRADE_NAMES = ("KL 0", "KL 1", "KL 2", "KL 3", "KL 4")
GRADE_MEANINGS = (
    "no radiographic features of osteoarthritis",
    "doubtful joint-space narrowing, possible osteophytic lipping",
    "definite osteophytes, possible joint-space narrowing",
    "multiple osteophytes, definite joint-space narrowing, some sclerosis, possible deformity of bone ends",
    "large osteophytes, marked joint-space narrowing, severe sclerosis, definite deformity of bone ends",
)
SIDES = ("L", "R")
SIDE_NAMES = {"L": "left", "R": "right"}
DECISION_HEADS = ("regression", "coral", "mean")
# Radiographs only: CR / DX / RG / "OT" are what X-ray DICOMs carry; None is PNG/JPEG.
ACCEPTED_MODALITIES = ("CR", "DX", "RG", "OT", "DR", None)
MIN_SIDE_PX = 64


# -- preprocessing shared with training ---------------------------------------------
def grader_input(image01: np.ndarray, size: int) -> np.ndarray:
    """(H, W) image in [0, 1] -> (size, size) float32 model input (resize + 1-99 % percentile scaling)."""
    return to_model_input(image01, (size, size))


def canonical(x: np.ndarray, side: str) -> np.ndarray:
    """Put a knee image (..., H, W[, C]) in the canonical orientation: a right knee is mirrored."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if side == "R":
        axis = -2 if x.ndim >= 3 and x.shape[-1] in (1, 3) else -1
        return np.flip(x, axis=axis).copy()
    return x


# -- ordinal decoding ----------------------------------------------------------------
def decode_value(value) -> np.ndarray:
    """Regression head (continuous grade) -> integer grade: round half up, clipped to 0..4."""
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    return np.clip(np.floor(v + 0.5), 0, N_GRADES - 1).astype(np.int64)


def decide(value, p_gt, head: str) -> tuple[np.ndarray, np.ndarray]:
    """(integer grade, continuous grade) from the head named in the registry entry."""
    value = np.asarray(value, dtype=np.float64).reshape(-1)
    expected = coral_expected(p_gt, N_GRADES - 1)
    if head == "regression":
        return decode_value(value), value
    if head == "coral":
        return coral_rank(np.asarray(p_gt, dtype=np.float64).reshape(-1, N_GRADES - 1)).astype(np.int64), expected
    if head == "mean":
        cont = (value + expected) / 2.0
        return decode_value(cont), cont
    raise ValueError(f"unknown decision head {head!r}; known: {DECISION_HEADS}")


def gradcam_target(head: str, grade: int) -> tuple[tuple[str, int], str]:
    """What the Grad-CAM explains: the decision head's score. Regression (and the mean of both heads):
    the continuous grade; CORAL: the last threshold the knee passed, P(KL >= grade) (P(KL >= 1) for KL 0)."""
    if head == "coral":
        k = min(max(grade - 1, 0), N_GRADES - 2)
        return ("kl_coral", k), f"evidence for KL >= {k + 1} (CORAL head)"
    return ("kl_value", 0), "evidence for a higher grade (continuous grade)"


# -- the phenotype catalogue stored beside the model -------------------------------------
class CatalogueUnavailable(RuntimeError):
    pass


_CATALOGUES: dict[tuple[str, str, str], Any] = {}
_CAT_LOCK = threading.Lock()


def model_file_path(model: LoadedModel) -> Path:
    """Where the loaded model's verified file lives; its catalogue sits beside it."""
    return Path(model.path)


def catalogue_for(model: LoadedModel):
    """The loaded model's phenotype catalogue (see `catalogue_at`)."""
    return catalogue_at(model_file_path(model), model.entry)


def catalogue_at(model_path: Path, entry) -> Any:
    """The phenotype catalogue stored beside `model_path`, checked against the checksums in the registry
    entry, cached per (model id, model checksum). Raises CatalogueUnavailable with a sentence for users.
    NumPy only: the web layer may call it (no TensorFlow)."""
    spec = (entry.input or {}).get("catalogue")
    if not spec:
        raise CatalogueUnavailable("this model has no phenotype catalogue")
    key = (entry.id, entry.sha256, str(Path(model_path).resolve()))
    with _CAT_LOCK:
        if key in _CATALOGUES:
            return _CATALOGUES[key]
        base = Path(model_path)
        for kind in ("json", "npz"):
            p = base.with_name(spec[kind])
            if not p.exists():
                raise CatalogueUnavailable(f"phenotype catalogue file {spec[kind]} is missing")
            if spec.get(f"{kind}_sha256") and sha256_of(p) != spec[f"{kind}_sha256"]:
                raise CatalogueUnavailable(f"phenotype catalogue file {spec[kind]} is damaged or was replaced")
        try:
            cat = load_catalogue(base)
        except (OSError, ValueError, KeyError) as exc:
            raise CatalogueUnavailable(f"phenotype catalogue could not be read ({type(exc).__name__})") from exc
        _CATALOGUES[key] = cat
        return cat


def phenotype_result(cat, embedding: np.ndarray, grade: int) -> dict[str, Any]:
    """JSON-safe phenotype of one knee: its cluster's card, or "no phenotype" (noise) with the reason."""
    a = cat.assign(embedding, grade)
    gmeta = cat.grade_meta(grade) or {"n": 0, "n_clusters": 0, "clusters": []}
    base = {"grade": int(grade), "grade_knees": int(gmeta.get("n", 0)), "grade_clusters": int(gmeta.get("n_clusters", 0)),
            "mrd": _r(a.mrd), "reach": _r(a.reach)}
    if a.cluster < 0:
        if gmeta.get("n_clusters", 0) == 0:
            why = f"the catalogue found no phenotype clusters among the KL {grade} knees"
        elif a.nearest_label < 0:
            why = "its nearest catalogue knee lies in the low-density noise between clusters"
        else:
            why = "it lies farther from every cluster than the cluster's own members do"
        return {**base, "assigned": False, "cluster": None, "name": "No phenotype", "strength": 0.0, "reason": why}
    cm = cat.cluster_meta(grade, a.cluster) or {}
    return {**base, "assigned": True, "cluster": int(a.cluster), "name": cm.get("name", f"KL{grade}-{a.cluster}"),
            "strength": round(float(a.strength), 3), "size": cm.get("size"), "fraction": cm.get("fraction"),
            "description": cm.get("description", ""), "pattern": cm.get("pattern", ""),
            "cam_medial_share": cm.get("cam_medial_share")}


def _r(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def phenotype_card_image(cat, grade: int, cluster: int, mirror: bool, size: int = 96) -> np.ndarray | None:
    """RGB strip: the cluster's medoid knees, its mean image and its mean Grad-CAM (as the upload is oriented)."""
    med = cat.images.get(f"g{grade}_c{cluster}_medoids")
    if med is None:
        return None
    tiles = [np.repeat(cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)[:, :, None], 3, axis=2) for m in med]
    mean, cam = cat.images.get(f"g{grade}_c{cluster}_mean"), cat.images.get(f"g{grade}_c{cluster}_cam")
    if mean is not None and cam is not None:
        m01 = cv2.resize(mean, (size, size)).astype(np.float32) / 255.0
        tiles.append(heatmap_overlay(m01, cam.astype(np.float32) / 255.0))
    if mirror:
        tiles = [t[:, ::-1] for t in tiles]
    gap = np.full((size, 4, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for t in tiles:
        parts += [t, gap]
    return np.ascontiguousarray(np.concatenate(parts[:-1], axis=1))


# -- the task ---------------------------------------------------------------------------
class KneeTask(TaskBase):
    name = "knee"
    title = "Knee radiograph: Kellgren-Lawrence grade and phenotype"
    description = ("Knee radiograph (AP/PA), a crop centred on the tibiofemoral joint. Gives the Kellgren-Lawrence "
                   "grade 0-4 with the continuous value and per-grade probabilities, a Grad-CAM, and the knee's "
                   "phenotype within its grade (a cluster of similar knees, or none).")
    roles = (RoleSpec("grader", "KL grade and phenotype"),)
    options = (OptionSpec("side", "Knee side", "choice",
                          (("auto", "Detect from the image"), ("L", "Left knee"), ("R", "Right knee")), "auto",
                          "Medial and lateral follow from the side; when unknown the model reads it from the image."),
               PSEUDONYM_OPTION, TIMEPOINT_OPTION)
    # The continuous grade per side; 0.5 grade: half a KL step, above the grader's spread between a knee and
    # its mirror image (a setting, KNEE_KL_SDC, for a clinic that measures its own).
    longitudinal = (Measure("kl", "Kellgren-Lawrence grade (continuous)", "grade", role="grader", field="value",
                            sdc_setting="KNEE_KL_SDC", sdc=0.5, worse_when="higher", split_by="side",
                            split_names={"L": "left knee", "R": "right knee"}, columns=(("KL grade", "grade_name"),),
                            axis=(0.0, 4.0)),)
    order = 30
    recognised_as = "knee_radiograph"
    batch_columns = (("kl_grade", "grader", "grade"), ("kl_value", "grader", "value"),
                     ("confidence", "grader", "confidence"), ("side", "grader", "side"),
                     ("phenotype", "grader", "phenotype.name"), ("withheld", "grader", "withheld"))
    field_labels = {"grade": "KL grade", "value": "Continuous grade", "phenotype": "Phenotype", "side": "Side",
                    "grade_probabilities": "Grade probabilities"}
    accepted_modalities = ACCEPTED_MODALITIES
    reads, single_image = "knee radiographs", "radiograph"
    explanation_images = frozenset({"gradcam_grade"})
    agreement_fields = {"grade_agree": "grade", "phenotype_agree": "phenotype"}

    def check_input(self, image: DecodedImage) -> None:
        super().check_input(image)
        if min(image.pixels.shape) < MIN_SIDE_PX:
            raise TaskInputError(f"The image is too small ({image.width}x{image.height}); a knee crop of at least "
                                 f"{MIN_SIDE_PX} pixels is needed.")

    def run(self, image: DecodedImage, models: dict[str, list[LoadedModel]],
            options: dict[str, Any]) -> TaskOutput:
        side = options.get("side") or "auto"
        outputs, _ = run_role(models, "grader", lambda model: self._grade(model, image.pixels, side))
        summary: dict[str, Any] = {}
        if len(outputs) >= 2:
            answered = [o for o in outputs if not o.result.get("withheld")]
            if len(answered) >= 2:     # a withheld grade neither agrees nor disagrees
                summary["comparison"] = self.agreement({"grade": [o.result["grade"] for o in answered],
                                                        "phenotype": [o.result["phenotype"]["name"] for o in answered]})
        return TaskOutput(summary=summary, models=outputs)

    def headline(self, summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
        for item in results:   # the first grader chosen speaks for the run
            res = item.get("result") or {}
            if item.get("role") == "grader" and res.get("withheld"):
                return "KL grade withheld: outside the grader's training data"
            if item.get("role") == "grader" and res.get("grade") is not None:
                ph = res.get("phenotype") or {}
                text = f"KL {res['grade']} ({res.get('value', 0):.1f})"
                return text + (f", phenotype {ph['name']}" if ph.get("assigned") else ", no phenotype")
        return "Done"

    @timed_model
    def report_findings(self, role: str, result: Mapping[str, Any]) -> Findings:
        if result.get("withheld"):
            return Findings(notes=[f"Kellgren-Lawrence grade and phenotype withheld: {result['withheld']}"])
        phenotype = result.get("phenotype") or {}
        lines = [("Kellgren-Lawrence grade", f"{result.get('grade_name')}: {result.get('grade_meaning', '')}"),
                 ("Continuous grade", f"{result.get('value', 0):.2f}"),
                 ("Probability of the grade", percent(result.get("confidence"))),
                 ("Side", f"{result.get('side_name', result.get('side'))} knee ("
                          + ("as given on the form" if result.get("side_source") == "form"
                             else f"detected, P(left) {percent(result.get('p_left'))}") + ")"),
                 ("Phenotype", f"{phenotype.get('name') or 'none'}"
                               + (f" (membership strength {percent(phenotype.get('strength'))})"
                                  if phenotype.get("assigned") else f" ({phenotype.get('reason', 'not assigned')})"))]
        return Findings(lines=lines,
                        tables=[("Grade probabilities (CORAL head)", ["Grade", "Probability"],
                                 [[name, percent(p)] for name, p in (result.get("grade_probabilities") or {}).items()])],
                        images=[("gradcam_grade", f"Grad-CAM of {result.get('grade_name')}")])

    def _grade(self, model: LoadedModel, img: np.ndarray, side_option: str) -> ModelOutput:
        spec = model.entry.input
        size = int(spec["shape"][0])
        head = spec.get("decision_head", "regression")
        x = grader_input(img, size)
        pair = np.stack([x, x[:, ::-1]])[..., None]                 # the upload and its mirror image
        out, checks = run_checked(model, pair)
        outside = checks[0] if checks else None                      # the check reads the upload as given
        if outside is not None and outside.outside:
            return ModelOutput(model.entry.id, "grader", {
                "grade": None, "grade_name": None, "value": None, "grade_probabilities": None, "confidence": None,
                "phenotype": None, "side": None,
                "withheld": withheld_reason(model, outside, "grader", "KL grade or phenotype"),
                "training_data_check": outside.as_dict()})
        mirrored = np.asarray(out["mirrored"]).reshape(-1)
        p_left = float(((1.0 - mirrored[0]) + mirrored[1]) / 2.0)   # P(the upload is canonical = a left knee)
        if side_option in SIDES:
            side, side_source = side_option, "form"
        else:
            side, side_source = ("L" if p_left >= 0.5 else "R"), "detected"
        canon = 0 if side == "L" else 1
        value = float(np.mean(np.asarray(out["kl_value"]).reshape(-1)))
        p_gt = np.asarray(out["kl_coral"]).mean(axis=0)
        grade_arr, cont_arr = decide([value], p_gt[None], head)
        grade, cont = int(grade_arr[0]), float(cont_arr[0])
        # The decision reads the raw heads (as validated); the probabilities shown are calibrated, the decided
        # grade's own probability recalibrated where the registry says so (tasks.calibration). The CORAL
        # expected grade stays raw too: the "mean" decision head is built from it.
        probs = calibrated_probabilities("coral", p_gt[None], [grade], head_spec(model.entry, "kl_coral"))[0]

        target, target_text = gradcam_target(head, grade)
        explaining(model)
        cam = grad_cams(model.gradcam_model(), pair[canon:canon + 1], [target])[0]
        if canon == 1:
            cam = cam[:, ::-1]                                       # back to the upload's orientation
        h, w = img.shape
        cam_full = cv2.resize(np.ascontiguousarray(cam), (w, h), interpolation=cv2.INTER_LINEAR)
        images = {"gradcam_grade": heatmap_overlay(img, cam_full)}

        try:
            cat = catalogue_for(model)
            phenotype = phenotype_result(cat, np.asarray(out["embedding"])[canon], grade)
            if phenotype["assigned"]:
                card = phenotype_card_image(cat, grade, phenotype["cluster"], mirror=(side == "R"))
                if card is not None:
                    images["phenotype_card"] = card
        except CatalogueUnavailable as exc:
            phenotype = {"assigned": False, "cluster": None, "name": "Phenotype unavailable", "strength": 0.0,
                         "reason": str(exc), "grade": grade}
        result = {
            "grade": grade,
            "grade_name": GRADE_NAMES[grade],
            "grade_meaning": GRADE_MEANINGS[grade],
            "value": round(cont, 3),
            "regression_value": round(value, 3),
            "coral_expected": round(float(coral_expected(p_gt[None], N_GRADES - 1)[0]), 3),
            "decision_head": head,
            "grade_probabilities": {n: round(float(p), 4) for n, p in zip(GRADE_NAMES, probs)},
            "confidence": round(float(probs[grade]), 4),           # the calibrated P(the decided grade)
            **calibration_record(model.entry, ("kl_coral",)),
            "gradcam_target": target_text,
            "side": side,
            "side_name": SIDE_NAMES[side],
            "side_source": side_source,
            "p_left": round(p_left, 4),
            "phenotype": phenotype,
            "withheld": None,
        }
        if outside is not None:
            result["training_data_check"] = outside.as_dict()
        return ModelOutput(model.entry.id, "grader", result, images)


TASK = KneeTask()
