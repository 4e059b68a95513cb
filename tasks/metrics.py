"""Evaluation metrics and CORAL decoding in plain NumPy, shared by serving, reviews and training.

No TensorFlow and no Flask here, so any part of the app can import it. Conventions: labels are integer class indices; `n_classes` fixes the size of
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


def _kappa_terms(a, b, n_classes: int) -> tuple[float, float]:
    """Observed and chance-expected quadratic disagreement, w_ij = (i-j)^2 / (n-1)^2."""
    cm = confusion_matrix(a, b, n_classes).astype(float)
    idx = np.arange(n_classes)
    w = (idx[:, None] - idx[None, :]) ** 2 / max(n_classes - 1, 1) ** 2
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / cm.sum()
    return float((w * cm).sum()), float((w * expected).sum())


def quadratic_weighted_kappa(a, b, n_classes: int) -> float | None:
    """Cohen's kappa with quadratic weights between two raters' grades 0..n_classes-1 (1.0: perfect agreement).

    None when it is undefined: no pairs, unequal lengths, fewer than two classes, or both raters always
    give one and the same grade.
    """
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.size == 0 or a.size != b.size or n_classes < 2:
        return None
    observed, expected = _kappa_terms(a, b, n_classes)
    if expected == 0:
        return None
    return 1.0 - observed / expected


def kappa_figure(target, pred, n_classes: int) -> float:
    """Quadratic weighted kappa as a published figure: NaN without samples, and 1.0 where kappa is
    undefined because both raters give one and the same grade throughout (they agree perfectly)."""
    if np.asarray(target).size == 0:
        return float("nan")
    kappa = quadratic_weighted_kappa(target, pred, n_classes)
    return 1.0 if kappa is None else float(kappa)


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


# -- CORAL ordinal heads (Cao et al. 2020): one sigmoid P(y > k) per threshold k --------------
def _cumulative(p_gt, n_thresholds: int | None) -> np.ndarray:
    p = np.asarray(p_gt, dtype=np.float64)
    return p.reshape(-1, n_thresholds if n_thresholds is not None else p.shape[-1])


def coral_rank(probs, threshold: float = 0.5) -> np.ndarray:
    """CORAL rank = number of thresholds passed (P(y > k) > threshold), along the last axis."""
    return (np.asarray(probs) > threshold).sum(axis=-1)


def coral_expected(p_gt, n_thresholds: int | None = None) -> np.ndarray:
    """CORAL P(y > k) -> expected rank sum_k P(y > k), one value per row of `n_thresholds` (default: last axis)."""
    return _cumulative(p_gt, n_thresholds).sum(axis=1)


def coral_grade_probabilities(p_gt, n_thresholds: int | None = None) -> np.ndarray:
    """CORAL P(y > k), k = 0..K-1 -> P(y = k) for k = 0..K (rows sum to 1).

    P(y = 0) = 1 - P(y > 0), P(y = k) = P(y > k-1) - P(y > k), P(y = K) = P(y > K-1). The cumulative
    probabilities are first made non-increasing (a running minimum), so no probability is negative
    even where a model's thresholds cross.
    """
    p = np.minimum.accumulate(np.clip(_cumulative(p_gt, n_thresholds), 0.0, 1.0), axis=1)
    cum = np.concatenate([np.ones((len(p), 1)), p, np.zeros((len(p), 1))], axis=1)
    probs = cum[:, :-1] - cum[:, 1:]
    return probs / probs.sum(axis=1, keepdims=True)
