"""Lumbar spine MRI (sagittal T2): multi-class segmentation of vertebrae, discs and the spinal canal.

One role, "segmenter" (one or both of the Attention U-Net and the plain U-Net
reference). Per model: a label mask at the input's size, a coloured overlay,
the number of vertebrae and discs found (connected components), each
structure's area, and a Grad-CAM for the structure chosen on the form (the
gradient of that class's summed softmax output). With two models the run
carries their per-structure Dice and a disagreement image.

The preprocessing (`spine_input`) and the post-processing (`labels_from_probs`)
here are the single definitions used by training (training/spine/),
evaluation (benchmarks/spine_figures.py) and serving.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from imaging.gradcam import grad_cam_class_sum
from imaging.io import DecodedImage
from imaging.normalize import to_model_input
from imaging.overlay import disagreement_overlay, gradcam_overlays, mask_overlay
from model_loader import LoadedModel
from tasks.base import (Findings, ModelOutput, OptionSpec, RoleSpec, TaskBase, TaskOutput, explaining, percent,
                        run_role, timed_model)
from tasks.metrics import dice
from tasks.ood import run_checked, withheld_reason

# Class index -> structure. The dataset (SPIDER, as stored in ../shared/data/spine_mri) writes other
# grey values into its mask PNGs; DATASET_VALUES maps our class indices to them and back.
CLASS_NAMES = ("background", "vertebra", "disc", "canal")
STRUCTURES = CLASS_NAMES[1:]
DATASET_VALUES = (0, 76, 29, 150)            # index i <-> dataset grey value DATASET_VALUES[i]
N_CLASSES = len(CLASS_NAMES)
STRUCTURE_TITLES = {"vertebra": "Vertebrae", "disc": "Intervertebral discs", "canal": "Spinal canal"}
COLOURS = {1: (255, 190, 0), 2: (0, 190, 255), 3: (60, 220, 90)}   # RGB, the legend uses the same

# A connected component counts when it covers at least this fraction of the image (0.1 %: 82 px on a
# 256x320 slice; a disc there is 150-500 px, a vertebral body 700-1200 px), and never fewer than 10 px.
MIN_COMPONENT_FRACTION = 0.001
MIN_COMPONENT_PX = 10
# In a sagittal slice the vertebra label also covers posterior elements (spinous processes, facets),
# which appear as separate islands behind the canal. A vertebral body touches an intervertebral disc;
# posterior elements do not. Bodies = vertebra components within this distance (fraction of the image
# height) of a disc component.
DISC_CONTACT_FRACTION = 0.015


# -- label values -------------------------------------------------------------------
def to_class_indices(mask: np.ndarray) -> np.ndarray:
    """Dataset mask values (0, 76, 29, 150) -> class indices (0 bg, 1 vertebra, 2 disc, 3 canal).

    Raises ValueError for a value that is none of these (for example a JPEG-compressed mask).
    """
    m = np.asarray(mask)
    out = np.zeros(m.shape, np.uint8)
    known = np.zeros(m.shape, bool)
    for idx, value in enumerate(DATASET_VALUES):
        hit = m == value
        out[hit] = idx
        known |= hit
    if not known.all():
        bad = sorted(set(np.unique(m[~known]).tolist()))[:5]
        raise ValueError(f"mask holds values {bad} that are not among the dataset's {DATASET_VALUES}")
    return out


def to_dataset_values(labels: np.ndarray) -> np.ndarray:
    """Class indices -> dataset mask values, uint8 (the API's label-mask PNG)."""
    lut = np.zeros(256, np.uint8)
    lut[:N_CLASSES] = DATASET_VALUES
    return lut[np.asarray(labels, dtype=np.uint8)]


# -- preprocessing and post-processing shared with training ---------------------------
def spine_input(image01: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A grey slice (any size, any range) -> model input (h, w, 1) float32 in [0, 1]."""
    return to_model_input(image01, (int(size[0]), int(size[1])))[:, :, None]


def labels_from_probs(probs: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Softmax output (h, w, n_classes) at model size -> class indices (H, W) uint8 at `out_shape`.

    The probabilities are resized (bilinear) before the argmax, so thin structures such as discs keep
    smooth edges at the image's resolution instead of the blocks of a nearest-neighbour label resize.
    """
    p = np.asarray(probs, np.float32)
    h, w = int(out_shape[0]), int(out_shape[1])
    if p.shape[:2] != (h, w):
        p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        if p.ndim == 2:              # cv2 drops a trailing axis of 1
            p = p[:, :, None]
    return p.argmax(axis=-1).astype(np.uint8)


# -- structure figures ------------------------------------------------------------
def min_component_px(shape: tuple[int, int]) -> int:
    return max(MIN_COMPONENT_PX, int(round(MIN_COMPONENT_FRACTION * shape[0] * shape[1])))


def components(binary: np.ndarray, min_area: int) -> tuple[np.ndarray, list[int]]:
    """8-connected components of `binary` with at least `min_area` pixels: (label image, their areas).

    The label image numbers only the kept components, 1..n; everything else is 0.
    """
    n, lab, stats, _ = cv2.connectedComponentsWithStats(np.asarray(binary, np.uint8), connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    remap = np.zeros(n, np.int32)
    remap[keep] = np.arange(1, len(keep) + 1)
    return remap[lab], [int(stats[i, cv2.CC_STAT_AREA]) for i in keep]


def count_structures(labels: np.ndarray, min_area: int | None = None) -> dict[str, int]:
    """Counts on a class-index map: vertebral bodies, all vertebra components, discs, canal pieces."""
    labels = np.asarray(labels)
    min_area = min_component_px(labels.shape) if min_area is None else min_area
    vert, vert_areas = components(labels == 1, min_area)
    disc, disc_areas = components(labels == 2, min_area)
    canal, canal_areas = components(labels == 3, min_area)
    bodies = 0
    if disc_areas:
        reach = max(1, int(round(DISC_CONTACT_FRACTION * labels.shape[0])))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
        near_disc = cv2.dilate((disc > 0).astype(np.uint8), kernel) > 0
        touching = np.unique(vert[near_disc & (vert > 0)])
        bodies = int(len(touching))
    return {"vertebrae": bodies, "vertebra_components": len(vert_areas), "discs": len(disc_areas),
            "canal_components": len(canal_areas)}


def structure_areas(labels: np.ndarray, pixel_spacing_mm: Any = None) -> tuple[dict[str, int], dict[str, float] | None]:
    """Pixels per structure, and mm^2 when the pixel spacing (row, column in mm) is known."""
    areas = {name: int((labels == i).sum()) for i, name in enumerate(CLASS_NAMES) if i}
    mm2 = None
    spacing = _spacing(pixel_spacing_mm)
    if spacing:
        mm2 = {k: round(v * spacing[0] * spacing[1], 1) for k, v in areas.items()}
    return areas, mm2


def _spacing(value: Any) -> tuple[float, float] | None:
    try:
        r, c = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return (r, c) if np.isfinite(r) and np.isfinite(c) and r > 0 and c > 0 else None


def dice_by_structure(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Dice of each structure between two class-index maps (1.0 when both lack it)."""
    return {name: round(dice(a == i, b == i), 4) for i, name in enumerate(CLASS_NAMES) if i > 0}


def legend() -> list[dict[str, Any]]:
    return [{"structure": name, "title": STRUCTURE_TITLES[name], "class_index": i,
             "mask_value": DATASET_VALUES[i], "colour": "#%02x%02x%02x" % COLOURS[i]}
            for i, name in enumerate(CLASS_NAMES) if i]


# -- the task -----------------------------------------------------------------------
class SpineTask(TaskBase):
    name = "spine"
    title = "Lumbar spine MRI: vertebrae, discs, canal"
    description = ("Sagittal lumbar spine MRI slice (T2, PNG/JPEG or MR DICOM). Segments vertebrae, "
                   "intervertebral discs and the spinal canal; counts vertebrae and discs, measures each "
                   "structure's area, and explains a chosen structure with Grad-CAM.")
    roles = (RoleSpec("segmenter", "Vertebra, disc and canal segmentation"),)
    options = (OptionSpec("structure", "Grad-CAM for", "choice",
                          tuple((s, STRUCTURE_TITLES[s]) for s in STRUCTURES), default="vertebra",
                          help="The structure whose Grad-CAM (gradient of its summed output) is shown."),)
    order = 20
    recognised_as = "spine_mri"
    batch_columns = (("vertebrae", "segmenter", "counts.vertebrae"), ("discs", "segmenter", "counts.discs"),
                     ("withheld", "segmenter", "withheld"))
    accepted_modalities = ("MR", None)
    reads, single_image = "MRI", "MRI slice"
    explanation_images = frozenset({"gradcam", "focused_gradcam"})
    agreement_fields = {"vertebrae_agree": "vertebrae", "discs_agree": "discs"}

    def run(self, image: DecodedImage, models: dict[str, list[LoadedModel]],
            options: dict[str, Any]) -> TaskOutput:
        img = image.pixels
        structure = options.get("structure") or "vertebra"
        if structure not in STRUCTURES:
            structure = "vertebra"
        spacing = _spacing(image.meta.get("pixel_spacing_mm")) if image.meta else None
        outputs, labels = run_role(models, "segmenter", lambda model: self._segment(model, img, structure, spacing))
        labels = {model_id: lab for model_id, lab in labels.items() if lab is not None}   # withheld: no mask

        summary: dict[str, Any] = {"structure": structure}
        run_images: dict[str, np.ndarray] = {}
        if len(labels) >= 2:
            (id_a, a), (id_b, b) = list(labels.items())[:2]
            summary["compared_models"] = [id_a, id_b]
            answered = [o for o in outputs if o.model_id in (id_a, id_b)]
            summary["comparison"] = self._compare(a, b, answered[0].result, answered[1].result)
            run_images["segmenter_disagreement"] = disagreement_overlay(img, a, b)
        else:
            summary["comparison"] = {}
        return TaskOutput(summary=summary, models=outputs, images=run_images)

    # ---------------------------------------------------------------------
    @timed_model
    def _segment(self, model: LoadedModel, img: np.ndarray, structure: str,
                 spacing: tuple[float, float] | None) -> tuple[ModelOutput, np.ndarray]:
        h_in, w_in = model.entry.input_shape[:2]
        x = spine_input(img, (h_in, w_in))[None]
        out, checks = run_checked(model, x)
        outside = checks[0] if checks else None
        if outside is not None and outside.outside:
            result = {"structure": structure, "counts": None, "areas_px": None, "areas_mm2": None,
                      "withheld": withheld_reason(model, outside, "segmenter", "vertebrae, discs or canal"),
                      "training_data_check": outside.as_dict()}
            return ModelOutput(model.entry.id, "segmenter", result), None
        probs = np.asarray(out)[0]
        lab = labels_from_probs(probs, img.shape)
        counts = count_structures(lab)
        areas, areas_mm2 = structure_areas(lab, spacing)

        cls = CLASS_NAMES.index(structure)
        explaining(model)
        cam = grad_cam_class_sum(model.gradcam_model(), x, cls)
        cam_full = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        region = (lab == cls).astype(np.uint8)

        small = probs.argmax(-1)
        confidence = {name: (round(float(probs[..., i][small == i].mean()), 3) if (small == i).any() else None)
                      for i, name in enumerate(CLASS_NAMES) if i}
        result = {
            "structure": structure,
            "counts": counts,
            "areas_px": areas,
            "areas_mm2": areas_mm2,
            "pixel_spacing_mm": list(spacing) if spacing else None,
            "area_fractions": {k: round(v / lab.size, 4) for k, v in areas.items()},
            "mean_confidence": confidence,
            "structure_found": bool(region.any()),
            "min_component_px": min_component_px(lab.shape),
            "model_input": [int(h_in), int(w_in)],
            "legend": legend(),
            "withheld": None,
        }
        if outside is not None:
            result["training_data_check"] = outside.as_dict()
        images = {
            "mask_overlay": mask_overlay(img, lab, COLOURS),
            "label_mask": to_dataset_values(lab),
            **gradcam_overlays(img, cam_full, region),
        }
        return ModelOutput(model.entry.id, "segmenter", result, images), lab

    def report_findings(self, role: str, result: Mapping[str, Any]) -> Findings:
        if result.get("withheld"):
            return Findings(notes=[f"Vertebrae, discs and canal withheld: {result['withheld']}"])
        counts, areas = result.get("counts") or {}, result.get("areas_px") or {}
        mm2, conf = result.get("areas_mm2"), result.get("mean_confidence") or {}
        rows = [[title, f"{areas.get(name, 0):,}", f"{mm2[name]:,.1f}" if mm2 else "-", percent(conf.get(name))]
                for name, title in (("vertebra", "Vertebrae"), ("disc", "Discs"), ("canal", "Spinal canal"))]
        found = Findings(lines=[("Vertebrae found", str(counts.get("vertebrae", 0))),
                                ("Discs found", str(counts.get("discs", 0)))],
                         tables=[("Structures", ["Structure", "Area (px)", "Area (mm²)", "Mean confidence"], rows)],
                         images=[("mask_overlay", "Vertebrae, discs and canal over the scan"),
                                 ("gradcam", f"Grad-CAM: {result.get('structure', 'structure')}"),
                                 ("focused_gradcam", "Grad-CAM within the predicted structure")])
        if not mm2:
            found.notes.append("Areas in mm² need a DICOM with pixel spacing.")
        return found

    def _compare(self, a: np.ndarray, b: np.ndarray, res_a: dict[str, Any], res_b: dict[str, Any]) -> dict[str, Any]:
        """Agreement of the first two segmenters, flat for the comparison page: <structure>_dice
        per structure, then whether their vertebra and disc counts agree (`agreement_fields`)."""
        per = dice_by_structure(a, b)
        comparison: dict[str, Any] = {f"{name}_dice": value for name, value in per.items()}
        comparison["mean_dice"] = round(float(np.mean(list(per.values()))), 4)
        comparison.update(self.agreement({key: [res_a["counts"][key], res_b["counts"][key]]
                                          for key in self.agreement_fields.values()}))
        return comparison

    @staticmethod
    def headline(summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
        """One line for lists: the first model's counts."""
        for item in results:
            if (item.get("result") or {}).get("withheld"):
                return "Segmentation withheld: outside the segmenter's training data"
            counts = (item.get("result") or {}).get("counts")
            if counts:
                return f"{counts['vertebrae']} vertebrae, {counts['discs']} discs"
        return "Done"


TASK = SpineTask()
