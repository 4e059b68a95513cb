"""Validation figures of a knee grader, through the task's own decoding with test-time flip averaging."""
from __future__ import annotations

from typing import Any

import numpy as np

from tasks.knee import DECISION_HEADS, GRADE_NAMES, N_GRADES, decide
from tasks.metrics import accuracy, confusion_matrix, kappa_figure, mae, per_class_recall


def predict_tta(model_or_call, images_u8: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Canonical uint8 images -> outputs averaged over the image and its mirror (embedding: canonical only).

    `mirror_prob`: mean P(mirrored) of the canonical reading and 1 - P(mirrored) of the mirror, i.e. how
    sure the model is that the canonical copy is not mirrored (side detection accuracy uses it).
    """
    call = model_or_call if not hasattr(model_or_call, "predict_on_batch") else (
        lambda x: {k: np.asarray(v) for k, v in model_or_call(x, training=False).items()})
    outs: dict[str, list] = {"kl_value": [], "kl_coral": [], "embedding": [], "canon_ok": []}
    for i in range(0, len(images_u8), batch):
        x = images_u8[i:i + batch].astype(np.float32)[..., None] / 255.0
        n = len(x)
        o = call(np.concatenate([x, x[:, :, ::-1]], axis=0))
        v, c, m = np.asarray(o["kl_value"]).reshape(-1), np.asarray(o["kl_coral"]), np.asarray(o["mirrored"]).reshape(-1)
        outs["kl_value"].append((v[:n] + v[n:]) / 2)
        outs["kl_coral"].append((c[:n] + c[n:]) / 2)
        outs["embedding"].append(np.asarray(o["embedding"])[:n])
        outs["canon_ok"].append(((1 - m[:n]) + m[n:]) / 2)
    return {k: np.concatenate(v) for k, v in outs.items()}


def figures(grades: np.ndarray, pred: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Published figures per decision head: accuracy, QWK, MAE, per-grade recall, confusion matrix."""
    out = {}
    for head in DECISION_HEADS:
        g, cont = decide(pred["kl_value"], pred["kl_coral"], head)
        out[head] = {
            "accuracy": round(accuracy(g, grades), 4),
            "qwk": round(kappa_figure(grades, g, N_GRADES), 4),
            "mae": round(mae(g, grades), 4),
            "mae_continuous": round(mae(np.clip(cont, 0, 4), grades), 4),
            "recall": {n: (None if not np.isfinite(r) else round(float(r), 4))
                       for n, r in zip(GRADE_NAMES, per_class_recall(grades, g, N_GRADES))},
            "confusion_matrix": confusion_matrix(grades, g, N_GRADES).tolist(),
            "n": int(len(grades)),
        }
    return out


def best_head(figs: dict[str, dict[str, Any]]) -> str:
    """The decision head kept: highest QWK, then accuracy, then lowest MAE (chosen on val)."""
    return max(DECISION_HEADS, key=lambda h: (figs[h]["qwk"], figs[h]["accuracy"], -figs[h]["mae"]))
