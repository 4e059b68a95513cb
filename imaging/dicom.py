"""DICOM uploads: parse, check limits and bombs, decode the middle frame, window it to [0, 1].

Handles the modality LUT and VOI window (also from enhanced multi-frame functional groups),
MONOCHROME1 inversion, colour and palette images, compressed transfer syntaxes (a clear 415 when
no codec is installed), deflated datasets (inflated once, within the upload's byte limit), and
returns only the coded facts of imaging.dicom_terms, never free text from the header.
"""
from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from imaging.dicom_terms import VOI_LUT_FUNCTIONS, coded_facts, first_float, optional_value, positive_int, term
from imaging.errors import ImageReadError, size_text
from imaging.sniff import check_min_size, check_pixels, j2k_size, jpeg_size

# pydicom's value validation logs the offending value ("Invalid value for VR UI: '1.2.840...'"): a
# study UID or a name would reach the server log. Uploads are checked by this module, not by pydicom.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def read_dicom(data: bytes, max_pixels: int, max_bytes: int) -> tuple[np.ndarray, str | None, dict[str, Any]]:
    """`max_bytes` also bounds a deflated dataset once inflated: its undeflated twin would have to fit it."""
    stream, deflated = dicom_stream(data, max_bytes)
    try:
        ds = pydicom.dcmread(stream, force=True)
    except Exception as exc:
        raise ImageReadError("The DICOM file could not be parsed: it may be corrupt or truncated.", 400) from exc
    finally:
        stream.close()   # the inflated copy: pydicom holds what it read

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        _raise_no_image(ds)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise ImageReadError("The DICOM header is incomplete: it gives no image size (Rows/Columns).", 400) from exc
    frames = positive_int(optional_value(ds, "NumberOfFrames"), 1)
    check_pixels(cols, rows, max_pixels, frames)  # before touching pixel data
    check_min_size(cols, rows)

    _ensure_transfer_syntax(ds)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    index = frames // 2  # the middle frame is the most representative of a cine/volume
    if ts.is_encapsulated and "PixelData" in ds:
        _check_encapsulated_frame(ds.PixelData, index, frames, ts, max_pixels)

    try:
        raw = pixel_array(ds, index=index)
    except Exception as exc:
        if ts.is_compressed:
            try:
                available = get_decoder(ts).is_available
            except Exception:
                available = False
            family = _codec_family(ts)
            if not available:
                raise ImageReadError(f"This DICOM compression is not supported ({family}).", 415) from exc
            raise ImageReadError(f"Could not decode the compressed DICOM pixel data ({family}).", 400) from exc
        raise ImageReadError("The DICOM pixel data could not be read: it may be corrupt or truncated.", 400) from exc

    # Decoding follows the header as written; what is stored is its coded term (imaging.dicom_terms).
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    meta = _dicom_meta(ds, DeflatedExplicitVRLittleEndian if deflated else ts, frames, index)
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
    return pixels, meta.get("modality"), meta


# -- deflated datasets -------------------------------------------------------------------------
_DEFLATED_UID = str(DeflatedExplicitVRLittleEndian).encode()
_EXPLICIT_UID = str(ExplicitVRLittleEndian).encode() + b"\x00"   # UI values are padded to an even length
_EXPLICIT_TS_ELEMENT = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(_EXPLICIT_UID)) + _EXPLICIT_UID
_META_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_GROUP_LENGTH_TAG, _TRANSFER_SYNTAX_TAG = 0x00020000, 0x00020010
_INFLATE_STEP = 256 * 2**10


def dicom_stream(data: bytes, max_inflated: int) -> tuple[io.BytesIO, bool]:
    """The file for pydicom to read, and whether its dataset was deflated.

    pydicom inflates a Deflated Explicit VR Little Endian dataset in one unbounded call, so a 390 kB
    upload could take 320 MB (twice, with a size check that inflated it first). Here it is inflated
    once, in steps, and refused as soon as the file grows past `max_inflated`; the file pydicom gets is
    the same dataset as Explicit VR Little Endian (its file meta says so), so pydicom never inflates it.
    """
    found = _file_meta(data)
    if found is None or found[2] != _DEFLATED_UID:
        if _DEFLATED_UID in data[:4096]:   # deflated, but not by a file meta this reader understands
            raise ImageReadError("The deflated DICOM file has no readable file meta header.", 400)
        return io.BytesIO(data), False
    meta_start, meta_end, _ts, elements = found
    group = b"".join(_EXPLICIT_TS_ELEMENT if tag == _TRANSFER_SYNTAX_TAG else raw
                     for tag, raw in elements if tag != _GROUP_LENGTH_TAG)
    out = io.BytesIO()
    out.write(data[:meta_start])
    out.write(struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group)) + group)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        for offset in range(meta_end, len(data), _INFLATE_STEP):
            pending = data[offset:offset + _INFLATE_STEP]
            while not inflater.eof:
                piece = inflater.decompress(pending, _INFLATE_STEP)   # at most one step of output at a time
                if out.tell() + len(piece) > max_inflated:
                    raise ImageReadError(f"The deflated DICOM file inflates to more than {size_text(max_inflated)}, "
                                         "the limit for an upload.", 413)
                out.write(piece)
                pending = inflater.unconsumed_tail
                if not piece and not pending:
                    break
            if inflater.eof:
                break
    except zlib.error as exc:
        raise ImageReadError("The deflated DICOM data is corrupt.", 400) from exc
    if not inflater.eof:
        raise ImageReadError("The deflated DICOM data is truncated.", 400)
    out.seek(0)
    return out, True


