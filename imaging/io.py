"""Decode an uploaded image (PNG, JPEG or DICOM) into display-ready grey.

The type is decided from the bytes, never from the file name. Every failure a
user can cause comes out as ``ImageReadError`` with a sentence for the form and
an HTTP status; image sizes are checked from headers before any pixel data is
decompressed, so a small file cannot make us allocate gigabytes.
"""
from __future__ import annotations

import io
import logging
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ImageReadError", "DecodedImage", "sniff_type", "read_image", "MIN_SIDE"]

MIN_SIDE = 32
_GENERIC = "The file could not be read as an image: it may be corrupt or truncated."
_UNSUPPORTED = "Unsupported file type: upload a PNG, JPEG or DICOM image."
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Value representations that can follow a tag in explicit-VR DICOM.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_DEFLATED_TS = b"1.2.840.10008.1.2.1.99"
# A few progressive JPEG scans are normal (~10); hundreds of them is a known way
# to make libjpeg burn CPU on a tiny file.
_MAX_JPEG_SCANS = 200


class ImageReadError(ValueError):
    """A user-facing rejection.

    ``message`` is a clear sentence for the form; ``status`` is the HTTP status
    to answer with: 400 corrupt/empty/bad, 413 too large, 415 unsupported type.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, eq=False)
class DecodedImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1], bright = dense/bone on radiographs
    kind: str  # "png" | "jpeg" | "dicom"
    modality: str | None = None  # DICOM Modality, None for PNG/JPEG
    meta: dict[str, Any] = field(default_factory=dict)  # non-identifying, JSON-safe

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


# --------------------------------------------------------------------------- sniffing

def sniff_type(data: bytes) -> str | None:
    """Return "png", "jpeg", "dicom" or None from the leading bytes only."""
    head = bytes(data[:132])
    # DICM first: the 128-byte preamble is free-form and real files put a TIFF
    # header there (MR2_UNCR.dcm starts with "II*"), so it wins over magic at 0.
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if _looks_like_bare_dicom(head):
        return "dicom"
    return None


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A dataset written without preamble/meta (old ACR-NEMA style) starts with a
    little-endian tag of group 0x0002 or 0x0008 followed by a VR or a short length."""
    if len(head) < 8:
        return False
    group, element = struct.unpack_from("<HH", head)
    if group not in (0x0002, 0x0008) or element > 0x1000:
        return False
    if head[4:6] in _VRS:  # explicit VR
        return True
    (length,) = struct.unpack_from("<I", head, 4)  # implicit VR: 32-bit length
    return length <= 1024


# --------------------------------------------------------------------------- entry point

