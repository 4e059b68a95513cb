"""Held-out figures of the sacroiliac models, computed as the app serves them: served masks from the
segmenter's probability map, classifier inputs cropped around those masks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from model_loader import ModelRegistry
from tasks.metrics import (accuracy, classification_report, dice_per_case, kappa_figure, macro_f1, mae,
                           per_class_recall)
from tasks.sacroiliac import (AS_NAMES, MASK_THRESHOLD, MIN_REGION_PX, STAGE_NAMES, classifier_probabilities,
                              segmenter_input)
from training.sacroiliac.data import Phantoms, classifier_arrays
from training.toolbox.inference import compiled_inference


def load_shipped(out_dir: Path, model_id: str):
    """A model previously shipped into `out_dir` (verified against its registry entry), or None."""
    registry = ModelRegistry(out_dir)
    if registry.get(model_id) is None or registry.problem(model_id) is not None:
        return None
    return registry.load(model_id).model


def served_mask(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The full-resolution mask the task derives from a segmenter's probability map (see SacroiliacTask._segment)."""
    found = int((prob > MASK_THRESHOLD).sum()) >= MIN_REGION_PX
    h, w = shape
    mask = (cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) > MASK_THRESHOLD).astype(np.uint8)
    if not found:
        mask[:] = 0
    return mask


def predict_masks(model, ph: Phantoms, batch_size: int = 32) -> np.ndarray:
    """Served masks (full resolution, uint8 {0,1}) of a segmenter on every case of `ph`."""
    size = int(model.input_shape[1])
    infer = compiled_inference(model)
    out = np.zeros(ph.masks.shape, np.uint8)
    for s in range(0, len(ph), batch_size):
        idx = range(s, min(s + batch_size, len(ph)))
        x = np.concatenate([segmenter_input(ph.image01(i), size) for i in idx])
        prob = infer(x)[..., 0]
        for k, i in enumerate(idx):
            out[i] = served_mask(prob[k], ph.masks[i].shape)
    return out


def predict_classes(model, ph: Phantoms, spec: dict[str, Any], masks: np.ndarray | None,
                    batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (as_status, stage) class indices; `masks` = the focus masks (None: all empty)."""
    infer = compiled_inference(model)
    masks = np.zeros_like(ph.masks) if masks is None else masks
    as_pred, stage_pred = [], []
    for s in range(0, len(ph), batch_size):
        idx = np.arange(s, min(s + batch_size, len(ph)))
        x = classifier_arrays(ph, spec, masks=masks, idx=idx)
        out = classifier_probabilities(infer, x, spec)
        as_pred.append(out["as_status"].argmax(-1))
        stage_pred.append(out["stage"].argmax(-1))
    return np.concatenate(as_pred), np.concatenate(stage_pred)


def _sequence_groups(ph: Phantoms) -> dict[str, np.ndarray]:
    if ph.sequence is None:
        return {}
    return {str(q): np.flatnonzero(ph.sequence == q) for q in sorted(set(ph.sequence))}


def segmentation_metrics(pred_masks: np.ndarray, ph: Phantoms) -> dict[str, Any]:
    d = dice_per_case(pred_masks, ph.masks)
    by_seq = {q: round(float(d[idx].mean()), 4) for q, idx in _sequence_groups(ph).items() if idx.size}
    return {
        "test_cases": len(ph), "test_seeds": ph.seed_text,
        "dice_mean": round(float(d.mean()), 4), "dice_median": round(float(np.median(d)), 4),
        "dice_p05": round(float(np.percentile(d, 5)), 4),
        "region_found_rate": round(float(np.mean(pred_masks.reshape(len(ph), -1).any(axis=1))), 4),
        **({"dice_mean_by_sequence": by_seq} if by_seq else {}),
    }


def classification_metrics(as_pred: np.ndarray, stage_pred: np.ndarray, ph: Phantoms) -> dict[str, Any]:
    stage_rep = classification_report(ph.stage, stage_pred, STAGE_NAMES)
    as_rep = classification_report(ph.as_status, as_pred, AS_NAMES)
    return {
        "test_cases": len(ph), "test_seeds": ph.seed_text,
        "as_accuracy": as_rep["accuracy"],
        "as_sensitivity": as_rep["recall"]["positive"], "as_specificity": as_rep["recall"]["negative"],
        "stage_accuracy": stage_rep["accuracy"], "stage_macro_f1": stage_rep["macro_f1"],
        "stage_recall": stage_rep["recall"], "stage_precision": stage_rep["precision"],
        "stage_qwk": round(kappa_figure(ph.stage, stage_pred, 4), 4),
        "stage_mae": round(mae(stage_pred, ph.stage), 4),
        "as_confusion": as_rep["confusion_matrix"], "stage_confusion": stage_rep["confusion_matrix"],
        **_by_sequence(as_pred, stage_pred, ph),
    }


def _by_sequence(as_pred: np.ndarray, stage_pred: np.ndarray, ph: Phantoms) -> dict[str, Any]:
    groups = {q: idx for q, idx in _sequence_groups(ph).items() if idx.size}
    if not groups:
        return {}
    return {
        "as_accuracy_by_sequence": {q: round(accuracy(as_pred[i], ph.as_status[i]), 4) for q, i in groups.items()},
        "stage_macro_f1_by_sequence": {q: round(macro_f1(ph.stage[i], stage_pred[i], 4), 4)
                                       for q, i in groups.items()},
        "early_recall_by_sequence": {q: _recall_of(ph.stage[i], stage_pred[i], 1) for q, i in groups.items()},
    }


def _recall_of(target: np.ndarray, pred: np.ndarray, cls: int) -> float | None:
    r = per_class_recall(target, pred, 4)[cls]
    return None if not np.isfinite(r) else round(float(r), 4)