def _file_meta(data: bytes) -> tuple[int, int, bytes | None, list[tuple[int, bytes]]] | None:
    """(start, end, transfer syntax UID, elements as (tag, encoded bytes)) of the file meta group, which
    Part 10 files write as explicit VR little endian; None when the file has none that reads so."""
    start = pos = 132 if data[128:132] == b"DICM" else 0
    elements: list[tuple[int, bytes]] = []
    ts = None
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        group, element = struct.unpack_from("<HH", data, pos)
        if data[pos + 4:pos + 6] in _META_LONG_VRS:
            if pos + 12 > len(data):
                return None
            (length,) = struct.unpack_from("<I", data, pos + 8)
            end = pos + 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            end = pos + 8 + length
        if end > len(data):
            return None
        tag = (group << 16) | element
        if tag == _TRANSFER_SYNTAX_TAG:
            ts = data[end - length:end].rstrip(b"\x00 ")
        elements.append((tag, data[pos:end]))
        pos = end
    return (start, pos, ts, elements) if elements else None


def _raise_no_image(ds: Any) -> None:
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    name = UID(str(sop)).name if sop else ""
    if name and name != str(sop) and "image" not in name.lower():
        # A valid DICOM object of a non-image kind (report, RT structure, DICOMDIR ...).
        raise ImageReadError(f"This DICOM file holds no image: it is a {name} object.", 415)
    raise ImageReadError("This DICOM file holds no image (no pixel data).", 400)


def _ensure_transfer_syntax(ds: Any) -> None:
    """Files without file meta (like CR-MONO1-10-chest.dcm) have no transfer
    syntax, which pydicom needs to decode pixels; use the encoding it read with."""
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


def _check_encapsulated_frame(pixel_data: bytes, index: int, frames: int, ts: Any, max_pixels: int) -> None:
    """Compare the codestream's own size with the limit: the decoder trusts the
    JPEG/JPEG 2000 header, not Rows/Columns, so a lying header is a bomb."""
    family = _codec_family(ts)
    try:
        frame = get_frame(pixel_data, index, number_of_frames=frames)
    except Exception as exc:
        raise ImageReadError(f"Could not decode the compressed DICOM pixel data ({family}).", 400) from exc
    if family == "JPEG 2000":
        size = j2k_size(frame)
    elif family in ("JPEG", "JPEG-LS"):
        size = jpeg_size(frame) if frame[:2] == b"\xff\xd8" else None
    else:
        return  # RLE and others decode into a buffer sized from Rows/Columns
    if size is None:
        raise ImageReadError(f"Could not decode the compressed DICOM pixel data ({family}).", 400)
    check_pixels(size[0], size[1], max_pixels)


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


def _functional(ds: Any, index: int, sequence: str, attr: str) -> Any:
    """A value from the top level, else from the enhanced multi-frame functional
    groups (per-frame first, then shared), where enhanced MR/CT keep rescale and window."""
    if attr in ds:
        return optional_value(ds, attr)
    for groups_name, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = optional_value(ds, groups_name)
        if groups and i < len(groups):
            seq = optional_value(groups[i], sequence)
            if seq and attr in seq[0]:
                return optional_value(seq[0], attr)
    return None


def _monochrome_display(raw: np.ndarray, ds: Any, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Modality LUT (stored -> real units), then the VOI window -> [0, 1]."""
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    else:
        slope = first_float(_functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = first_float(_functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept"))
        values = raw.astype(np.float64)
        if raw.dtype.kind == "f":  # Float Pixel Data may hold NaN/inf
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        if slope is not None and slope != 0 and (slope != 1 or intercept):
            values = values * slope + (intercept or 0.0)
        elif intercept:
            values = values + intercept

    valid = _not_padding(raw, ds)
    center = first_float(_functional(ds, index, "FrameVOILUTSequence", "WindowCenter"))
    width = first_float(_functional(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    if center is not None and width is not None and width > 0:
        # A function that is not a defined term is read as LINEAR, and stored as such.
        function = term(optional_value(ds, "VOILUTFunction"), VOI_LUT_FUNCTIONS) or "LINEAR"
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
    pad = first_float(optional_value(ds, "PixelPaddingValue"))
    if pad is None:
        return None
    limit = first_float(optional_value(ds, "PixelPaddingRangeLimit"))
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
    if photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
        full = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else float(raw.max() or 1)
    else:
        bits = positive_int(ds.get("BitsStored"), 8)
        full = float(2**bits - 1)
    rgb = raw[..., :3].astype(np.float32)
    # pydicom already converts YBR to RGB; ITU-R BT.601 luma weights as in OpenCV.
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(grey / full, 0.0, 1.0)


def _dicom_meta(ds: Any, ts: Any, frames: int, index: int) -> dict[str, Any]:
    """The header's coded facts (imaging.dicom_terms) and what the decoder itself established; never
    names, IDs, dates, places or any other text from the header."""
    meta: dict[str, Any] = {
        **coded_facts(ds),
        "rows": positive_int(optional_value(ds, "Rows"), 0),
        "cols": positive_int(optional_value(ds, "Columns"), 0),
        "frames": frames,
        "frame_index": index,
    }
    if ts.is_transfer_syntax:   # a UID from the standard's registry, not whatever the header holds
        meta.update(transfer_syntax=str(ts), transfer_syntax_name=ts.name, compressed=bool(ts.is_compressed))
    sop = UID(str(optional_value(ds, "SOPClassUID") or ""))
    if sop and sop.name != str(sop):
        meta["sop_class"] = sop.name
    slope, intercept = first_float(optional_value(ds, "RescaleSlope")), first_float(optional_value(ds, "RescaleIntercept"))
    if slope is not None or intercept is not None:
        meta["rescale"] = {"slope": 1.0 if slope is None else slope, "intercept": intercept or 0.0}
    return meta
