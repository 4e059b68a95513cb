"""Hand phantom data: radiographs generated per patient visit, detector inputs and targets, the stored
context crops around each joint, scorer augmentation and the CORAL targets.

No Keras here: phantom generation runs in forked worker processes while TensorFlow is not loaded.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from imaging.normalize import percentile_scale
from tasks.hand import BOX_UNIT, CROP_MARGIN, DETECTOR_STRIDE, JOINT_NAMES, crop_square, detector_input
from training.phantoms import hand as hand_phantoms
from training.phantoms.hand import CHILD_POOL, PATIENT_POOL, generate_hand, split_patients, visits


DET_SIZE = 256
CROP_SIZE = 64
CTX_FACTOR = 1.4            # stored training crops show 1.4x the serving crop, for rotation/scale/jitter
CTX_SIZE = 96
N_CLASSES = len(JOINT_NAMES)


@dataclass
class HandSet:
    """Visits of one split: detector inputs, labels, training crops, and (val/test) the radiographs."""

    split: str
    patient: np.ndarray            # (N,)
    timepoint: np.ndarray          # (N,)
    side: np.ndarray               # (N,) 1 = right
    det_x: np.ndarray              # (N, S, S) uint8 letterboxed detector input
    det_centres: np.ndarray        # (N, 8, 2) joint centres in detector-input pixels
    det_sizes: np.ndarray          # (N, 8, 2) box width, height in detector-input pixels
    boxes: np.ndarray              # (N, 8, 4) boxes in image pixels
    plate: np.ndarray              # (N, 8)
    space: np.ndarray              # (N, 8)
    crops: np.ndarray              # (N, 8, CTX, CTX) uint8 context crops around the true boxes
    images: list = field(default_factory=list)   # original radiographs (val/test only)

    def __len__(self) -> int:
        return len(self.patient)

    @property
    def guss(self) -> np.ndarray:
        return self.plate + self.space


def _visit_arrays(args) -> dict[str, Any]:
    pid, t, keep_image = args
    case = generate_hand(pid, t)
    img01 = case.image.astype(np.float32) / 255.0
    x, lb = detector_input(img01, DET_SIZE)
    boxes = case.boxes.astype(np.float64)
    centres_img = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)
    crops = np.empty((N_CLASSES, CTX_SIZE, CTX_SIZE), np.uint8)
    for j in range(N_CLASSES):
        crop, _ = crop_square(case.image, boxes[j], margin=(1 + CROP_MARGIN) * CTX_FACTOR - 1)
        interp = cv2.INTER_AREA if crop.shape[0] > CTX_SIZE else cv2.INTER_LINEAR
        crops[j] = cv2.resize(crop, (CTX_SIZE, CTX_SIZE), interpolation=interp)
    return dict(patient=pid, timepoint=t, side=int(case.side == "right"),
                det_x=(np.clip(x[0, :, :, 0], 0, 1) * 255 + 0.5).astype(np.uint8),
                det_centres=lb.to_input(centres_img).astype(np.float32),
                det_sizes=np.stack([(boxes[:, 2] - boxes[:, 0]) * lb.scale_x,
                                    (boxes[:, 3] - boxes[:, 1]) * lb.scale_y], -1).astype(np.float32),
                boxes=boxes.astype(np.float32),
                plate=np.array([j.plate for j in case.joints]), space=np.array([j.space for j in case.joints]),
                crops=crops, image=case.image if keep_image else None)


def generate_split(split: str, patients: Sequence[int], log: Callable[[str], None] | None = None,
                   workers: int = 2) -> HandSet:
    jobs = [(p, t, split != "train") for p, t in visits(patients)]
    t0 = time.perf_counter()
    if workers > 1 and len(jobs) > 20 and "tensorflow" not in sys.modules:
        with mp.get_context("fork").Pool(workers) as pool:
            items = pool.map(_visit_arrays, jobs, chunksize=8)
    else:
        items = [_visit_arrays(j) for j in jobs]
    if log:
        log(f"  {split}: {len(items)} radiographs of {len(patients)} patients in {time.perf_counter() - t0:.0f} s")
    stack = lambda k: np.stack([it[k] for it in items]) if items else np.zeros((0,))  # noqa: E731
    return HandSet(split, stack("patient"), stack("timepoint"), stack("side"), stack("det_x"),
                   stack("det_centres"), stack("det_sizes"), stack("boxes"), stack("plate"), stack("space"),
                   stack("crops"), [it["image"] for it in items if it["image"] is not None])


@dataclass
class HandSplits:
    train: HandSet
    val: HandSet
    test: HandSet
    n_patients: int
    split_counts: dict
    # children's hands (open growth plates, no OA): the detector trains on child_train beside the adults and
    # is measured on child_test; the scorers never see them
    child_train: HandSet | None = None
    child_test: HandSet | None = None
    n_children: int = 0


def detector_training_set(data: HandSplits, children: bool = True, child_repeat: int = 1
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, centres, sizes, side) of the radiographs the detector trains on: adults, and children too
    (each child radiograph `child_repeat` times: fewer of them, and fresh augmentation each time)."""
    kids = [data.child_train] * child_repeat if children else []
    sets = [s for s in (data.train, *kids) if s is not None and len(s)]
    return tuple(np.concatenate([getattr(s, k) for s in sets]) for k in ("det_x", "det_centres", "det_sizes", "side"))


