"""The one vocabulary of DICOM header facts that JointScan keeps: coded values and numbers, never free text.

Headers carry names, dates, record numbers and places, and not only in the patient elements: a
SeriesDescription such as "Knee Maria Gonzalez 1970-01-01 MRN 5544" or a BodyPartExamined typed by
hand is free text whatever its element says. So nothing read from a header is kept as written:

- a coded element is kept only when its value is one of the defined terms listed here (the DICOM
  modality list, BodyPartExamined, ViewPosition, PhotometricInterpretation, ImageType, VOI LUT
  function and BurnedInAnnotation terms); anything else becomes None (a modality: OT, "other");
- numbers (pixel spacing, bits, slice thickness) are kept as finite numbers;
- the MR sequence kind (STIR, T1, T2) is derived by rule from the coded acquisition parameters,
  or from a closed list of tokens matched in the description texts, which are never kept.

`coded_facts(ds)` is what every reader of DICOM headers stores (imaging.dicom for one image,
imaging.volume for a series). This module imports no pydicom: it reads any dataset through `.get`,
so that the recogniser can name a body part without paying for pydicom's import.
"""
from __future__ import annotations

import math
import re
from typing import Any

# PS3.3 C.7.3.1.1.1 Modality: the defined terms, then the retired ones that old files still carry.
MODALITIES = frozenset("""
    ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL
    IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG
    RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN
    TEXTUREMAP TG US VA XA XAPROTOCOL XC
    AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split())

# BodyPartExamined defined terms (PS3.16 Annex L) for the regions a musculoskeletal service images,
# with the words a sentence uses for them ("a chest radiograph"). Any other value is dropped.
BODY_PARTS = {
    "ABDOMEN": "abdomen", "ABDOMENPELVIS": "abdomen and pelvis", "ANKLE": "ankle", "ARM": "arm",
    "BREAST": "breast", "CALCANEUS": "heel", "CHEST": "chest", "CHESTABDOMEN": "chest and abdomen",
    "CHESTABDPELVIS": "chest, abdomen and pelvis", "CLAVICLE": "clavicle", "COCCYX": "coccyx",
    "CSPINE": "cervical spine", "CTSPINE": "cervicothoracic spine", "ELBOW": "elbow", "EXTREMITY": "extremity",
    "FACE": "face", "FEMUR": "femur", "FINGER": "finger", "FOOT": "foot", "FOREARM": "forearm", "HAND": "hand",
    "HEAD": "head", "HEADNECK": "head and neck", "HEART": "heart", "HIP": "hip", "HUMERUS": "humerus", "JAW": "jaw",
    "KNEE": "knee", "LEG": "leg", "LSPINE": "lumbar spine", "LSSPINE": "lumbosacral spine", "NECK": "neck",
    "PATELLA": "patella", "PELVIS": "pelvis", "RIB": "rib", "SCAPULA": "scapula", "SHOULDER": "shoulder",
    "SKULL": "skull", "SPINE": "spine", "SSPINE": "sacral spine", "STERNUM": "sternum", "THIGH": "thigh",
    "THUMB": "thumb", "TIBIA": "tibia", "TLSPINE": "thoracolumbar spine", "TOE": "toe", "TSPINE": "thoracic spine",
    "WHOLEBODY": "whole body", "WRIST": "wrist",
}
# PS3.3 C.8.11.5.1.1 View Position (projection radiography).
VIEW_POSITIONS = frozenset({"AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO"})
# PS3.3 C.7.6.3.1.2 Photometric Interpretation, current and retired.
PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422",
                          "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB", "HSV", "ARGB", "CMYK"})
# PS3.3 C.11.2.1.3 VOI LUT Function.
VOI_LUT_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
# PS3.3 C.7.6.1.1.2 Image Type: only the first two values are defined terms; the rest is the vendor's.
IMAGE_TYPE_TERMS = (frozenset({"ORIGINAL", "DERIVED"}), frozenset({"PRIMARY", "SECONDARY"}))
BURNED_IN_TERMS = frozenset({"YES", "NO"})

SEQUENCE_KINDS = ("STIR", "T1", "T2")
# Tokens of a description, protocol or sequence name (or a file name) that name a sequence kind;
# matched whole, after splitting on anything but letters and digits. "tir2d1" is a Siemens sequence
# name (*tir2d1), "tirm" its STIR protocol.
_SEQUENCE_TOKENS = (
    ("STIR", re.compile(r"stir|tirm|tir|tir[23]d\d*\w*")),
    ("T1", re.compile(r"t1|t1w|t1se|t1tse|t1fse|t1fs")),
    ("T2", re.compile(r"t2|t2w|t2se|t2tse|t2fse|t2fs")),
)
# A short-tau inversion recovery: an inversion time near fat's null point at 1.5-3 T.
_STIR_INVERSION_MS = (80.0, 300.0)

# The keys `coded_facts` may return: nothing else from a header is ever stored.
CODED_KEYS = frozenset({"modality", "body_part", "view_position", "sequence", "photometric", "bits_allocated",
                        "bits_stored", "samples_per_pixel", "pixel_spacing_mm", "slice_thickness_mm",
                        "image_type", "burned_in_annotation"})


def optional_value(ds: Any, keyword: str) -> Any:
    """An optional element's value, or None when absent or unreadable: metadata
    is a nicety and a malformed optional tag must not reject the image."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def first_float(value: Any) -> float | None:
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
    return out if math.isfinite(out) else None


def positive_int(value: Any, default: int) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        return default
    return out if out > 0 else default


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    try:
        return list(value)
    except Exception:
        return []


def term(value: Any, vocabulary: frozenset[str] | dict[str, str]) -> str | None:
    """`value` as one of the vocabulary's terms, or None: never the value itself when it is not one."""
    if value is None or isinstance(value, bytes):
        return None
    text = str(value).strip().upper()
    return text if text in vocabulary else None


def modality_of(ds: Any) -> str | None:
    """Modality as a defined term; a value outside the list is OT (other), so that a task's modality check
    still refuses it (None is what PNG and JPEG have, which every task may be given)."""
    raw = optional_value(ds, "Modality")
    if raw is None or isinstance(raw, bytes) or not str(raw).strip():
        return None
    return term(raw, MODALITIES) or "OT"


def body_part_of(ds: Any) -> str | None:
    """BodyPartExamined as a defined term; "L SPINE" or "l-spine" are read as LSPINE, anything else is None."""
    raw = optional_value(ds, "BodyPartExamined")
    if raw is None or isinstance(raw, bytes):
        return None
    return term(re.sub(r"[\s_\-]+", "", str(raw)), BODY_PARTS)


def body_part_words(code: Any) -> str | None:
    """The words for a coded body part ("lumbar spine"), None for anything that is not one."""
    return BODY_PARTS.get(code) if isinstance(code, str) else None


def sequence_from_text(text: Any) -> str | None:
    """STIR / T1 / T2 when a token of `text` is in the closed list; the text itself is never kept."""
    if not isinstance(text, str):
        return None
    tokens = [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]
    for kind, pattern in _SEQUENCE_TOKENS:
        if any(pattern.fullmatch(t) for t in tokens):
            return kind
    return None


def sequence_kind(ds: Any) -> str | None:
    """STIR, T1 or T2 of an MR image: the coded inversion recovery first, then the closed token list in
    the sequence, series and protocol names, then echo and repetition times; None when none of them says."""
    scanning = {str(v).strip().upper() for v in _values(optional_value(ds, "ScanningSequence"))}
    inversion = first_float(optional_value(ds, "InversionTime"))
    if "IR" in scanning and inversion is not None and _STIR_INVERSION_MS[0] <= inversion <= _STIR_INVERSION_MS[1]:
        return "STIR"
    named = [sequence_from_text(optional_value(ds, k)) for k in ("SequenceName", "SeriesDescription", "ProtocolName")]
    for kind in SEQUENCE_KINDS:
        if kind in named:
            return kind
    echo = first_float(optional_value(ds, "EchoTime"))
    repetition = first_float(optional_value(ds, "RepetitionTime"))
    if echo is not None and repetition is not None and "IR" not in scanning:
        if echo < 30 and repetition < 1000:
            return "T1"
        if echo > 60 and repetition > 1500:
            return "T2"
    return None


def _spacing(ds: Any) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _values(optional_value(ds, keyword))
        if len(values) == 2:
            row_mm, col_mm = first_float(values[0]), first_float(values[1])
            if row_mm and col_mm and row_mm > 0 and col_mm > 0:
                return [row_mm, col_mm]
            return None
    return None


def coded_facts(ds: Any) -> dict[str, Any]:
    """The header facts of one image or series that may be stored: terms from the vocabularies above and
    numbers, each only when the header has a valid one (keys within CODED_KEYS)."""
    facts: dict[str, Any] = {
        "modality": modality_of(ds),
        "body_part": body_part_of(ds),
        "view_position": term(optional_value(ds, "ViewPosition"), VIEW_POSITIONS),
        "photometric": term(optional_value(ds, "PhotometricInterpretation"), PHOTOMETRICS),
        "bits_allocated": positive_int(optional_value(ds, "BitsAllocated"), 0),
        "bits_stored": positive_int(optional_value(ds, "BitsStored"), 0),
        "samples_per_pixel": positive_int(optional_value(ds, "SamplesPerPixel"), 1),
    }
    if facts["modality"] == "MR":
        facts["sequence"] = sequence_kind(ds)
    image_type = [term(v, terms) for v, terms in zip(_values(optional_value(ds, "ImageType")), IMAGE_TYPE_TERMS)]
    if image_type and all(image_type):
        # e.g. DERIVED/SECONDARY: a screen capture that may carry burnt-in text.
        facts["image_type"] = image_type
    facts["burned_in_annotation"] = term(optional_value(ds, "BurnedInAnnotation"), BURNED_IN_TERMS)
    facts["pixel_spacing_mm"] = _spacing(ds)
    thickness = first_float(optional_value(ds, "SliceThickness"))
    facts["slice_thickness_mm"] = thickness if thickness is not None and thickness > 0 else None
    return {k: v for k, v in facts.items() if v is not None}
