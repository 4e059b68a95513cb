"""Knee task: ordinal decoding of the two grade heads, and QWK / MAE against hand-computed examples."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.knee import canonical, decide, decode_value
from tasks.metrics import coral_expected, coral_grade_probabilities, coral_rank, mae, quadratic_weighted_kappa


def test_regression_value_rounds_half_up_and_clips():
    values = [-0.3, 0.49, 0.5, 1.5, 2.49, 3.7, 4.4]
    assert decode_value(values).tolist() == [0, 0, 1, 2, 2, 4, 4]


def test_coral_counts_thresholds_passed():
    p = [[0.9, 0.8, 0.3, 0.1], [0.4, 0.2, 0.1, 0.0], [0.99, 0.98, 0.97, 0.6], [0.6, 0.4, 0.7, 0.2]]
    assert coral_rank(p).tolist() == [2, 0, 4, 2]
    assert coral_expected(p[:1])[0] == pytest.approx(2.1)


def test_coral_grade_probabilities_by_hand():
    probs = coral_grade_probabilities([[0.9, 0.8, 0.3, 0.1]])[0]
    np.testing.assert_allclose(probs, [0.1, 0.1, 0.5, 0.2, 0.1], atol=1e-12)
    # crossing thresholds are made non-increasing first, so no probability is negative
    crossed = coral_grade_probabilities([[0.5, 0.7, 0.2, 0.0]])[0]
    np.testing.assert_allclose(crossed, [0.5, 0.0, 0.3, 0.2, 0.0], atol=1e-12)
    assert (crossed >= 0).all() and crossed.sum() == pytest.approx(1.0)


def test_decide_per_head():
    value, p = [2.6], [[0.9, 0.8, 0.3, 0.1]]                     # regression 3, CORAL 2 (expected 2.1)
    assert decide(value, p, "regression")[0].tolist() == [3]
    assert decide(value, p, "coral")[0].tolist() == [2]
    g, cont = decide(value, p, "mean")                            # (2.6 + 2.1) / 2 = 2.35 -> 2
    assert g.tolist() == [2] and cont[0] == pytest.approx(2.35)
    with pytest.raises(ValueError):
        decide(value, p, "vote")


def test_qwk_hand_computed():
    # cm = [[1,0,0],[0,0,1],[0,1,1]]; weights (i-j)^2/4; observed 0.5, expected 1.375 -> 1 - 0.5/1.375
    target, pred = [0, 1, 2, 2], [0, 2, 2, 1]
    assert quadratic_weighted_kappa(target, pred, 3) == pytest.approx(1 - 0.5 / 1.375)
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 5) == pytest.approx(1.0)
    # two classes: observed 1 (one 0->1), expected 2 -> 0.5
    assert quadratic_weighted_kappa([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx(0.5)
    # a grade off by two costs four times a grade off by one
    off1 = quadratic_weighted_kappa([0, 1, 2, 3, 4] * 2, [0, 1, 2, 3, 4, 1, 1, 2, 3, 4], 5)
    off2 = quadratic_weighted_kappa([0, 1, 2, 3, 4] * 2, [0, 1, 2, 3, 4, 2, 1, 2, 3, 4], 5)
    assert off2 < off1 < 1.0


def test_mae_hand_computed():
    assert mae([0, 2, 2, 1], [0, 1, 2, 2]) == pytest.approx(0.5)
    assert mae([0.5, 3.0], [0, 4]) == pytest.approx(0.75)


def test_canonical_mirrors_right_knees_only():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert canonical(x, "L") is x
    np.testing.assert_array_equal(canonical(x, "R"), x[:, ::-1])
    batch = np.arange(24, dtype=np.float32).reshape(1, 3, 4, 2)[..., :1]
    np.testing.assert_array_equal(canonical(batch, "R"), batch[:, :, ::-1])
    with pytest.raises(ValueError):
        canonical(x, "X")
