"""Bone marrow oedema measurement and the ASAS rule on hand-made volumes."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.sacroiliac_inflammation import (asas_positive, lesions_on_slice, marrow_reference, oedema_mask,
                                            sparcc_like)


def synthetic_stir(seed: int = 0):
    """A region of normal marrow N(400, 40) with a dark cortical rim (150) and two bright lesions (900)."""
    rng = np.random.default_rng(seed)
    stir = rng.normal(400, 40, (12, 64, 64)).astype(np.float32)
    region = np.zeros(stir.shape, bool)
    region[:, 8:56, 8:56] = True
    stir[:, 8:56, 8:10] = rng.normal(150, 20, (12, 48, 2))             # cortex: a dark tail
    lesion = np.zeros(stir.shape, bool)
    lesion[3:6, 20:26, 20:26] = True                                      # 3 slices x 36 px
    lesion[8, 40:44, 40:45] = True                                        # 1 slice x 20 px
    stir[lesion] = rng.normal(900, 30, int(lesion.sum()))
    stir[~region] = 50
    return stir, region, lesion


def test_the_reference_is_normal_marrow_not_the_lesions_or_the_cortex():
    stir, region, _ = synthetic_stir()
    ref = marrow_reference(stir, region)
    assert ref.mode == pytest.approx(400, abs=15)
    # The spread below the mode is normal marrow's, widened a little by the cortex below it.
    assert 30 < ref.lower_spread < 90
    assert ref.n_voxels == int(region.sum())


def test_extensive_oedema_does_not_move_the_reference():
    stir, region, _ = synthetic_stir()
    heavy = stir.copy()
    heavy[:, 30:50, 8:56] = np.random.default_rng(1).normal(800, 40, (12, 20, 48))   # 40% of the region
    assert marrow_reference(heavy, region).mode == pytest.approx(400, abs=20)


def test_oedema_mask_finds_the_lesions_and_drops_specks():
    stir, region, lesion = synthetic_stir()
    speck = (6, 50, 12)
    stir[speck] = 950                                                   # one bright voxel: noise
    mask = oedema_mask(stir, region, min_voxels=10)
    assert mask[lesion].all()
    assert not mask[speck]
    # Noise voxels just above the threshold join a lesion only at its border, never on their own.
    assert lesion.sum() <= mask.sum() <= 1.1 * lesion.sum()
    assert not oedema_mask(stir, region)[~region].any()                 # never outside the region


def test_lesions_are_counted_per_slice_by_connectivity():
    s = np.zeros((10, 10), bool)
    s[1:3, 1:3] = True
    s[3, 3] = True            # diagonal neighbour: same lesion (8-connected)
    s[6:8, 6:9] = True
    assert lesions_on_slice(s, min_pixels=1) == 2
    assert lesions_on_slice(s, min_pixels=6) == 1     # 5 pixels and 6 pixels


@pytest.mark.parametrize("slices, positive, expected", [
    ({3: 1, 4: 1}, True, (3, 4)),               # two consecutive slices
    ({2: 2}, True, (2,)),                       # two lesions on one slice
    ({2: 1, 5: 1}, False, ()),                  # two slices, not consecutive, one lesion each
    ({7: 1}, False, ()),                        # one lesion on one slice
    ({}, False, ()),
    ({0: 1, 1: 1, 2: 1, 6: 2}, True, (0, 1, 2, 6)),
])
def test_the_asas_rule(slices, positive, expected):
    mask = np.zeros((9, 40, 40), bool)
    for k, n in slices.items():
        for i in range(n):
            mask[k, 5 + 12 * i: 9 + 12 * i, 5:9] = True
    result = asas_positive(mask)
    assert result.positive is positive
    assert result.slices == expected
    assert result.lesions_per_slice == tuple(slices.get(k, 0) for k in range(9))


def test_asas_reason_is_worded():
    mask = np.zeros((4, 20, 20), bool)
    mask[1, 2:6, 2:6] = True
    assert "below the ASAS definition" in asas_positive(mask).reason
    mask[2, 2:6, 2:6] = True
    assert asas_positive(mask).reason == "oedema on two or more consecutive slices"


def two_joint_region(shape=(10, 60, 100)):
    """Two joints either side of column 50; each side's region spans 30 columns, rows 10-49."""
    region = np.zeros(shape, bool)
    region[2:9, 10:50, 10:40] = True      # patient's right joint (image left), line near column 25
    region[2:9, 10:50, 60:90] = True      # patient's left joint, line near column 75
    return region


