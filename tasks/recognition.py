"""What an upload is, before any task reads it: the image recogniser's input, decoding and refusals.

The recogniser (training/recogniser/) is a small CNN in the registry under the task "recognition":
it reads the whole image letterboxed to a square (so that the shape of the film or slice counts, as
it does for a person glancing at it) and says which of KINDS the upload is, with a probability.
Every upload runs through it first (predict.py); a task refuses an upload that is confidently
something other than what the task reads, naming what it looks like, unless the user explicitly
asks to analyse it anyway.

This module is not a task (it defines no TASK): task discovery passes it by. The preprocessing here
is the single definition used by training and serving.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from imaging.dicom_terms import body_part_words
from imaging.normalize import percentile_scale
from model_loader import LoadedModel, ModelRegistry, ModelUnavailable

RECOGNITION = "recognition"          # the registry's task name for the recogniser
INPUT_SIZE = 96
# The kinds, in the order of the model's softmax. The first four are what the tasks read.
KINDS = ("knee_radiograph", "hand_radiograph", "spine_mri", "sacroiliac_mri",
         "other_radiograph", "other_mri_ct", "document", "photo_or_noise")
KIND_LABELS = {
    "knee_radiograph": "a knee radiograph",
    "hand_radiograph": "a hand radiograph",
    "spine_mri": "a sagittal lumbar spine MRI slice",
    "sacroiliac_mri": "a semi-coronal sacroiliac-joint MRI slice",
    "other_radiograph": "a radiograph of another body part",
    "other_mri_ct": "an MRI or CT image of another body part or plane",
    "document": "a document or screenshot",
    "photo_or_noise": "a photograph, a drawing or noise, not a medical image",
}
# What a task that reads a kind reads, for the refusal ("the knee task reads knee radiographs").
TASK_READS = {"knee_radiograph": "knee radiographs", "hand_radiograph": "hand radiographs",
              "spine_mri": "sagittal lumbar spine MRI slices",
              "sacroiliac_mri": "semi-coronal sacroiliac-joint MRI (T1 or STIR)"}
# Kinds that a DICOM header's BodyPartExamined can name more precisely ("a chest radiograph").
_BODY_PART_KINDS = {"other_radiograph": "radiograph", "other_mri_ct": "image"}
# A refusal needs the recogniser to be this sure that the upload is another kind: below it, the
# upload goes on, and the models' own training-data checks judge it.
REFUSE_AT = 0.5
# ...and to give the task's own kind less than this. A real knee radiograph the recogniser takes for MRI
# still gets a few per cent as a knee (1.6% of the validation knees were refused on the first rule alone,
# at P(knee) 0.7% to 67%), while other anatomy, documents and noise get at most 0.1% (measured by
# benchmarks/trust_figures.py): so a refusal also needs the evidence against the task's kind.
OWN_KIND_FLOOR = 0.02


def recogniser_input(image01: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """(1, size, size, 1) float32: the image shrunk to fit a size x size square (aspect kept, centred,
    zero padding), then its 1-99 percentile range mapped onto 0-1 (padding excluded)."""
    return letterbox(image01, size)[None, :, :, None]


def letterbox(image01: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    img = np.nan_to_num(np.asarray(image01, dtype=np.float32))
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"expected a 2-D grey image, got shape {img.shape}")
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((size, size), np.float32)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = percentile_scale(small)
    return out


@dataclass(frozen=True)
class Recognition:
    kind: str
    probability: float
    probabilities: dict[str, float]
    model_id: str
    model_version: str
    body_part: str | None = None       # the DICOM header's coded body part (imaging.dicom_terms), when it has one

    @property
    def label(self) -> str:
        """What the upload looks like, in words ("a chest radiograph", "an ankle radiograph")."""
        noun = _BODY_PART_KINDS.get(self.kind)
        words = body_part_words(self.body_part)
        if noun and words:
            return f"{'an' if words[0] in 'aeiou' else 'a'} {words} {noun}"
        return KIND_LABELS[self.kind]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "probability": round(self.probability, 4),
                "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
                "model_id": self.model_id, "model_version": self.model_version}


def recogniser_entry(registry: ModelRegistry, disabled: set[str] | frozenset[str] = frozenset()):
    """The registry's default recogniser that is usable now, or None (none registered, disabled, broken)."""
    for entry in registry.entries(RECOGNITION):
        if entry.default and entry.id not in disabled and registry.problem(entry.id) is None:
            return entry
    return None


def recognise(model: LoadedModel, image01: np.ndarray, meta: dict[str, Any] | None = None) -> Recognition:
    probs = np.asarray(model(recogniser_input(image01, model.entry.input_shape[0])), dtype=np.float64)[0]
    if probs.shape != (len(KINDS),):
        raise ModelUnavailable(model.entry.id, f"the recogniser gives {probs.shape[0]} kinds, expected {len(KINDS)}")
    best = int(probs.argmax())
    body_part = (meta or {}).get("body_part")
    return Recognition(KINDS[best], float(probs[best]), dict(zip(KINDS, map(float, probs))),
                       model.entry.id, model.entry.version, body_part if body_part_words(body_part) else None)


def refusal(task: Any, recognition: Recognition) -> str | None:
    """The refusal for running `task` on an upload recognised so, or None when the task may read it."""
    expected = getattr(task, "recognised_as", None)
    if expected is None or recognition.kind == expected or recognition.probability < REFUSE_AT:
        return None
    if recognition.probabilities.get(expected, 0.0) >= OWN_KIND_FLOOR:
        return None
    return (f"This looks like {recognition.label} ({100 * recognition.probability:.0f}% sure); "
            f"the {task.name} task reads {TASK_READS[expected]}. Choose the task that matches the scan, "
            "or analyse it anyway if you are sure.")
