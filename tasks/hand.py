"""Hand radiographs for erosive hand osteoarthritis: finger-joint detection and two-stage GUSS scoring.

Detector: finds PIP2-PIP5 and DIP2-DIP5 by name (a centre heatmap per joint, CenterNet-style) with a
confidence per joint; a joint below the missing threshold is reported missing, never guessed, and a
hand whose detections break finger anatomy is flagged. Scorer: a square crop per joint (side = the
larger box side + 10%, from the original image, padded where it leaves the image), stage 1 (intact
peak 200 vs not) and stage 2 (CORAL over 20 thresholds on non-peak joints), with a Grad-CAM per stage.

The preprocessing and decoding functions here are the single definition used by training, the
benchmarks and serving. TensorFlow is imported only inside the Grad-CAM score that needs it, so
importing this module stays cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Sequence

import cv2
import numpy as np

from imaging.gradcam import batch_grad_cams
from imaging.io import DecodedImage
from imaging.normalize import to_model_input
from imaging.overlay import boxes_overlay, heatmap_overlay
from model_loader import LoadedModel
from tasks.base import (PSEUDONYM_OPTION, TIMEPOINT_OPTION, Findings, ModelOutput, RoleSpec, TaskBase,
                        TaskInputError, TaskOutput, explaining, percent, run_role, timed_model)
from tasks.calibration import (calibrated_probabilities, calibration_record, head_spec,
                               sigmoid_with_temperature, temperature_of)
from tasks.metrics import coral_rank
from tasks.ood import OodVerdict, run_checked, withheld_reason

JOINT_NAMES = ("PIP2", "PIP3", "PIP4", "PIP5", "DIP2", "DIP3", "DIP4", "DIP5")
CROP_MARGIN = 0.10             # the crop's side is the larger box side plus 10%
DETECTOR_STRIDE = 4            # heatmap cells per input pixel
BOX_UNIT = 32.0                # the detector's box width/height are in input pixels / BOX_UNIT
MISSING_THRESHOLD = 0.30       # detector confidence below this: the joint is reported missing
UNSURE_THRESHOLD = 0.50        # below this: found but unsure, its score is withheld
SIDE_SURE = 0.80               # laterality probability needed to check finger order against the side
MIN_SURE_JOINTS = 6            # fewer confidently found joints: the hand is not recognised, no joint is scored
PEAK_THRESHOLD = 0.5           # stage 1
GUSS_STEP = 10
STAGE2_MAX = 190               # stage 2 decodes to 0..190 (a non-peak joint)
DEFAULT_SDC = 20               # smallest detectable change in GUSS points (config HAND_SDC)
CROP_DISPLAY = 128             # crops and their Grad-CAMs are stored at this size


# -- detector preprocessing shared with training ------------------------------------------
@dataclass(frozen=True)
class Letterbox:
    """How an image of (height, width) was placed into the square detector input."""

    size: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    height: int
    width: int

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        return np.stack([xy[..., 0] * self.scale_x + self.pad_x, xy[..., 1] * self.scale_y + self.pad_y], -1)

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        return np.stack([(xy[..., 0] - self.pad_x) / self.scale_x, (xy[..., 1] - self.pad_y) / self.scale_y], -1)


def letterbox_geometry(height: int, width: int, size: int) -> Letterbox:
    s = size / max(height, width)
    nw, nh = max(1, int(round(width * s))), max(1, int(round(height * s)))
    return Letterbox(size, nw / width, nh / height, (size - nw) // 2, (size - nh) // 2, height, width)


def detector_input(image01: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The whole image resized (aspect kept) into a size x size square, percentile-scaled, zero-padded.

    Returns the batch (1, size, size, 1) and the geometry that maps detections back to the image.
    """
    h, w = image01.shape[:2]
    lb = letterbox_geometry(h, w, size)
    nw, nh = int(round(w * lb.scale_x)), int(round(h * lb.scale_y))
    canvas = np.zeros((size, size), np.float32)
    canvas[lb.pad_y:lb.pad_y + nh, lb.pad_x:lb.pad_x + nw] = to_model_input(image01, (nh, nw))
    return canvas[None, :, :, None], lb


