"""Sacroiliac-joint MRI for axial spondyloarthritis / ankylosing spondylitis.

Segmenter: joint-region mask. Classifier: AS status and stage, with
Grad-CAM per head and a focused Grad-CAM restricted to the predicted joint
region. The preprocessing functions here are the single definition used by
both training and serving.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import cv2
import numpy as np

from imaging.gradcam import grad_cams
from imaging.io import DecodedImage
from imaging.normalize import to_model_input
from imaging.overlay import disagreement_overlay, gradcam_overlays, mask_overlay
from model_loader import LoadedModel
from tasks.base import (Findings, ModelOutput, ReviewScale, RoleSpec, TaskBase, TaskOutput, explaining, percent,
                        run_role, timed_model)
from tasks.calibration import calibration_record, softmax_with_temperature, temperature_of
from tasks.metrics import dice
from tasks.ood import OodVerdict, run_checked, withheld_reason

STAGE_NAMES = ("Normal", "Early", "Moderate", "Advanced")
AS_NAMES = ("negative", "positive")
ROI_MARGIN = 0.10          # fraction of the joint-region box added on each side before cropping
MASK_THRESHOLD = 0.5
MIN_REGION_PX = 30         # fewer predicted pixels than this (at input size) counts as "no joint region found"
MASK_COLOURS = {1: (255, 200, 0)}


# -- preprocessing shared with training ------------------------------------
def segmenter_input(image01: np.ndarray, size: int) -> np.ndarray:
    return to_model_input(image01, (size, size))[None, :, :, None]


def region_box(mask: np.ndarray, margin: float = ROI_MARGIN) -> tuple[int, int, int, int] | None:
    """Box (x1, y1, x2, y2; end-exclusive) around the mask's pixels, widened by `margin` and clipped."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = int(round((x2 - x1) * margin)), int(round((y2 - y1) * margin))
    return max(0, x1 - mx), max(0, y1 - my), min(w, x2 + mx), min(h, y2 + my)


