"""Hand task building blocks: crop geometry, letterbox and detection decoding, CORAL decoding,
the plate/space split, the anatomy check, the metrics against hand-computed examples, and the training
targets and samplers."""
from __future__ import annotations

import numpy as np
import pytest

from imaging.normalize import to_model_input
from tasks import hand as hand_task
from tasks.metrics import coral_rank
from training.hand.data import (CTX_FACTOR, CTX_SIZE, augment_crop, coral_targets, detector_targets,
                                peak_class_weights, sampling_weights)
from training.hand.evaluate import average_precision, iou, scoring_metrics, within


# -- crops ------------------------------------------------------------------------------------
def test_crop_is_square_with_a_ten_percent_margin_centred_on_the_box():
    img = np.arange(200 * 300, dtype=np.float32).reshape(200, 300)
    box = (100.0, 50.0, 140.0, 80.0)                   # 40 wide, 30 high
    crop, (l, t, r, b) = hand_task.crop_square(img, box)
    assert crop.shape == (44, 44) and r - l == b - t == 44                  # 40 * 1.1
    assert (l + r) / 2 == pytest.approx(120, abs=0.5) and (t + b) / 2 == pytest.approx(65, abs=0.5)
    assert np.array_equal(crop, img[t:b, l:r])                               # from the original pixels
    tall = hand_task.square_crop_box((10, 10, 20, 60))                               # the larger side decides
    assert tall[2] - tall[0] == tall[3] - tall[1] == 55


def test_crop_is_clipped_at_the_image_border_and_padded():
    img = np.full((100, 120), 0.5, np.float32)
    crop, (l, t, r, b) = hand_task.crop_square(img, (-10.0, 80.0, 30.0, 110.0))    # off the left and bottom edges
    assert crop.shape == (44, 44) and l < 0 and b > 100
    inside = crop[max(0, -t):100 - t, -l:]
    assert np.all(inside == 0.5)
    assert np.all(crop[:, :-l] == 0.0) and np.all(crop[100 - t:, :] == 0.0)   # padding outside the image
    assert crop.sum() == pytest.approx(0.5 * (min(r, 120) - 0) * (100 - t))


def test_scorer_input_shapes_and_one_hot_planes():
    crop = np.random.default_rng(0).random((50, 50)).astype(np.float32)
    x = hand_task.scorer_input(crop, 64)
    assert x.shape == (64, 64, 1) and 0 <= x.min() and x.max() <= 1
    xp = hand_task.scorer_input(crop, 64, joint_index=5)
    assert xp.shape == (64, 64, 9) and np.all(xp[:, :, 1 + 5] == 1) and xp[:, :, 1:].sum() == 64 * 64


