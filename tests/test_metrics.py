"""tasks.metrics: kappa's undefined cases, Dice and the CORAL decoding helpers, by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.metrics import (coral_expected, coral_grade_probabilities, coral_rank, dice, kappa_figure,
                           quadratic_weighted_kappa)


def test_kappa_perfect_and_hand_computed():
    assert quadratic_weighted_kappa([0, 1, 2], [0, 1, 2], 3) == pytest.approx(1.0)
    # cm [[1,1],[0,2]]: observed 1, expected 2 -> 0.5
    assert quadratic_weighted_kappa([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx(0.5)


def test_kappa_is_none_when_undefined():
    assert quadratic_weighted_kappa([], [], 5) is None
    assert quadratic_weighted_kappa([1, 2], [1], 5) is None
    assert quadratic_weighted_kappa([0, 0], [0, 0], 1) is None
    assert quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], 5) is None      # both raters constant, same grade


def test_kappa_figure_conventions():
    assert math.isnan(kappa_figure([], [], 5))
    assert kappa_figure([2, 2, 2], [2, 2, 2], 5) == 1.0
    assert kappa_figure([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx(0.5)
    assert isinstance(quadratic_weighted_kappa(np.array([0, 1]), np.array([0, 1]), 2), float)


def test_dice():
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    a = np.array([1, 1, 0, 0])
    b = np.array([1, 0, 1, 0])
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0


def test_coral_rank_along_last_axis():
    p = np.array([[0.9, 0.6, 0.5, 0.1], [0.2, 0.1, 0.0, 0.0]])
    assert coral_rank(p).tolist() == [2, 0]
    assert coral_rank(p, threshold=0.05).tolist() == [4, 2]
    assert int(coral_rank(np.array([0.7, 0.7, 0.2]))) == 2


def test_coral_expected_and_probabilities():
    p = [[0.9, 0.8, 0.3, 0.1]]
    assert coral_expected(p)[0] == pytest.approx(2.1)
    assert coral_expected([0.9, 0.8, 0.3, 0.1, 0.5, 0.5, 0.0, 0.0], n_thresholds=4).tolist() == pytest.approx([2.1, 1.0])
    probs = coral_grade_probabilities(p)[0]
    assert probs == pytest.approx([0.1, 0.1, 0.5, 0.2, 0.1])
    crossed = coral_grade_probabilities([[0.5, 0.7, 0.2, 0.0]])[0]      # P(y>1) > P(y>0): running minimum
    assert crossed.min() >= 0 and crossed.sum() == pytest.approx(1.0)
    assert crossed == pytest.approx([0.5, 0.0, 0.3, 0.2, 0.0])
