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

from imaging.gradcam import batch_grad_cam_class_sum, focus, grad_cam_class_sum
from imaging.overlay import gradcam_overlays, heatmap_overlay, mask_overlay
from imaging.normalize import normalise_volume
from imaging.volume import Study, Volume
from model_loader import LoadedModel
from tasks.base import (PSEUDONYM_OPTION, SUMMARY_ROLE, TIMEPOINT_OPTION, Findings, Measure, ModelOutput, OptionSpec, RoleSpec,
                        TaskBase, TaskInputError, TaskOutput, explaining, run_role, timed_model)
from tasks.metrics import dice
from tasks.sacroiliac_inflammation import (DEFAULT_MARGIN_SD, DEFAULT_MIN_LESION_VOXELS, asas_positive,
                                           lesion_frame, lesion_input, lesion_mask, lesions_on_slice,
                                           marrow_reference, oedema_mask, sparcc_like)
from tasks.sacroiliac_region import region_mask, slice_stacks

REGION_COLOURS = {1: (255, 200, 0)}
OEDEMA_COLOURS = {1: (255, 200, 0), 2: (255, 40, 40)}
INFERENCE_BATCH = 16
INTENSITY, LEARNED = "intensity", "learned"
METHOD_NAMES = {INTENSITY: "intensity above the study's normal-marrow reference",
                LEARNED: "the learned oedema segmenter"}
# Which method speaks for the study (status, ASAS, the slice viewer, the timeline) when both ran: the one that
# agreed better with the readers in cross-validation on the 5 cases with reader masks, inside the manual region:
# learned mean Dice 0.491, 3 of 5 volumes within the readers' range (models/cards/sij-study-oedema-unet.md);
# intensity 0.467, 2 of 5 (benchmarks/sacroiliac_oedema.py); the readers with each other 0.627. Without a
# learned model chosen, the intensity method speaks.
DEFAULT_METHOD = LEARNED
METHOD_OPTION = OptionSpec("oedema_method", "Oedema method that speaks for the study", choices=(
    (DEFAULT_METHOD, f"{METHOD_NAMES[DEFAULT_METHOD]} (default)"),
    *((m, METHOD_NAMES[m]) for m in (INTENSITY, LEARNED) if m != DEFAULT_METHOD)),
    default=DEFAULT_METHOD,
    help="Both methods are reported when the learned segmenter is chosen; this one sets the status, the ASAS "
         "result, the slice viewer's oedema and the timeline.")
SEQUENCE_OPTION = OptionSpec("sequence", "Sequence, where the file does not say", choices=(
    ("", "as the file says"), ("STIR", "STIR (fat-suppressed, for oedema)"), ("T1", "T1-weighted")),
    help="Names the sequence of a volume whose file does not say (a NIfTI file without STIR or T1 in its name, "
         "or an image).")
CLASSIFIER_WITHHELD = ("The AS status and stage classifier was trained on synthetic phantoms only and has not been "
                       "validated on real MRI: on real studies it is not run. The status of this study is read from "
                       "the measured bone marrow oedema and the ASAS definition instead.")


def display_slices(volume: Volume) -> np.ndarray:
    """The volume windowed once as a whole (1st to 99.5th percentile) to 0-1 for the slice pictures."""
    return normalise_volume(volume.voxels, ceiling=1.0)


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
    """Oedema inside `region` on a STIR volume by the intensity principle: the figures and the mask."""
    if int(region.sum()) < 100:
        return {"measured": False, "reason": "the region is too small to estimate normal marrow"}, \
            np.zeros(region.shape, bool)
    reference = marrow_reference(stir.voxels, region)
    mask = oedema_mask(stir.voxels, region, reference, margin_sd, min_voxels)
    figures = oedema_figures(stir, region, mask)
    figures.update(method=INTENSITY, reference={
        "mode": round(reference.mode, 3), "lower_spread": round(reference.lower_spread, 3),
        "threshold": round(reference.threshold(margin_sd), 3), "margin_sd": margin_sd})
    return figures, mask


def learned_oedema(model: LoadedModel, stir: Volume, region: np.ndarray, t1: Volume | None
                   ) -> tuple[dict[str, Any], np.ndarray]:
    """Oedema inside `region` by the learned lesion segmenter: the figures and the mask."""
    if int(region.sum()) < 100:
        return {"measured": False, "reason": "the region is too small to estimate normal marrow"}, \
            np.zeros(region.shape, bool)
    frame = lesion_frame(region, stir.spacing_mm[2])
    x = lesion_input(stir.voxels, region, frame, t1.voxels if t1 is not None and t1.voxels.shape == stir.voxels.shape
                     else None)
    probs = np.concatenate([np.asarray(model(x[i:i + INFERENCE_BATCH])) for i in range(0, len(x), INFERENCE_BATCH)])
    mask = lesion_mask(probs, region, frame, model.entry.mask_threshold)
    return {**oedema_figures(stir, region, mask), "method": LEARNED}, mask


