"""Bone marrow oedema (BME) on sacroiliac STIR: the intensity principle and the ASAS rule, in NumPy.

The "volume of hyperintense inflammation" principle: inside the periarticular region, marrow brighter
than normal marrow by a margin is oedema. Readers take the reference from a hand-drawn normal-marrow
ROI; here it is found automatically, as the dominant mode of the region's STIR intensities and the
spread of the intensities below that mode. The mode is what most of the region's marrow looks like
(oedema, even when extensive, is a bright tail, and cortical bone and joint space a dark one), and
the lower half-spread is not inflated by the oedema it is meant to find.

The ASAS definition of a positive MRI for active sacroiliitis (Rudwaleit et al. 2009; Lambert et al.
2016): BME in subchondral or periarticular bone on at least two consecutive slices, or at least two
lesions on one slice. A lesion is an 8-connected group of oedema pixels on one slice.

Volumes are canonical (slices, rows, cols) arrays from `imaging.volume`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imaging.normalize import normalise_volume

# Chosen by cross-validation against the readers on the labelled cases (benchmarks/sacroiliac_oedema.py).
DEFAULT_MARGIN_SD = 1.5          # threshold = reference mode + margin x lower spread
DEFAULT_MIN_LESION_VOXELS = 30   # smaller 3D components are noise, vessels or partial volume
MIN_LESION_PIXELS = 4            # a lesion on one slice has at least this many pixels
HISTOGRAM_BINS = 128


@dataclass(frozen=True)
class MarrowReference:
    """Normal marrow's STIR intensity, estimated from the region itself."""

    mode: float          # the most common intensity: normal marrow
    lower_spread: float  # root mean square distance below the mode
    n_voxels: int        # region voxels it was estimated from

    def threshold(self, margin_sd: float = DEFAULT_MARGIN_SD) -> float:
        return self.mode + margin_sd * self.lower_spread


def marrow_reference(stir: np.ndarray, region: np.ndarray) -> MarrowReference:
    """The normal-marrow reference inside `region` (bool, same shape as `stir`)."""
    values = np.asarray(stir, dtype=np.float64)[np.asarray(region, dtype=bool)]
    if values.size < 100:
        raise ValueError("the region holds too few voxels to estimate normal marrow")
    lo, hi = np.percentile(values, [1, 99])
    if hi <= lo:
        return MarrowReference(float(lo), 0.0, int(values.size))
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(lo, hi))
    # A light smoothing keeps the mode from landing on one noisy bin.
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), 2.0)
    peak = int(np.argmax(smooth))
    mode = float((edges[peak] + edges[peak + 1]) / 2)
    below = values[values <= mode]
    spread = float(np.sqrt(np.mean((below - mode) ** 2))) if below.size else 0.0
    return MarrowReference(mode, spread, int(values.size))


def oedema_mask(stir: np.ndarray, region: np.ndarray, reference: MarrowReference | None = None,
                margin_sd: float = DEFAULT_MARGIN_SD, min_voxels: int = DEFAULT_MIN_LESION_VOXELS) -> np.ndarray:
    """Voxels of the region brighter than the reference threshold, in 3D components of `min_voxels` or more."""
    region = np.asarray(region, dtype=bool)
    reference = reference or marrow_reference(stir, region)
    bright = region & (np.asarray(stir) > reference.threshold(margin_sd))
    if min_voxels <= 1 or not bright.any():
        return bright
    labels, n = ndimage.label(bright)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def lesions_on_slice(mask2d: np.ndarray, min_pixels: int = MIN_LESION_PIXELS) -> int:
    """Number of 8-connected lesions of at least `min_pixels` pixels on one slice."""
    labels, n = ndimage.label(np.asarray(mask2d, dtype=bool), structure=np.ones((3, 3), bool))
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int(np.count_nonzero(sizes >= min_pixels))


@dataclass(frozen=True)
class AsasResult:
    positive: bool
    slices: tuple[int, ...]          # the slices (0-based, canonical order) that meet the definition
    reason: str                      # in words, for the page
    lesions_per_slice: tuple[int, ...]


