"""Evaluation metrics in plain NumPy (segmentation and classification), shared by all tasks.

Conventions: labels are integer class indices; `n_classes` fixes the size of
per-class outputs so absent classes still get a slot. A class with no support
(no true and no predicted samples) gets recall/precision/F1 = NaN in the
per-class arrays and is left out of macro averages; Dice of two empty masks is 1.
"""
from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, target: np.ndarray, eps: float = 0.0) -> float:
    """Binary Dice 2|A&B| / (|A|+|B|) over all elements (nonzero = foreground); 1.0 when both are empty."""
    p = np.asarray(pred) > 0
    t = np.asarray(target) > 0
    denom = p.sum() + t.sum()
    if denom == 0:
        return 1.0
    return float((2.0 * (p & t).sum() + eps) / (denom + eps))


def dice_per_case(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Binary Dice of each case along axis 0."""
    return np.array([dice(p, t) for p, t in zip(pred, target)], dtype=np.float64)


def dice_per_class(pred: np.ndarray, target: np.ndarray, n_classes: int,
                   include_background: bool = False) -> np.ndarray:
    """Dice of each class of integer label maps; index 0 (background) is NaN unless included.

    A class absent from both pred and target gets NaN (no evidence either way).
    """
    p = np.asarray(pred)
    t = np.asarray(target)
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        if c == 0 and not include_background:
            continue
        pc, tc = p == c, t == c
        denom = pc.sum() + tc.sum()
        if denom:
            out[c] = 2.0 * (pc & tc).sum() / denom
    return out


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if pred.size == 0:
        return float("nan")
    return float((pred == target).mean())


def confusion_matrix(target: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts cm[i, j] = number of samples with true class i predicted as j."""
    target = np.asarray(target, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (target, pred), 1)
    return cm


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


def per_class_recall(target, pred, n_classes: int) -> np.ndarray:
    cm = confusion_matrix(target, pred, n_classes)
    return _safe_div(np.diag(cm), cm.sum(axis=1))


def per_class_precision(target, pred, n_classes: int) -> np.ndarray:
    """Precision per class; a class that was never predicted but has true samples gets 0, not NaN."""
    cm = confusion_matrix(target, pred, n_classes)
    prec = _safe_div(np.diag(cm), cm.sum(axis=0))
    prec[(cm.sum(axis=0) == 0) & (cm.sum(axis=1) > 0)] = 0.0
    return prec


def per_class_f1(target, pred, n_classes: int) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) per class; NaN for a class absent from both target and pred."""
    cm = confusion_matrix(target, pred, n_classes)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return _safe_div(2 * tp, 2 * tp + fp + fn)


def macro_f1(target, pred, n_classes: int) -> float:
    f1 = per_class_f1(target, pred, n_classes)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")


def quadratic_weighted_kappa(target, pred, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights w_ij = (i-j)^2 / (n-1)^2 (1.0 for perfect agreement)."""
    cm = confusion_matrix(target, pred, n_classes).astype(float)
    n = cm.sum()
    if n == 0:
        return float("nan")
    idx = np.arange(n_classes)
    w = (idx[:, None] - idx[None, :]) ** 2 / max(n_classes - 1, 1) ** 2
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    denom = (w * expected).sum()
    if denom == 0:
        return 1.0 if (w * cm).sum() == 0 else 0.0
    return float(1.0 - (w * cm).sum() / denom)


def mae(pred, target) -> float:
    pred, target = np.asarray(pred, float).ravel(), np.asarray(target, float).ravel()
    return float(np.abs(pred - target).mean()) if pred.size else float("nan")


def classification_report(target, pred, class_names) -> dict:
    """The figures we publish for one classification head, JSON-safe (NaN -> None)."""
    n = len(class_names)

    def clean(v):
        return None if not np.isfinite(v) else round(float(v), 4)

    return {
        "accuracy": clean(accuracy(pred, target)),
        "macro_f1": clean(macro_f1(target, pred, n)),
        "recall": {c: clean(v) for c, v in zip(class_names, per_class_recall(target, pred, n))},
        "precision": {c: clean(v) for c, v in zip(class_names, per_class_precision(target, pred, n))},
        "f1": {c: clean(v) for c, v in zip(class_names, per_class_f1(target, pred, n))},
        "confusion_matrix": confusion_matrix(target, pred, n).tolist(),
    }