def classifier_input(image01: np.ndarray, mask: np.ndarray, spec: dict[str, Any]
                     ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Model input for a classifier as its registry `input` spec asks, and the image box it covers.

    spec["crop"] == "joint_region": crop the box around `mask` (full image when empty);
    spec["channels"]: "image" and optionally "mask" (the joint region as a second channel).
    """
    h_in, w_in = spec["shape"][0], spec["shape"][1]
    h, w = image01.shape
    box = (0, 0, w, h)
    if spec.get("crop") == "joint_region":
        box = region_box(mask) or box
    x1, y1, x2, y2 = box
    channels = [to_model_input(image01[y1:y2, x1:x2], (h_in, w_in))]
    if "mask" in spec["channels"]:
        crop = mask[y1:y2, x1:x2].astype(np.float32)
        channels.append((cv2.resize(crop, (w_in, h_in), interpolation=cv2.INTER_NEAREST) > 0.5).astype(np.float32))
    return np.stack(channels, axis=-1)[None], box


def classifier_probabilities(infer: Callable[[np.ndarray], Any], x: np.ndarray, spec: dict[str, Any]
                             ) -> dict[str, np.ndarray]:
    """Per-head class probabilities for a batch of classifier inputs `x` (N, H, W, C).

    With spec["tta"] == "hflip" the input and its left-right mirror go through the model in one batch
    and their probabilities are averaged: the pelvis is left-right symmetric and the classifier was
    trained with random flips, so the mirror is a second look at the same joints. `infer` is any
    callable returning {head: (n, classes)} (a LoadedModel, or a compiled tf.function in training).
    """
    n = len(x)
    batch = np.concatenate([x, x[:, :, ::-1]]) if spec.get("tta") == "hflip" else x
    out = infer(np.ascontiguousarray(batch, dtype=np.float32))
    probs = {head: np.asarray(v, dtype=np.float32) for head, v in out.items()}
    if len(batch) > n:
        probs = {head: (v[:n] + v[n:]) / 2 for head, v in probs.items()}
    return probs


def withheld_result(reason: str, outside: OodVerdict, focus_id: str | None, focus_mask: np.ndarray
                    ) -> dict[str, Any]:
    return {"as_status": None, "as_probability": None, "as_confidence": None, "stage": None, "stage_name": None,
            "stage_probabilities": None, "focus_segmenter": focus_id, "joint_region_found": bool(focus_mask.any()),
            "withheld": reason, "training_data_check": outside.as_dict()}


# -- the task ---------------------------------------------------------------
class SacroiliacTask(TaskBase):
    name = "sacroiliac"
    title = "Sacroiliac MRI: ankylosing spondylitis"
    description = ("Semi-coronal sacroiliac-joint MRI slice (STIR or T1). Segments the joint region, "
                   "gives AS negative/positive and a stage (Normal, Early, Moderate, Advanced), "
                   "with Grad-CAM and a Grad-CAM focused on the segmented joints.")
    roles = (RoleSpec("segmenter", "Joint-region segmentation"),
             RoleSpec("classifier", "AS status and stage"))
    order = 10
    recognised_as = "sacroiliac_mri"
    batch_columns = (("as_status", "classifier", "as_status"), ("stage", "classifier", "stage_name"),
                     ("as_probability", "classifier", "as_probability"), ("joint_region", "segmenter", "found"),
                     ("withheld", "classifier", "withheld"))
    field_labels = {"as_status": "AS status", "stage_name": "Stage", "stage": "Stage"}
    # Reviewers grade the stage; weighted kappa compares them with each classifier.
    review_scale = ReviewScale("Stage", STAGE_NAMES, role="classifier", field="stage")
    accepted_modalities = ("MR", None)
    reads, single_image = "MRI", "MRI slice"
    explanation_images = frozenset(f"{kind}_{head}" for kind in ("gradcam", "focused_gradcam")
                                   for head in ("as", "stage"))
    agreement_fields = {"as_status_agree": "as_status", "stage_name_agree": "stage_name"}

    def run(self, image: DecodedImage, models: dict[str, list[LoadedModel]],
            options: dict[str, Any]) -> TaskOutput:
        img = image.pixels
        segmentations, masks = run_role(models, "segmenter", lambda model: self._segment(model, img))
        # A segmenter that withheld its region gives none: it neither focuses nor enters the comparison.
        masks = {o.model_id: masks[o.model_id] for o in segmentations if not o.result.get("withheld")}
        # The first chosen segmenter defines the joint region the classifiers focus on.
        focus_id = next(iter(masks), None)
        focus_mask = masks[focus_id] if focus_id else np.zeros(img.shape, np.uint8)
        classifications, _ = run_role(models, "classifier",
                                      lambda model: self._classify(model, img, focus_mask, focus_id))
        outputs = segmentations + classifications

        summary: dict[str, Any] = {"focus_segmenter": focus_id, "comparison": self._compare(outputs, masks)}
        run_images: dict[str, np.ndarray] = {}
        if len(masks) >= 2:
            a, b = list(masks.values())[:2]
            run_images["segmenter_disagreement"] = disagreement_overlay(img, a, b)
        return TaskOutput(summary=summary, models=outputs, images=run_images)

    def headline(self, summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
        for item in results:  # the first classifier chosen speaks for the run
            res = item["result"]
            if item["role"] == "classifier":
                if res.get("withheld"):
                    return "AS status withheld: outside the classifier's training data"
                return f"AS {res['as_status']}, {res['stage_name']}"
        for item in results:
            if item["role"] == "segmenter":
                if item["result"].get("withheld"):
                    return "Joint region withheld: outside the segmenter's training data"
                return "Joint region found" if item["result"].get("found") else "No joint region found"
        return "Done"

    # ---------------------------------------------------------------------
    @timed_model
    def report_findings(self, role: str, result: Mapping[str, Any]) -> Findings:
        if result.get("withheld"):
            what = "Joint region" if role == "segmenter" else "AS status and stage"
            return Findings(notes=[f"{what} withheld: {result['withheld']}"])
        if role == "segmenter":
            return Findings(lines=[("Joint region", "found" if result.get("found") else "not found"),
                                   ("Area", f"{result.get('area_px', 0):,} px ({percent(result.get('area_fraction'), 1)} "
                                            "of the image)"),
                                   ("Mean confidence", percent(result.get("mean_confidence")))],
                            images=[("mask_overlay", "Joint-region mask over the scan")])
        stages = result.get("stage_probabilities") or {}
        found = Findings(lines=[("AS status", f"AS {result.get('as_status')} (confidence "
                                              f"{percent(result.get('as_confidence'))})"),
                                ("AS probability", percent(result.get("as_probability"))),
                                ("Stage", f"{result.get('stage_name')} (probability "
                                          f"{percent(stages.get(result.get('stage_name')))})")],
                         tables=[("Stage probabilities", ["Stage", "Probability"],
                                  [[name, percent(p)] for name, p in stages.items()])],
                         images=[("gradcam_as", f"Grad-CAM: AS status ({result.get('as_status')})"),
                                 ("focused_gradcam_as", "Focused Grad-CAM in the joint region: AS status"),
                                 ("gradcam_stage", f"Grad-CAM: stage ({result.get('stage_name')})")])
        if not result.get("joint_region_found", True):
            found.notes.append("No joint region was found: the classifier read the whole image.")
        return found

    def _segment(self, model: LoadedModel, img: np.ndarray) -> tuple[ModelOutput, np.ndarray]:
        size = model.entry.input_shape[0]
        x = segmenter_input(img, size)
        out, checks = run_checked(model, x)
        outside = checks[0] if checks else None
        if outside is not None and outside.outside:
            result = {"found": None, "area_px": None, "area_fraction": None, "bbox": None, "mean_confidence": None,
                      "withheld": withheld_reason(model, outside, "segmenter", "joint region"),
                      "training_data_check": outside.as_dict()}
            return ModelOutput(model.entry.id, "segmenter", result), np.zeros(img.shape, np.uint8)
        prob = np.asarray(out)[0, :, :, 0]
        small = prob > MASK_THRESHOLD
        found = int(small.sum()) >= MIN_REGION_PX
        h, w = img.shape
        mask = (cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) > MASK_THRESHOLD).astype(np.uint8)
        if not found:
            mask[:] = 0
        box = region_box(mask, margin=0.0)
        result = {
            "found": found,
            "area_px": int(mask.sum()),
            "area_fraction": round(float(mask.mean()), 4),
            "bbox": list(map(int, box)) if box else None,
            "mean_confidence": round(float(prob[small].mean()) if found else 0.0, 3),
            "withheld": None,
        }
        if outside is not None:
            result["training_data_check"] = outside.as_dict()
        images = {"mask_overlay": mask_overlay(img, mask, MASK_COLOURS), "mask": (mask * 255).astype(np.uint8)}
        return ModelOutput(model.entry.id, "segmenter", result, images), mask

    @timed_model
    def _classify(self, model: LoadedModel, img: np.ndarray, focus_mask: np.ndarray,
                  focus_id: str | None) -> ModelOutput:
        spec = model.entry.input
        x, box = classifier_input(img, focus_mask, spec)
        checks: list[OodVerdict] = []

        def infer(batch: np.ndarray) -> Any:
            out, verdicts = run_checked(model, batch)
            checks.extend(verdicts or ())
            return out

        probs = classifier_probabilities(infer, x, spec)
        outside = checks[0] if checks else None        # the check reads the input as given, not its mirror
        if outside is not None and outside.outside:
            reason = withheld_reason(model, outside, "classifier", "AS status or stage")
            return ModelOutput(model.entry.id, "classifier", withheld_result(reason, outside, focus_id, focus_mask))
        # Decided on the raw probabilities (a temperature keeps the argmax), shown calibrated.
        as_idx, stage_idx = int(probs["as_status"][0].argmax()), int(probs["stage"][0].argmax())
        p_as = softmax_with_temperature(probs["as_status"][0], temperature_of(model.entry, "as_status"))
        p_stage = softmax_with_temperature(probs["stage"][0], temperature_of(model.entry, "stage"))
        explaining(model)
        cams = grad_cams(model.gradcam_model(), x, [("as_status", as_idx), ("stage", stage_idx)])

        h, w = img.shape
        x1, y1, x2, y2 = box
        images: dict[str, np.ndarray] = {}
        for head, cam in zip(("as", "stage"), cams):
            full = np.zeros((h, w), np.float32)  # CAM of the crop, placed back where the crop came from
            full[y1:y2, x1:x2] = cv2.resize(cam, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
            images.update(gradcam_overlays(img, full, focus_mask, suffix=f"_{head}"))
        result = {
            "as_status": AS_NAMES[as_idx],
            "as_probability": round(float(p_as[1]), 4),
            "as_confidence": round(float(p_as[as_idx]), 4),
            "stage": stage_idx,
            "stage_name": STAGE_NAMES[stage_idx],
            "stage_probabilities": {n: round(float(p), 4) for n, p in zip(STAGE_NAMES, p_stage)},
            "focus_segmenter": focus_id,
            "joint_region_found": bool(focus_mask.any()),
            "withheld": None,
            **calibration_record(model.entry, ("as_status", "stage")),
        }
        if outside is not None:
            result["training_data_check"] = outside.as_dict()
        return ModelOutput(model.entry.id, "classifier", result, images)

    def _compare(self, outputs: list[ModelOutput], masks: dict[str, np.ndarray]) -> dict[str, Any]:
        comparison: dict[str, Any] = {}
        ids = list(masks)
        if len(ids) >= 2:
            comparison["segmenter_dice"] = round(dice(masks[ids[0]], masks[ids[1]]), 4)
        classifiers = [o for o in outputs if o.role == "classifier"]
        if len(classifiers) >= 2:
            comparison.update(self.agreement(
                {name: [o.result[name] for o in classifiers] for name in self.agreement_fields.values()}))
        return comparison


TASK = SacroiliacTask()