def decode_detections(heatmap: np.ndarray, box: np.ndarray, lb: Letterbox,
                      stride: int = DETECTOR_STRIDE) -> list[dict[str, Any]]:
    """Per joint class: the heatmap's peak as the centre, its value as the confidence, the box there.

    heatmap (S, S, 8) and box (S, S, 4: width/BOX_UNIT, height/BOX_UNIT, offset x, offset y) of ONE image.
    Boxes come back in image pixels (continuous coordinates, x1 y1 x2 y2), not clipped.
    """
    out = []
    s = heatmap.shape[0]
    for c, name in enumerate(JOINT_NAMES):
        flat = int(np.argmax(heatmap[:, :, c]))
        iy, ix = divmod(flat, s)
        conf = float(heatmap[iy, ix, c])
        bw, bh, ox, oy = (float(v) for v in box[iy, ix])
        cx_in, cy_in = (ix + ox) * stride, (iy + oy) * stride
        w_in, h_in = max(bw, 1e-3) * BOX_UNIT, max(bh, 1e-3) * BOX_UNIT
        (x1, y1), (x2, y2) = lb.to_image(np.array([[cx_in - w_in / 2, cy_in - h_in / 2],
                                                    [cx_in + w_in / 2, cy_in + h_in / 2]]))
        cx, cy = lb.to_image(np.array([cx_in, cy_in]))
        out.append({"name": name, "confidence": conf, "center": (float(cx), float(cy)),
                    "box": (float(x1), float(y1), float(x2), float(y2))})
    return out


def classify_detection(confidence: float, missing: float = MISSING_THRESHOLD, unsure: float = UNSURE_THRESHOLD) -> str:
    """'missing' | 'unsure' | 'found'."""
    if confidence < missing:
        return "missing"
    return "unsure" if confidence < unsure else "found"


# -- crops shared with training --------------------------------------------------------
def square_crop_box(box: Sequence[float], margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """The square crop of a box: centred on it, side = the larger box side * (1 + margin), in whole pixels.

    May extend beyond the image; `crop_square` pads what lies outside.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(1, int(round(max(x2 - x1, y2 - y1) * (1.0 + margin))))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = int(math.floor(cx - side / 2.0 + 0.5)), int(math.floor(cy - side / 2.0 + 0.5))
    return left, top, left + side, top + side


def crop_square(image: np.ndarray, box: Sequence[float], margin: float = CROP_MARGIN,
                pad_value: float = 0.0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Square crop of `box` from the ORIGINAL image, clipped at the image border and padded with
    `pad_value` there, so it stays square. Returns (crop, (left, top, right, bottom))."""
    left, top, right, bottom = square_crop_box(box, margin)
    side = right - left
    h, w = image.shape[:2]
    out = np.full((side, side), pad_value, dtype=image.dtype)
    sx1, sy1, sx2, sy2 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - top:sy2 - top, sx1 - left:sx2 - left] = image[sy1:sy2, sx1:sx2]
    return out, (left, top, right, bottom)


def scorer_input(crop01: np.ndarray, size: int, joint_index: int | None = None) -> np.ndarray:
    """(size, size, C): the crop resized and percentile-scaled; position-aware models get 8 one-hot planes."""
    x = to_model_input(crop01.astype(np.float32), (size, size))[:, :, None]
    if joint_index is None:
        return x
    planes = np.zeros((size, size, len(JOINT_NAMES)), np.float32)
    planes[:, :, joint_index] = 1.0
    return np.concatenate([x, planes], axis=-1)


