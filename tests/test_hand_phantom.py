"""Hand phantoms: determinism, labels consistent with the drawing, the patient-level split."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from tasks.hand import JOINT_NAMES
from training.phantoms import hand as hand_phantoms


@pytest.fixture(scope="module")
def case():
    return hand_phantoms.generate_hand(1, 0)


def test_same_patient_and_visit_give_the_same_image_and_labels(case):
    again = hand_phantoms.generate_hand(1, 0)
    assert np.array_equal(case.image, again.image)
    assert case.joints == again.joints and case.params == again.params
    other_visit = hand_phantoms.generate_hand(1, 1)
    assert not np.array_equal(case.image, other_visit.image)
    assert other_visit.side == case.side                       # one hand per patient


def test_image_is_a_large_grey_radiograph_with_bone_bright(case):
    img = case.image
    assert img.dtype == np.uint8 and max(img.shape) >= 512
    # background (image corners) darker than the bones at the joints
    corners = np.concatenate([img[:20, :20].ravel(), img[:20, -20:].ravel()])
    centres = [img[int(j.center[1]) - 3:int(j.center[1]) + 4, int(j.center[0]) - 8:int(j.center[0]) + 9]
               for j in case.joints]
    assert np.median(corners) + 40 < np.median(np.concatenate([c.ravel() for c in centres]))


def test_labels_are_named_boxed_and_on_the_guss_scale(case):
    assert [j.name for j in case.joints] == list(hand_phantoms.JOINT_NAMES)
    assert tuple(JOINT_NAMES) == hand_phantoms.JOINT_NAMES
    h, w = case.image.shape
    for j in case.joints:
        x1, y1, x2, y2 = j.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert x1 < j.center[0] < x2 and y1 < j.center[1] < y2
        assert j.plate in range(0, 101, 10) and j.space in range(0, 101, 10)
        assert j.guss == j.plate + j.space
    plan = hand_phantoms.patient_plan(1)
    assert [j.guss for j in case.joints] == plan.guss[0].tolist()
    # fingers in order across a left hand: index (2) on the image right when the fingers point up
    xs = [j.center[0] for j in case.joints[:4]]
    ordered = xs == sorted(xs, reverse=True) if case.side == "left" else xs == sorted(xs)
    assert ordered or abs(case.params["pose"]["rotation_deg"]) > 30
    # DIPs distal to PIPs (fingers point up, rotation <= 18 degrees)
    for f in range(4):
        assert case.joints[4 + f].center[1] < case.joints[f].center[1]


def test_the_drawing_follows_the_labels():
    """Same patient, same visit: narrowing the joint space or eroding the plate changes only that joint."""
    plan = hand_phantoms.patient_plan(2)
    healthy = dataclasses.replace(plan, plate=np.full_like(plan.plate, 100), space=np.full_like(plan.space, 100),
                                  phase=tuple(("intact",) * 8 for _ in plan.months))
    narrowed = dataclasses.replace(healthy, space=healthy.space.copy())
    narrowed.space[0, 1] = 20                                  # PIP3 joint space 20
    eroded = dataclasses.replace(healthy, plate=healthy.plate.copy())
    eroded.plate[0, 5] = 30                                    # DIP3 plate 30
    a = hand_phantoms.generate_hand(2, 0, plan=healthy)
    b = hand_phantoms.generate_hand(2, 0, plan=narrowed)
    c = hand_phantoms.generate_hand(2, 0, plan=eroded)
    assert a.params["joint_gap_mm"]["PIP3"] > 4 * b.params["joint_gap_mm"]["PIP3"]
    assert [j.guss for j in b.joints][1] == 120 and [j.guss for j in c.joints][5] == 130

    def changed_inside(x, y, joint):
        diff = np.abs(x.image.astype(int) - y.image.astype(int)) > 12
        x1, y1, x2, y2 = (int(round(v)) for v in joint.box)
        inside = diff[max(y1 - 6, 0):y2 + 6, max(x1 - 6, 0):x2 + 6].sum()
        return inside, diff.sum() - inside

    inside, outside = changed_inside(a, b, a.joints[1])
    assert inside > 20 and outside < inside
    inside, outside = changed_inside(a, c, a.joints[5])
    assert inside > 20 and outside < inside


def test_patients_progress_or_remodel_and_scores_are_long_tailed():
    plans = [hand_phantoms.patient_plan(p) for p in range(400)]
    g = np.concatenate([p.guss.ravel() for p in plans])
    assert 0.58 < (g == 200).mean() < 0.76                     # about two thirds intact
    nonpeak = g[g < 200]
    assert (nonpeak >= 150).mean() > (nonpeak < 50).mean()     # long tail towards 0
    assert all(2 <= p.n_visits <= 4 and list(p.months) == sorted(p.months) for p in plans)
    phases = {ph for p in plans for row in p.phase for ph in row}
    assert {"progression", "remodelling", "intact"} <= phases
    # remodelling raises the plate score of a joint between visits
    assert any(p.plate[t, j] > p.plate[t - 1, j] for p in plans for t in range(1, p.n_visits)
               for j in range(8) if p.phase[t][j] == "remodelling")


def test_split_is_by_patient_stratified_80_10_10_and_stable():
    patients = list(range(300))
    split = hand_phantoms.split_of(patients)
    assert set(split) == set(patients)
    groups = hand_phantoms.split_patients(patients)
    assert sum(len(v) for v in groups.values()) == 300
    assert not (set(groups["train"]) & set(groups["val"]) or set(groups["train"]) & set(groups["test"])
                or set(groups["val"]) & set(groups["test"]))
    assert abs(len(groups["train"]) - 240) <= 2 and abs(len(groups["val"]) - 30) <= 2
    for stratum in ("peak", "non-peak"):
        ids = [p for p in patients if hand_phantoms.patient_plan(p).peak_label == stratum]
        share = {s: sum(split[p] == s for p in ids) / len(ids) for s in hand_phantoms.SPLITS}
        assert abs(share["train"] - 0.8) < 0.06 and abs(share["test"] - 0.1) < 0.05
    # appending patients never moves an earlier one
    bigger = hand_phantoms.split_of(list(range(400)))
    assert all(bigger[p] == split[p] for p in patients)
    # every visit of a patient lies in the patient's split
    visits = hand_phantoms.visits(groups["test"][:5])
    assert {split[p] for p, _ in visits} == {"test"}


# -- children ------------------------------------------------------------------------------------------------
def test_children_have_their_own_ids_and_leave_every_adult_as_it_was():
    assert not set(hand_phantoms.PATIENT_POOL) & set(hand_phantoms.CHILD_POOL[:1000])
    assert hand_phantoms.is_child(hand_phantoms.CHILD_POOL[0]) and not hand_phantoms.is_child(5)
    adult = hand_phantoms.patient_plan(5)
    assert "age_years" not in adult.anatomy and adult.anatomy["hand_scale"] >= 0.9


def test_a_child_is_small_intact_and_fills_the_radiograph():
    kid_ids = list(hand_phantoms.CHILD_POOL[:12])
    plans = [hand_phantoms.patient_plan(p) for p in kid_ids]
    ages = [p.anatomy["age_years"] for p in plans]
    assert 1.0 <= min(ages) and max(ages) <= 14 and max(ages) - min(ages) > 4
    for plan in plans:
        assert (plan.guss == 200).all() and plan.peak_label == "peak"       # no erosive OA in children
        assert plan.anatomy["hand_scale"] == pytest.approx(
            hand_phantoms.child_hand_scale(plan.anatomy["age_years"]), rel=0.07)
    young = min(zip(ages, kid_ids))[1]
    case = hand_phantoms.generate_hand(young, 0)
    adult = hand_phantoms.generate_hand(5, 0)
    h, w = case.image.shape
    for j in case.joints:
        x1, y1, x2, y2 = j.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    # framed on the hand: the joints are drawn bigger than an adult's, though the child's hand is smaller
    assert np.mean(case.boxes[:, 2] - case.boxes[:, 0]) > np.mean(adult.boxes[:, 2] - adult.boxes[:, 0])
    assert case.params["age_years"] == pytest.approx(min(ages))


def test_a_childs_joint_centre_lies_in_the_gap_before_the_epiphysis():
    """Along the finger, the joint's centre (the label) is darker than the bone ends on either side of it: the
    cartilage gap between the proximal bone's head and the next bone's epiphysis."""
    case = hand_phantoms.generate_hand(hand_phantoms.CHILD_POOL[3], 0)
    img = case.image.astype(np.float32)
    darker = 0
    for f in range(4):
        pip, dip = np.array(case.joints[f].center), np.array(case.joints[4 + f].center)
        axis = (dip - pip) / np.linalg.norm(dip - pip)
        reach = 0.45 * (case.joints[f].box[2] - case.joints[f].box[0])
        at = lambda p: img[int(round(p[1])), int(round(p[0]))]      # noqa: E731
        centre = np.mean([at(pip + t * axis) for t in (-1, 0, 1)])
        ends = min(np.mean([at(pip + s * reach * axis + t * axis) for t in (-1, 0, 1)]) for s in (-1, 1))
        darker += centre < ends
    assert darker >= 3


def test_a_childs_phalangeal_head_is_a_dome_facing_the_joint():
    """The proximal bone's head ends closest to the joint centre on the finger's axis and further away beside
    it (the condyles of a real child's phalanx), so the label sits at the dome's apex, not inside a flat end."""
    case = hand_phantoms.generate_hand(hand_phantoms.CHILD_POOL[3], 0)
    img = cv2.GaussianBlur(case.image.astype(np.float32), (0, 0), 1.0)
    domed = 0
    for f in range(4):
        pip, dip = np.array(case.joints[f].center), np.array(case.joints[4 + f].center)
        axis = (dip - pip) / np.linalg.norm(dip - pip)
        across = np.array([-axis[1], axis[0]])
        half = (case.joints[f].box[2] - case.joints[f].box[0]) / (2 * 1.22)   # about the bone end's half-width

        def head_starts(offset: float) -> float:
            """Distance proximal of the centre at which the bone (the brightest part of the profile) begins."""
            ts = np.arange(0.0, 3.0 * half, 0.5)
            prof = np.array([img[int(round(p[1])), int(round(p[0]))]
                             for p in (pip - t * axis + offset * across for t in ts)])
            bone = prof.max()
            return float(ts[np.argmax(prof > (prof[0] + bone) / 2)])

        domed += head_starts(0.0) + 1.0 < min(head_starts(0.6 * half), head_starts(-0.6 * half))
    assert domed >= 3


def test_children_hold_their_fingers_together_and_the_thumb_in():
    kids = [hand_phantoms.generate_hand(p, 0).params["pose"] for p in hand_phantoms.CHILD_POOL[:12]]
    adults = [hand_phantoms.generate_hand(p, 0).params["pose"] for p in range(12)]
    assert max(k["spread"] for k in kids) <= 0.8 < max(a["spread"] for a in adults)
    assert np.mean([k["thumb_abduction"] for k in kids]) < np.mean([a["thumb_abduction"] for a in adults])
