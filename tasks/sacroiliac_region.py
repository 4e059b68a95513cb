"""The sacroiliac disease region on a study: the segmenter's inputs and outputs, shared by serving and training.

The region segmenter reads 2.5D stacks: each slice with its two neighbours as channels (the slice
before and after; the first and last slices repeat themselves), at REGION_SIZE x REGION_SIZE, from a
volume normalised once as a whole (`imaging.normalize.normalise_volume`: percentiles over the volume, never
per slice, so that neighbouring slices keep their relative brightness). T1 and STIR of one study are on the same grid, so one region
serves both.
"""
from __future__ import annotations

import cv2
import numpy as np

REGION_SIZE = 128           # 336 px studies at 1.56 mm: the region is tens of mm wide; 2 CPU cores train it in minutes


def slice_stacks(volume01: np.ndarray, size: int = REGION_SIZE) -> np.ndarray:
    """(slices, size, size, 3) float32: every slice with its neighbours, resized (area) to `size`."""
    n = volume01.shape[0]
    resized = np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_AREA) for s in volume01])
    before = resized[np.maximum(np.arange(n) - 1, 0)]
    after = resized[np.minimum(np.arange(n) + 1, n - 1)]
    return np.stack([before, resized, after], axis=-1).astype(np.float32)


def region_target(mask: np.ndarray, size: int = REGION_SIZE) -> np.ndarray:
    """(slices, size, size, 1) float32 target from a (slices, H, W) mask (nearest neighbour)."""
    return np.stack([cv2.resize(np.asarray(m, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
                     for m in mask])[..., None].astype(np.float32)


def region_mask(probabilities: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """(slices, H, W) bool on the study's grid from the segmenter's (slices, size, size[, 1]) output."""
    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.ndim == 4:
        probs = probs[..., 0]
    height, width = shape
    return np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) > threshold for p in probs])