def asas_positive(mask: np.ndarray, min_pixels: int = MIN_LESION_PIXELS) -> AsasResult:
    """The ASAS rule on an oedema mask (slices, rows, cols): two consecutive slices, or two lesions on one."""
    counts = tuple(lesions_on_slice(s, min_pixels) for s in np.asarray(mask, dtype=bool))
    with_bme = [k for k, n in enumerate(counts) if n > 0]
    consecutive = sorted({k for k in with_bme if k + 1 in with_bme} | {k + 1 for k in with_bme if k + 1 in with_bme})
    several = [k for k, n in enumerate(counts) if n >= 2]
    slices = tuple(sorted(set(consecutive) | set(several)))
    if consecutive and several:
        reason = "oedema on two or more consecutive slices and two or more lesions on one slice"
    elif consecutive:
        reason = "oedema on two or more consecutive slices"
    elif several:
        reason = "two or more lesions on one slice"
    elif with_bme:
        reason = "a single lesion on a single slice: below the ASAS definition"
    else:
        reason = "no oedema found"
    return AsasResult(bool(slices), slices, reason, counts)


# -- SPARCC-style count (research score) ------------------------------------------
SPARCC_SLICES = 6               # consecutive slices scored
SPARCC_DEPTH_MM = 10.0          # a lesion this deep from the joint line scores the depth bonus


@dataclass(frozen=True)
class SparccSlice:
    slice: int
    quadrants: dict[str, bool]   # "right upper iliac", ... : BME present
    intense: dict[str, bool]     # per joint ("right", "left"): a lesion as bright as fluid
    deep: dict[str, bool]        # per joint: a lesion >= 1 cm deep from the joint line

    @property
    def score(self) -> int:
        return sum(self.quadrants.values()) + sum(self.intense.values()) + sum(self.deep.values())


@dataclass(frozen=True)
class SparccResult:
    total: int                   # 0-72
    slices: tuple[SparccSlice, ...]


def sparcc_like(mask: np.ndarray, region: np.ndarray, stir: np.ndarray, col_spacing_mm: float,
                fluid_level: float | None = None) -> SparccResult:
    """A SPARCC-style count on the six consecutive slices with the most joint region.

    The SPARCC method reads each joint's four quadrants (iliac and sacral, upper and lower) on six
    consecutive semi-coronal slices, with a bonus per joint and slice for intense signal and for depth.
    Without a joint-line segmentation the geometry is approximated from the region: the two joints
    lie either side of the region's midline column; on each slice a joint's line is the median column
    of its side's region (sacrum medial, ilium lateral) and its upper and lower halves split at the
    median row. "Intense" means a lesion whose 90th intensity percentile reaches `fluid_level` (by
    default the 99th percentile of STIR outside the region: fluid, such as the spinal canal's).
    A research score, not the validated SPARCC reading.
    """
    mask, region = np.asarray(mask, bool), np.asarray(region, bool)
    stir = np.asarray(stir, np.float32)
    if not region.any():
        return SparccResult(0, ())
    if fluid_level is None:
        outside = stir[~region]
        fluid_level = float(np.percentile(outside, 99)) if outside.size else float(stir.max())
    area = region.sum(axis=(1, 2))
    n = min(SPARCC_SLICES, len(area))
    start = int(np.argmax(np.convolve(area, np.ones(n), mode="valid")))
    midline = int(round(np.nonzero(region)[2].mean()))
    scored = []
    for k in range(start, start + n):
        quadrants, intense, deep = {}, {}, {}
        # The patient's right is on the image's left.
        for side, cols in (("right", slice(0, midline)), ("left", slice(midline, None))):
            side_region = np.zeros_like(region[k])
            side_region[:, cols] = region[k][:, cols]
            side_mask = mask[k] & side_region
            if not side_region.any():
                for q in ("upper iliac", "lower iliac", "upper sacral", "lower sacral"):
                    quadrants[f"{side} {q}"] = False
                intense[side] = deep[side] = False
                continue
            rows, columns = np.nonzero(side_region)
            joint_col, mid_row = np.median(columns), np.median(rows)
            lesion_rows, lesion_cols = np.nonzero(side_mask)
            lateral = lesion_cols < joint_col if side == "right" else lesion_cols > joint_col
            upper = lesion_rows < mid_row
            for name, sel in (("upper iliac", lateral & upper), ("lower iliac", lateral & ~upper),
                              ("upper sacral", ~lateral & upper), ("lower sacral", ~lateral & ~upper)):
                quadrants[f"{side} {name}"] = bool(sel.any())
            intense[side] = deep[side] = False
            labels, count = ndimage.label(side_mask, structure=np.ones((3, 3), bool))
            for i in range(1, count + 1):
                lesion = labels == i
                if np.percentile(stir[k][lesion], 90) >= fluid_level:
                    intense[side] = True
                if np.abs(np.nonzero(lesion)[1] - joint_col).max() * col_spacing_mm >= SPARCC_DEPTH_MM:
                    deep[side] = True
        scored.append(SparccSlice(k, quadrants, intense, deep))
    return SparccResult(sum(s.score for s in scored), tuple(scored))


