"""What an upload's bytes say before any decoder runs: its type, and its size from the headers.

The type is decided from magic bytes, never from the file name. Sizes are read from the PNG,
JPEG and JPEG 2000 headers and checked against the limits here before any pixel data is
decompressed, so a small file cannot make a decoder allocate gigabytes.
"""
from __future__ import annotations

import struct

from imaging.errors import ImageReadError

MIN_SIDE = 32
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Value representations that can follow a tag in explicit-VR DICOM.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
# A few progressive JPEG scans are normal (~10); hundreds of them is a known way
# to make libjpeg burn CPU on a tiny file.
MAX_JPEG_SCANS = 200


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


def check_pixels(width: int, height: int, max_pixels: int, frames: int = 1) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError("The image header is invalid: it gives a zero width or height.", 400)
    if width * height * max(frames, 1) > max_pixels:
        what = f"{width} x {height} pixels" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageReadError(f"The image is too large ({what}); the limit is {max_pixels:,} pixels.", 413)


def check_min_size(width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageReadError(
            f"The image is too small ({width} x {height} pixels); it must be at least {MIN_SIDE} x {MIN_SIDE}.", 400
        )


def png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: length 13, type, width, height (big-endian).
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ImageReadError("The PNG file is corrupt: its header is invalid.", 400)
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


_MAX_PNG_CHUNKS = 200_000  # real encoders write IDAT in >= 8 kB chunks; this is far above any of them


def check_png_chunks(data: bytes) -> None:
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


def jpeg_size(data: bytes) -> tuple[int, int] | None:
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


def j2k_size(frame: bytes) -> tuple[int, int] | None:
    # SOC + SIZ; may sit after JP2 boxes, so look a little way in.
    pos = frame.find(b"\xff\x4f\xff\x51", 0, 65536)
    if pos < 0 or len(frame) < pos + 24:
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, pos + 8)
    return max(xsiz - xo, 0), max(ysiz - yo, 0)
