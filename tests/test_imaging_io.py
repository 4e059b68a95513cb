"""imaging.io: decoding uploads by content, rejecting bad ones cleanly."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

import imaging.raster as raster
from imaging.dicom import dicom_stream
from imaging.dicom_terms import CODED_KEYS
from imaging.errors import size_text
from imaging.io import DecodedImage, ImageReadError, read_image
from imaging.sniff import sniff_type
from database import db
from tests.conftest import IDENTIFYING_TEXT, dicom_dataset, leaked_text, result_files, upload
from tests.data_gate import data_dir, need, real_data

# pydicom warns (rightly) about the odd values in real and fuzzed files; the
# behaviour under test is that they decode or are rejected, not the warnings.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")




# --------------------------------------------------------------------------- builders

def smooth(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth [0, 1] image (JPEG-friendly) with a bright disc."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.2 + 0.5 * xx / w + 0.2 * (((yy - h / 2) ** 2 + (xx - w / 3) ** 2) < (h / 4) ** 2)
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)


def png_bytes(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def make_dicom(
    stored: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    center=None,
    width=None,
    sop_class: str = ComputedRadiographyImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    compress: str | None = None,
    **extra,
) -> bytes:
    """A minimal valid DICOM file; ``stored`` is (H, W), (F, H, W) or (H, W, 3)."""
    ds = dicom_dataset(sop_class, transfer_syntax)
    ds.Modality = "CR"
    for key, value in extra.items():
        setattr(ds, key, value)
    if stored is not None:
        colour = photometric in ("RGB",)
        frames = stored.shape[0] if stored.ndim == 3 and not colour else 1
        ds.Rows, ds.Columns = (stored.shape[1:3] if frames > 1 else stored.shape[:2])
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        if colour:
            ds.PlanarConfiguration = 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = stored.astype(np.uint8).tobytes()
        else:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
            ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    if compress:
        ds.compress(compress)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ramp(h: int = 64, w: int = 64, top: int = 4095) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * top // (h * w - 1)).astype(np.uint16)


def rejects(data: bytes, status: int, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(data, **kwargs)
    assert info.value.status == status, info.value.message
    assert info.value.message and info.value.message.endswith(".")
    return info.value


# --------------------------------------------------------------------------- PNG / JPEG

def test_png_8bit():
    arr = (smooth() * 255).astype(np.uint8)
    img = read_image(png_bytes(arr))
    assert isinstance(img, DecodedImage)
    assert (img.kind, img.modality) == ("png", None)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (96, 128)
    assert (img.width, img.height) == (128, 96)
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-6)
    assert img.meta["bit_depth"] == 8
    json.dumps(img.meta)


def test_png_16bit_keeps_depth():
    arr = (smooth() * 60000 + 3).astype(np.uint16)  # values differing in the low bits
    img = read_image(png_bytes(arr))
    assert img.meta["bit_depth"] == 16
    np.testing.assert_allclose(img.pixels * 65535.0, arr, atol=0.5)
    assert len(np.unique(img.pixels)) > 256  # would collapse if squeezed through 8 bits


def test_jpeg():
    arr = (smooth() * 255).astype(np.uint8)
    img = read_image(jpeg_bytes(arr))
    assert img.kind == "jpeg" and img.pixels.shape == arr.shape
    assert np.abs(img.pixels - arr / 255.0).mean() < 0.02


def test_jpeg_exif_orientation_is_applied():
    arr = np.zeros((40, 80), np.uint8)
    arr[:, :10] = 255  # bright stripe on the left of a landscape image
    data = jpeg_bytes(arr)
    # EXIF APP1 with Orientation = 6 (rotate 90 degrees clockwise to display).
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", len(tiff) + 8) + b"Exif\x00\x00" + tiff
    app0_end = 4 + struct.unpack(">H", data[4:6])[0]
    img = read_image(data[:app0_end] + app1 + data[app0_end:])
    assert img.pixels.shape == (80, 40)
    assert img.pixels[:10].mean() > 0.9 and img.pixels[20:].mean() < 0.1  # stripe now on top


@pytest.mark.parametrize("encode", [png_bytes, jpeg_bytes])
def test_colour_becomes_grey(encode):
    bgr = np.zeros((64, 64, 3), np.uint8)
    bgr[:, :32] = (0, 0, 255)  # red in BGR
    bgr[:, 32:] = (255, 255, 255)
    img = read_image(encode(bgr))
    assert img.pixels.ndim == 2 and img.meta["channels"] == 3
    assert abs(float(img.pixels[32, 8]) - 0.299) < 0.03  # luma of pure red
    assert img.pixels[32, 56] > 0.97


def test_alpha_is_dropped():
    bgra = np.zeros((40, 40, 4), np.uint8)
    bgra[..., :3] = 200
    bgra[..., 3] = 0  # fully transparent: the grey values must still come through
    img = read_image(png_bytes(bgra))
    assert img.meta["had_alpha"] and img.pixels.shape == (40, 40)
    assert np.allclose(img.pixels, 200 / 255.0, atol=1e-3)
    # A coloured RGBA image is converted by luma over all three colours, not read from one channel.
    bgra[..., :3] = (0, 0, 255)          # red in BGR order
    assert abs(float(read_image(png_bytes(bgra)).pixels.mean()) - 0.299) < 0.03


def test_sniff_is_by_content_not_name(tmp_path):
    png = png_bytes(np.zeros((40, 40), np.uint8))
    jpg = jpeg_bytes(np.zeros((40, 40), np.uint8))
    dcm = make_dicom(ramp())
    misnamed = {"scan.dcm": png, "photo.png": jpg, "image.jpg": dcm}
    for name, payload in misnamed.items():
        (tmp_path / name).write_bytes(payload)
    assert sniff_type((tmp_path / "scan.dcm").read_bytes()) == "png"
    assert sniff_type((tmp_path / "photo.png").read_bytes()) == "jpeg"
    assert sniff_type((tmp_path / "image.jpg").read_bytes()) == "dicom"
    assert read_image((tmp_path / "scan.dcm").read_bytes()).kind == "png"
    assert sniff_type(b"GIF89a" + bytes(200)) is None
    assert sniff_type(b"") is None


def test_sniff_dicom_with_tiff_preamble_and_without_preamble():
    dcm = bytearray(make_dicom(ramp()))
    dcm[:4] = b"II*\x00"  # a TIFF header in the free-form preamble (as in MR2_UNCR.dcm)
    assert sniff_type(bytes(dcm)) == "dicom"
    assert read_image(bytes(dcm)).kind == "dicom"
    # Old-style file: no preamble, no file meta, implicit VR, starts at group 0x0008.
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(), photometric="MONOCHROME1")))
    del ds.file_meta
    ds.preamble = None  # written without preamble or "DICM"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    bare = buf.getvalue()
    assert bare[128:132] != b"DICM" and bare[:2] == b"\x08\x00"
    assert sniff_type(bare) == "dicom"
    img = read_image(bare)
    assert img.meta["transfer_syntax"] == "1.2.840.10008.1.2" and img.meta["inverted"]


def test_empty_is_400():
    rejects(b"", 400)


@pytest.mark.parametrize(
    "payload",
    [
        np.random.default_rng(1).bytes(5000),
        b"Patient notes: knee pain for 3 weeks.\nPlease review.\n" * 20,
        b"%PDF-1.7\n" + bytes(500),
        b"GIF89a" + bytes(500),
    ],
    ids=["random", "text", "pdf", "gif"],
)
def test_unknown_types_are_415(payload):
    err = rejects(payload, 415)
    assert "PNG, JPEG or DICOM" in err.message


@pytest.mark.parametrize("encode", [png_bytes, jpeg_bytes], ids=["png", "jpeg"])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.9])
def test_truncated_files_are_400(encode, keep):
    data = encode((smooth(128, 128) * 255).astype(np.uint8))
    rejects(data[: max(4, int(len(data) * keep))], 400)


def test_corrupt_png_body_is_400():
    data = bytearray(png_bytes((smooth() * 255).astype(np.uint8)))
    idat = data.index(b"IDAT")
    data[idat + 10 : idat + 60] = bytes(50)  # CRC no longer matches, zlib stream broken
    rejects(bytes(data), 400)


def test_png_decompression_bomb_rejected_before_decoding(monkeypatch):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(bytes(100_000), 9))
        + png_chunk(b"IEND", b"")
    )

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoder called for an oversized image")

    monkeypatch.setattr(raster.cv2, "imdecode", must_not_decode)
    start = time.perf_counter()
    err = rejects(bomb, 413)
    assert time.perf_counter() - start < 0.5
    assert "100000 x 100000" in err.message


def test_jpeg_header_bomb_rejected(monkeypatch):
    data = bytearray(jpeg_bytes(np.zeros((64, 64), np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    monkeypatch.setattr(raster.cv2, "imdecode", lambda *a, **k: pytest.fail("decoded a bomb"))
    rejects(bytes(data), 413)


def test_byte_and_pixel_limits():
    data = png_bytes(np.zeros((64, 64), np.uint8))
    rejects(data, 413, max_bytes=len(data) - 1)
    rejects(data, 413, max_pixels=64 * 64 - 1)
    assert read_image(data, max_bytes=len(data), max_pixels=64 * 64).width == 64


def test_size_messages_give_exact_sizes():
    assert size_text(68_369_408) == "65.2 MiB (68,369,408 bytes)"
    assert size_text(64 * 2**20) == "64.0 MiB (67,108,864 bytes)"
    assert size_text(3 * 2**30) == "3.0 GiB (3,221,225,472 bytes)"
    assert size_text(20_480) == "20.0 KiB (20,480 bytes)" and size_text(512) == "512 bytes"
    # one byte over the limit reads differently from the limit (it read "64 MB; the limit is 64 MB")
    err = rejects(bytes(64 * 2**20 + 1), 413)
    assert err.message == ("The file is too large: 64.0 MiB (67,108,865 bytes); "
                           "the limit is 64.0 MiB (67,108,864 bytes).")


def test_too_small_is_400():
    err = rejects(png_bytes(np.zeros((31, 200), np.uint8)), 400)
    assert "too small" in err.message
    rejects(make_dicom(ramp(16, 16)), 400)


# --------------------------------------------------------------------------- DICOM

def test_dicom_monochrome1_is_inverted():
    stored = ramp(64, 64, top=1023)
    stored[10, 10] = 1023  # highest stored value = most attenuation-free = dark on display
    img = read_image(make_dicom(stored, photometric="MONOCHROME1", bits_stored=10))
    assert img.kind == "dicom" and img.modality == "CR"
    assert img.meta["inverted"] is True and img.meta["window"]["source"] == "percentile"
    assert img.pixels[10, 10] < 0.05
    assert img.pixels[0, 0] > 0.95  # lowest stored value -> bright
    assert img.pixels.dtype == np.float32 and 0.0 <= img.pixels.min() <= img.pixels.max() <= 1.0


def test_dicom_monochrome2_not_inverted():
    img = read_image(make_dicom(ramp()))
    assert img.meta["inverted"] is False
    assert img.pixels[0, 0] < 0.05 and img.pixels[-1, -1] > 0.95


def test_dicom_rescale_and_header_window():
    stored = np.full((64, 64), 50, np.uint16)  # real value 2*50-100 = 0
    stored[:, 20:40] = 100  # real 100
    stored[:, 40:] = 150  # real 200
    data = make_dicom(stored, slope=2, intercept=-100, center=[100, 900], width=[200, 50])
    img = read_image(data)
    window = img.meta["window"]
    assert window["source"] == "header" and window["center"] == 100 and window["width"] == 200
    assert img.meta["rescale"] == {"slope": 2.0, "intercept": -100.0}
    assert img.pixels[5, 5] == pytest.approx(0.0, abs=0.01)
    assert img.pixels[5, 30] == pytest.approx(0.5, abs=0.01)
    assert img.pixels[5, 50] == pytest.approx(1.0, abs=0.01)
    # The same window on the stored values (no rescale) gives a different picture.
    plain = read_image(make_dicom(stored, center=100, width=200))
    assert plain.pixels[5, 5] == pytest.approx(0.25, abs=0.01)
    assert plain.pixels[5, 50] == pytest.approx(0.75, abs=0.01)


def test_dicom_window_outside_data_falls_back_to_percentile():
    img = read_image(make_dicom(ramp(), center=90000, width=10))
    assert img.meta["window"]["source"] == "percentile"
    assert img.pixels.std() > 0.1


def test_dicom_malformed_optional_tags_do_not_reject_the_image():
    data = make_dicom(
        ramp(), PixelSpacing=[1.5, 2.5], SliceThickness="3.25",
        WindowCenter="1234.5", WindowWidth="4000", VOILUTFunction="LINEAR",
    )
    # Corrupt the values in place (same lengths) the way real files sometimes are.
    swaps = [(b"1.5\\2.5 ", b"abc\\def "), (b"3.25", b"x1yz"), (b"1234.5", b"12x4.5"), (b"LINEAR", b"WE\xffIRD")]
    for good, bad in swaps:
        assert data.count(good) == 1
        data = data.replace(good, bad)
    img = read_image(data)
    assert img.meta["window"]["source"] == "percentile" and "pixel_spacing_mm" not in img.meta
    assert img.pixels.std() > 0.1


def test_dicom_without_pixel_data_rejected():
    err = rejects(make_dicom(None), 400)
    assert "no image" in err.message
    err = rejects(make_dicom(None, sop_class=BasicTextSRStorage), 415)
    assert "no image" in err.message and "Basic Text SR" in err.message


def test_dicom_meta_keeps_only_the_coded_vocabulary():
    data = make_dicom(ramp(), center=2000, width=4000, PixelSpacing=[0.2, 0.25], **IDENTIFYING_TEXT)
    img = read_image(data)
    stored = json.dumps(img.meta)
    assert not leaked_text(stored), stored
    # free text in the coded elements is dropped, not kept "after cleaning"
    for key in ("body_part", "view_position", "laterality", "series_description", "burned_in_annotation"):
        assert key not in img.meta
    assert img.meta["window"]["function"] == "LINEAR"           # an unknown VOI LUT function is read as LINEAR
    assert "image_type" not in img.meta                          # DERIVED then text: not the defined pair
    assert img.meta["modality"] == img.modality == "CR" and img.meta["photometric"] == "MONOCHROME2"
    assert img.meta["pixel_spacing_mm"] == [0.2, 0.25] and img.meta["bits_stored"] == 12
    assert set(img.meta) - CODED_KEYS <= {"rows", "cols", "frames", "frame_index", "transfer_syntax",
                                          "transfer_syntax_name", "compressed", "sop_class", "window", "inverted",
                                          "rescale"}


@pytest.mark.parametrize("elements, expected", [
    ({"BodyPartExamined": "HAND", "ViewPosition": "PA", "ImageType": ["ORIGINAL", "PRIMARY", "Maria"],
      "BurnedInAnnotation": "NO"},
     {"body_part": "HAND", "view_position": "PA", "image_type": ["ORIGINAL", "PRIMARY"], "burned_in_annotation": "NO"}),
    ({"BodyPartExamined": "l spine"}, {"body_part": "LSPINE"}),
    ({"BodyPartExamined": "Knee of Maria"}, {"body_part": None}),
    ({"Modality": "Gonzalez"}, {"modality": "OT"}),                   # other: still refused by the MRI tasks
    ({"Modality": "MR", "SeriesDescription": "cor T1 tse Gonzalez"}, {"modality": "MR", "sequence": "T1"}),
    ({"Modality": "MR", "SeriesDescription": "CORO  Stir_FIL_1"}, {"sequence": "STIR"}),
    ({"Modality": "MR", "ScanningSequence": ["SE", "IR"], "InversionTime": 140, "SeriesDescription": "Maria"},
     {"sequence": "STIR"}),
    ({"Modality": "MR", "EchoTime": 90, "RepetitionTime": 4000, "SeriesDescription": "Maria Gonzalez"},
     {"sequence": "T2"}),
    ({"Modality": "MR", "SeriesDescription": "Maria Gonzalez"}, {"sequence": None}),
])
def test_dicom_coded_facts_come_from_the_vocabulary(elements, expected):
    img = read_image(make_dicom(ramp(), **elements))
    for key, value in expected.items():
        assert img.meta.get(key) == value, (key, img.meta.get(key))
    assert not leaked_text(json.dumps(img.meta))


def test_dicom_multiframe_takes_middle_frame():
    frames = np.stack([ramp() // 8, ramp(), ramp() // 8])
    frames[1, :, :32] = 0  # only the middle frame has a black left half
    img = read_image(make_dicom(frames))
    assert img.meta["frames"] == 3 and img.meta["frame_index"] == 1
    assert img.pixels[:, :32].max() < 0.05 and img.pixels[:, 40:].mean() > 0.5


def test_dicom_rgb_becomes_grey():
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[:, :24] = (255, 0, 0)
    rgb[:, 24:] = (255, 255, 255)
    img = read_image(make_dicom(rgb, photometric="RGB"))
    assert img.pixels.shape == (48, 48)
    assert img.pixels[10, 10] == pytest.approx(0.299, abs=0.01) and img.pixels[10, 40] > 0.99


def test_dicom_header_size_bomb_rejected():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp())))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60000, 60000, 10
    buf = io.BytesIO()
    ds.save_as(buf)
    rejects(buf.getvalue(), 413)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
def test_dicom_compressed_round_trip(syntax):
    stored = ramp(64, 80)
    img = read_image(make_dicom(stored, compress=syntax))
    ref = read_image(make_dicom(stored))
    assert img.meta["compressed"] is True
    np.testing.assert_allclose(img.pixels, ref.pixels, atol=1e-6)


def test_j2k_with_lying_codestream_header_rejected():
    data = bytearray(make_dicom(ramp(), compress=JPEG2000Lossless))
    siz = data.index(b"\xff\x4f\xff\x51")
    data[siz + 8 : siz + 16] = struct.pack(">II", 100_000, 100_000)  # Xsiz, Ysiz
    rejects(bytes(data), 413)


def test_corrupt_j2k_names_the_codec():
    data = bytearray(make_dicom(smooth(64, 64) * 4000, compress=JPEG2000Lossless))
    siz = data.index(b"\xff\x4f\xff\x51")
    data[siz + 120 : -40] = b"\xa5" * (len(data) - 40 - siz - 120)
    with pytest.raises(ImageReadError, match="JPEG 2000") as caught:
        read_image(bytes(data))
    assert caught.value.status == 400


def _deflated_and_twin() -> tuple[bytes, bytes]:
    """A small deflated DICOM and the same file written as Explicit VR Little Endian."""
    deflated = make_dicom(smooth(64, 80) * 4000, transfer_syntax=DeflatedExplicitVRLittleEndian)
    ds = pydicom.dcmread(io.BytesIO(deflated))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return deflated, buf.getvalue()


def test_deflated_dicom_is_inflated_once_into_its_undeflated_twin(monkeypatch):
    deflated, twin = _deflated_and_twin()
    assert len(deflated) < len(twin)
    stream, was_deflated = dicom_stream(deflated, len(twin))
    assert was_deflated and stream.getvalue() == twin           # what pydicom reads: the twin, byte for byte
    ref = read_image(twin)

    def no_second_inflation(*args, **kwargs):                   # pydicom's own, unbounded, inflation
        raise AssertionError("the dataset was inflated again")

    monkeypatch.setattr(zlib, "decompress", no_second_inflation)
    img = read_image(deflated)
    np.testing.assert_array_equal(img.pixels, ref.pixels)
    assert img.meta["transfer_syntax"] == DeflatedExplicitVRLittleEndian
    assert {k: v for k, v in img.meta.items() if not k.startswith(("transfer_syntax", "compressed"))} == \
        {k: v for k, v in ref.meta.items() if not k.startswith(("transfer_syntax", "compressed"))}


def test_deflated_dicom_has_the_byte_limit_of_its_twin():
    deflated, twin = _deflated_and_twin()
    assert read_image(deflated, max_bytes=len(twin)).width == 80
    for data in (twin, deflated):                               # one byte less: both are too large
        err = rejects(data, 413, max_bytes=len(twin) - 1)
        assert f"{len(twin) - 1:,} bytes" in err.message


def test_corrupt_or_truncated_deflated_dicom_is_400():
    deflated, _twin = _deflated_and_twin()
    meta_end = 132 + 12 + struct.unpack_from("<I", deflated, 140)[0]
    rejects(deflated[: meta_end + 40], 400)                     # truncated stream
    rejects(deflated[:meta_end] + b"\xff" * 200 + deflated[meta_end + 200 :], 400)   # invalid deflate codes


def deflate_bomb(inflated_mb: int) -> bytes:
    """A deflated DICOM whose dataset inflates to `inflated_mb` MiB of zero pixels, built a MiB at a time."""
    small = make_dicom(ramp(), transfer_syntax=DeflatedExplicitVRLittleEndian)
    meta_end = 132 + 12 + struct.unpack_from("<I", small, 140)[0]
    plain = make_dicom(ramp())
    header = plain[plain.index(b"\x08\x00", 132 + 12 + struct.unpack_from("<I", plain, 140)[0]):
                   plain.index(b"\xe0\x7f\x10\x00")]          # the dataset's elements up to PixelData
    pixel_bytes = inflated_mb * 2**20
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(header + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", pixel_bytes))]
    zeros = bytes(2**20)
    parts += [deflater.compress(zeros) for _ in range(inflated_mb)]
    parts.append(deflater.flush())
    return small[:meta_end] + b"".join(parts)


def test_deflate_bomb_is_refused_while_inflating_near_the_limit():
    """The reported bomb: under 400 kB that inflates to 320 MB. Refused (413) with the limit in the message,
    after inflating no more than the upload limit plus one step."""
    bomb = deflate_bomb(320)
    assert len(bomb) < 400_000
    limit = 64 * 2**20
    tracemalloc.start()
    try:
        err = rejects(bomb, 413, max_bytes=limit)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "64.0 MiB (67,108,864 bytes)" in err.message and "inflates" in err.message
    assert peak < limit * 1.2, f"peak {peak / 2**20:.0f} MiB while refusing"


# --------------------------------------------------------------------------- real files

def _real_files() -> list:
    root = data_dir()
    files = sorted((root / "dicom").glob("*")) + sorted((root / "sij_mri_dicom" / "patient1").glob("*"))
    files = [f for f in files if f.is_file()]
    if not files:
        return [pytest.param(None, marks=real_data(root / "dicom", root / "sij_mri_dicom" / "patient1"), id="no-data")]
    return [pytest.param(f, id=f"{f.parent.name}/{f.name}") for f in files]


@pytest.mark.parametrize("path", _real_files())
def test_real_files_decode_or_reject_cleanly(path):
    try:
        img = read_image(path.read_bytes())
    except ImageReadError as err:
        assert err.message and err.status in (400, 413, 415)
        pytest.fail(f"{path.name} was rejected ({err.status}): {err.message}")  # all listed files must decode
    px = img.pixels
    assert px.dtype == np.float32 and px.ndim == 2 and min(px.shape) >= 64
    assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0
    assert px.std() > 0.02, "display image is (almost) constant"
    assert img.kind == "dicom" and img.modality in {"CR", "CT", "MR"}
    stored = json.dumps(img.meta, allow_nan=False)
    leaked = [(k, v) for k, v in identifying_values(path) if v.lower() in stored.lower()]
    assert not leaked, f"identifying values in the stored metadata: {leaked}"


# Elements that identify a patient, a clinician, a place or a study, and the free text that may (values,
# not names, are checked): descriptions and protocol names are matched for the sequence, never kept.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientAddress", "OtherPatientIDs",
    "OtherPatientNames", "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReferringPhysicianName", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician", "AccessionNumber", "StudyID",
    "StationName", "DeviceSerialNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "FrameOfReferenceUID", "StudyDate", "AcquisitionDateTime", "SeriesDescription", "StudyDescription",
    "ProtocolName", "ImageComments",
)


def identifying_values(path) -> list[tuple[str, str]]:
    """(keyword, value) of every identifying element in the file with a value long enough to search for
    (four characters or more: a "M" or an empty name would match anything)."""
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    out = []
    for keyword in IDENTIFYING_KEYWORDS:
        value = ds.get(keyword)
        if value is None:
            continue
        values = value if isinstance(value, pydicom.multival.MultiValue) else [value]
        for v in values:
            text = str(v).strip()
            parts = [text] + ([p for p in re.split(r"[\^=]", text) if p] if keyword.endswith("Name") else [])
            out += [(keyword, p.strip()) for p in parts if len(p.strip()) >= 4]
    return out


@real_data(data_dir() / "dicom", data_dir() / "sij_mri_dicom" / "patient1")
def test_real_uploads_keep_no_identifying_value(app, alice, caplog, tmp_path):
    """Every real file uploaded (decoded, run or refused): none of its identifying values reaches the
    database (a full dump), the log (at DEBUG) or any stored file."""
    files = [p.values[0] for p in _real_files()]
    values = {v for f in files for _k, v in identifying_values(f)}
    assert len(values) > 20                           # the real files do carry identifying data
    caplog.clear()                                    # reading them here may have logged them
    caplog.set_level(logging.DEBUG)
    statuses = set()
    for f in files:
        response = upload(alice, f.read_bytes(), filename=f.name)
        statuses.add(response.status_code)
    assert 302 in statuses                            # some were analysed and stored
    with app.app_context():
        dump = "\n".join(db.session.connection().connection.driver_connection.iterdump())
    for name, text in (("database", dump), ("log", caplog.text)):
        leaked = sorted(v for v in values if v.lower() in text.lower())
        assert not leaked, f"identifying values in the {name}: {leaked[:5]}"
    pngs = [p for p in result_files(app) if p.is_file()]
    assert pngs and all(p.suffix == ".png" for p in pngs)
    for p in pngs:                                    # images only: no text or EXIF chunk to carry a header
        assert not set(png_chunk_types(p.read_bytes())) & {b"tEXt", b"zTXt", b"iTXt", b"eXIf"}, p.name


def png_chunk_types(data: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        types.append(kind)
        pos += 12 + length
    return types


def _real(name: str) -> bytes:
    path = data_dir() / "dicom" / name
    need(path)
    return path.read_bytes()


def test_real_cr_chest_is_shown_as_a_radiograph():
    data = _real("CR-MONO1-10-chest.dcm")
    assert data[128:132] != b"DICM" and sniff_type(data) == "dicom"  # no preamble, no meta
    img = read_image(data)
    assert img.meta["photometric"] == "MONOCHROME1" and img.meta["inverted"]
    px = img.pixels
    h, w = px.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    lungs = np.concatenate([px[rows, int(0.2 * w) : int(0.35 * w)], px[rows, int(0.65 * w) : int(0.8 * w)]], axis=1)
    mediastinum = px[rows, int(0.45 * w) : int(0.55 * w)]
    assert mediastinum.mean() > lungs.mean() + 0.1  # air dark, mediastinum bright


@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "RG3_J2KR.dcm"])
def test_real_jpeg2000_decode(name):
    img = read_image(_real(name))
    assert img.meta["compressed"] and "JPEG 2000" in img.meta["transfer_syntax_name"]
    assert img.meta["inverted"] and img.pixels.std() > 0.05
    assert img.pixels.shape == (img.meta["rows"], img.meta["cols"])


# --------------------------------------------------------------------------- fuzzing

def _seeds() -> list[bytes]:
    grey = (smooth(48, 40) * 255).astype(np.uint8)
    return [
        png_bytes(grey),
        png_bytes((smooth(40, 48) * 65535).astype(np.uint16)),
        png_bytes(np.dstack([grey, grey // 2, grey])),
        jpeg_bytes(grey),
        make_dicom(ramp(40, 40), photometric="MONOCHROME1", center=2000, width=4000),
        make_dicom(ramp(40, 40), compress=RLELossless),
        make_dicom(ramp(40, 40), compress=JPEG2000Lossless),
    ]


SEEDS = _seeds()


def _check_outcome(data: bytes) -> None:
    try:
        img = read_image(data)
    except ImageReadError as err:
        assert err.status in (400, 413, 415) and err.message
        return
    assert img.pixels.dtype == np.float32 and img.pixels.ndim == 2
    assert np.isfinite(img.pixels).all() and 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0


# CI raises the number of examples (.ci/run); the deadline is a few times the slowest honest decode
# seen here (under 5 ms per example; 100 ms leaves room for a loaded machine), so a decoder that spins fails.
FUZZ_EXAMPLES = int(os.environ.get("JOINTSCAN_FUZZ_EXAMPLES", "150"))
FUZZ_DEADLINE_MS = 100


def _dicom_header() -> bytes:
    """Preamble, DICM, file meta and the image elements of a 96 x 96 16-bit file, up to PixelData."""
    whole = make_dicom(ramp(96, 96))
    return whole[: whole.index(b"\xe0\x7f\x10\x00")]   # the PixelData tag (7FE0,0010), little endian


DICOM_HEADER = _dicom_header()
JPEG_HEADER = (lambda j: j[: j.index(b"\xff\xda") + 14])(jpeg_bytes((smooth(64, 64) * 255).astype(np.uint8)))


@st.composite
def typed_bodies(draw) -> tuple[str | None, bytes]:
    """Random bytes behind a valid header, so the decoders (not the type sniffing) meet them."""
    kind = draw(st.sampled_from(["png", "jpeg", "dicom", None]))
    body = draw(st.binary(min_size=0, max_size=4096))
    if kind == "png":
        w, h = draw(st.integers(32, 96)), draw(st.integers(32, 96))
        depth, colour = draw(st.sampled_from([(8, 0), (16, 0), (8, 2), (8, 4), (8, 6), (16, 2)]))
        ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
        if draw(st.booleans()):                       # a well-formed IDAT of random (deflated) pixels
            body = png_chunk(b"IDAT", zlib.compress(body)) + png_chunk(b"IEND", b"")
        return kind, b"\x89PNG\r\n\x1a\n" + ihdr + body
    if kind == "jpeg":                                 # real tables and frame header, random scan data
        return kind, JPEG_HEADER + body + b"\xff\xd9"
    if kind == "dicom":
        if draw(st.booleans()):                       # a PixelData element whose length fits the body
            body = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", len(body) & ~1) + body[: len(body) & ~1]
        return kind, DICOM_HEADER + body
    return kind, body


@settings(max_examples=FUZZ_EXAMPLES, deadline=FUZZ_DEADLINE_MS, suppress_health_check=[HealthCheck.too_slow])
@given(typed_bodies())
def test_fuzz_random_bytes(case):
    kind, data = case
    if kind is not None:
        assert sniff_type(data) == kind               # past the type check: a decoder sees the bytes
    _check_outcome(data)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_valid_files(data):
    _check_outcome(data)