def read_image(data: bytes, *, max_bytes: int = 64 * 2**20, max_pixels: int = 40_000_000) -> DecodedImage:
    """Decode ``data`` or raise ``ImageReadError``; never anything else for bad input."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise ImageReadError("The file is empty.", 400)
    if len(data) > max_bytes:
        raise ImageReadError(
            f"The file is too large ({len(data) / 2**20:.3g} MB); the limit is {max_bytes / 2**20:.3g} MB.", 413
        )
    kind = sniff_type(data)
    if kind is None:
        raise ImageReadError(_UNSUPPORTED, 415)
    try:
        if kind == "dicom":
            pixels, modality, meta = _read_dicom(data, max_pixels)
        else:
            pixels, modality, meta = _read_raster(data, kind, max_pixels)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError("The image is too large to decode.", 413) from exc
    except Exception as exc:  # any decoder bug or corrupt stream becomes a clean 400
        logger.info("decode of %s upload failed: %r", kind, exc)
        raise ImageReadError(_GENERIC, 400) from exc

    if pixels.ndim != 2:
        raise ImageReadError(_GENERIC, 400)
    _check_min_size(pixels.shape[1], pixels.shape[0])
    pixels = np.nan_to_num(pixels.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0))
    return DecodedImage(pixels=pixels, kind=kind, modality=modality, meta=meta)


def _check_pixels(width: int, height: int, max_pixels: int, frames: int = 1) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError("The image header is invalid: it gives a zero width or height.", 400)
    if width * height * max(frames, 1) > max_pixels:
        what = f"{width} x {height} pixels" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageReadError(f"The image is too large ({what}); the limit is {max_pixels:,} pixels.", 413)


def _check_min_size(width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageReadError(
            f"The image is too small ({width} x {height} pixels); it must be at least {MIN_SIDE} x {MIN_SIDE}.", 400
        )


# --------------------------------------------------------------------------- PNG / JPEG

def _png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: length 13, type, width, height (big-endian).
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ImageReadError("The PNG file is corrupt: its header is invalid.", 400)
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


_MAX_PNG_CHUNKS = 200_000  # real encoders write IDAT in >= 8 kB chunks; this is far above any of them


def _check_png_chunks(data: bytes) -> None:
    """Every chunk must fit inside the file and IEND must be reached.

    OpenCV 5 allocates each chunk's declared length before reading it, so one
    flipped length byte made it reserve gigabytes; checking lengths here keeps
    the decoder's allocations bounded by the upload size.
    """
    pos, n = 8, len(data)
    for _ in range(_MAX_PNG_CHUNKS):
        if pos + 12 > n:
            break
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length
        if end > n:
            break
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos = end
    else:
        raise ImageReadError("The PNG file has an unreasonable number of chunks and was rejected.", 400)
    raise ImageReadError("The PNG file is truncated or corrupt: its data ends unexpectedly.", 400)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # 0xF7: JPEG-LS SOF55


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF segment, walking marker segments only."""
    i, n = 2, len(data)
    for _ in range(10_000):  # bounded: a file of fill bytes must not spin for long
        if i + 4 > n or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        (seglen,) = struct.unpack_from(">H", data, i + 2)
        if seglen < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        i += 2 + seglen
    return None


def _read_raster(data: bytes, kind: str, max_pixels: int) -> tuple[np.ndarray, None, dict[str, Any]]:
    if kind == "png":
        width, height = _png_size(data)
        _check_png_chunks(data)
    else:
        size = _jpeg_size(data)
        if size is None:
            raise ImageReadError("The JPEG file is corrupt or truncated: no image header was found.", 400)
        width, height = size
        if height == 0:  # height defined later by a DNL marker: rare, and OpenCV cannot size it up front
            raise ImageReadError("This JPEG variant (height given after the image data) is not supported.", 415)
        if data.count(b"\xff\xda") > _MAX_JPEG_SCANS:
            raise ImageReadError("The JPEG file has an unreasonable number of scans and was rejected.", 400)
    _check_pixels(width, height, max_pixels)
    _check_min_size(width, height)

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


# --------------------------------------------------------------------------- DICOM