def generator_fingerprint() -> str:
    """A short hash of the phantom generator's source: a cache written by another generator is not read."""
    return hashlib.sha256(Path(hand_phantoms.__file__).read_bytes()).hexdigest()[:12]


def cache_path(cache: Path, n_patients: int, n_children: int) -> Path:
    return Path(cache) / f"hand_data_{n_patients}_{n_children}_{generator_fingerprint()}.npz"


def generate_data(n_patients: int, log: Callable[[str], None] | None = print, cache: Path | None = None,
                  n_children: int = 0) -> HandSplits:
    path = cache_path(cache, n_patients, n_children) if cache is not None else None
    if path is not None and path.exists():
        with open(path, "rb") as fh:
            data = pickle.load(fh)
        if log:
            log(f"loaded cached phantoms from {path}")
        return data
    patients = list(PATIENT_POOL[:n_patients])
    splits = split_patients(patients)
    t0 = time.perf_counter()
    sets = {s: generate_split(s, splits[s], log) for s in ("train", "val", "test")}
    counts = {s: {"patients": len(splits[s]), "radiographs": len(sets[s])} for s in splits}
    if log:
        log(f"generated {sum(len(v) for v in sets.values())} radiographs in {time.perf_counter() - t0:.0f} s: {counts}")
    data = HandSplits(sets["train"], sets["val"], sets["test"], n_patients, counts)
    if n_children:
        kids = split_patients(list(CHILD_POOL[:n_children]))
        data.child_train = generate_split("train", kids["train"], log)
        data.child_test = generate_split("test", kids["test"], log)
        data.n_children = n_children
        counts["children"] = {s: {"patients": len(kids[s]), "radiographs": len(getattr(data, f"child_{s}"))}
                              for s in ("train", "test")}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
        tmp.replace(path)   # readers never see half a file
    return data


