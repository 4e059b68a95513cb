"""Sacroiliac MRI studies of real patients: the disease region, bone marrow oedema (BME) and the ASAS rule.

Reads a whole semi-coronal study (imaging.volume.Study: a NIfTI volume, a DICOM series or a zip, STIR and
T1 together or either alone; one slice is a study of one slice). Per study:

- the disease region (periarticular sacrum and ilium, where sacroiliitis is read), by each chosen segmenter:
  2.5D stacks of every sequence present (tasks.sacroiliac_region), their probabilities averaged, since
  STIR and T1 of one study share the grid;
- inside each segmenter's region, on STIR, oedema by the intensity principle (tasks.sacroiliac_inflammation:
  brighter than the study's own normal-marrow reference), its volume in mL, lesions and slices, the ASAS
  definition of a positive MRI and a SPARCC-style research count;
- a Grad-CAM of the region on the key slice (the slice with most oedema, else most region), and its
  region-focused view;
- per slice, the pictures of the slice viewer (the slice, the region, the region and oedema) and a table row.

The phantom-trained AS classifier is not run here: it has never seen a real study, and on every real slice
tried its training-data check refuses it (models/cards/sij-dual-head.md). The study's status is the
measured oedema and the ASAS rule instead, and the page says so.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from imaging.gradcam import grad_cam_class_sum
from imaging.overlay import gradcam_overlays, mask_overlay
from imaging.volume import Study, Volume
from model_loader import LoadedModel
from tasks.base import (PSEUDONYM_OPTION, TIMEPOINT_OPTION, Findings, Measure, ModelOutput, OptionSpec, RoleSpec,
                        TaskBase, TaskInputError, TaskOutput, explaining, run_role)
from tasks.metrics import dice
from tasks.sacroiliac_inflammation import (DEFAULT_MARGIN_SD, DEFAULT_MIN_LESION_VOXELS, asas_positive,
                                           lesions_on_slice, marrow_reference, oedema_mask, sparcc_like)
from tasks.sacroiliac_region import normalise_volume, region_mask, slice_stacks

REGION_COLOURS = {1: (255, 200, 0)}
OEDEMA_COLOURS = {1: (255, 200, 0), 2: (255, 40, 40)}
INFERENCE_BATCH = 16
SEQUENCE_OPTION = OptionSpec("sequence", "Sequence, where the file does not say", choices=(
    ("", "as the file says"), ("STIR", "STIR (fat-suppressed, for oedema)"), ("T1", "T1-weighted")),
    help="Names the sequence of a volume whose file does not say (a NIfTI file without STIR or T1 in its name, "
         "or an image).")
CLASSIFIER_WITHHELD = ("The AS status and stage classifier was trained on synthetic phantoms only and has not been "
                       "validated on real MRI: on real studies it is not run. The status of this study is read from "
                       "the measured bone marrow oedema and the ASAS definition instead.")


def display_slices(volume: Volume) -> np.ndarray:
    """The volume windowed once as a whole (1st to 99.5th percentile) to 0-1 for the slice pictures."""
    return np.clip(normalise_volume(volume.voxels), 0.0, 1.0)


def region_probabilities(model: LoadedModel, volumes: list[Volume]) -> np.ndarray:
    """The segmenter's region probability per slice at its input size, averaged over the sequences."""
    size = int(model.entry.input_shape[0])
    total = None
    for volume in volumes:
        stacks = slice_stacks(normalise_volume(volume.voxels), size)
        probs = np.concatenate([np.asarray(model(stacks[i:i + INFERENCE_BATCH]))[..., 0]
                                for i in range(0, len(stacks), INFERENCE_BATCH)])
        total = probs if total is None else total + probs
    return total / len(volumes)


def measure_oedema(stir: Volume, region: np.ndarray, margin_sd: float = DEFAULT_MARGIN_SD,
                   min_voxels: int = DEFAULT_MIN_LESION_VOXELS) -> tuple[dict[str, Any], np.ndarray]:
    """Oedema inside `region` on a STIR volume: the figures for the page and the mask (slices, rows, cols)."""
    if int(region.sum()) < 100:
        return {"measured": False, "reason": "the region is too small to estimate normal marrow"}, \
            np.zeros(region.shape, bool)
    reference = marrow_reference(stir.voxels, region)
    mask = oedema_mask(stir.voxels, region, reference, margin_sd, min_voxels)
    asas = asas_positive(mask)
    _, n_lesions = ndimage.label(mask)
    sparcc = sparcc_like(mask, region, stir.voxels, stir.spacing_mm[2])
    per_slice = [{"slice": k + 1, "ml": round(stir.volume_ml(m), 3), "lesions": asas.lesions_per_slice[k]}
                 for k, m in enumerate(mask)]
    return {
        "measured": True,
        "method": "intensity above the study's normal-marrow reference",
        "volume_ml": round(stir.volume_ml(mask), 3),
        "lesions": int(n_lesions),
        "slices": [k + 1 for k, m in enumerate(mask) if m.any()],
        "reference": {"mode": round(reference.mode, 3), "lower_spread": round(reference.lower_spread, 3),
                      "threshold": round(reference.threshold(margin_sd), 3), "margin_sd": margin_sd},
        "asas": {"positive": asas.positive, "slices": [k + 1 for k in asas.slices], "reason": asas.reason},
        "sparcc_like": {"total": sparcc.total, "slices": [s.slice + 1 for s in sparcc.slices],
                        "per_slice": [s.score for s in sparcc.slices]},
        "per_slice": per_slice,
    }, mask


