"""Intensity normalisation shared by training and inference.

Training and serving must see identical preprocessing, so both import these
functions; they are pure (no state, no I/O) and cheap.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["normalise_volume", "percentile_scale", "to_model_input", "to_uint8"]

# An MRI volume is windowed once as a whole, so that slices keep their relative brightness.
VOLUME_LOW_PERCENTILE, VOLUME_HIGH_PERCENTILE = 1.0, 99.5
VOLUME_CEILING = 1.5     # bright fluid may exceed the high percentile; the models keep some of it


def percentile_scale(img: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Map the [low, high] percentile range of ``img`` linearly onto [0, 1].

    Percentiles rather than min/max so that a few hot pixels, burnt-in text or
    padding do not squash the anatomy into a narrow band. A constant image has
    no contrast to stretch and comes back as zeros.
    """
    arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if arr.size == 0:
        return arr
    lo, hi = np.percentile(arr, [low, high])
    if not hi > lo:
        # The percentile band can collapse on mostly flat images with a small
        # object; fall back to the full range before giving up.
        lo, hi = float(arr.min()), float(arr.max())
        if not hi > lo:
            return np.zeros_like(arr)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def normalise_volume(voxels: np.ndarray, ceiling: float = VOLUME_CEILING) -> np.ndarray:
    """A volume's intensities mapped so that its 1st percentile is 0 and its 99.5th is 1, clipped to 0-`ceiling`
    (1.0 for display; the models' 1.5 by default)."""
    voxels = np.asarray(voxels, dtype=np.float32)
    lo, hi = np.percentile(voxels, [VOLUME_LOW_PERCENTILE, VOLUME_HIGH_PERCENTILE])
    return np.clip((voxels - lo) / max(float(hi - lo), 1e-6), 0.0, ceiling).astype(np.float32)


def to_model_input(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D image to ``size`` = (height, width), then ``percentile_scale``.

    INTER_AREA averages when shrinking (no aliasing of trabecular texture);
    INTER_LINEAR when growing, where INTER_AREA has nothing to average.
    """
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {arr.shape}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"invalid target size {size}")
    if arr.shape != (h, w):
        shrinking = h * w < arr.shape[0] * arr.shape[1]
        interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        arr = cv2.resize(arr, (w, h), interpolation=interp)  # cv2 wants (w, h)
    return percentile_scale(arr)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 (values outside are clipped, NaN -> 0)."""
    arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
