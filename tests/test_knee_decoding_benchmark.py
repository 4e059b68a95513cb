"""The knee decoding benchmark's levers on synthetic values with a known answer (the benchmark itself needs the
real radiographs): cut-offs fitted by coordinate search find a known shift of the grade boundaries, and the
cross-fitted decoding uses cut-offs fitted without the knee's own patient."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tasks.metrics import accuracy

_spec = importlib.util.spec_from_file_location(
    "knee_decoding", Path(__file__).resolve().parent.parent / "benchmarks" / "knee_decoding.py")
knee_decoding = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(knee_decoding)


@pytest.fixture(scope="module")
def biased():
    """Continuous grades read 0.3 too high, with noise: the best boundaries sit 0.3 above the served ones."""
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, 3000)
    values = grades + 0.3 + rng.normal(0, 0.2, grades.size)
    patients = np.repeat(np.arange(1500), 2)
    return values, grades, patients


def test_fitted_cut_offs_find_a_known_shift(biased):
    values, grades, _ = biased
    cuts = knee_decoding.fit_cuts(values, grades, lambda p, g: accuracy(p, g))
    assert np.allclose(cuts, np.array(knee_decoding.SERVED_CUTS) + 0.3, atol=0.08)
    assert accuracy(knee_decoding.grades_at(values, cuts), grades) > \
        accuracy(knee_decoding.grades_at(values, knee_decoding.SERVED_CUTS), grades) + 0.1


def test_cross_fitted_decoding_never_sees_its_own_patient(biased, monkeypatch):
    values, grades, patients = biased
    fitted_on, decoded, fitting = [], [], []
    fit, decode = knee_decoding.fit_cuts, knee_decoding.grades_at

    def recording_fit(v, g, objective):
        fitted_on.append(set(np.round(v, 9)))
        fitting.append(True)
        try:
            return fit(v, g, objective)
        finally:
            fitting.pop()

    def recording_decode(v, cuts):
        if not fitting:                     # the decoding of a held-out fold, not a step of the search
            decoded.append(set(np.round(v, 9)))
        return decode(v, cuts)

    monkeypatch.setattr(knee_decoding, "fit_cuts", recording_fit)
    monkeypatch.setattr(knee_decoding, "grades_at", recording_decode)
    out = knee_decoding.cross_fitted(values, grades, patients, lambda p, g: accuracy(p, g))
    assert len(fitted_on) == len(decoded) == 5
    assert all(not (f & d) for f, d in zip(fitted_on, decoded))          # no knee decoded by cut-offs it fitted
    assert set().union(*decoded) == set(np.round(values, 9))              # every knee decoded once
    by_patient = {}
    for p, v in zip(patients, np.round(values, 9)):
        by_patient.setdefault(p, set()).add(v)
    assert all(any(vs <= d for d in decoded) for vs in by_patient.values())   # a patient's knees in one fold
    assert accuracy(out, grades) > accuracy(decode(values, knee_decoding.SERVED_CUTS), grades) + 0.1


def test_an_unscaled_unshifted_view_is_the_image_itself():
    img = np.random.default_rng(1).integers(0, 255, (3, 32, 32)).astype(np.uint8)
    assert np.array_equal(knee_decoding.warp(img, 1.0, 0, 0), img)
    assert not np.array_equal(knee_decoding.warp(img, 1.0, 3, 0), img)