def _read_dicom(data: bytes, max_pixels: int) -> tuple[np.ndarray, str | None, dict[str, Any]]:
    # Imported here so PNG/JPEG-only callers (and the training data loaders)
    # do not pay for pydicom and its plugins at import time.
    import pydicom
    from pydicom.uid import UID

    _check_deflate_bomb(data, max_pixels)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise ImageReadError("The DICOM file could not be parsed: it may be corrupt or truncated.", 400) from exc

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        _raise_no_image(ds)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise ImageReadError("The DICOM header is incomplete: it gives no image size (Rows/Columns).", 400) from exc
    frames = _int_or(_get(ds, "NumberOfFrames"), 1)
    _check_pixels(cols, rows, max_pixels, frames)  # before touching pixel data
    _check_min_size(cols, rows)

    _ensure_transfer_syntax(ds)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    index = frames // 2  # the middle frame is the most representative of a cine/volume
    if ts.is_encapsulated and "PixelData" in ds:
        _check_encapsulated_frame(ds.PixelData, index, frames, ts, max_pixels)

    from pydicom.pixels import pixel_array

    try:
        raw = pixel_array(ds, index=index)
    except Exception as exc:
        if ts.is_compressed:
            from pydicom.pixels import get_decoder

            try:
                available = get_decoder(ts).is_available
            except Exception:
                available = False
            family = _codec_family(ts)
            if not available:
                raise ImageReadError(f"This DICOM compression is not supported ({family}).", 415) from exc
            raise ImageReadError(f"Could not decode the compressed DICOM pixel data ({family}).", 400) from exc
        raise ImageReadError("The DICOM pixel data could not be read: it may be corrupt or truncated.", 400) from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    meta = _dicom_meta(ds, ts, frames, index, photometric)
    if (raw.ndim == 3 and raw.shape[-1] in (3, 4)) or photometric == "PALETTE COLOR":
        pixels = _colour_to_grey(raw, ds, photometric)
        meta["window"] = {"source": "colour"}
    else:
        if raw.ndim != 2:
            raise ImageReadError("The DICOM pixel data has an unexpected layout.", 400)
        pixels, window = _monochrome_display(raw, ds, index)
        meta["window"] = window
        if photometric == "MONOCHROME1":  # stored with white = low values; invert after windowing
            pixels = 1.0 - pixels
        meta["inverted"] = photometric == "MONOCHROME1"
    modality = ds.get("Modality")
    return pixels, (str(modality).strip() or None) if modality else None, meta


def _raise_no_image(ds: Any) -> None:
    from pydicom.uid import UID

    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    name = UID(str(sop)).name if sop else ""
    if name and name != str(sop) and "image" not in name.lower():
        # A valid DICOM object of a non-image kind (report, RT structure, DICOMDIR ...).
        raise ImageReadError(f"This DICOM file holds no image: it is a {name} object.", 415)
    raise ImageReadError("This DICOM file holds no image (no pixel data).", 400)