def status_of(oedema: Mapping[str, Any] | None) -> str:
    if not oedema or not oedema.get("measured"):
        return "not assessed"
    return "ASAS-positive MRI (active sacroiliitis)" if oedema["asas"]["positive"] else "ASAS-negative MRI"


class SacroiliacStudyTask(TaskBase):
    name = "sacroiliac_study"
    title = "Sacroiliac MRI study: joint region and oedema"
    description = ("A whole semi-coronal sacroiliac MRI study (NIfTI, a DICOM series or a zip; STIR and T1 together "
                   "or either alone; one slice also works). Segments the disease region on every slice, measures "
                   "bone marrow oedema on STIR in mL, applies the ASAS definition of active sacroiliitis, and shows "
                   "the study slice by slice.")
    roles = (RoleSpec("segmenter", "Disease-region segmentation"),)
    options = (SEQUENCE_OPTION, PSEUDONYM_OPTION, TIMEPOINT_OPTION)
    order = 11
    reads_studies = True
    recognised_as = "sacroiliac_mri"
    accepted_modalities = ("MR", None)
    reads, single_image = "MRI", "MRI slice"
    explanation_images = frozenset({"gradcam", "focused_gradcam"})
    field_labels = {"volume_ml": "Oedema volume (mL)", "region_ml": "Region volume (mL)"}
    batch_columns = (("status", "segmenter", "status"), ("oedema_ml", "segmenter", "oedema.volume_ml"),
                     ("lesions", "segmenter", "oedema.lesions"), ("asas_positive", "segmenter", "oedema.asas.positive"),
                     ("region_ml", "segmenter", "region_ml"))
    longitudinal = (Measure("bme", "Bone marrow oedema volume", "mL", role="segmenter", field="oedema.volume_ml",
                            sdc_setting="SIJ_BME_SDC_ML", sdc=0.5, worse_when="higher",
                            columns=(("ASAS", "status"), ("Lesions", "oedema.lesions"))),)

    def check_study(self, study: Study) -> None:
        super().check_study(study)
        for volume in study.volumes:
            if volume.plane == "sagittal":
                raise TaskInputError("This is a sagittal series; the sacroiliac task reads semi-coronal (or "
                                     "coronal) series through the sacroiliac joints.")

    def run(self, study: Study, models: dict[str, list[LoadedModel]], options: dict[str, Any]) -> TaskOutput:
        stir = study.by_sequence("STIR")
        anatomy = [v for v in (study.by_sequence("T1"), stir) if v is not None] or [study.volumes[0]]
        shown = stir or anatomy[0]
        picture = display_slices(shown)
        key_hint: dict[str, Any] = {}
        outputs, regions = run_role(models, "segmenter",
                                    lambda model: self._segment(model, anatomy, stir, shown, picture, key_hint))
        focus_id = next(iter(regions), None)
        region = regions[focus_id][0] if focus_id else np.zeros(picture.shape, bool)
        oedema = regions[focus_id][1] if focus_id else np.zeros(picture.shape, bool)
        images: dict[str, np.ndarray] = {}
        per_slice = []
        for k in range(shown.n_slices):
            images[f"s{k:02d}_image"] = (picture[k] * 255).astype(np.uint8)
            images[f"s{k:02d}_region"] = mask_overlay(picture[k], region[k].astype(np.uint8), REGION_COLOURS)
            layered = region[k].astype(np.uint8) + oedema[k].astype(np.uint8)
            images[f"s{k:02d}_oedema"] = mask_overlay(picture[k], layered, OEDEMA_COLOURS)
            per_slice.append({"slice": k + 1, "region_ml": round(shown.volume_ml(region[k]), 3),
                              "oedema_ml": round(shown.volume_ml(oedema[k]), 3),
                              "lesions": lesions_on_slice(oedema[k])})
        files: dict[str, bytes] = {}
        if focus_id and not shown.meta.get("single_slice"):
            files["region.nii.gz"] = shown.nifti_bytes(region.astype(np.uint8))
            if stir is not None:
                files["oedema.nii.gz"] = stir.nifti_bytes(oedema.astype(np.uint8))
        summary = {"focus_segmenter": focus_id, "slices": shown.n_slices, "shown_sequence": shown.sequence,
                   "sequences": [v.sequence for v in study.volumes], "key_slice": key_hint.get("slice"),
                   "spacing_known": not shown.meta.get("single_slice") or bool(shown.meta.get("spacing_known")),
                   "per_slice": per_slice, "classifier": CLASSIFIER_WITHHELD,
                   "comparison": self._compare(regions)}
        return TaskOutput(summary=summary, models=outputs, images=images, input_picture=picture[shown.n_slices // 2],
                          files=files)

    def _segment(self, model: LoadedModel, anatomy: list[Volume], stir: Volume | None, shown: Volume,
                 picture: np.ndarray, key_hint: dict[str, Any]) -> tuple[ModelOutput, tuple[np.ndarray, np.ndarray]]:
        probs = region_probabilities(model, anatomy)
        region = region_mask(probs[..., None], shown.voxels.shape[1:])
        found = bool(region.any())
        oedema_mask_ = np.zeros(region.shape, bool)
        if stir is None:
            oedema = {"measured": False, "reason": "the study has no STIR series: oedema is measured on STIR only"}
        elif not found:
            oedema = {"measured": False, "reason": "no disease region was found"}
        else:
            oedema, oedema_mask_ = measure_oedema(stir, region)
        areas = region.sum(axis=(1, 2))
        lesion_area = oedema_mask_.sum(axis=(1, 2))
        key = int(np.argmax(lesion_area)) if lesion_area.any() else int(np.argmax(areas))
        key_hint.setdefault("slice", key + 1)
        inside = probs > 0.5
        result = {
            "found": found,
            "region_ml": round(shown.volume_ml(region), 3),
            "slices_with_region": [k + 1 for k, a in enumerate(areas) if a > 0],
            "mean_confidence": round(float(probs[inside].mean()), 3) if inside.any() else 0.0,
            "read_on": [v.sequence or "unknown sequence" for v in anatomy],
            "oedema": oedema,
            "status": status_of(oedema),
            "key_slice": key + 1,
            "withheld": None,
        }
        images: dict[str, np.ndarray] = {"mask_overlay": mask_overlay(picture[key], region[key].astype(np.uint8),
                                                                       REGION_COLOURS)}
        if model.entry.gradcam_layer and found:
            explaining(model)
            size = int(model.entry.input_shape[0])
            stacks = slice_stacks(normalise_volume(anatomy[0].voxels), size)
            cam = grad_cam_class_sum(model.gradcam_model(), stacks[key:key + 1], 0)
            cam = cv2.resize(cam, picture.shape[2:0:-1], interpolation=cv2.INTER_LINEAR)
            images.update(gradcam_overlays(picture[key], cam, region[key]))
        return ModelOutput(model.entry.id, "segmenter", result, images), (region, oedema_mask_)

    def _compare(self, regions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        ids = list(regions)
        if len(ids) < 2:
            return {}
        (a, oa), (b, ob) = regions[ids[0]], regions[ids[1]]
        return {"segmenter_dice": round(dice(a, b), 4), "oedema_dice": round(dice(oa, ob), 4)}

    def headline(self, summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
        for item in results:
            if item["role"] == "segmenter":
                res = item["result"]
                oedema = res.get("oedema") or {}
                if not res.get("found"):
                    return "No disease region found"
                if not oedema.get("measured"):
                    return f"Disease region found; oedema not measured ({oedema.get('reason', '')})"
                return f"{res['status']}: oedema {oedema['volume_ml']:.2f} mL in {oedema['lesions']} lesion(s)"
        return "Done"

    def report_findings(self, role: str, result: Mapping[str, Any]) -> Findings:
        if result.get("withheld"):
            return Findings(notes=[f"Disease region and oedema withheld: {result['withheld']}"])
        oedema = result.get("oedema") or {}
        lines = [("Disease region", f"{'found' if result.get('found') else 'not found'}, "
                                    f"{result.get('region_ml', 0):.1f} mL on {len(result.get('slices_with_region') or [])}"
                                    " slice(s)"),
                 ("Read on", ", ".join(result.get("read_on") or []))]
        notes = []
        tables = []
        if oedema.get("measured"):
            lines += [("Bone marrow oedema", f"{oedema['volume_ml']:.2f} mL, {oedema['lesions']} lesion(s)"),
                      ("ASAS MRI definition", f"{'positive' if oedema['asas']['positive'] else 'negative'}: "
                                              f"{oedema['asas']['reason']}"
                                              + (f" (slices {', '.join(map(str, oedema['asas']['slices']))})"
                                                 if oedema['asas']['slices'] else "")),
                      ("SPARCC-style count (research)", f"{oedema['sparcc_like']['total']} of 72")]
            tables.append(("Oedema per slice", ["Slice", "Oedema (mL)", "Lesions"],
                           [[str(r["slice"]), f"{r['ml']:.2f}", str(r["lesions"])]
                            for r in oedema["per_slice"] if r["ml"] > 0 or r["lesions"]] or [["-", "none", "0"]]))
        else:
            notes.append(f"Oedema not measured: {oedema.get('reason', 'no STIR series')}.")
        notes.append(CLASSIFIER_WITHHELD)
        return Findings(lines=lines, notes=notes, tables=tables,
                        images=[("mask_overlay", f"Disease region on slice {result.get('key_slice')}"),
                                ("focused_gradcam", "Grad-CAM of the region, focused")])


TASK = SacroiliacStudyTask()