def oedema_figures(stir: Volume, region: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """An oedema mask's figures: volume, lesions, slices, the ASAS rule, the SPARCC-style count, per slice."""
    asas = asas_positive(mask)
    _, n_lesions = ndimage.label(mask)
    sparcc = sparcc_like(mask, region, stir.voxels, stir.spacing_mm[2])
    return {
        "measured": True,
        "volume_ml": round(stir.volume_ml(mask), 3),
        "lesions": int(n_lesions),
        "slices": [k + 1 for k, m in enumerate(mask) if m.any()],
        "asas": {"positive": asas.positive, "slices": [k + 1 for k in asas.slices], "reason": asas.reason},
        "sparcc_like": {"total": sparcc.total, "slices": [s.slice + 1 for s in sparcc.slices],
                        "per_slice": [s.score for s in sparcc.slices]},
        "per_slice": [{"slice": k + 1, "ml": round(stir.volume_ml(m), 3), "lesions": asas.lesions_per_slice[k]}
                      for k, m in enumerate(mask)],
    }


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
    roles = (RoleSpec("segmenter", "Disease-region segmentation"),
             RoleSpec("lesion", "Oedema segmentation (learned)", required=False))
    options = (METHOD_OPTION, SEQUENCE_OPTION, PSEUDONYM_OPTION, TIMEPOINT_OPTION)
    order = 11
    reads_studies = True
    recognised_as = "sacroiliac_mri"
    accepted_modalities = ("MR", None)
    reads, single_image = "MRI", "MRI slice"
    explanation_images = frozenset({"gradcam", "focused_gradcam"})
    field_labels = {"volume_ml": "Oedema volume (mL)", "region_ml": "Region volume (mL)"}
    # The study's figures by the method that spoke for it (the run's summary), and the focus region.
    batch_columns = (("mri_status", SUMMARY_ROLE, "status"), ("oedema_ml", SUMMARY_ROLE, "oedema.volume_ml"),
                     ("lesions", SUMMARY_ROLE, "oedema.lesions"), ("asas_positive", SUMMARY_ROLE, "oedema.asas.positive"),
                     ("oedema_method", SUMMARY_ROLE, "oedema_method"), ("region_ml", "segmenter", "region_ml"))
    longitudinal = (Measure("bme", "Bone marrow oedema volume", "mL", role=SUMMARY_ROLE, field="oedema.volume_ml",
                            sdc_setting="SIJ_BME_SDC_ML", sdc=1.0, worse_when="higher",
                            columns=(("ASAS", "status"), ("Lesions", "oedema.lesions"))),)

    def is_explanation(self, image_name: str) -> bool:
        return image_name in self.explanation_images or image_name.endswith("_gradcam")     # a slice's Grad-CAM

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
        # The learned oedema segmenters read inside the focus region; the chosen method speaks for the study.
        lesion_outputs, learned = run_role(models, "lesion",
                                           lambda model: self._lesions(model, stir, study.by_sequence("T1"), region,
                                                                       focus_id, picture))
        outputs += lesion_outputs
        method = options.get("oedema_method") or DEFAULT_METHOD
        measured = {o.model_id: o for o in lesion_outputs if (o.result.get("oedema") or {}).get("measured")}
        if method == LEARNED and measured:
            speaker = next(iter(measured))
            oedema = learned[speaker]
            figures = measured[speaker].result["oedema"]
        else:
            method = INTENSITY
            figures = next((o.result.get("oedema") for o in outputs if o.model_id == focus_id), None) or {}
        images: dict[str, np.ndarray] = {}
        cams = self._slice_cams(models["segmenter"][0], anatomy[0]) if focus_id else None
        per_slice = []
        for k in range(shown.n_slices):
            if cams is not None:
                cam = cv2.resize(cams[k], picture.shape[2:0:-1], interpolation=cv2.INTER_LINEAR)
                images[f"s{k:02d}_gradcam"] = (heatmap_overlay(picture[k], focus(cam, region[k]), mask=region[k])
                                               if region[k].any() else heatmap_overlay(picture[k], cam))
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
        comparison = self._compare(regions)
        if measured and focus_id:
            comparison["intensity_vs_learned_dice"] = round(dice(regions[focus_id][1], learned[next(iter(measured))]),
                                                            4)
        summary = {"focus_segmenter": focus_id, "slices": shown.n_slices, "shown_sequence": shown.sequence,
                   "oedema_method": method, "oedema_method_name": METHOD_NAMES[method],
                   "status": status_of(figures), "oedema": {k: figures.get(k) for k in (
                       "measured", "reason", "volume_ml", "lesions", "slices", "asas") if k in figures},
                   "sequences": [v.sequence for v in study.volumes], "key_slice": key_hint.get("slice"),
                   "spacing_known": not shown.meta.get("single_slice") or bool(shown.meta.get("spacing_known")),
                   "per_slice": per_slice, "classifier": CLASSIFIER_WITHHELD, "comparison": comparison}
        return TaskOutput(summary=summary, models=outputs, images=images, input_picture=picture[shown.n_slices // 2],
                          files=files)

    @timed_model
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

    def _slice_cams(self, model: LoadedModel, volume: Volume) -> np.ndarray | None:
        """The focus segmenter's Grad-CAM of its region on every slice, in one pass (feature-map size)."""
        if not model.entry.gradcam_layer:
            return None
        explaining(model)
        stacks = slice_stacks(normalise_volume(volume.voxels), int(model.entry.input_shape[0]))
        return batch_grad_cam_class_sum(model.gradcam_model(), stacks, 0)

    @timed_model
    def _lesions(self, model: LoadedModel, stir: Volume | None, t1: Volume | None, region: np.ndarray,
                 focus_id: str | None, picture: np.ndarray) -> tuple[ModelOutput, np.ndarray]:
        """`picture`: the shown series windowed (the STIR whenever there is one, the only case that draws)."""
        if stir is None:
            oedema = {"measured": False, "reason": "the study has no STIR series: oedema is measured on STIR only"}
            mask = np.zeros(region.shape, bool)
        elif not region.any():
            oedema, mask = {"measured": False, "reason": "no disease region was found"}, np.zeros(region.shape, bool)
        else:
            oedema, mask = learned_oedema(model, stir, region, t1)
        result = {"oedema": oedema, "status": status_of(oedema), "region_from": focus_id, "withheld": None}
        key = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else None
        images = {}
        if key is not None:
            images["oedema_overlay"] = mask_overlay(picture[key], region[key].astype(np.uint8) + mask[key].astype(np.uint8),
                                                    OEDEMA_COLOURS)
            result["key_slice"] = key + 1
        return ModelOutput(model.entry.id, "lesion", result, images), mask

    def _compare(self, regions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        ids = list(regions)
        if len(ids) < 2:
            return {}
        (a, oa), (b, ob) = regions[ids[0]], regions[ids[1]]
        return {"segmenter_dice": round(dice(a, b), 4), "oedema_dice": round(dice(oa, ob), 4)}

    def headline(self, summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
        segmenter = next((item["result"] for item in results if item["role"] == "segmenter"), None)
        if segmenter is None:
            return "Done"
        if not segmenter.get("found"):
            return "No disease region found"
        oedema = summary.get("oedema") or segmenter.get("oedema") or {}
        if not oedema.get("measured"):
            return f"Disease region found; oedema not measured ({oedema.get('reason', '')})"
        by = " (learned oedema)" if summary.get("oedema_method") == LEARNED else ""
        return f"{status_of(oedema)}: oedema {oedema['volume_ml']:.2f} mL in {oedema['lesions']} lesion(s){by}"

    def report_findings(self, role: str, result: Mapping[str, Any]) -> Findings:
        if result.get("withheld"):
            return Findings(notes=[f"Disease region and oedema withheld: {result['withheld']}"])
        oedema = result.get("oedema") or {}
        if role == "lesion":
            found = self._oedema_findings(oedema, [("Method", METHOD_NAMES[LEARNED])], [])
            found.images = [("oedema_overlay", f"Learned oedema on slice {result.get('key_slice')}")]
            return found
        lines = [("Disease region", f"{'found' if result.get('found') else 'not found'}, "
                                    f"{result.get('region_ml', 0):.1f} mL on {len(result.get('slices_with_region') or [])}"
                                    " slice(s)"),
                 ("Read on", ", ".join(result.get("read_on") or []))]
        found = self._oedema_findings(oedema, lines, [CLASSIFIER_WITHHELD])
        found.images = [("mask_overlay", f"Disease region on slice {result.get('key_slice')}"),
                        ("focused_gradcam", "Grad-CAM of the region, focused")]
        return found

    @staticmethod
    def _oedema_findings(oedema: Mapping[str, Any], lines: list[tuple[str, str]], notes: list[str]) -> Findings:
        tables = []
        if oedema.get("measured"):
            asas = oedema["asas"]
            lines = lines + [
                ("Bone marrow oedema", f"{oedema['volume_ml']:.2f} mL, {oedema['lesions']} lesion(s)"),
                ("ASAS MRI definition", f"{'positive' if asas['positive'] else 'negative'}: {asas['reason']}"
                                        + (f" (slices {', '.join(map(str, asas['slices']))})" if asas["slices"] else "")),
                ("SPARCC-style count (research)", f"{oedema['sparcc_like']['total']} of 72")]
            tables.append(("Oedema per slice", ["Slice", "Oedema (mL)", "Lesions"],
                           [[str(r["slice"]), f"{r['ml']:.2f}", str(r["lesions"])]
                            for r in oedema["per_slice"] if r["ml"] > 0 or r["lesions"]] or [["-", "none", "0"]]))
        else:
            notes = [f"Oedema not measured: {oedema.get('reason', 'no STIR series')}.", *notes]
        return Findings(lines=lines, notes=notes, tables=tables)


TASK = SacroiliacStudyTask()
