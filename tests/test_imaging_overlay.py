"""imaging.overlay (and the small imaging.normalize helpers it builds on)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from imaging.normalize import percentile_scale, to_model_input, to_uint8
from imaging.overlay import (
    boxes_overlay,
    disagreement_overlay,
    encode_png,
    grey_to_rgb,
    heatmap_overlay,
    mask_overlay,
)

RED, GREEN = (255, 0, 0), (0, 255, 0)


def grey(h: int = 60, w: int = 80, value: float = 0.5) -> np.ndarray:
    return np.full((h, w), value, np.float32)


def is_grey(px: np.ndarray) -> bool:
    return bool(np.all(px[..., 0] == px[..., 1]) and np.all(px[..., 1] == px[..., 2]))


def decode_png_rgb(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr


# --------------------------------------------------------------------------- basics

def test_grey_to_rgb():
    img = np.linspace(0, 1, 60 * 80, dtype=np.float32).reshape(60, 80)
    rgb = grey_to_rgb(img)
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8
    assert is_grey(rgb) and rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def test_encode_png_round_trip_keeps_rgb_order():
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[:, :25] = RED
    rgb[:, 25:] = (10, 20, 200)
    data = encode_png(rgb)
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_png_rgb(data), rgb)
    g = (np.arange(40 * 50) % 256).astype(np.uint8).reshape(40, 50)
    np.testing.assert_array_equal(decode_png_rgb(encode_png(g)), g)


def test_encode_png_rejects_wrong_input():
    with pytest.raises(ValueError):
        encode_png(np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((10, 10, 2), np.uint8))


# --------------------------------------------------------------------------- masks

def test_mask_overlay_colours_labels_and_leaves_background():
    img = grey()
    labels = np.zeros((60, 80), np.int32)
    labels[10:30, 10:30] = 1
    labels[35:55, 40:70] = 2
    out = mask_overlay(img, labels, {1: RED, 2: GREEN}, alpha=0.5, contour=False)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    inside1, inside2 = out[20, 20], out[45, 55]
    assert inside1[0] > inside1[1] + 50 and inside1[0] > inside1[2] + 50  # reddish
    assert inside2[1] > inside2[0] + 50  # greenish
    background = out[labels == 0]
    assert is_grey(background) and np.all(background == grey_to_rgb(img)[labels == 0])


def test_mask_overlay_draws_contours_and_resizes_nearest():
    img = grey(128, 128)
    small = np.zeros((32, 32), np.uint8)  # model-sized mask, 4x smaller than the image
    small[8:24, 8:24] = 3
    out = mask_overlay(img, small, {3: GREEN}, alpha=0.3, contour=True)
    assert out.shape == (128, 128, 3)
    assert tuple(out[32, 64]) == GREEN  # on the edge of the upscaled square: contour colour
    assert tuple(out[64, 64]) != GREEN  # inside: a blend, not solid
    assert is_grey(out[5:20, 5:20])  # far outside the region: untouched


def test_mask_overlay_unknown_label_still_visible():
    labels = np.zeros((60, 80), np.uint8)
    labels[20:40, 20:40] = 7
    out = mask_overlay(grey(), labels, {}, contour=False)
    assert not is_grey(out[30:31, 30:31])


# --------------------------------------------------------------------------- heatmaps

def test_heatmap_overlay_shape_and_colour_direction():
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 5.0  # any range, any size
    out = heatmap_overlay(grey(70, 70), heat, alpha=0.6)
    assert out.shape == (70, 70, 3) and out.dtype == np.uint8
    centre, corner = out[35, 35].astype(int), out[0, 0].astype(int)
    assert centre[0] > centre[2]  # hot = red end of JET
    assert corner[2] > corner[0]  # cold = blue end


@pytest.mark.parametrize("heat", [np.full((5, 5), 0.7), np.zeros((60, 80)), np.full((5, 5), np.nan)],
                         ids=["constant", "zeros", "nan"])
def test_heatmap_overlay_constant_and_nan_heat(heat):
    """A map that points nowhere leaves the image as it is (no tint), at the image's size."""
    image = grey()
    np.testing.assert_array_equal(heatmap_overlay(image, heat), grey_to_rgb(image))
    varied = heatmap_overlay(image, np.arange(25.0).reshape(5, 5))
    assert not is_grey(varied)                                   # a real map is drawn


def test_heatmap_overlay_draws_mask_contour_in_white():
    mask = np.zeros((60, 80), bool)
    mask[15:45, 20:60] = True
    heat = np.random.default_rng(0).random((8, 8))
    without = heatmap_overlay(grey(), heat, mask=None)
    with_mask = heatmap_overlay(grey(), heat, mask=mask)
    assert tuple(with_mask[15, 40]) == (255, 255, 255)  # top edge of the region
    assert tuple(without[15, 40]) != (255, 255, 255)
    np.testing.assert_array_equal(with_mask[30, 40], without[30, 40])  # inside unchanged


# --------------------------------------------------------------------------- boxes and disagreement

def test_boxes_overlay_draws_box_and_label():
    boxes = [
        {"x1": 10, "y1": 30, "x2": 50, "y2": 55, "label": "MCP2", "colour": RED},
        {"x1": -5, "y1": -5, "x2": 500, "y2": 20.7, "label": "edge", "colour": GREEN},  # clipped
        {"x1": 60, "y1": 5, "x2": 70, "y2": 15},  # no label, default colour
    ]
    out = boxes_overlay(grey(), boxes)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert tuple(out[42, 10]) == RED  # left edge of the first box
    assert not is_grey(out[20:30, 10:50])  # label strip above it
    assert np.array_equal(boxes_overlay(grey(), []), grey_to_rgb(grey()))


def test_disagreement_overlay():
    a = np.zeros((60, 80), np.uint8)
    b = np.zeros((60, 80), np.uint8)
    a[10:40, 10:40] = 1
    b[10:40, 20:50] = 1
    out = disagreement_overlay(grey(), a, b)
    base = grey_to_rgb(grey())
    differ, agree = out[25, 15].astype(int), out[25, 30].astype(int)
    assert differ[0] > 150 and differ[2] > 150 and differ[1] < 100  # magenta
    assert 0 < np.abs(agree - base[25, 30]).sum() < np.abs(differ - base[25, 15]).sum()  # faint
    assert np.array_equal(out[55, 75], base[55, 75])  # both background
    small = disagreement_overlay(grey(), a[::2, ::2], b)  # a smaller mask is resized
    assert small.shape == (60, 80, 3)


# --------------------------------------------------------------------------- normalize

def test_percentile_scale():
    img = np.linspace(-100, 400, 10_000, dtype=np.float64).reshape(100, 100)
    img[0, 0] = 1e6  # one hot pixel must not squash the rest
    out = percentile_scale(img)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < out[50, 50] < 0.6
    assert np.all(percentile_scale(np.full((8, 8), 3.0)) == 0)


def test_to_model_input_and_uint8():
    img = np.random.default_rng(0).random((300, 200)).astype(np.float32)
    small = to_model_input(img, (64, 48))
    assert small.shape == (64, 48) and small.dtype == np.float32
    assert 0.0 <= small.min() and small.max() <= 1.0
    big = to_model_input(img[:20, :20], (64, 64))
    assert big.shape == (64, 64)
    u8 = to_uint8(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0, np.nan]]))
    assert u8.dtype == np.uint8 and u8.tolist() == [[0, 0, 128, 255, 255, 0]]