def detector_targets(centres: np.ndarray, sizes: np.ndarray, out_size: int,
                     stride: int = DETECTOR_STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """CenterNet targets for a batch: Gaussian heatmaps with an exact 1 at each centre's cell, and
    (width/BOX_UNIT, height/BOX_UNIT, offset x, offset y, mask) at that cell.

    centres, sizes: (B, 8, 2) in input pixels (a centre outside the input gets no target).
    """
    b = centres.shape[0]
    heat = np.zeros((b, out_size, out_size, N_CLASSES), np.float32)
    reg = np.zeros((b, out_size, out_size, 5), np.float32)
    grid = np.arange(out_size, dtype=np.float32)
    for i in range(b):
        for c in range(N_CLASSES):
            cx, cy = centres[i, c] / stride
            ix, iy = int(np.floor(cx)), int(np.floor(cy))
            if not (0 <= ix < out_size and 0 <= iy < out_size):
                continue
            w, h = sizes[i, c]
            sigma = max(0.6, min(w, h) / stride / 6.0)
            gx = np.exp(-((grid - ix) ** 2) / (2 * sigma * sigma))
            gy = np.exp(-((grid - iy) ** 2) / (2 * sigma * sigma))
            np.maximum(heat[i, :, :, c], gy[:, None] * gx[None, :], out=heat[i, :, :, c])
            heat[i, iy, ix, c] = 1.0
            reg[i, iy, ix] = (w / BOX_UNIT, h / BOX_UNIT, cx - ix, cy - iy, 1.0)
    return heat, reg


def _radiograph_marks(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What real radiographs carry beside the hand: a lead side marker ("L" or "R", bright, in a corner
    region) and the bright wedge of a tilted collimator edge; each on some images only."""
    s = img.shape[0]
    if rng.random() < 0.3:
        letter = "L" if rng.random() < 0.5 else "R"
        scale = rng.uniform(0.5, 1.1)
        x0 = int(rng.choice([rng.uniform(4, 0.25 * s), rng.uniform(0.7 * s, 0.9 * s)]))
        y0 = int(rng.choice([rng.uniform(0.12 * s, 0.3 * s), rng.uniform(0.75 * s, 0.95 * s)]))
        ink = np.zeros(img.shape, np.uint8)             # OpenCV draws text on 8-bit images only
        cv2.putText(ink, letter, (x0, y0), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, int(rng.integers(1, 3)), cv2.LINE_AA)
        img = np.maximum(img, ink.astype(np.float32) * np.float32(rng.uniform(0.85, 1.0) / 255.0))
    if rng.random() < 0.2:
        angle = rng.uniform(-0.5, 0.5) + (0.0 if rng.random() < 0.5 else np.pi / 2)
        offset = rng.uniform(0.82, 0.97) * s / 2
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) - s / 2
        outside = (xx * np.cos(angle) + yy * np.sin(angle)) * (1 if rng.random() < 0.5 else -1) > offset
        img[outside] = np.maximum(img[outside], rng.uniform(0.75, 1.0))
    return img


def augment_detector_batch(x: np.ndarray, centres: np.ndarray, sizes: np.ndarray, side: np.ndarray,
                           rng: np.random.Generator, wide: bool = False):
    """Flip (a mirrored left hand is a right hand), scale 0.9-1.1 and shift, intensity changes; `wide`: scale
    0.8-1.3 (real hands fill more of the image than most phantoms), side markers and collimator edges."""
    b, s = x.shape[0], x.shape[1]
    xo = np.empty((b, s, s), np.float32)
    co, so, sideo = centres.copy(), sizes.copy(), side.astype(np.float32).copy()
    for i in range(b):
        img = x[i].astype(np.float32) / 255.0
        if wide:
            sc = float(np.exp(rng.uniform(np.log(0.8), np.log(1.3))))
            tx, ty = rng.uniform(-12, 12, 2) * sc
        else:
            sc = rng.uniform(0.9, 1.1)
            tx, ty = rng.uniform(-12, 12, 2)
        flip = rng.random() < 0.5
        fx = -sc if flip else sc
        M = np.array([[fx, 0, (s / 2) * (1 - fx) + tx], [0, sc, (s / 2) * (1 - sc) + ty]], np.float32)
        img = cv2.warpAffine(img, M, (s, s), flags=cv2.INTER_LINEAR, borderValue=0.0)
        co[i, :, 0] = centres[i, :, 0] * fx + M[0, 2]
        co[i, :, 1] = centres[i, :, 1] * sc + M[1, 2]
        so[i] = sizes[i] * sc
        if flip:
            sideo[i] = 1.0 - sideo[i]
        g = rng.uniform(0.7, 1.4)
        img = np.clip(img, 0, 1) ** g
        img = img * rng.uniform(0.8, 1.1) + rng.uniform(-0.05, 0.08)
        if rng.random() < 0.3:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.2))
        if rng.random() < 0.5:
            img = img + rng.normal(0, rng.uniform(0.005, 0.03), img.shape).astype(np.float32)
        xo[i] = _radiograph_marks(np.clip(img, 0, 1), rng) if wide else np.clip(img, 0, 1)
    return xo[..., None], co, so, sideo


_CLAHE_CACHE: dict = {}


def augment_crop(ctx: np.ndarray, rng: np.random.Generator, out_size: int = CROP_SIZE, train: bool = True
                 ) -> np.ndarray:
    """A serving-geometry crop (out_size, float [0,1]) from a stored context crop, freshly augmented:
    horizontal flip, rotation within 15 degrees, scale within 10%, a small box jitter, CLAHE half the
    time, gamma; then the same percentile scaling as serving. train=False: the plain centre crop."""

    c = (ctx.shape[0] - 1) / 2.0
    base = ctx.shape[0] / CTX_FACTOR / out_size          # context pixels per output pixel
    if train:
        ang = np.deg2rad(rng.uniform(-15, 15))
        sc = base * rng.uniform(0.9, 1.1)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        jx, jy = rng.uniform(-0.05, 0.05, 2) * ctx.shape[0] / CTX_FACTOR
    else:
        ang, sc, flip, jx, jy = 0.0, base, 1.0, 0.0, 0.0
    ca, sa = np.cos(ang) * sc, np.sin(ang) * sc
    o = (out_size - 1) / 2.0
    # dst (u, v) -> src: src = c + R*S*(flip*(u-o), v-o) + jitter
    M = np.array([[ca * flip, -sa, c + jx - (ca * flip * o - sa * o)],
                  [sa * flip, ca, c + jy - (sa * flip * o + ca * o)]], np.float32)
    crop = cv2.warpAffine(ctx, M, (out_size, out_size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    if train:
        if rng.random() < 0.5:
            clip = round(float(rng.uniform(1.0, 3.0)), 1)
            clahe = _CLAHE_CACHE.setdefault(clip, cv2.createCLAHE(clipLimit=clip, tileGridSize=(4, 4)))
            crop = clahe.apply(crop)
        f = crop.astype(np.float32) / 255.0
        f = np.clip(f, 0, 1) ** rng.uniform(0.8, 1.25)
        if rng.random() < 0.3:
            f = f + rng.normal(0, rng.uniform(0.005, 0.02), f.shape).astype(np.float32)
    else:
        f = crop.astype(np.float32) / 255.0
    return percentile_scale(f)


def with_position(x: np.ndarray, joint: np.ndarray) -> np.ndarray:
    planes = np.zeros(x.shape[:3] + (N_CLASSES,), np.float32)
    planes[np.arange(len(x)), :, :, joint] = 1.0
    return np.concatenate([x, planes], axis=-1)


def coral_targets(values: np.ndarray, n_thresholds: int, step: int = 10) -> np.ndarray:
    """(N, K) with column k = 1[value >= step * (k + 1)]."""
    ks = step * np.arange(1, n_thresholds + 1)
    return (np.asarray(values)[:, None] >= ks[None, :]).astype(np.float32)


def sampling_weights(guss: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights of each joint's GUSS value (normalised to sum 1)."""
    values, counts = np.unique(guss, return_counts=True)
    freq = dict(zip(values.tolist(), counts.tolist()))
    w = np.array([1.0 / freq[int(g)] for g in guss])
    return w / w.sum()


def peak_class_weights(guss: np.ndarray) -> dict[int, float]:
    """Inverse-frequency class weights for stage 1: w_c = N / (2 N_c), c = 1 for the peak (200)."""
    y = (np.asarray(guss) == 200).astype(int)
    n = len(y)
    return {c: n / (2.0 * max(int((y == c).sum()), 1)) for c in (0, 1)}