# -- the learned lesion segmenter's inputs (shared by serving and training) -------------
LESION_PIXEL_MM = 0.595          # the in-plane pixel size it was trained at (the real studies' own)
LESION_CROP_MARGIN = 12          # pixels around the region's box, at LESION_PIXEL_MM
LESION_MULTIPLE = 8              # crops are padded to a multiple of this (three poolings)
STIR_SCALE = 10.0                # STIR in lower spreads above normal marrow, divided by this
T1_CHANNEL = 2


@dataclass(frozen=True)
class LesionFrame:
    """Where the lesion segmenter's crop lies: the study grid's box, the scale to the training pixel size and
    the padded crop size."""

    box: tuple[int, int, int, int]           # y1, y2, x1, x2 on the study's grid
    scale: float                             # crop pixels per study pixel
    shape: tuple[int, int]                   # (rows, cols) of the model input, padded


def lesion_frame(region: np.ndarray, pixel_mm: float) -> LesionFrame:
    """The crop around the region's box over all slices, rescaled to the training pixel size."""
    rows, cols = np.nonzero(np.asarray(region, bool).any(axis=0))
    scale = float(pixel_mm) / LESION_PIXEL_MM
    margin = int(np.ceil(LESION_CROP_MARGIN / scale))
    h, w = region.shape[1:]
    y1, y2 = max(0, rows.min() - margin), min(h, rows.max() + 1 + margin)
    x1, x2 = max(0, cols.min() - margin), min(w, cols.max() + 1 + margin)
    size = [int(np.ceil(round(n * scale) / LESION_MULTIPLE) * LESION_MULTIPLE) for n in (y2 - y1, x2 - x1)]
    return LesionFrame((int(y1), int(y2), int(x1), int(x2)), scale, (size[0], size[1]))


def _to_frame(slices: np.ndarray, frame: LesionFrame, interpolation: int) -> np.ndarray:
    import cv2

    y1, y2, x1, x2 = frame.box
    out = np.zeros((len(slices), *frame.shape), np.float32)
    h, w = round((y2 - y1) * frame.scale), round((x2 - x1) * frame.scale)
    for k, s in enumerate(slices):
        out[k, :h, :w] = cv2.resize(np.ascontiguousarray(s[y1:y2, x1:x2], np.float32), (w, h),
                                    interpolation=interpolation)
    return out


def lesion_input(stir: np.ndarray, region: np.ndarray, frame: LesionFrame, t1: np.ndarray | None = None,
                 reference: MarrowReference | None = None) -> np.ndarray:
    """(slices, rows, cols, 3) float32: STIR in lower spreads above the region's normal marrow (/ STIR_SCALE),
    the region, and T1 (volume percentiles to 0-1) or zeros when the study has no T1."""
    import cv2

    reference = reference or marrow_reference(stir, region)
    spread = max(reference.lower_spread, 1e-6)
    z = np.clip((np.asarray(stir, np.float32) - reference.mode) / spread / STIR_SCALE, -1.0, 3.0)
    channels = [_to_frame(z, frame, cv2.INTER_AREA), _to_frame(region.astype(np.float32), frame, cv2.INTER_NEAREST)]
    if t1 is not None:
        channels.append(_to_frame(normalise_volume(t1), frame, cv2.INTER_AREA))
    else:
        channels.append(np.zeros_like(channels[0]))
    return np.stack(channels, axis=-1)


def lesion_target(mask: np.ndarray, frame: LesionFrame) -> np.ndarray:
    import cv2

    return _to_frame(np.asarray(mask, np.float32), frame, cv2.INTER_AREA)[..., None]


def lesion_mask(probabilities: np.ndarray, region: np.ndarray, frame: LesionFrame,
                threshold: float = 0.5) -> np.ndarray:
    """The segmenter's (slices, rows, cols[, 1]) output back on the study's grid, inside the region."""
    import cv2

    probs = np.asarray(probabilities, np.float32)
    if probs.ndim == 4:
        probs = probs[..., 0]
    y1, y2, x1, x2 = frame.box
    h, w = round((y2 - y1) * frame.scale), round((x2 - x1) * frame.scale)
    out = np.zeros(region.shape, bool)
    for k, p in enumerate(probs):
        out[k, y1:y2, x1:x2] = cv2.resize(p[:h, :w], (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR) > threshold
    return out & np.asarray(region, bool)
