"""Children's hands in the hand run: child phantoms train the joint detector only (never the GUSS scorers),
the detector's wide augmentation of real radiographs, and the detector measured against the joint centres
marked on real hands (with a stand-in detector on stand-in images: no data needed)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.hand.data import augment_detector_batch, detector_training_set, generate_data
from training.hand.real_hands import Mark, joints_against_marks
from training.phantoms.hand import CHILD_POOL, PATIENT_POOL


@pytest.fixture(scope="module")
def data():
    return generate_data(24, log=None, n_children=10)


def test_children_train_the_detector_and_never_the_scorers(data):
    assert data.child_train is not None and len(data.child_train) and len(data.child_test)
    assert set(data.child_train.patient) <= set(CHILD_POOL) and set(data.train.patient) <= set(PATIENT_POOL)
    assert not set(data.child_train.patient) & set(data.child_test.patient)           # split by patient
    x, centres, sizes, side = detector_training_set(data)
    assert len(x) == len(data.train) + len(data.child_train) == len(centres) == len(sizes) == len(side)
    adults_only = detector_training_set(data, children=False)
    assert len(adults_only[0]) == len(data.train)
    twice = detector_training_set(data, child_repeat=2)
    assert len(twice[0]) == len(data.train) + 2 * len(data.child_train)
    assert np.array_equal(twice[1][-len(data.child_train):], data.child_train.det_centres)
    assert (data.child_train.guss == 200).all()
    # the scorers read data.train, which holds adults only
    assert not set(data.train.patient) & set(CHILD_POOL)


def test_the_wide_augmentation_carries_each_centre_with_its_joint():
    """Bright dots at the joint centres: after the wide augmentation (scale 0.8-1.3, shift, mirror, markers,
    collimator edges) each carried centre still sits on its dot."""
    rng = np.random.default_rng(0)
    n, size = 16, 256
    centres = np.tile(np.array([[80.0 + 14 * j, 100.0 + 6 * j] for j in range(8)], np.float32), (n, 1, 1))
    x = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for cx, cy in centres[i]:
            x[i, int(cy) - 3:int(cy) + 4, int(cx) - 3:int(cx) + 4] = 255
    sizes = np.full((n, 8, 2), 20.0, np.float32)
    out, moved, resized, side = augment_detector_batch(x, centres, sizes, np.zeros(n), rng, wide=True)
    assert out.shape == (n, size, size, 1) and 0.0 <= out.min() and out.max() <= 1.0
    ratio = resized / sizes
    assert 0.79 <= ratio.min() and ratio.max() <= 1.31 and ratio.std() > 0.02
    for i in range(n):
        for cx, cy in moved[i]:
            assert out[i, int(round(cy)), int(round(cx)), 0] > 0.5
    assert 0 < side.sum() < n                                      # some mirrored: a right hand now


def test_real_hands_are_scored_against_the_marks(tmp_path):
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((10, 10), np.uint8))
    marks = [Mark("a.png", "PIP2", 100, 100, 40), Mark("a.png", "PIP3", 200, 100, 40),
             Mark("b.png", "PIP2", 50, 50, 20), Mark("b.png", "DIP2", 50, 20, 20)]
    answers = {  # by the image's size in bytes: each stand-in image gets its own answer
        "a.png": [{"name": "PIP2", "status": "found", "confidence": 0.9, "box": [95, 95, 105, 105]},
                  {"name": "PIP3", "status": "unsure", "confidence": 0.4, "box": [200, 130, 210, 140]}],
        "b.png": [{"name": "PIP2", "status": "found", "confidence": 0.8, "box": [50, 52, 54, 56]},
                  {"name": "DIP2", "status": "missing", "confidence": 0.1, "box": None}],
    }
    seen = []

    def detect(data: bytes):
        name = ("a.png", "b.png")[len(seen)]
        seen.append(name)
        return answers[name]

    figures = joints_against_marks(detect, marks, tmp_path)
    assert seen == ["a.png", "b.png"]
    assert (figures["found"], figures["unsure"], figures["missing"]) == (2, 1, 1)
    rows = {(r["file"], r["joint"]): r for r in figures["rows"]}
    assert rows[("a.png", "PIP2")]["distance"] == 0.0 and rows[("a.png", "PIP2")]["located"]
    assert rows[("a.png", "PIP3")]["distance"] == pytest.approx(np.hypot(5, 35) / 40)
    assert not rows[("a.png", "PIP3")]["located"]
    assert rows[("b.png", "PIP2")]["distance"] == pytest.approx(np.hypot(2, 4) / 20)   # 0.22 <= a quarter
    assert rows[("b.png", "DIP2")]["distance"] is None
    assert figures["located"] == 2 and figures["located_and_found"] == 2
    assert joints_against_marks(detect, marks, tmp_path / "absent") is None


def test_a_cache_of_phantoms_is_read_only_by_the_generator_that_wrote_it(tmp_path, monkeypatch):
    from training.hand import data as hand_data

    first = hand_data.generate_data(4, log=None, cache=tmp_path)
    written = list(tmp_path.glob("hand_data_4_0_*.npz"))
    assert len(written) == 1 and hand_data.generator_fingerprint() in written[0].name
    again = hand_data.generate_data(4, log=None, cache=tmp_path)                  # read back, not generated
    assert np.array_equal(again.train.det_centres, first.train.det_centres)
    calls = []
    monkeypatch.setattr(hand_data, "generator_fingerprint", lambda: "another-generator")
    monkeypatch.setattr(hand_data, "generate_split", lambda *a, **k: calls.append(a) or first.train)
    hand_data.generate_data(4, log=None, cache=tmp_path)                          # a changed generator: made anew
    assert len(calls) == 3 and len(list(tmp_path.glob("hand_data_4_0_*.npz"))) == 2