def _ensure_transfer_syntax(ds: Any) -> None:
    """Files without file meta (like CR-MONO1-10-chest.dcm) have no transfer
    syntax, which pydicom needs to decode pixels; use the encoding it read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _check_deflate_bomb(data: bytes, max_pixels: int) -> None:
    """pydicom inflates a Deflated Explicit VR dataset in one unbounded call;
    inflate it ourselves first with a cap so a zip bomb costs bounded memory."""
    if _DEFLATED_TS not in data[:4096]:
        return
    start = 132 if data[128:132] == b"DICM" else 0
    # (0002,0000) File Meta Information Group Length, explicit VR UL: 12 bytes then the meta group.
    if data[start : start + 6] != b"\x02\x00\x00\x00UL":
        raise ImageReadError("The deflated DICOM file has no readable file meta header.", 400)
    (group_len,) = struct.unpack_from("<I", data, start + 8)
    body = data[start + 12 + group_len :]
    cap = max_pixels * 8 + 16 * 2**20  # room for the biggest allowed frame stack plus the header
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(body, cap)
    except zlib.error as exc:
        raise ImageReadError("The deflated DICOM data is corrupt.", 400) from exc
    if inflater.unconsumed_tail:
        raise ImageReadError("The deflated DICOM data expands beyond the size limit.", 413)


def _check_encapsulated_frame(pixel_data: bytes, index: int, frames: int, ts: Any, max_pixels: int) -> None:
    """Compare the codestream's own size with the limit: the decoder trusts the
    JPEG/JPEG 2000 header, not Rows/Columns, so a lying header is a bomb."""
    from pydicom.encaps import get_frame

    family = _codec_family(ts)
    try:
        frame = get_frame(pixel_data, index, number_of_frames=frames)
    except Exception as exc:
        raise ImageReadError(f"Could not decode the compressed DICOM pixel data ({family}).", 400) from exc
    if family == "JPEG 2000":
        size = _j2k_size(frame)
    elif family in ("JPEG", "JPEG-LS"):
        size = _jpeg_size(frame) if frame[:2] == b"\xff\xd8" else None
    else:
        return  # RLE and others decode into a buffer sized from Rows/Columns
    if size is None:
        raise ImageReadError(f"Could not decode the compressed DICOM pixel data ({family}).", 400)
    _check_pixels(size[0], size[1], max_pixels)


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    # SOC + SIZ; may sit after JP2 boxes, so look a little way in.
    pos = frame.find(b"\xff\x4f\xff\x51", 0, 65536)
    if pos < 0 or len(frame) < pos + 24:
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, pos + 8)
    return max(xsiz - xo, 0), max(ysiz - yo, 0)


def _codec_family(ts: Any) -> str:
    name = ts.name
    if "2000" in name:
        return "JPEG 2000"
    if "JPEG-LS" in name:
        return "JPEG-LS"
    if "JPEG" in name:
        return "JPEG"
    if "RLE" in name:
        return "RLE"
    return name


def _int_or(value: Any, default: int) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        return default
    return out if out > 0 else default


def _first_float(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _functional(ds: Any, index: int, sequence: str, attr: str) -> Any:
    """A value from the top level, else from the enhanced multi-frame functional
    groups (per-frame first, then shared), where enhanced MR/CT keep rescale and window."""
    if attr in ds:
        return _get(ds, attr)
    for groups_name, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = _get(ds, groups_name)
        if groups and i < len(groups):
            seq = _get(groups[i], sequence)
            if seq and attr in seq[0]:
                return _get(seq[0], attr)
    return None


def _monochrome_display(raw: np.ndarray, ds: Any, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Modality LUT (stored -> real units), then the VOI window -> [0, 1]."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    else:
        slope = _first_float(_functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _first_float(_functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept"))
        values = raw.astype(np.float64)
        if raw.dtype.kind == "f":  # Float Pixel Data may hold NaN/inf
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        if slope is not None and slope != 0 and (slope != 1 or intercept):
            values = values * slope + (intercept or 0.0)
        elif intercept:
            values = values + intercept

    valid = _not_padding(raw, ds)
    center = _first_float(_functional(ds, index, "FrameVOILUTSequence", "WindowCenter"))
    width = _first_float(_functional(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(_get(ds, "VOILUTFunction") or "LINEAR").strip().upper()
        out = _apply_window(values, center, width, function)
        if np.ptp(out) > 0 or np.ptp(values) == 0:
            return out, {"source": "header", "center": center, "width": width, "function": function}
        # A header window entirely outside the data would show a blank image.
    lo, hi = _robust_range(values, valid)
    if hi > lo:
        out = _apply_window(values, (lo + hi) / 2.0, hi - lo, "LINEAR_EXACT")
    else:  # a constant image has nothing to show
        out = np.zeros(values.shape, np.float32)
    return out, {"source": "percentile", "center": (lo + hi) / 2.0, "width": hi - lo, "function": "LINEAR_EXACT"}


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    # Formulas from DICOM PS3.3 C.11.2.1.2, with output range [0, 1].
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -60, 60)))
    elif function == "LINEAR_EXACT" or width <= 1:
        out = (values - center) / width + 0.5
    else:
        out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _not_padding(raw: np.ndarray, ds: Any) -> np.ndarray | None:
    pad = _first_float(_get(ds, "PixelPaddingValue"))
    if pad is None:
        return None
    limit = _first_float(_get(ds, "PixelPaddingRangeLimit"))
    lo, hi = sorted((pad, pad if limit is None else limit))
    return (raw < lo) | (raw > hi)


def _robust_range(values: np.ndarray, valid: np.ndarray | None) -> tuple[float, float]:
    sample = values[valid] if valid is not None and valid.any() else values.ravel()
    step = max(1, sample.size // 1_000_000)  # a strided sample is plenty for percentiles
    sample = sample[::step]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    return lo, hi


def _colour_to_grey(raw: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
        full = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else float(raw.max() or 1)
    else:
        bits = _int_or(ds.get("BitsStored"), 8)
        full = float(2**bits - 1)
    rgb = raw[..., :3].astype(np.float32)
    # pydicom already converts YBR to RGB; ITU-R BT.601 luma weights as in OpenCV.
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(grey / full, 0.0, 1.0)


_PERSON_KEYS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "IssuerOfPatientID")


def _identifying_tokens(ds: Any) -> set[str]:
    """Words from every person-name element and patient identifier, so free text
    we pass on (series description) can be dropped if it repeats any of them."""
    from pydicom.multival import MultiValue

    tokens: set[str] = set()
    try:
        for elem in ds.iterall():
            if elem.VR == "PN" or elem.keyword in _PERSON_KEYS:
                values = elem.value if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
                for value in values:
                    for token in re.split(r"[\^=\s,]+", str(value)):
                        if len(token) >= 2:
                            tokens.add(token.lower())
    except Exception:
        tokens.add("\x00unreadable")  # be safe: free text will be dropped
    return tokens


def _get(ds: Any, keyword: str) -> Any:
    """An optional element's value, or None when absent or unreadable: metadata
    is a nicety and a malformed optional tag must not reject the image."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _safe_text(ds: Any, keyword: str, tokens: set[str]) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    text = str(value).strip()[:128]
    if not text or "^" in text:
        return None
    lowered = text.lower()
    words = set(re.split(r"[^0-9a-z]+", lowered))
    if "\x00unreadable" in tokens or any(t in words or (len(t) >= 4 and t in lowered) for t in tokens):
        return None
    return text