# -- scores ---------------------------------------------------------------------------------
def stage2_score(guss_probs: np.ndarray) -> np.ndarray:
    """Stage-2 GUSS from the 20 cumulative probabilities (>= 10 ... >= 200), clamped to 0-190."""
    return np.clip(coral_rank(guss_probs) * GUSS_STEP, 0, STAGE2_MAX)


def split_guss(guss: int, plate_hat: int, space_hat: int) -> tuple[int, int]:
    """Divide a GUSS (step 10) into plate + space in proportion to the compartment heads' estimates.

    Both parts are multiples of 10 within 0..100 and add up to `guss` exactly.
    """
    guss = int(guss)
    total = plate_hat + space_hat
    share = 0.5 if total <= 0 else plate_hat / total
    plate = int(round(guss * share / GUSS_STEP)) * GUSS_STEP
    plate = int(np.clip(plate, max(0, guss - 100), min(100, guss)))
    return plate, guss - plate


def decode_scores(peak: float, guss_probs: np.ndarray, plate_probs: np.ndarray, space_probs: np.ndarray
                  ) -> dict[str, Any]:
    """One joint's scores from the scorer's outputs: stage 1 decides peak (200 = 100 + 100),
    otherwise stage 2's GUSS, split into plate and space by the compartment heads."""
    peak = float(peak)
    plate_hat = int(coral_rank(plate_probs)) * GUSS_STEP
    space_hat = int(coral_rank(space_probs)) * GUSS_STEP
    stage2 = int(stage2_score(guss_probs))
    if peak >= PEAK_THRESHOLD:
        return {"guss": 200, "plate": 100, "space": 100, "stage": 1, "stage2_guss": stage2,
                "plate_head": plate_hat, "space_head": space_hat}
    plate, space = split_guss(stage2, plate_hat, space_hat)
    return {"guss": stage2, "plate": plate, "space": space, "stage": 2, "stage2_guss": stage2,
            "plate_head": plate_hat, "space_head": space_hat}


# -- anatomy -------------------------------------------------------------------------------
def anatomy_check(centres: dict[str, tuple[float, float] | None], p_right: float | None) -> dict[str, Any]:
    """Is the set of detected joints a plausible hand?

    - DIP distal to PIP along each finger: every finger's PIP->DIP vector points the same way as
      the hand's (the median direction of all fingers), and is not much shorter or longer than theirs;
    - the fingers in order across the hand: the PIPs (and the DIPs) of fingers 2, 3, 4, 5 lie in
      strictly monotone order across the finger direction;
    - that order agrees with the laterality head: on a left hand (fingers up, PA view) the index
      finger is on the image's right; on a right hand on its left.
    Returns {"ok", "problems": [...], "side", "side_probability", "order_side"}.
    """
    problems: list[str] = []
    vectors = {}
    for f in (2, 3, 4, 5):
        p, d = centres.get(f"PIP{f}"), centres.get(f"DIP{f}")
        if p is not None and d is not None:
            vectors[f] = np.subtract(d, p).astype(float)
    direction = None
    if vectors:
        units = np.array([v / (np.linalg.norm(v) + 1e-9) for v in vectors.values()])
        direction = np.median(units, axis=0)
        direction /= np.linalg.norm(direction) + 1e-9
        lengths = np.array([np.linalg.norm(v) for v in vectors.values()])
        med = float(np.median(lengths))
        for (f, v), L in zip(vectors.items(), lengths):
            if len(vectors) >= 2 and float(np.dot(v, direction)) <= 0.3 * L:
                problems.append(f"DIP{f} is not distal to PIP{f} along the finger")
            elif len(vectors) >= 3 and not 0.4 * med <= L <= 2.2 * med:
                problems.append(f"PIP{f}-DIP{f} distance is implausible next to the other fingers")
    order_side = None
    if direction is not None:
        across = np.array([-direction[1], direction[0]])      # image right when the fingers point up
        sides = []
        for kind in ("PIP", "DIP"):
            pts = [(f, centres.get(f"{kind}{f}")) for f in (2, 3, 4, 5)]
            pts = [(f, float(np.dot(c, across))) for f, c in pts if c is not None]
            if len(pts) < 2:
                continue
            coords = np.array([c for _, c in pts])
            steps = np.diff(coords)
            if (steps < 0).all():
                sides.append("left")                           # index finger furthest right
            elif (steps > 0).all():
                sides.append("right")
            else:
                problems.append(f"the {kind} joints are not in finger order across the hand")
        if len(set(sides)) > 1:
            problems.append("the PIP and DIP rows run in opposite finger orders")
        elif sides:
            order_side = sides[0]
    side = None
    if p_right is not None:
        side = "right" if p_right >= 0.5 else "left"
        sure = max(p_right, 1 - p_right) >= SIDE_SURE
        if order_side and sure and order_side != side:
            problems.append(f"the finger order is that of a {order_side} hand but the hand looks like a {side} hand")
    return {"ok": not problems, "problems": problems, "side": side,
            "side_probability": None if p_right is None else round(float(p_right), 4), "order_side": order_side}


