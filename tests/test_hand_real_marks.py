"""The joint centres marked by eye on the five real children's hands (benchmarks/data/hand_real_joints.csv), as
the detector's export and benchmarks/hand_real_joints.py read them: every joint of every hand, in anatomical order, inside its image."""
from __future__ import annotations

import cv2
import pytest

from training.hand.real_hands import Mark, distance_in_widths, read_marks
from tasks.hand import JOINT_NAMES
from tests.data_gate import data_dir, need


def test_every_hand_has_its_eight_joints_in_anatomical_order():
    marks = read_marks()
    by_file: dict[str, dict[str, Mark]] = {}
    for m in marks:
        by_file.setdefault(m.file, {})[m.joint] = m
    assert len(marks) == 40 and len(by_file) == 5
    for joints in by_file.values():
        assert set(joints) == set(JOINT_NAMES)
        for finger in "2345":
            assert joints[f"DIP{finger}"].y < joints[f"PIP{finger}"].y       # fingertips up: DIP above PIP
        # the index finger is on the thumb's side: its joints and the little finger's lie on opposite sides
        assert (joints["PIP2"].x - joints["PIP5"].x) * (joints["PIP3"].x - joints["PIP4"].x) > 0
        assert len({m.finger_width for m in joints.values()}) == 1 and 40 < joints["PIP3"].finger_width < 300


def test_distance_is_in_finger_widths_from_the_box_centre():
    mark = Mark("x.png", "PIP3", 100.0, 200.0, 80.0)
    assert distance_in_widths(mark, [90, 190, 110, 210]) == 0.0
    assert distance_in_widths(mark, [90, 230, 110, 250]) == pytest.approx(40 / 80)
    assert distance_in_widths(mark, None) is None


def test_the_marks_lie_inside_their_images():
    folder = data_dir() / "hand_xray_paediatric"
    need(folder)
    for m in read_marks():
        height, width = cv2.imread(str(folder / m.file), cv2.IMREAD_GRAYSCALE).shape
        assert 0 <= m.x < width and 0 <= m.y < height, m
