"""The recogniser's images: every real folder of ../shared/data, the phantoms, and made-up negatives.

Each source image carries its kind (tasks.recognition.KINDS) and a group: the patient (or case, or
file for the single DICOM files, or phantom seed block) it comes from. The held-out split is by
group, never by image: every slice of a held-out SIJ case and of a held-out spine patient, every
knee of the knee dataset's validation patients, and whole held-out files are unseen in training.

Real images are decoded as the upload path decodes them (imaging.io.read_image), and NIfTI slices
as a slice exported from a viewer would look (the volume normalised as a whole), so the recogniser
sees what users send. Sources are kept at most SOURCE_SIDE px on their long side; `sample` draws
augmented views of them: the in-kind views stay within what the tasks accept (mild rotation, scale,
crop, contrast), and far-outside views (rotated 90-270 degrees, small crops) become negatives of
the matching "other" kind.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from imaging.io import ImageReadError, read_image
from imaging.volume import read_nifti
from tasks.recognition import KINDS
from imaging.normalize import normalise_volume

SOURCE_SIDE = 192
# Held out (by patient / case / file), reported as the confusion matrix on the model card.
HELD_OUT_SIJ_CASES = ("1001", "1007", "1012", "1009")       # three labelled cases and one unlabelled
HELD_OUT_HANDS = ("2.png", "8.png")
HELD_OUT_DICOM = ("RG3_J2KR.dcm", "MR2_UNCR.dcm")          # a tibia radiograph and an MR never seen
OTHER_OF = {"knee_radiograph": "other_radiograph", "hand_radiograph": "other_radiograph",
            "other_radiograph": "other_radiograph", "spine_mri": "other_mri_ct",
            "sacroiliac_mri": "other_mri_ct", "other_mri_ct": "other_mri_ct"}


@dataclass
class Source:
    image: np.ndarray      # float32 0-1, long side <= SOURCE_SIDE
    kind: str
    group: str             # what the split keeps together
    held_out: bool

    @property
    def label(self) -> int:
        return KINDS.index(self.kind)


def shrink(image01: np.ndarray, side: int = SOURCE_SIDE) -> np.ndarray:
    img = np.asarray(image01, np.float32)
    scale = side / max(img.shape)
    if scale >= 1:
        return img
    size = (max(1, int(round(img.shape[1] * scale))), max(1, int(round(img.shape[0] * scale))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _decoded(path: str) -> np.ndarray | None:
    try:
        return read_image(Path(path).read_bytes()).pixels
    except ImageReadError:
        return None


def real_sources(root: Path, knee_per_grade: int = 250) -> list[Source]:
    from training.spine.data import patient_of, patient_split

    sources: list[Source] = []
    for split in ("train", "val"):
        for grade in range(5):
            for path in sorted(glob.glob(str(root / f"knee_kl/{split}/{grade}/*.jpg")))[:knee_per_grade]:
                img = _decoded(path)
                if img is not None:   # the dataset's own split is patient-disjoint: val is held out
                    sources.append(Source(shrink(img), "knee_radiograph", Path(path).stem[:-1], split == "val"))
    spine = sorted(glob.glob(str(root / "spine_mri/images/*.png")))
    if spine:
        _, val_patients = patient_split([patient_of(Path(p).name) for p in spine])
        for path in spine:
            patient = patient_of(Path(path).name)
            img = _decoded(path)
            if img is not None:
                sources.append(Source(shrink(img), "spine_mri", f"spine{patient}", patient in val_patients))
    for path in sorted(glob.glob(str(root / "sij_mri_nifti/*/*/*.nii.gz"))):
        case = Path(path).name.split("_")[0]
        volume = read_nifti(Path(path).read_bytes()).volumes[0].voxels
        for s in normalise_volume(volume):
            sources.append(Source(shrink(np.clip(s, 0, 1)), "sacroiliac_mri", f"sij{case}",
                                  case in HELD_OUT_SIJ_CASES))
    for path in sorted(glob.glob(str(root / "sij_mri_dicom/*/*.dcm"))):
        img = _decoded(path)
        if img is not None:   # one more patient, another scanner and export: held out
            sources.append(Source(shrink(img), "sacroiliac_mri", "sij_dicom_patient1", True))
    for path in sorted(glob.glob(str(root / "hand_xray_paediatric/*.png"))):
        img = _decoded(path)
        if img is not None:
            name = Path(path).name
            sources.append(Source(shrink(img), "hand_radiograph", f"hand{name}", name in HELD_OUT_HANDS))
    for path in sorted(glob.glob(str(root / "dicom/*.dcm"))):
        decoded = None
        try:
            decoded = read_image(Path(path).read_bytes())
        except ImageReadError:
            continue
        kind = "other_radiograph" if decoded.modality in ("CR", "DX", "RG") else "other_mri_ct"
        name = Path(path).name
        sources.append(Source(shrink(decoded.pixels), kind, name, name in HELD_OUT_DICOM))
    return sources


def phantom_sources(n_sacroiliac: int = 300, n_knee: int = 300, n_hand: int = 120) -> list[Source]:
    """Phantoms of each task, as their kind: a task's own test images must be recognised as its kind.
    Held out: the phantoms of the generators' test seed ranges."""
    from training.phantoms.hand import generate_hand, patient_plan, split_patients
    from training.phantoms.knee import SEED_RANGES as KNEE_SEEDS, generate_knee
    from training.phantoms.sacroiliac import SEED_RANGES as SIJ_SEEDS, generate_case

    sources: list[Source] = []
    for split, held_out in (("train", False), ("test", True)):
        n = n_sacroiliac if not held_out else n_sacroiliac // 4
        for seed in list(SIJ_SEEDS[split])[:n]:
            sources.append(Source(shrink(generate_case(seed).image / 255.0), "sacroiliac_mri",
                                  f"sij_phantom_{split}", held_out))
        n = n_knee if not held_out else n_knee // 4
        for seed in list(KNEE_SEEDS[split])[:n]:
            sources.append(Source(shrink(generate_knee(seed).image / 255.0), "knee_radiograph",
                                  f"knee_phantom_{split}", held_out))
    patients = split_patients(range(400))
    for split, held_out in (("train", False), ("test", True)):
        n = n_hand if not held_out else n_hand // 4
        for patient in patients[split][:n]:
            timepoint = int(patient) % patient_plan(patient).n_visits
            sources.append(Source(shrink(generate_hand(patient, timepoint).image / 255.0), "hand_radiograph",
                                  f"hand_phantom_{split}", held_out))
    return sources


