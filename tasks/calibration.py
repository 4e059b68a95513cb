"""Calibrated probabilities: temperature scaling of a model's heads, and the expected calibration error.

A model's registry entry may carry a `calibration` block, one spec per head (the head's output name),
fitted by training/calibration.py on validation data:

    {"kl_coral": {"method": "temperature", "temperature": 1.31, "ece_before": 0.08, "ece_after": 0.02,
                  "n_bins": 15, "n": 826, "fitted_on": "...", "reliability_before": [[conf, acc, n], ...],
                  "reliability_after": [...]}}

A head without a spec (or a model without the block) is served with T = 1, its raw probabilities,
and is reported as not calibrated. A head whose class is decided elsewhere may add a `decided` block
(`recalibrate_decided`). Temperature divides the head's logits:

- softmax heads: logits = log p (p is all the served model gives; log p equals the logits up to a
  constant per row, which softmax ignores), softmax(log p / T);
- sigmoid heads: sigmoid(logit(p) / T);
- CORAL heads: each threshold's P(y > k) as a sigmoid head, then the grade probabilities exactly as
  tasks/metrics derives them.

T > 1 softens, T < 1 sharpens (a CORAL head's thresholds each move toward or away from 1/2, so its grade
distribution is not simply flattened: at very large T the mass goes to the two end grades). The decision does not change: dividing logits by T > 0 keeps the
argmax of a softmax, and a logit's sign, so every sigmoid and CORAL threshold at 0.5 falls the same
way. NumPy only: serving, the web layer and training all import it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tasks.metrics import coral_grade_probabilities

DEFAULT_BINS = 15
# Probabilities are clipped this far from 0 and 1 before their logarithm: a float32 sigmoid saturates
# to exactly 0 or 1, whose logit is infinite.
EPS = 1e-7
KINDS = ("softmax", "sigmoid", "coral")


# -- temperature -------------------------------------------------------------------------------
def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))    # no overflow warning for large |z|


def _check(temperature: float) -> float:
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"a temperature must be a positive number, got {temperature!r}")
    return t


def softmax_with_temperature(probs, temperature: float) -> np.ndarray:
    """Softmax probabilities (..., K) recomputed from logits log p divided by T (rows sum to 1)."""
    t = _check(temperature)
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, None)) / t
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid_with_temperature(probs, temperature: float) -> np.ndarray:
    """Sigmoid probabilities (any shape) recomputed from logit(p) / T."""
    return _sigmoid(_logit(probs) / _check(temperature))


def coral_with_temperature(p_gt, temperature: float, n_thresholds: int | None = None) -> np.ndarray:
    """CORAL P(y > k) (rows of K thresholds) -> calibrated grade probabilities P(y = k), k = 0..K."""
    return coral_grade_probabilities(sigmoid_with_temperature(p_gt, temperature), n_thresholds)


def class_probabilities(kind: str, raw, temperature: float = 1.0) -> np.ndarray:
    """(n, classes) probabilities of a head's raw output at temperature T: a softmax head's own classes,
    a sigmoid head's (negative, positive), a CORAL head's grades."""
    raw = np.asarray(raw, dtype=np.float64)
    if kind == "softmax":
        return softmax_with_temperature(raw.reshape(len(raw), -1), temperature)
    if kind == "sigmoid":
        p = sigmoid_with_temperature(raw.reshape(-1), temperature)
        return np.stack([1.0 - p, p], axis=1)
    if kind == "coral":
        return coral_with_temperature(raw.reshape(len(raw), -1), temperature)
    raise ValueError(f"unknown head kind {kind!r}; known: {KINDS}")


# -- the decided class's own calibration ------------------------------------------------------------
def recalibrate_decided(probs, decided, decided_spec: dict[str, Any] | None) -> np.ndarray:
    """Class probabilities (n, K) with the decided class's probability recalibrated, when the head's spec
    carries a `decided` block: P(the decision is right) = sigmoid(coef * logit(p_decided) + offsets[decided]),
    the other classes scaled so that each row still sums to 1.

    For a head whose class is decided by another head (the knee's grade comes from its regression head, and
    is not the CORAL distribution's top grade for about a quarter of knees), a temperature cannot calibrate
    the confidence shown for that grade: it moves every threshold together, and the decided grade's
    probability says little about whether the regression was right. The per-class offsets let the
    calibration differ by decided grade (the regression is right more often on KL 0 than on KL 1).
    """
    probs = np.array(probs, dtype=np.float64, copy=True).reshape(len(np.atleast_1d(decided)), -1)
    if not decided_spec:
        return probs
    decided = np.asarray(decided, dtype=np.int64).reshape(-1)
    rows = np.arange(len(decided))
    p_decided = probs[rows, decided]
    offsets = np.asarray(decided_spec["offsets"], dtype=np.float64)
    target = _sigmoid(float(decided_spec["coef"]) * _logit(p_decided) + offsets[decided])
    rest = np.clip(1.0 - p_decided, EPS, None)
    scaled = probs * ((1.0 - target) / rest)[:, None]
    scaled[rows, decided] = target
    return scaled


def calibrated_probabilities(kind: str, raw, decided, spec: dict[str, Any] | None) -> np.ndarray:
    """(n, classes) probabilities as the app shows them: the head's temperature (1 without a spec) and,
    where the spec has one, the decided class's recalibration."""
    t = _check(spec["temperature"]) if spec else 1.0
    return recalibrate_decided(class_probabilities(kind, raw, t), decided, (spec or {}).get("decided"))


# -- the registry's calibration block ------------------------------------------------------------
def head_spec(entry: Any, head: str) -> dict[str, Any] | None:
    """The calibration spec of one head of a registry entry (ModelEntry or dict), or None."""
    block = entry.get("calibration") if isinstance(entry, dict) else getattr(entry, "calibration", None)
    spec = (block or {}).get(head)
    return spec if isinstance(spec, dict) and spec.get("method") == "temperature" else None


def temperature_of(entry: Any, head: str) -> float:
    """The head's fitted temperature; 1.0 (the raw probabilities) when the head is not calibrated."""
    spec = head_spec(entry, head)
    return _check(spec["temperature"]) if spec else 1.0


def calibration_record(entry: Any, heads: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """What a result records about its probabilities: calibrated (every head shown has a fitted T) and the
    temperature applied to each head (1.0 where none was fitted)."""
    return {"calibrated": all(head_spec(entry, h) is not None for h in heads),
            "temperature": {h: round(temperature_of(entry, h), 4) for h in heads}}


# -- expected calibration error -------------------------------------------------------------------
def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Equal-width bins [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]: a confidence of exactly 1 joins the last.
    return np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)


def _checked(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"{conf.size} confidences but {ok.size} correctness values")
    if conf.size and (np.nanmin(conf) < 0 or np.nanmax(conf) > 1 or not np.isfinite(conf).all()):
        raise ValueError("confidences must lie in [0, 1]")
    return conf, ok


def reliability_table(confidence, correct, n_bins: int = DEFAULT_BINS) -> list[list[float]]:
    """[[mean confidence, accuracy, count], ...] of each non-empty equal-width confidence bin, in order."""
    conf, ok = _checked(confidence, correct)
    idx = _bin_index(conf, n_bins)
    rows = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        if n:
            rows.append([float(conf[sel].mean()), float(ok[sel].mean()), n])
    return rows


def expected_calibration_error(confidence, correct, n_bins: int = DEFAULT_BINS) -> float:
    """ECE = sum over bins of (bin count / n) * |bin accuracy - bin mean confidence|, equal-width bins.

    `confidence`: each prediction's confidence in what it decided (the top class, or the decided class);
    `correct`: whether that decision was right. NaN without predictions.
    """
    rows = reliability_table(confidence, correct, n_bins)
    total = sum(r[2] for r in rows)
    if not total:
        return float("nan")
    return float(sum(r[2] * abs(r[1] - r[0]) for r in rows) / total)
