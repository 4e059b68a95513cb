"""Overlays for result pages: masks, heatmaps (Grad-CAM), boxes, disagreement.

OpenCV only (no matplotlib: it is slow to import and not thread-safe in a web
worker). Every function takes a [0, 1] grey image and returns a new uint8 RGB
array; ``encode_png`` turns any of them into bytes for storage or a response.
Colours are RGB throughout; the BGR swap happens only inside ``encode_png``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from imaging.gradcam import focus
from imaging.normalize import to_uint8

__all__ = [
    "encode_png",
    "grey_to_rgb",
    "mask_overlay",
    "heatmap_overlay",
    "gradcam_overlays",
    "boxes_overlay",
    "disagreement_overlay",
    "DEFAULT_COLOURS",
]

Colour = tuple[int, int, int]

# Distinct colours for labels the caller gave no colour for, so no class is invisible.
DEFAULT_COLOURS: tuple[Colour, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190),
)


def encode_png(img: np.ndarray) -> bytes:
    """uint8 grey (H, W) or RGB (H, W, 3) -> PNG bytes."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    elif arr.ndim != 2:
        raise ValueError(f"encode_png expects (H, W) or (H, W, 3), got {arr.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def grey_to_rgb(img01: np.ndarray) -> np.ndarray:
    """float [0, 1] (H, W) -> uint8 (H, W, 3)."""
    grey = to_uint8(_as_2d(img01))
    return np.repeat(grey[:, :, None], 3, axis=2)


def mask_overlay(
    img01: np.ndarray,
    mask_labels: np.ndarray,
    colours: Mapping[int, Colour],
    alpha: float = 0.45,
    contour: bool = True,
) -> np.ndarray:
    """Tint each labelled region in its colour; label 0 (background) is left grey.

    ``mask_labels`` may be smaller than the image (a model's output size); it is
    resized by nearest neighbour so labels never blend into non-existent ones.
    """
    out = grey_to_rgb(img01)
    labels = _fit_mask(mask_labels, out.shape[:2])
    thickness = _line_width(out.shape[:2])
    for label in np.unique(labels):
        if label == 0:
            continue
        colour = _colour(colours.get(int(label), DEFAULT_COLOURS[int(label) % len(DEFAULT_COLOURS)]))
        region = labels == label
        _blend(out, region, colour, alpha)
        if contour:
            _draw_contour(out, region, colour, thickness)
    return out


def heatmap_overlay(
    img01: np.ndarray, heat: np.ndarray, alpha: float = 0.45, mask: np.ndarray | None = None
) -> np.ndarray:
    """Blend a JET-coloured heatmap (any size, min-max normalised) over the image.

    With ``mask`` the region a focused Grad-CAM was restricted to is outlined in
    white, so the reader sees where the explanation was allowed to look.
    """
    base = grey_to_rgb(img01)
    h, w = base.shape[:2]
    hm = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    hm = _as_2d(hm)
    if hm.shape != (h, w):
        hm = cv2.resize(hm, (w, h), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(hm.min()), float(hm.max())
    if hi > lo:
        hm = (hm - lo) / (hi - lo)
        coloured = cv2.applyColorMap(to_uint8(hm), cv2.COLORMAP_JET)
        coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)
        out = cv2.addWeighted(base, 1.0 - alpha, coloured, alpha, 0.0)
    else:
        # A flat (or all-NaN) map points nowhere: show the image untinted rather than a uniform
        # blue wash that reads as "looked everywhere, weakly".
        out = base.copy()
    if mask is not None:
        region = _fit_mask(mask, (h, w)) > 0
        _draw_contour(out, region, (255, 255, 255), _line_width((h, w)))
    return out


def gradcam_overlays(img01: np.ndarray, cam: np.ndarray, region: np.ndarray, suffix: str = ""
                     ) -> dict[str, np.ndarray]:
    """A Grad-CAM over the image as "gradcam<suffix>" and, when `region` has any pixel, the CAM restricted
    to the region (rescaled to its peak there, region outlined) as "focused_gradcam<suffix>"."""
    images = {f"gradcam{suffix}": heatmap_overlay(img01, cam)}
    if region.any():
        images[f"focused_gradcam{suffix}"] = heatmap_overlay(img01, focus(cam, region), mask=region)
    return images


def boxes_overlay(
    img01: np.ndarray,
    boxes: Sequence[Mapping[str, Any]],
    thickness: int | None = None,
    font_scale: float | None = None,
    default_colour: Colour = (255, 215, 0),
) -> np.ndarray:
    """Draw rectangles {"x1","y1","x2","y2","label","colour"} (pixel coordinates,
    colour RGB) with their label on a dark strip so it reads on any background."""
    out = grey_to_rgb(img01)
    h, w = out.shape[:2]
    thickness = thickness or _line_width((h, w))
    font_scale = font_scale or max(0.35, min(h, w) / 700.0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for box in boxes:
        x1, x2 = sorted((_clip_coord(box["x1"], w), _clip_coord(box["x2"], w)))
        y1, y2 = sorted((_clip_coord(box["y1"], h), _clip_coord(box["y2"], h)))
        colour = _colour(box.get("colour") or default_colour)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)  # axis-aligned: crisp, no AA needed
        label = str(box.get("label") or "")
        if not label:
            continue
        (tw, th), base = cv2.getTextSize(label, font, font_scale, 1)
        # Above the box when there is room, otherwise just inside its top edge.
        ty = y1 - 3 if y1 - th - base - 3 >= 0 else min(y1 + th + 3, h - base - 1)
        tx = min(max(x1, 0), max(w - tw - 1, 0))
        cv2.rectangle(out, (tx, ty - th - 2), (tx + tw + 1, ty + base), (0, 0, 0), -1)
        cv2.putText(out, label, (tx, ty), font, font_scale, colour, 1, cv2.LINE_AA)
    return out


def disagreement_overlay(
    img01: np.ndarray,
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    colour: Colour = (255, 0, 255),
    agree_colour: Colour = (0, 200, 255),
    alpha: float = 0.6,
    agree_alpha: float = 0.18,
) -> np.ndarray:
    """Where two label masks (e.g. two models, or model vs reader) give different
    labels: strong magenta. Where they agree on a foreground label: a faint tint."""
    out = grey_to_rgb(img01)
    a = _fit_mask(mask_a, out.shape[:2])
    b = _fit_mask(mask_b, out.shape[:2])
    differ = a != b
    agree = ~differ & (a != 0)
    _blend(out, agree, _colour(agree_colour), agree_alpha)
    _blend(out, differ, _colour(colour), alpha)
    return out


# --------------------------------------------------------------------------- helpers

def _as_2d(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    return arr


def _fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize by index arithmetic: exact for any integer dtype
    (cv2.resize does not take every dtype) and never invents labels."""
    arr = _as_2d(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    h, w = shape
    if arr.shape == (h, w):
        return arr
    rows = np.minimum((np.arange(h) + 0.5) * arr.shape[0] / h, arr.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(w) + 0.5) * arr.shape[1] / w, arr.shape[1] - 1).astype(np.intp)
    return arr[rows[:, None], cols[None, :]]


def _blend(out: np.ndarray, region: np.ndarray, colour: Colour, alpha: float) -> None:
    if not region.any():
        return
    px = out[region].astype(np.float32)
    out[region] = np.clip(px * (1.0 - alpha) + np.float32(colour) * alpha + 0.5, 0, 255).astype(np.uint8)


def _draw_contour(out: np.ndarray, region: np.ndarray, colour: Colour, thickness: int) -> None:
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if contours:
        cv2.drawContours(out, contours, -1, colour, thickness)


def _line_width(shape: tuple[int, int]) -> int:
    # 1 px on model-sized images, thicker on full radiographs so it survives downscaled display.
    return max(1, round(min(shape) / 256))


def _colour(value: Any) -> Colour:
    r, g, b = (int(np.clip(v, 0, 255)) for v in tuple(value)[:3])
    return (r, g, b)


def _clip_coord(value: Any, size: int) -> int:
    return int(np.clip(round(float(value)), 0, size - 1))