def test_sparcc_counts_quadrants_on_the_six_slices_with_most_region():
    region = two_joint_region()
    stir = np.full(region.shape, 400, np.float32)
    mask = np.zeros(region.shape, bool)
    mask[4, 12:16, 12:16] = True           # right joint: upper, lateral (iliac)
    mask[4, 40:44, 30:34] = True           # right joint: lower, medial (sacral)
    stir[~region] = 2000                   # fluid brighter than the lesions: no intensity bonus
    result = sparcc_like(mask, region, stir, col_spacing_mm=0.5)    # at most 6.5 mm deep: no depth bonus
    assert [s.slice for s in result.slices] == [2, 3, 4, 5, 6, 7]
    on4 = next(s for s in result.slices if s.slice == 4)
    assert {q for q, v in on4.quadrants.items() if v} == {"right upper iliac", "right lower sacral"}
    assert result.total == 2


def test_sparcc_intensity_and_depth_bonuses():
    region = two_joint_region()
    stir = np.full(region.shape, 400, np.float32)
    stir[:, 0:5, :] = 2000                 # fluid outside the region sets the intense level
    mask = np.zeros(region.shape, bool)
    mask[5, 20:24, 62:64] = True           # left joint, far lateral: 11-13 columns from the line at 75
    stir[5][mask[5]] = 2100                # as bright as fluid
    result = sparcc_like(mask, region, stir, col_spacing_mm=1.0)
    on5 = next(s for s in result.slices if s.slice == 5)
    assert on5.intense == {"right": False, "left": True}
    assert on5.deep == {"right": False, "left": True}
    assert on5.score == 3 and result.total == 3
    # At half a millimetre per column the same lesion is 6 mm deep: no depth bonus.
    assert sparcc_like(mask, region, stir, col_spacing_mm=0.5).total == 2


# -- the learned segmenter's frame ------------------------------------------------------
def test_the_lesion_frame_crops_the_region_box_at_the_training_pixel_size_and_maps_back():
    from tasks.sacroiliac_inflammation import (LESION_CROP_MARGIN, LESION_MULTIPLE, LESION_PIXEL_MM, lesion_frame,
                                               lesion_input, lesion_mask, lesion_target)

    stir, region, lesion = synthetic_stir()
    frame = lesion_frame(region, LESION_PIXEL_MM)            # at the training pixel size: no rescaling
    low, high = max(0, 8 - LESION_CROP_MARGIN), min(64, 56 + LESION_CROP_MARGIN)     # the box and its margin
    assert frame.scale == 1.0 and frame.box == (low, high, low, high)
    assert all(n % LESION_MULTIPLE == 0 for n in frame.shape)
    x = lesion_input(stir, region, frame)
    assert x.shape == (12, *frame.shape, 3) and not x[..., 2].any()          # no T1: zeros
    in_lesion = lesion_target(lesion, frame)[..., 0] > 0.5
    in_region = x[..., 1] > 0.5
    # STIR in lower spreads above normal marrow, / 10: marrow about 0, the lesions over 3 spreads above it.
    assert abs(np.median(x[..., 0][in_region & ~in_lesion])) < 0.05 and x[..., 0][in_lesion].min() > 0.3
    # A perfect answer maps back onto the lesions, inside the region.
    assert np.array_equal(lesion_mask(lesion_target(lesion, frame), region, frame), lesion & region)
    # At twice the pixel size the crop is rescaled up and still maps back.
    coarse = lesion_frame(region, 2 * LESION_PIXEL_MM)
    assert coarse.scale == 2.0 and coarse.shape[0] >= 2 * (coarse.box[1] - coarse.box[0])
    back = lesion_mask(lesion_target(lesion, coarse), region, coarse)
    assert (back == (lesion & region)).mean() > 0.999