# -- made-up negatives -------------------------------------------------------------------------
_WORDS = ("patient report date result normal findings impression the of and scan image dose kV mAs "
          "invoice total page summary figure table protocol series study left right signed").split()


def _text_lines(rng: np.random.Generator, canvas: np.ndarray, ink: float, top: int, bottom: int) -> None:
    """Lines of words drawn onto `canvas` (float) in the `ink` grey (OpenCV draws text on 8-bit only)."""
    h, w = canvas.shape
    strokes = np.zeros((h, w), np.uint8)
    y = top
    while y < bottom:
        scale = rng.uniform(0.3, 0.9)
        x = int(rng.integers(4, max(5, w // 8)))
        line = " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 12))))
        cv2.putText(strokes, line, (x, y), int(rng.choice([0, 1, 2, 3, 4])), scale, 255,
                    int(rng.integers(1, 3)), cv2.LINE_AA)
        y += int(rng.uniform(14, 34) * scale + 8)
    alpha = strokes.astype(np.float32) / 255.0
    canvas[:] = canvas * (1 - alpha) + np.float32(ink) * alpha


def document(rng: np.random.Generator, pasted: np.ndarray | None = None) -> np.ndarray:
    """A page of text, a form or a table, or a screenshot with panels, maybe with a picture pasted in."""
    h = int(rng.integers(160, 320))
    w = int(h * rng.uniform(0.6, 1.6))
    style = rng.integers(3)
    paper, ink = (rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.3)) if style < 2 else (rng.uniform(0.05, 0.25),
                                                                                    rng.uniform(0.7, 1.0))
    canvas = np.full((h, w), paper, np.float32)
    if style == 1:   # a table
        for y in range(int(rng.integers(10, 30)), h, int(rng.integers(14, 30))):
            cv2.line(canvas, (0, y), (w, y), float(ink), 1)
        for x in range(0, w, int(rng.integers(40, 120))):
            cv2.line(canvas, (x, 0), (x, h), float(ink), 1)
    if style == 2:   # a screenshot: a title bar and panels
        cv2.rectangle(canvas, (0, 0), (w, int(rng.integers(12, 30))), float(rng.uniform(0.3, 0.6)), -1)
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(20, h - 20))
            cv2.rectangle(canvas, (x0, y0), (min(w, x0 + int(rng.integers(20, w // 2 + 21))),
                                             min(h, y0 + int(rng.integers(10, 60)))), float(rng.uniform(0.3, 0.9)), -1)
    _text_lines(rng, canvas, ink, int(rng.integers(14, 40)), h - 6)
    if pasted is not None:   # a picture in a report or a viewer: at most a third of the page
        side = int(min(h, w) * rng.uniform(0.2, 0.45))
        patch = cv2.resize(pasted, (side, side), interpolation=cv2.INTER_AREA)
        y0, x0 = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        canvas[y0:y0 + side, x0:x0 + side] = patch
    return np.clip(canvas + rng.normal(0, 0.01, canvas.shape).astype(np.float32), 0, 1)


def texture(rng: np.random.Generator) -> np.ndarray:
    """Natural-looking texture and noise, or a photograph-like scene of smooth shapes."""
    h, w = int(rng.integers(96, 256)), int(rng.integers(96, 256))
    kind = rng.integers(4)
    if kind == 0:      # fractal noise: octaves of smooth random fields (clouds, foliage, stone)
        img = np.zeros((h, w), np.float32)
        for octave in range(int(rng.integers(3, 7))):
            cells = 2 ** (octave + 1)
            field = rng.normal(size=(cells, cells)).astype(np.float32)
            img += cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC) / (octave + 1) ** rng.uniform(0.5, 1.5)
    elif kind == 1:    # white, salt-and-pepper or striped noise
        img = rng.random((h, w)).astype(np.float32)
        if rng.random() < 0.5:
            img = (img > rng.uniform(0.3, 0.7)).astype(np.float32)
        if rng.random() < 0.4:
            img += np.sin(np.arange(w) / rng.uniform(1, 12))[None, :].astype(np.float32)
    elif kind == 2:    # a scene: a sky gradient, shapes, a horizon
        yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        img = np.repeat(rng.uniform(0.3, 1.0) - yy * rng.uniform(0, 0.6), w, axis=1)
        for _ in range(int(rng.integers(2, 9))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(5, w // 2)), int(rng.integers(5, h // 2)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.random()), -1)
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 3))
    else:              # a flat or nearly flat frame (a blank scan, a lens cap)
        img = np.full((h, w), rng.random(), np.float32) + rng.normal(0, rng.uniform(0.001, 0.05), (h, w)).astype(np.float32)
    img -= img.min()
    return np.clip(img / max(float(img.max()), 1e-6), 0, 1)


# -- views -------------------------------------------------------------------------------------
def _rotate(img: np.ndarray, degrees: float, scale: float = 1.0) -> np.ndarray:
    h, w = img.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, scale)
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _crop(img: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    h, w = img.shape
    fh, fw = rng.uniform(low, high), rng.uniform(low, high)
    ch, cw = max(8, int(h * fh)), max(8, int(w * fw))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return img[y0:y0 + ch, x0:x0 + cw]


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
    out = out * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(0.005, 0.04), out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def in_kind_view(source: Source, rng: np.random.Generator) -> np.ndarray:
    """A view the task would still read: small rotation and scale, a generous crop, contrast changes.
    Sagittal spine slices are never mirrored (the task reads them facing one way); the rest may be."""
    img = source.image
    if source.kind != "spine_mri" and rng.random() < 0.5:
        img = img[:, ::-1]
    img = _rotate(np.ascontiguousarray(img), rng.uniform(-12, 12), rng.uniform(0.92, 1.08))
    if rng.random() < 0.5:
        img = _crop(img, rng, 0.8, 1.0)
    return _photometric(img, rng)


def far_view(source: Source, rng: np.random.Generator) -> np.ndarray:
    """A view far outside what any task reads: turned on its side or upside down, or a small crop."""
    img = source.image
    if rng.random() < 0.5:
        img = np.rot90(img, k=int(rng.integers(1, 4))).copy()
        img = _rotate(img, rng.uniform(-10, 10))
    else:
        img = _crop(img, rng, 0.15, 0.4)
    return _photometric(img, rng)


def sample(sources: list[Source], rng: np.random.Generator, n: int) -> Iterator[tuple[np.ndarray, int]]:
    """`n` (image, kind index) pairs, the kinds balanced: each draw picks a kind, then a source and a view."""
    by_kind: dict[str, list[Source]] = {}
    for s in sources:
        by_kind.setdefault(s.kind, []).append(s)
    task_kinds = [k for k in KINDS[:4] if k in by_kind]
    pool_far = [s for s in sources if s.kind in OTHER_OF]
    for _ in range(n):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        if kind in task_kinds:
            group = by_kind[kind]
            yield in_kind_view(group[int(rng.integers(len(group)))], rng), KINDS.index(kind)
        elif kind in ("other_radiograph", "other_mri_ct"):
            real = by_kind.get(kind, [])
            if real and rng.random() < 0.4:        # a real other-anatomy image, any view of it
                src = real[int(rng.integers(len(real)))]
                view = in_kind_view(src, rng) if rng.random() < 0.5 else far_view(src, rng)
                yield view, KINDS.index(kind)
                continue
            candidates = [s for s in pool_far if OTHER_OF[s.kind] == kind]
            src = candidates[int(rng.integers(len(candidates)))]
            yield far_view(src, rng), KINDS.index(kind)
        elif kind == "document":
            pasted = None
            if rng.random() < 0.4:
                src = sources[int(rng.integers(len(sources)))]
                pasted = src.image
            yield _photometric(document(rng, pasted), rng), KINDS.index(kind)
        else:
            yield _photometric(texture(rng), rng), KINDS.index(kind)
