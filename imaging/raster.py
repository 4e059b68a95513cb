"""PNG and JPEG uploads: header limits first, then OpenCV decodes to grey in [0, 1]."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from imaging.errors import ImageReadError
from imaging.sniff import MAX_JPEG_SCANS, check_min_size, check_pixels, check_png_chunks, jpeg_size, png_size


def read_raster(data: bytes, kind: str, max_pixels: int) -> tuple[np.ndarray, None, dict[str, Any]]:
    if kind == "png":
        width, height = png_size(data)
        check_png_chunks(data)
    else:
        size = jpeg_size(data)
        if size is None:
            raise ImageReadError("The JPEG file is corrupt or truncated: no image header was found.", 400)
        width, height = size
        if height == 0:  # height defined later by a DNL marker: rare, and OpenCV cannot size it up front
            raise ImageReadError("This JPEG variant (height given after the image data) is not supported.", 415)
        if data.count(b"\xff\xda") > MAX_JPEG_SCANS:
            raise ImageReadError("The JPEG file has an unreasonable number of scans and was rejected.", 400)
    check_pixels(width, height, max_pixels)
    check_min_size(width, height)

    # PNG: UNCHANGED keeps 16-bit depth and shows us the alpha channel.
    # JPEG: ANYDEPTH|ANYCOLOR also honours the EXIF orientation of phone photos
    # of films, which UNCHANGED ignores; JPEG has no alpha to lose.
    flags = cv2.IMREAD_UNCHANGED if kind == "png" else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise ImageReadError(f"The {kind.upper()} file is corrupt or truncated and could not be decoded.", 400)
    channels = 1 if img.ndim == 2 else img.shape[2]
    meta: dict[str, Any] = {
        "rows": int(img.shape[0]),
        "cols": int(img.shape[1]),
        "bit_depth": int(img.dtype.itemsize * 8),
        "channels": int(channels),
        "had_alpha": channels in (2, 4),
    }
    if img.ndim == 3:
        if channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)  # alpha dropped, not composited
        elif channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        else:
            img = img[..., 0]
    if np.issubdtype(img.dtype, np.integer):
        scaled = img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)  # 16-bit keeps its depth
    else:
        scaled = img.astype(np.float32)
    return scaled, None, meta
