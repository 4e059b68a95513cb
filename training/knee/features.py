"""Simple image measurements of a knee in canonical orientation, used only to DESCRIBE phenotype clusters.

They never enter the grade or the clustering; the catalogue compares each cluster's mean with the other
knees of its grade (z-scores) and words the largest differences. Canonical orientation: medial
compartment on the image left. All measurements are crude proxies from intensity profiles:

    jsw_medial, jsw_lateral     joint-space size: around the joint line (the deepest dark valley of the
                                row profile), per column the summed darkness below the lower of the two
                                bone shoulders (femur above, tibia below); median over the compartment
    sclerosis_medial/_lateral   brightness of the subchondral tibial band below the joint line minus the
                                deeper tibia
    margin_medial/_lateral      brightness at the joint-line level at the outer margins (osteophytes add
                                bone there)
    texture                     high-frequency energy in the tibia (trabecular contrast)
    calcification_medial/_lat.  a bright line INSIDE the joint space (chondrocalcinosis): per column, how far
                                the brightest point between the two bone shoulders rises above the darker
                                of its two sides (zero for a plain valley); median over the compartment
"""
from __future__ import annotations

import cv2
import numpy as np


FEATURE_TEXT = {
    "jsw_medial": ("narrower medial joint space", "wider medial joint space"),
    "jsw_lateral": ("narrower lateral joint space", "wider lateral joint space"),
    "sclerosis_medial": ("less medial subchondral sclerosis", "more medial subchondral sclerosis"),
    "sclerosis_lateral": ("less lateral subchondral sclerosis", "more lateral subchondral sclerosis"),
    "margin_medial": ("less bone at the medial joint margin", "more bone at the medial joint margin (osteophytes)"),
    "margin_lateral": ("less bone at the lateral joint margin", "more bone at the lateral joint margin (osteophytes)"),
    "texture": ("fainter trabecular texture", "coarser, higher-contrast trabecular texture"),
    "calcification_medial": ("clearer medial joint space", "a calcified line in the medial joint space (chondrocalcinosis)"),
    "calcification_lateral": ("clearer lateral joint space",
                              "a calcified line in the lateral joint space (chondrocalcinosis)"),
}
FEATURES = tuple(FEATURE_TEXT)


def joint_line_row(img: np.ndarray) -> int:
    """Row of the joint line: the deepest dark valley of the row profile over the central 70 % of columns."""
    s = img.shape[0]
    y0, y1 = int(0.3 * s), int(0.85 * s)
    prof = cv2.GaussianBlur(img[:, int(0.15 * s):int(0.85 * s)].mean(axis=1, keepdims=True), (1, 0), max(0.8, 0.01 * s))
    prof = prof[:, 0] if prof.ndim == 2 else prof
    reach = max(3, int(0.1 * s))
    best, row = -np.inf, (y0 + y1) // 2
    for y in range(y0, y1):
        depth = min(prof[max(0, y - reach):y + 1].max(), prof[y:y + reach + 1].max()) - prof[y]
        if depth > best:
            best, row = depth, y
    return int(row)


def _smooth(img: np.ndarray) -> np.ndarray:
    """The lightly blurred image the joint-space measurements read (noise off, the gap kept)."""
    return cv2.GaussianBlur(img, (0, 0), max(0.6, 0.006 * img.shape[0]))


def _band(smooth: np.ndarray, row: int, cols: slice) -> np.ndarray:
    """Rows around `row` (6 % of the image either side), the compartment's columns."""
    w = max(3, int(0.06 * smooth.shape[0]))
    return smooth[max(0, row - w):row + w + 1, cols]


def _gap(smooth: np.ndarray, row: int, cols: slice) -> tuple[float, float]:
    """(joint-space area per column, valley row offset) in a window around the joint line:
    per column, the summed darkness below the lower of the two bone shoulders (above and below)."""
    w = max(3, int(0.06 * smooth.shape[0]))
    band = _band(smooth, row, cols)
    mid = min(w, row)
    above, below = band[:mid + 1].max(axis=0), band[mid:].max(axis=0)
    shoulder = np.minimum(above, below)
    dark = np.clip(shoulder[None, :] - band, 0, None)
    return float(np.median(dark.sum(axis=0))), float(np.median(band.argmin(axis=0)) - mid)


def ridge_in_valley(band: np.ndarray) -> np.ndarray:
    """Per column of a (rows, cols) band spanning the joint space: the height of the brightest interior
    ridge, prof[i] - max(min(prof[top..i]), min(prof[i..bottom])), between the two bright shoulders.
    A plain valley (darkening to one floor, then brightening) scores 0; a line inside the gap scores its
    rise above the darker side."""
    floor = band.argmin(axis=0)                         # shoulders: the brightest rows above / below the floor
    out = np.zeros(band.shape[1], np.float32)
    for c in range(band.shape[1]):
        col = band[:, c]
        a = int(col[: floor[c] + 1].argmax())
        b = floor[c] + int(col[floor[c]:].argmax())
        seg = col[a:b + 1]
        if len(seg) < 3:
            continue
        left, right = np.minimum.accumulate(seg), np.minimum.accumulate(seg[::-1])[::-1]
        out[c] = max(0.0, float((seg - np.maximum(left, right)).max()))
    return out


def knee_features(img01: np.ndarray) -> dict[str, float]:
    img = np.asarray(img01, np.float32)
    s = img.shape[0]
    med, lat = slice(int(0.12 * s), int(0.38 * s)), slice(int(0.62 * s), int(0.88 * s))
    jl = joint_line_row(img)
    smooth = _smooth(img)
    out: dict[str, float] = {}
    rows = {}
    for name, cols in (("medial", med), ("lateral", lat)):
        area, off = _gap(smooth, jl, cols)
        y = int(np.clip(jl + off, 0, s - 1))
        rows[name] = y
        out[f"jsw_{name}"] = area / s
        out[f"calcification_{name}"] = float(np.median(ridge_in_valley(_band(smooth, y, cols))))
        sub = img[min(s - 1, y + 2):min(s, y + int(0.07 * s)), cols]
        deep = img[min(s - 1, y + int(0.12 * s)):min(s, y + int(0.22 * s)), cols]
        out[f"sclerosis_{name}"] = float(sub.mean() - deep.mean()) if sub.size and deep.size else 0.0
    h = int(0.08 * s)
    ym, yl = rows["medial"], rows["lateral"]
    out["margin_medial"] = float(img[max(0, ym - h):ym + h, : int(0.1 * s)].mean())
    out["margin_lateral"] = float(img[max(0, yl - h):yl + h, int(0.9 * s):].mean())
    tib = img[min(s - 1, max(ym, yl) + int(0.1 * s)):, int(0.2 * s):int(0.8 * s)]
    if tib.size:
        hp = tib - cv2.GaussianBlur(tib, (0, 0), max(1.0, 0.015 * s))
        out["texture"] = float(hp.std())
    else:
        out["texture"] = 0.0
    return out


def feature_table(images01: np.ndarray) -> dict[str, np.ndarray]:
    """knee_features of each image (n, S, S) -> {name: (n,) array}."""
    rows = [knee_features(im) for im in images01]
    return {k: np.array([r[k] for r in rows]) for k in FEATURES}
