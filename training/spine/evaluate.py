"""Dice per structure at the masks' own resolution, through the task's own `labels_from_probs`, as the
app predicts.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tasks.spine import CLASS_NAMES, N_CLASSES, STRUCTURES, labels_from_probs, spine_input
from training.spine.data import load_pair
from training.toolbox.inference import compiled_inference


def predict_probs(model, xs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Softmax maps of (n, h, w, 1) inputs through one compiled call (the serving path)."""
    infer = compiled_inference(model)
    out = [infer(xs[i:i + batch_size]) for i in range(0, len(xs), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,) + tuple(model.output_shape[1:]), np.float32)


def evaluate(model, rows: Sequence[dict[str, str]], hw: tuple[int, int], batch_size: int = 8) -> dict[str, Any]:
    """Dice per structure on `rows` at the masks' own resolution, as the app predicts.

    dice_<structure>: pooled over all slices (2 sum|A&B| / (sum|A| + sum|B|));
    patient_dice_<structure>: mean over patients of each patient's pooled Dice.
    """
    inter = np.zeros(N_CLASSES)
    total = np.zeros(N_CLASSES)
    per_patient: dict[str, np.ndarray] = {}
    for start in range(0, len(rows), 32):
        chunk = rows[start:start + 32]
        pairs = [load_pair(r) for r in chunk]
        xs = np.stack([spine_input(img, hw) for img, _ in pairs])
        probs = predict_probs(model, xs, batch_size)
        for r, (img, mask), p in zip(chunk, pairs, probs):
            pred = labels_from_probs(p, mask.shape)
            pp = per_patient.setdefault(r["patient"], np.zeros((2, N_CLASSES)))
            for c in range(1, N_CLASSES):
                a, b = pred == c, mask == c
                i, t = float((a & b).sum()), float(a.sum() + b.sum())
                inter[c] += i
                total[c] += t
                pp[0, c] += i
                pp[1, c] += t
    metrics: dict[str, Any] = {}
    for c in range(1, N_CLASSES):
        name = CLASS_NAMES[c]
        metrics[f"dice_{name}"] = round(2 * inter[c] / total[c], 4) if total[c] else None
        vals = [2 * v[0, c] / v[1, c] for v in per_patient.values() if v[1, c]]
        metrics[f"patient_dice_{name}"] = round(float(np.mean(vals)), 4) if vals else None
    fg = [metrics[f"dice_{s}"] for s in STRUCTURES if metrics[f"dice_{s}"] is not None]
    metrics["mean_dice"] = round(float(np.mean(fg)), 4) if fg else None
    metrics["n_slices"] = len(rows)
    metrics["n_patients"] = len(per_patient)
    return metrics