# -- detector geometry -----------------------------------------------------------------
def test_letterbox_round_trip_and_detection_decoding():
    lb = hand_task.letterbox_geometry(768, 640, 256)
    assert lb.pad_y == 0 and lb.pad_x == (256 - 213) // 2
    pts = np.array([[100.0, 700.0], [639.0, 0.0]])
    assert np.allclose(lb.to_image(lb.to_input(pts)), pts)
    heat = np.zeros((64, 64, 8), np.float32)
    box = np.zeros((64, 64, 4), np.float32)
    cx_in, cy_in = lb.to_input(np.array([300.0, 200.0]))
    ix, iy = int(cx_in // 4), int(cy_in // 4)
    heat[iy, ix, 2] = 0.9
    box[iy, ix] = (24 / hand_task.BOX_UNIT, 16 / hand_task.BOX_UNIT, cx_in / 4 - ix, cy_in / 4 - iy)
    d = hand_task.decode_detections(heat, box, lb)[2]
    assert d["name"] == "PIP4" and d["confidence"] == pytest.approx(0.9)
    assert d["center"] == pytest.approx((300.0, 200.0), abs=1e-3)
    x1, y1, x2, y2 = d["box"]
    assert (x2 - x1) == pytest.approx(24 / lb.scale_x, rel=1e-6) and (y2 - y1) == pytest.approx(16 / lb.scale_y)
    assert [hand_task.classify_detection(c) for c in (0.1, 0.4, 0.9)] == ["missing", "unsure", "found"]


def test_detector_targets_put_an_exact_peak_and_the_box_at_the_centre_cell():
    centres = np.array([[[41.0, 22.0]] * 8], np.float32)
    sizes = np.array([[[20.0, 12.0]] * 8], np.float32)
    centres[0, 7] = (-50, -50)                            # outside: no target
    heat, reg = detector_targets(centres, sizes, 64)
    assert heat[0, 5, 10, 0] == 1.0 and heat[0].max() == 1.0 and heat[0, :, :, 7].max() == 0.0
    assert reg[0, 5, 10].tolist() == pytest.approx([20 / 32, 12 / 32, 0.25, 0.5, 1.0])
    assert reg[0, :, :, 4].sum() == 1


# -- CORAL decoding and the split --------------------------------------------------------
def test_coral_decoding_counts_thresholds_and_clamps_to_190():
    probs = np.array([0.99] * 7 + [0.6, 0.4] + [0.01] * 11)          # passes 8 thresholds -> 80
    assert coral_rank(probs) == 8 and hand_task.stage2_score(probs) == 80
    assert hand_task.stage2_score(np.full(20, 0.9)) == 190                     # 200 is never a stage-2 answer
    assert hand_task.stage2_score(np.full(20, 0.1)) == 0
    assert coral_targets(np.array([0, 80, 190]), 20)[1].tolist() == [1.0] * 8 + [0.0] * 12
    assert coral_targets(np.array([190]), 20)[0].sum() == 19


def test_two_stage_decoding_and_plate_space_split():
    g8 = np.array([0.9] * 8 + [0.1] * 12)                              # stage 2: 80
    plate_hi, plate_lo = np.array([0.9] * 6 + [0.1] * 4), np.array([0.9] * 2 + [0.1] * 8)
    peak = hand_task.decode_scores(0.7, g8, plate_hi, plate_lo)
    assert (peak["guss"], peak["plate"], peak["space"], peak["stage"]) == (200, 100, 100, 1)
    s = hand_task.decode_scores(0.2, g8, plate_hi, plate_lo)                   # heads say plate 60, space 20
    assert s["stage"] == 2 and s["guss"] == 80 and (s["plate"], s["space"]) == (60, 20)
    assert hand_task.split_guss(190, 100, 100) == (100, 90) or hand_task.split_guss(190, 100, 100) == (90, 100)
    for g in range(0, 200, 10):
        for ph in range(0, 101, 10):
            for sh in range(0, 101, 10):
                p, q = hand_task.split_guss(g, ph, sh)
                assert p + q == g and 0 <= p <= 100 and 0 <= q <= 100 and p % 10 == q % 10 == 0


# -- anatomy --------------------------------------------------------------------------------
def _left_hand(dx=30.0):
    """Fingers up; a left hand has the index finger on the image right."""
    c = {}
    for i, f in enumerate((2, 3, 4, 5)):
        x = 300 - i * dx
        c[f"PIP{f}"], c[f"DIP{f}"] = (x, 300.0), (x, 240.0)
    return c


def test_anatomy_check_accepts_a_plausible_hand_and_its_mirror():
    ok = hand_task.anatomy_check(_left_hand(), p_right=0.05)
    assert ok["ok"] and ok["order_side"] == "left" and ok["side"] == "left"
    mirrored = {k: (600 - x, y) for k, (x, y) in _left_hand().items()}
    assert hand_task.anatomy_check(mirrored, p_right=0.97)["ok"]
    partial = dict(_left_hand())
    partial.pop("DIP4")
    assert hand_task.anatomy_check(partial, p_right=0.05)["ok"]                 # a missing joint is not an error


def test_anatomy_check_flags_swapped_fingers_reversed_dip_and_wrong_side():
    swapped = _left_hand()
    swapped["PIP2"], swapped["PIP3"] = swapped["PIP3"], swapped["PIP2"]
    assert not hand_task.anatomy_check(swapped, 0.05)["ok"]
    reversed_dip = _left_hand()
    reversed_dip["DIP3"] = (reversed_dip["PIP3"][0], 360.0)             # DIP3 below PIP3
    res = hand_task.anatomy_check(reversed_dip, 0.05)
    assert not res["ok"] and any("DIP3" in p for p in res["problems"])
    wrong_side = hand_task.anatomy_check(_left_hand(), p_right=0.95)
    assert not wrong_side["ok"] and "right hand" in " ".join(wrong_side["problems"])
    assert hand_task.anatomy_check(_left_hand(), p_right=0.6)["ok"]             # laterality unsure: order not judged


# -- metrics against hand-computed examples ----------------------------------------------
def test_protocol_metrics_by_hand():
    pred = np.array([200, 200, 180, 150, 60])
    true = np.array([200, 170, 190, 100, 70])
    m = scoring_metrics(pred, true)
    assert m["mae_all"] == pytest.approx((0 + 30 + 10 + 50 + 10) / 5)
    assert m["mae_nonpeak"] == pytest.approx((30 + 10 + 50 + 10) / 4)
    assert m["w20_all"] == pytest.approx(3 / 5)                           # |d| <= 20: 0, 10, 10
    assert m["w20_nonpeak"] == pytest.approx(2 / 4)
    assert within([10], [30]) == 1.0 and within([10], [31]) == 0.0


def test_iou_and_average_precision_by_hand():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    # ranked: TP, FP, TP with 2 positives -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    ap = average_precision([0.9, 0.8, 0.7], [True, False, True], 2)
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert average_precision([0.9, 0.1], [True, True], 2) == pytest.approx(1.0)
    assert average_precision([0.9], [False], 1) == 0.0


def test_samplers_are_inverse_frequency():
    guss = np.array([200, 200, 200, 200, 180, 180, 40])
    cw = peak_class_weights(guss)
    assert cw[1] == pytest.approx(7 / 8) and cw[0] == pytest.approx(7 / 6)
    nonpeak = guss[guss < 200]
    w = sampling_weights(nonpeak)
    assert w.sum() == pytest.approx(1.0)
    assert w[2] == pytest.approx(0.5) and w[0] == w[1] == pytest.approx(0.25)   # each value drawn equally often


def test_training_augmentation_keeps_the_serving_geometry():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:CTX_SIZE, 0:CTX_SIZE]
    smooth = 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 0.002 * xx
    ctx = (np.clip(smooth, 0, 1) * 255).astype(np.uint8)
    plain = augment_crop(ctx, None, train=False)
    assert plain.shape == (64, 64) and plain.min() >= 0 and plain.max() <= 1
    side = CTX_SIZE / CTX_FACTOR
    lo = int(round((CTX_SIZE - side) / 2))
    ref = to_model_input(ctx[lo:lo + int(round(side)), lo:lo + int(round(side))].astype(np.float32) / 255, (64, 64))
    assert np.corrcoef(plain.ravel(), ref.ravel())[0, 1] > 0.95           # the centre of the context crop
    outs = [augment_crop(ctx, rng) for _ in range(4)]
    assert all(o.shape == (64, 64) for o in outs) and not np.allclose(outs[0], outs[1])