# -- colours --------------------------------------------------------------------------------
def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def guss_colour(guss: float | None) -> tuple[int, int, int]:
    """Green (200, intact) through amber (about 120) to red (0); grey when there is no score."""
    if guss is None:
        return (150, 150, 150)
    t = float(np.clip(guss / 200.0, 0.0, 1.0))
    stops = [(0.0, (215, 48, 39)), (0.6, (245, 166, 35)), (0.9, (200, 200, 40)), (1.0, (60, 180, 75))]
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            k = (t - t0) / (t1 - t0)
            return tuple(int(round(a + k * (b - a))) for a, b in zip(c0, c1))
    return stops[-1][1]


def confidence_colour(status: str) -> tuple[int, int, int]:
    return {"found": (0, 170, 255), "unsure": (255, 170, 0), "missing": (150, 150, 150)}[status]


def _label_scale(img: np.ndarray) -> float:
    """Box labels small enough that eight neighbouring joints stay readable."""
    return max(0.3, min(img.shape[:2]) / 1600.0)


# -- the task -------------------------------------------------------------------------------
class HandTask(TaskBase):
    name = "hand"
    title = "Hand radiograph: erosive hand OA (GUSS)"
    description = ("PA radiograph of one whole hand. Finds the eight finger joints PIP2-PIP5 and DIP2-DIP5 by "
                   "name, crops each and scores it on the Ghent University Scoring System (subchondral plate "
                   "and joint space, 0-100 each; GUSS 0-200, 200 = intact) in two stages, with Grad-CAM per "
                   "stage. Add a pseudonym and a date to follow a patient over time.")
    roles = (RoleSpec("detector", "Finger-joint detection"),
             RoleSpec("scorer", "Per-joint GUSS scoring"))
    options = (PSEUDONYM_OPTION, TIMEPOINT_OPTION)
    order = 40
    recognised_as = "hand_radiograph"
    accepted_modalities = (None, "CR", "DX", "RG", "DR", "OT")
    reads, single_image = "hand radiographs", "radiograph"
    explanation_images = frozenset({"detector_heatmap"} | {f"gradcam_stage{stage}_{joint}" for stage in (1, 2)
                                                           for joint in JOINT_NAMES})
    agreement_fields = {"guss_agree": "guss"}
    min_side = 128
    max_pixels = 12_000_000     # a whole-hand radiograph at full detector resolution (3000 x 4000 px)
    batch_columns = (("joints_found", "detector", "n_found"), ("joints_scored", "scorer", "n_scored"),
                     ("guss_total", "scorer", "guss_total"), ("withheld", "scorer", "withheld"))

    def check_input(self, image: DecodedImage) -> None:
        super().check_input(image)
        if min(image.pixels.shape) < self.min_side:
            raise TaskInputError(f"The image is too small for a whole hand (at least {self.min_side} pixels "
                                 "on each side are needed).")

    def headline(self, summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
        scorer = next((r["result"] for r in results if r["role"] == "scorer"), None)
        det = next((r["result"] for r in results if r["role"] == "detector"), {})
        found = det.get("n_found")
        if scorer is None:
            return f"{found}/8 joints found" if found is not None else "Done"
        scored = [j for j in scorer.get("joints", []) if j.get("guss") is not None]
        text = f"{len(scored)}/8 joints scored"
        if scored:
            text += f", GUSS sum {sum(j['guss'] for j in scored)}"
        if not summary.get("confident", True):
            text += " (not confident)"
        return text

    def report_findings(self, role: str, result: Mapping[str, Any]) -> Findings:
        joints = result.get("joints") or []
        if role == "detector" and result.get("withheld"):
            return Findings(notes=[f"Joints withheld: {result['withheld']}"])
        if role == "detector":
            found = Findings(lines=[("Joints found", f"{result.get('n_found', 0)} of 8 (unsure {result.get('n_unsure', 0)}, "
                                                     f"missing {result.get('n_missing', 0)})"),
                                    ("Hand", f"{result.get('side') or 'n/a'}"),
                                    ("Finger anatomy", "consistent" if result.get("anatomy_ok") else "broken"),
                                    ("Image like the training data", "no" if result.get("out_of_distribution") else "yes")],
                             tables=[("Joints", ["Joint", "Status", "Confidence"],
                                      [[j["name"], j.get("status", ""), percent(j.get("confidence"))] for j in joints])],
                             images=[("detections", "Detected joints")])
            found.notes += [f"Anatomy: {p}" for p in result.get("anatomy_problems") or []]
            if result.get("out_of_distribution"):
                found.notes.append("Unlike the hands the detector was trained on: boxes for orientation only, no "
                                   "joint is scored.")
            return found
        scored = Findings(lines=[("Joints scored", f"{result.get('n_scored', 0)} of 8"),
                                 ("GUSS total (scored joints)", str(result.get("guss_total", "n/a")))],
                          tables=[("GUSS per joint (0-200, 200 intact)",
                                   ["Joint", "Plate", "Space", "GUSS", "P(intact)"],
                                   [[j["name"], _dash(j.get("plate")), _dash(j.get("space")),
                                     str(j["guss"]) if j.get("guss") is not None else (j.get("withheld") or "not scored"),
                                     percent(j.get("peak_probability"))] for j in joints])],
                          images=[("scored_joints", "Joints coloured by GUSS")])
        if result.get("withheld"):
            scored.notes.append(f"Scores withheld: {result['withheld']}")
        return scored

    # ------------------------------------------------------------------------------------
    def run(self, image: DecodedImage, models: dict[str, list[LoadedModel]],
            options: dict[str, Any]) -> TaskOutput:
        img = image.pixels
        detector_outputs, found = run_role(models, "detector", lambda model: self._detect(model, img))
        # The first chosen detector names the joints every scorer scores.
        detector_id = next(iter(found), None)
        detections, anatomy = found[detector_id] if detector_id else ([], {})
        scorer_outputs, _ = run_role(models, "scorer",
                                     lambda model: self._score(model, img, detections, anatomy, detector_id))
        outputs = detector_outputs + scorer_outputs
        warnings = self._warnings(detections, anatomy)
        summary: dict[str, Any] = {
            "detector": detector_id,
            "confident": not warnings,
            "warnings": warnings,
            "pseudonym_given": bool(options.get("pseudonym")),
            "timepoint": options.get("timepoint") or None,
            "comparison": self._compare(scorer_outputs),
        }
        return TaskOutput(summary=summary, models=outputs)

    @staticmethod
    def _warnings(detections: list[dict[str, Any]], anatomy: dict[str, Any]) -> list[str]:
        warnings = []
        missing = [d["name"] for d in detections if d["status"] == "missing"]
        unsure = [d["name"] for d in detections if d["status"] == "unsure"]
        if not detections:
            warnings.append("No detector ran: the joints were not located.")
        if missing:
            warnings.append(f"Not found with confidence: {', '.join(missing)}. These joints are reported missing "
                            "and are not scored.")
        if unsure:
            warnings.append(f"Unsure detections: {', '.join(unsure)}. Their scores are withheld.")
        if anatomy.get("problems"):
            warnings.append("The detections break finger anatomy (" + "; ".join(anatomy["problems"])
                            + "): joint names may be wrong, so no joint is scored.")
        if anatomy.get("too_few_sure") and detections:
            warnings.append(f"Only {anatomy.get('n_sure')} of the 8 joints were found with confidence: the detector "
                            "does not recognise this hand well enough, so no joint is scored.")
        if anatomy.get("out_of_distribution"):
            warnings.append("This image is unlike the radiographs the detector was trained on (adult phantom "
                            "hands); all results are not confident and scores are withheld.")
        return warnings

    # ------------------------------------------------------------------------------------
    @timed_model
    def _detect(self, model: LoadedModel, img: np.ndarray):
        spec = model.entry.input
        size = int(spec["shape"][0])
        x, lb = detector_input(img, size)
        out, checks = run_checked(model, x)
        heat, box = out["heatmap"][0], out["box"][0]
        p_right = float(np.asarray(out["side"]).reshape(-1)[0])
        t_missing = float(spec.get("missing_threshold", MISSING_THRESHOLD))
        t_unsure = float(spec.get("unsure_threshold", UNSURE_THRESHOLD))
        joints = decode_detections(heat, box, lb)
        h, w = img.shape
        for d in joints:
            d["status"] = classify_detection(d["confidence"], t_missing, t_unsure)
        centres = {d["name"]: d["center"] for d in joints if d["status"] != "missing"}
        anatomy = anatomy_check(centres, p_right)
        outside = checks[0] if checks else None
        ood = {"flag": bool(outside and outside.outside), "score": round(outside.distance, 3) if outside else None}
        anatomy["out_of_distribution"] = ood["flag"]
        anatomy["ood_score"] = ood["score"]
        anatomy["n_sure"] = sum(1 for d in joints if d["status"] == "found")
        anatomy["too_few_sure"] = anatomy["n_sure"] < MIN_SURE_JOINTS
        result_joints = []
        for d in joints:
            found = d["status"] != "missing"
            result_joints.append({
                "name": d["name"],
                "status": d["status"],
                "missing": not found,
                "confidence": round(d["confidence"], 4),
                "box": [round(v, 1) for v in d["box"]] if found else None,
                "center": [round(v, 1) for v in d["center"]] if found else None,
            })
        boxes = [{"x1": d["box"][0], "y1": d["box"][1], "x2": d["box"][2], "y2": d["box"][3],
                  "label": d["name"] + ("?" if d["status"] == "unsure" else ""),
                  "colour": confidence_colour(d["status"])} for d in joints if d["status"] != "missing"]
        # the heatmap of all joints, mapped from the letterboxed input back onto the image
        hm = heat.max(axis=-1)
        hm_in = cv2.resize(hm, (size, size), interpolation=cv2.INTER_LINEAR)
        nw, nh = int(round(w * lb.scale_x)), int(round(h * lb.scale_y))
        hm_img = cv2.resize(np.ascontiguousarray(hm_in[lb.pad_y:lb.pad_y + nh, lb.pad_x:lb.pad_x + nw]), (w, h),
                            interpolation=cv2.INTER_LINEAR)
        result = {
            "joints": result_joints,
            "n_found": sum(1 for d in joints if d["status"] == "found"),
            "n_unsure": sum(1 for d in joints if d["status"] == "unsure"),
            "n_missing": sum(1 for d in joints if d["status"] == "missing"),
            "side": anatomy["side"],
            "side_probability": anatomy["side_probability"],
            "anatomy_ok": anatomy["ok"],
            "anatomy_problems": anatomy["problems"],
            "out_of_distribution": ood["flag"],
            "ood_score": ood["score"],
            "hand_recognised": not anatomy["too_few_sure"],
            "training_data_check": outside.as_dict() if outside else None,
            "thresholds": {"missing": t_missing, "unsure": t_unsure, "min_sure_joints": MIN_SURE_JOINTS},
        }
        images = {"detections": boxes_overlay(img, boxes, font_scale=_label_scale(img)),
                  "detector_heatmap": heatmap_overlay(img, np.clip(hm_img, 0, 1), alpha=0.5)}
        return ModelOutput(model.entry.id, "detector", result, images), joints, anatomy

    @timed_model
    def _score(self, model: LoadedModel, img: np.ndarray, detections: list[dict[str, Any]],
               anatomy: dict[str, Any], detector_id: str | None) -> ModelOutput:
        spec = model.entry.input
        size = int(spec["shape"][0])
        position_aware = "joint_onehot" in spec.get("channels", [])
        names_ok = (anatomy.get("ok", False) and not anatomy.get("out_of_distribution", False)
                    and not anatomy.get("too_few_sure", False))
        to_score = [d for d in detections if d["status"] != "missing"]
        crops, xs = [], []
        for d in to_score:
            crop, sq = crop_square(img, d["box"])
            d["crop_box"] = sq
            crops.append(crop)
            xs.append(scorer_input(crop, size, JOINT_NAMES.index(d["name"]) if position_aware else None))
        scores: dict[str, dict[str, Any]] = {}
        images: dict[str, np.ndarray] = {}
        outside: dict[str, OodVerdict] = {}
        if xs:
            x = np.stack(xs)
            out, checks = run_checked(model, x)
            outside = {d["name"]: v for d, v in zip(to_score, checks or ()) if v.outside}
            peak = np.asarray(out["peak"]).reshape(-1)
            # Decided on the raw heads (a temperature moves no threshold at 0.5), shown calibrated.
            peak_shown = sigmoid_with_temperature(peak, temperature_of(model.entry, "peak"))
            for i, d in enumerate(to_score):
                score = scores[d["name"]] = decode_scores(peak[i], out["guss"][i], out["plate"][i], out["space"][i])
                score["peak_probability"] = round(float(peak_shown[i]), 4)
            # P(each joint's stage-2 GUSS): the CORAL rank decides it, not the distribution's top class, so its
            # probability is recalibrated where the registry says so (tasks.calibration), all joints at once.
            decided = np.array([scores[d["name"]]["stage2_guss"] // GUSS_STEP for d in to_score])
            guss_shown = calibrated_probabilities("coral", out["guss"], decided, head_spec(model.entry, "guss"))
            for i, d in enumerate(to_score):
                score = scores[d["name"]]
                score["guss_probability"] = (round(float(guss_shown[i, decided[i]]), 4) if score["stage"] == 2
                                             else None)
            sign = np.where(peak >= PEAK_THRESHOLD, 1.0, -1.0).astype(np.float32)
            explaining(model)
            cams = batch_grad_cams(model.gradcam_model(),
                                x, [lambda o: o["peak"][:, 0] * sign,          # stage 1: the decided class
                                    lambda o: -self._sum(o["guss"])])          # stage 2: evidence of damage
            for i, d in enumerate(to_score):
                view = cv2.resize(x[i, :, :, 0], (CROP_DISPLAY, CROP_DISPLAY), interpolation=cv2.INTER_LINEAR)
                images[f"crop_{d['name']}"] = (np.clip(view, 0, 1) * 255 + 0.5).astype(np.uint8)
                images[f"gradcam_stage1_{d['name']}"] = heatmap_overlay(view, cams[0][i])
                images[f"gradcam_stage2_{d['name']}"] = heatmap_overlay(view, cams[1][i])
        # Most of the hand's crops unlike the scorer's training data: the hand itself is (a child's hand,
        # another population), and no joint of it is scored, not even those whose crops passed.
        hand_outside = bool(to_score) and 2 * len(outside) >= len(to_score)
        farthest = max(outside.values(), key=lambda v: v.distance) if outside else None
        hand_reason = (withheld_reason(model, farthest, "scorer", "GUSS score for this hand's joints")
                       if hand_outside else None)
        joints_out = []
        boxes = []
        for d in detections:
            entry: dict[str, Any] = {"name": d["name"], "status": d["status"], "missing": d["status"] == "missing",
                                     "confidence": round(d["confidence"], 4),
                                     "box": [round(v, 1) for v in d["box"]] if d["status"] != "missing" else None,
                                     "crop_box": list(d.get("crop_box", ())) or None,
                                     "plate": None, "space": None, "guss": None, "peak_probability": None,
                                     "guss_probability": None, "stage": None, "withheld": None}
            s = scores.get(d["name"])
            if s is not None:                   # a withheld joint shows no number at all, not even stage 1's
                if d["status"] == "unsure":
                    entry["withheld"] = "detection unsure"
                elif hand_outside:
                    entry["withheld"] = "most of this hand's joints are unlike the scorer's training data"
                elif d["name"] in outside:
                    entry["withheld"] = "joint crop unlike the scorer's training data"
                elif not names_ok:
                    entry["withheld"] = ("image unlike the training data" if anatomy.get("out_of_distribution")
                                         else "detections break finger anatomy" if not anatomy.get("ok", False)
                                         else "too few joints found with confidence")
                else:
                    entry.update(plate=s["plate"], space=s["space"], guss=s["guss"], stage=s["stage"],
                                 peak_probability=s["peak_probability"], guss_probability=s["guss_probability"])
            elif d["status"] == "missing":
                entry["withheld"] = "joint not found"
            joints_out.append(entry)
            if d["status"] != "missing":
                g = entry["guss"]
                label = f"{d['name']} {g}" if g is not None else f"{d['name']} ?"
                boxes.append({"x1": d["box"][0], "y1": d["box"][1], "x2": d["box"][2], "y2": d["box"][3],
                              "label": label, "colour": guss_colour(g)})
        scored = [j for j in joints_out if j["guss"] is not None]
        result = {
            "joints": joints_out,
            "n_scored": len(scored),
            "guss_total": sum(j["guss"] for j in scored) if scored else None,
            "confident": len(scored) == len(JOINT_NAMES),
            "detector": detector_id,
            "position_aware": position_aware,
            "peak_threshold": PEAK_THRESHOLD,
            "withheld": hand_reason,
            "training_data_check": ({"outside": sorted(outside), "crops": len(to_score),
                                     "threshold": round(float(model.entry.ood["threshold"]), 2)}
                                    if model.entry.ood else None),
            **calibration_record(model.entry, ("peak", "guss")),
        }
        images = {"scored_joints": boxes_overlay(img, boxes, font_scale=_label_scale(img)), **images}
        return ModelOutput(model.entry.id, "scorer", result, images)

    @staticmethod
    def _sum(t):
        import tensorflow as tf

        return tf.reduce_sum(t, axis=-1)

    def _compare(self, scorers: list[ModelOutput]) -> dict[str, Any]:
        if len(scorers) < 2:
            return {}
        a, b = scorers[0].result["joints"], scorers[1].result["joints"]
        diffs = {ja["name"]: (ja["guss"] - jb["guss"]) for ja, jb in zip(a, b)
                 if ja["guss"] is not None and jb["guss"] is not None}
        return {"scorers": [scorers[0].model_id, scorers[1].model_id],
                "guss_difference": diffs,
                "max_abs_guss_difference": max((abs(v) for v in diffs.values()), default=None),
                **{key: all(abs(v) < DEFAULT_SDC for v in diffs.values()) for key in self.agreement_fields}}


TASK = HandTask()
