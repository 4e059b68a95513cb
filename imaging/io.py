"""Decode an uploaded image (PNG, JPEG or DICOM) into display-ready grey.

`read_image` is the one entry point: it sniffs the type from the bytes (imaging.sniff), hands
PNG/JPEG to imaging.raster and DICOM to imaging.dicom, and returns a `DecodedImage`. Every failure
a user can cause comes out as ``ImageReadError`` with a sentence for the form and an HTTP status.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imaging.errors import ImageReadError, size_text
from imaging.raster import read_raster
from imaging.sniff import check_min_size, sniff_type

logger = logging.getLogger(__name__)

__all__ = ["ImageReadError", "DecodedImage", "fit_pixels", "read_image"]

_GENERIC = "The file could not be read as an image: it may be corrupt or truncated."
_UNSUPPORTED = "Unsupported file type: upload a PNG, JPEG or DICOM image."


@dataclass(frozen=True, eq=False)
class DecodedImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1], bright = dense/bone on radiographs
    kind: str  # "png" | "jpeg" | "dicom"
    modality: str | None = None  # DICOM Modality as a defined term; None for PNG/JPEG or an unknown one
    meta: dict[str, Any] = field(default_factory=dict)  # coded facts only (imaging.dicom_terms), JSON-safe

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def read_image(data: bytes, *, max_bytes: int = 64 * 2**20, max_pixels: int = 40_000_000) -> DecodedImage:
    """Decode ``data`` or raise ``ImageReadError``; never anything else for bad input."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise ImageReadError("The file is empty.", 400)
    if len(data) > max_bytes:
        raise ImageReadError(f"The file is too large: {size_text(len(data))}; the limit is {size_text(max_bytes)}.", 413)
    kind = sniff_type(data)
    if kind is None:
        raise ImageReadError(_UNSUPPORTED, 415)
    try:
        if kind == "dicom":
            # pydicom and its plugins take a noticeable time to import: only DICOM uploads pay for it,
            # not PNG/JPEG readers, the task modules or the training data loaders.
            from imaging.dicom import read_dicom

            pixels, modality, meta = read_dicom(data, max_pixels, max_bytes)
        else:
            pixels, modality, meta = read_raster(data, kind, max_pixels)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError("The image is too large to decode.", 413) from exc
    except Exception as exc:  # any decoder bug or corrupt stream becomes a clean 400
        # The exception's type only: its text may quote a header value (a name, an ID).
        logger.info("decode of %s upload failed: %s", kind, type(exc).__name__)
        raise ImageReadError(_GENERIC, 400) from exc

    if pixels.ndim != 2:
        raise ImageReadError(_GENERIC, 400)
    check_min_size(pixels.shape[1], pixels.shape[0])
    pixels = np.nan_to_num(pixels.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0))
    return DecodedImage(pixels=pixels, kind=kind, modality=modality, meta=meta)


def fit_pixels(image: DecodedImage, max_pixels: int) -> DecodedImage:
    """The image shrunk (area averaging, aspect kept) to at most `max_pixels` pixels, else as it is.

    A task's models read a few hundred pixels a side; a 36-megapixel upload would only cost seconds
    of CPU and tens of megabytes of overlays. The original size is kept in `meta["downscaled_from"]`
    and a pixel spacing is scaled with the pixels, so measurements in mm stay true.
    """
    h, w = image.pixels.shape
    if h * w <= max_pixels:
        return image
    import cv2

    scale = (max_pixels / (h * w)) ** 0.5
    nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
    pixels = cv2.resize(image.pixels, (nw, nh), interpolation=cv2.INTER_AREA)
    meta = dict(image.meta, downscaled_from=[w, h])
    spacing = meta.get("pixel_spacing_mm")
    if isinstance(spacing, (list, tuple)) and len(spacing) == 2:
        meta["pixel_spacing_mm"] = [round(float(spacing[0]) * h / nh, 6), round(float(spacing[1]) * w / nw, 6)]
    return DecodedImage(pixels=np.ascontiguousarray(pixels, dtype=np.float32), kind=image.kind,
                        modality=image.modality, meta=meta)