def _dicom_meta(ds: Any, ts: Any, frames: int, index: int, photometric: str) -> dict[str, Any]:
    """Whitelisted, non-identifying facts only; never names, IDs, dates or places."""
    tokens = _identifying_tokens(ds)
    meta: dict[str, Any] = {
        "photometric": photometric,
        "rows": _int_or(_get(ds, "Rows"), 0),
        "cols": _int_or(_get(ds, "Columns"), 0),
        "bits_allocated": _int_or(_get(ds, "BitsAllocated"), 0),
        "bits_stored": _int_or(_get(ds, "BitsStored"), 0),
        "samples_per_pixel": _int_or(_get(ds, "SamplesPerPixel"), 1),
        "frames": frames,
        "frame_index": index,
        "transfer_syntax": str(ts),
        "transfer_syntax_name": ts.name,
        "compressed": bool(ts.is_compressed),
    }
    sop = _get(ds, "SOPClassUID")
    if sop:
        from pydicom.uid import UID

        meta["sop_class"] = UID(str(sop)).name
    for key, keyword in (
        ("modality", "Modality"),
        ("body_part", "BodyPartExamined"),
        ("view_position", "ViewPosition"),
        ("laterality", "ImageLaterality"),
        ("series_description", "SeriesDescription"),
    ):
        text = _safe_text(ds, keyword, tokens)
        if text:
            meta[key] = text
    image_type = _get(ds, "ImageType")
    if image_type:
        # e.g. DERIVED/SECONDARY: a screen capture that may carry burnt-in text.
        values = [image_type] if isinstance(image_type, str) else list(image_type)
        meta["image_type"] = [str(v)[:16] for v in values][:8]
    burned = _safe_text(ds, "BurnedInAnnotation", tokens)
    if burned:
        meta["burned_in_annotation"] = burned
    spacing = _get(ds, "PixelSpacing") or _get(ds, "ImagerPixelSpacing")
    if hasattr(spacing, "__len__") and not isinstance(spacing, (str, bytes)) and len(spacing) == 2:
        row_mm, col_mm = _first_float(spacing[0]), _first_float(spacing[1])
        if row_mm and col_mm:
            meta["pixel_spacing_mm"] = [row_mm, col_mm]
    thickness = _first_float(_get(ds, "SliceThickness"))
    if thickness is not None:
        meta["slice_thickness_mm"] = thickness
    slope, intercept = _first_float(_get(ds, "RescaleSlope")), _first_float(_get(ds, "RescaleIntercept"))
    if slope is not None or intercept is not None:
        meta["rescale"] = {"slope": 1.0 if slope is None else slope, "intercept": intercept or 0.0}
    return meta
