"""Full-hand PA radiograph phantoms with per-joint GUSS labels, for erosive hand osteoarthritis.

Patients, not images: a synthetic patient (an integer id) has one hand (left or right) imaged at
two to four timepoints; the bones, joint-space widths and soft tissue belong to the patient, the
pose, exposure and noise to each visit, and the disease of each finger joint evolves between
visits (erosive progression, or remodelling that repairs the subchondral plate).

Everything is a pure function of (patient id, timepoint): `patient_plan(pid)` gives the labels of
every visit without drawing anything (cheap, used for splitting and for label statistics) and
`generate_hand(pid, t)` draws the radiograph of visit t.

Labels come from the generating parameters only. For each of the eight scored joints
(PIP2-PIP5, DIP2-DIP5): a box in image pixels, and the two compartments of the Ghent University
Scoring System kept by the original protocol, each 0-100 in steps of 10 (100 = intact):
    plate  subchondral plate: the central fraction (100 - plate)% of the articular surface is
           eroded (plate line gone, a lucent cavity beneath it, deeper for lower scores);
    space  joint space: the gap between the two articular surfaces is space% of the patient's
           normal width (bony bridging below 20);
GUSS = plate + space (0-200).

Geometry is drawn in a canonical frame in millimetres (origin at the distal radius, y towards the
fingertips, x towards the thumb of a LEFT hand) and mapped through the visit's pose; a right hand
is the mirror image. Displayed as in the usual PA view: fingers up, bone bright on a grey
background; a left hand has its thumb on the image's right.

Rendering is vectorised per bone (NumPy on the bone's bounding box): tubular bones are projected
as hollow cylinders (bright cortical rims, trabecular interior with texture), carpals as hollow
ellipsoids, the soft-tissue envelope from a distance transform of the hand's outline. Then
attenuation -> display, heel effect, scatter, quantum noise and detector blur.

CLI:  python -m training.phantoms.hand --out DIR --patients N   (PNGs + a manifest CSV)
      python -m training.phantoms.hand --speed 20                (ms per hand)
"""
from __future__ import annotations

import argparse
import csv
import math
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from tasks.hand import JOINT_NAMES

N_JOINTS = len(JOINT_NAMES)
SIDES = ("left", "right")
IMAGE_SHAPE = (768, 640)            # (height, width): at least 512 px on the long side
PATIENT_POOL = range(0, 1_000_000)  # patient ids; the split is by patient (see `split_of`)
# Children (1.5-14 years of bone age): ids of their own, so that every adult phantom stays what it was. A child
# has open growth plates: each phalanx's base is a separate epiphysis beyond a lucent physis, the joint gap
# between the ossified bones is wide (cartilage), few carpals are ossified, the fingers are short and stubby
# under thick soft tissue, and the hand fills the radiograph. No erosive OA: every joint is intact. They teach
# the joint detector to find joints on children's radiographs; the GUSS scorer never trains on them.
CHILD_POOL = range(1_000_000, 2_000_000)
SPLITS = ("train", "val", "test")
SPLIT_PATTERN_BLOCK = 10            # per stratum, each block of 10 patients gives 8 train, 1 val, 1 test
PX_PER_MM = 2.9                     # mean image scale (varies by visit)
CSV_COLUMNS = ("image_id", "image_path", "patient", "timepoint", "months", "side", "split",
               *[f"{j}_{k}" for j in JOINT_NAMES for k in ("x1", "y1", "x2", "y2", "plate", "space", "guss")])


# ---------------------------------------------------------------------------------------------
# labels
@dataclass(frozen=True)
class JointLabel:
    name: str
    box: tuple[float, float, float, float]   # x1, y1, x2, y2 in image pixels (float)
    center: tuple[float, float]
    plate: int
    space: int
    phase: str

    @property
    def guss(self) -> int:
        return self.plate + self.space


@dataclass(frozen=True)
class HandCase:
    image: np.ndarray                   # uint8 (H, W), bone bright
    patient: int
    timepoint: int
    months: int                         # months since the patient's first visit
    side: str                           # "left" | "right"
    joints: tuple[JointLabel, ...]      # in JOINT_NAMES order
    params: dict = field(default_factory=dict)

    @property
    def boxes(self) -> np.ndarray:
        return np.array([j.box for j in self.joints], np.float32)

    @property
    def guss(self) -> np.ndarray:
        return np.array([j.guss for j in self.joints], np.int64)


@dataclass(frozen=True)
class PatientPlan:
    patient: int
    side: str
    months: tuple[int, ...]             # per visit
    plate: np.ndarray                   # int (T, 8)
    space: np.ndarray                   # int (T, 8)
    phase: tuple[tuple[str, ...], ...]  # (T, 8)
    anatomy: dict

    @property
    def n_visits(self) -> int:
        return len(self.months)

    @property
    def guss(self) -> np.ndarray:
        return self.plate + self.space

    @property
    def peak_label(self) -> str:
        """Patient-level stratum: 'peak' when every joint is intact (200) at every visit."""
        return "peak" if bool((self.guss == 200).all()) else "non-peak"


def _streams(*key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(k) for k in key] + [0x4A4E5])


def _rng(seq: np.random.SeedSequence, name: str) -> np.random.Generator:
    # A named child stream: independent of the order in which streams are used.
    return np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, _crc(name))))


def _crc(name: str) -> int:
    return zlib.crc32(name.encode())


# ---------------------------------------------------------------------------------------------
# the patient: anatomy and disease course (no drawing)
_BASE = dict(
    # metacarpals 2-5: base (x, y) mm, direction (rad from +y towards the thumb), length, half-widths
    mc_base=((10.5, 33.0), (1.5, 32.5), (-7.5, 31.0), (-15.5, 29.0)),
    mc_dir=(0.10, 0.02, -0.07, -0.16),
    mc_len=(66.0, 63.0, 57.0, 53.0),
    mc_w=(4.1, 4.3, 3.7, 3.5),
    p1_len=(40.0, 45.0, 42.0, 33.0), p1_w=(3.9, 4.2, 3.9, 3.4),
    p2_len=(23.0, 28.0, 27.0, 19.0), p2_w=(3.2, 3.5, 3.3, 2.9),
    p3_len=(18.0, 19.5, 19.0, 17.0), p3_w=(2.4, 2.6, 2.5, 2.2),
    spread=(0.16, 0.04, -0.08, -0.22),    # finger angle at the MCP per unit of "spread"
)
# probability that a joint is involved in an affected patient (PIP2..PIP5, DIP2..DIP5)
_INVOLVE = np.array([0.50, 0.47, 0.37, 0.37, 0.70, 0.66, 0.54, 0.52])


def is_child(patient: int) -> bool:
    return int(patient) in CHILD_POOL


def child_hand_scale(age_years: float) -> float:
    """Hand length of a child relative to the adult mean: about 0.58 at 2 years, 0.73 at 6, 0.95 at 14."""
    return float(np.clip(0.52 + 0.031 * age_years, 0.52, 0.97))


def patient_plan(patient: int) -> PatientPlan:
    """Anatomy and the per-visit GUSS labels of one patient; no image is drawn."""
    seq = _streams(patient)
    ra, rd = _rng(seq, "anatomy"), _rng(seq, "disease")
    U = ra.uniform
    hs = U(0.9, 1.08)                                   # hand size
    child = is_child(patient)
    wf = 1.0                                            # widths relative to lengths
    if child:                                           # its own stream: the adult draws stay as they were
        rc = _rng(seq, "child")
        age = float(rc.uniform(1.0, 14.0))
        hs = child_hand_scale(age) * rc.uniform(0.94, 1.06)
        wf = hs ** -0.45                                # short fingers, bones a little wider for their length
    anatomy = dict(
        hand_scale=round(hs, 4),
        lengths=[[round(hs * L * U(0.95, 1.05), 3) for L in Ls]
                 for Ls in zip(_BASE["mc_len"], _BASE["p1_len"], _BASE["p2_len"], _BASE["p3_len"])],
        widths=[[round((wf if k else 1.0) * hs * w * U(0.94, 1.06), 3) for k, w in enumerate(ws)]
                for ws in zip(_BASE["mc_w"], _BASE["p1_w"], _BASE["p2_w"], _BASE["p3_w"])],
        mc_base=[[round(hs * (x + U(-1, 1)), 3), round(hs * (y + U(-1, 1)), 3)] for x, y in _BASE["mc_base"]],
        mc_dir=[round(d + U(-0.025, 0.025), 4) for d in _BASE["mc_dir"]],
        gap_ratio=round(U(0.25, 0.27), 4),             # normal PIP/DIP joint space / end half-width
        cortex=round(U(0.26, 0.36), 4),                 # mid-shaft cortical thickness / half-width
        soft=round(U(0.9, 1.2), 4),                     # soft-tissue build
        thumb_len=[round(hs * L * U(0.95, 1.05), 3) for L in (44.0, 31.0, 23.0)],
        bone_density=round(U(0.85, 1.1), 4),
    )
    side = SIDES[int(ra.integers(0, 2))]
    if child:
        anatomy.update(
            age_years=round(age, 2),
            # maturity 0..1 of the ossification centres: epiphyses grow from small flat discs to the width
            # of their metaphysis; the cartilage gap narrows with age
            maturity=round(float(np.clip((age - 1.0) / 12.0, 0.0, 1.0)), 4),
            cortex=round(rc.uniform(0.16, 0.28), 4),
            soft=round(rc.uniform(1.3, 1.8), 4),           # plump fingers that nearly touch
            bone_density=round(rc.uniform(0.62, 0.92), 4),
            physis_mm=round(rc.uniform(0.15, 0.45), 4),   # a thin line: the joint gap is the darker band
            soft_density=round(rc.uniform(0.45, 0.85), 4),  # a child's soft tissue: mid grey, its bones much brighter
        )
        # short metacarpals in a broad palm
        anatomy["lengths"] = [[round(L * (0.85 if k == 0 else 1.0), 3) for k, L in enumerate(Ls)]
                              for Ls in anatomy["lengths"]]
        anatomy["mc_base"] = [[round(1.35 * x, 3), y] for x, y in anatomy["mc_base"]]
        anatomy["thumb_len"] = [round(0.85 * L, 3) for L in anatomy["thumb_len"]]   # a short thumb, held in

    # visits
    T = int(rd.choice([2, 3, 4], p=[0.3, 0.4, 0.3]))
    months = [0]
    for _ in range(T - 1):
        months.append(months[-1] + int(rd.integers(9, 31)))

    plate = np.full((T, N_JOINTS), 100, np.int64)
    space = np.full((T, N_JOINTS), 100, np.int64)
    phase = [["intact"] * N_JOINTS for _ in range(T)]
    if rd.random() < 0.7 and not child:                 # an affected patient (children: none)
        activity = rd.uniform(0.6, 1.4)
        involved = rd.random(N_JOINTS) < np.clip(_INVOLVE * activity, 0, 0.95)
        if not involved.any():
            involved[int(rd.integers(0, N_JOINTS))] = True
        for j in np.nonzero(involved)[0]:
            onset = 0 if rd.random() < 0.75 else int(rd.integers(1, T)) if T > 1 else 0
            r = rd.random()
            # erosive joints are mostly clearly damaged when first seen: few sit just below the peak
            d = rd.uniform(0.05, 0.18) if r < 0.12 else rd.uniform(0.18, 0.6) if r < 0.72 else rd.uniform(0.6, 1.0)
            plate_loss = d * rd.uniform(0.75, 1.25)
            space_loss = d * rd.uniform(0.45, 1.05)
            for t in range(onset, T):
                if t > onset:
                    u = rd.random()
                    if u < 0.45:                        # erosive progression
                        step = rd.uniform(0.05, 0.3)
                        plate_loss += step * rd.uniform(0.8, 1.3)
                        space_loss += step * rd.uniform(0.4, 1.0)
                        ph = "progression"
                    elif u < 0.75 and plate_loss > 0.25:  # remodelling: the plate re-forms
                        plate_loss -= rd.uniform(0.1, 0.4)
                        space_loss += rd.uniform(0.0, 0.1)
                        ph = "remodelling"
                    else:
                        ph = "stable"
                else:
                    ph = "progression"
                plate_loss, space_loss = float(np.clip(plate_loss, 0, 1)), float(np.clip(space_loss, 0, 1))
                p = 100 - 10 * int(round(10 * plate_loss))
                s = 100 - 10 * int(round(10 * space_loss))
                if p == 100 and s == 100:               # an involved joint is never scored intact
                    if plate_loss >= space_loss:
                        p = 90
                    else:
                        s = 90
                plate[t, j], space[t, j], phase[t][j] = p, s, ph
    return PatientPlan(patient=int(patient), side=side, months=tuple(months), plate=plate, space=space,
                       phase=tuple(tuple(p) for p in phase), anatomy=anatomy)


def split_of(patients: Sequence[int]) -> dict[int, str]:
    """Patient -> 'train' | 'val' | 'test': 80/10/10, stratified on the patient's peak/non-peak label.

    Within each stratum the patients are taken in id order in blocks of ten; a fixed pseudo-random
    permutation of each block (seeded by stratum and block number) puts eight in train, one in val
    and one in test. Appending patients never moves an earlier patient to another split.
    """
    out: dict[int, str] = {}
    strata: dict[str, list[int]] = {"peak": [], "non-peak": []}
    for pid in sorted(int(p) for p in patients):
        strata[patient_plan(pid).peak_label].append(pid)
    for s_index, (name, ids) in enumerate(sorted(strata.items())):
        for b in range(0, len(ids), SPLIT_PATTERN_BLOCK):
            block = ids[b:b + SPLIT_PATTERN_BLOCK]
            order = np.random.default_rng([s_index, b // SPLIT_PATTERN_BLOCK, 0x5EED]).permutation(SPLIT_PATTERN_BLOCK)
            for pid, slot in zip(block, order):
                out[pid] = "val" if slot == 8 else "test" if slot == 9 else "train"
    return out


def split_patients(patients: Sequence[int]) -> dict[str, list[int]]:
    assignment = split_of(patients)
    return {s: sorted(p for p, v in assignment.items() if v == s) for s in SPLITS}


# ---------------------------------------------------------------------------------------------
# drawing helpers
class _Frame:
    """Canonical mm -> image pixels: mirror (right hand), rotate, scale, translate."""

    def __init__(self, ppm: float, angle: float, mirror: bool, origin_img: np.ndarray, origin_mm: np.ndarray):
        self.ppm = ppm
        c, s = math.cos(angle), math.sin(angle)
        m = -1.0 if mirror else 1.0
        # canonical (x, y) -> image (col, row): x_img = m*x, y_img = -y, then rotate by angle
        self.A = ppm * np.array([[c, -s], [s, c]]) @ np.array([[m, 0.0], [0.0, -1.0]])
        self.b = origin_img - self.A @ origin_mm

    def __call__(self, pts) -> np.ndarray:
        p = np.asarray(pts, dtype=np.float64)
        return p @ self.A.T + self.b


def _roi(points_px: np.ndarray, margin: float, shape: tuple[int, int]):
    h, w = shape
    x0 = max(0, int(math.floor(points_px[:, 0].min() - margin)))
    y0 = max(0, int(math.floor(points_px[:, 1].min() - margin)))
    x1 = min(w, int(math.ceil(points_px[:, 0].max() + margin)) + 1)
    y1 = min(h, int(math.ceil(points_px[:, 1].max() + margin)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, y1, x0, x1


def _grid(roi):
    y0, y1, x0, x1 = roi
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    return xs, ys


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], fine: float, coarse: float) -> np.ndarray:
    """Zero-mean unit-std band-pass noise (blob sizes between `fine` and `coarse` pixels)."""
    base = rng.standard_normal(shape, dtype=np.float32)
    a = cv2.GaussianBlur(base, (0, 0), fine)
    b = cv2.GaussianBlur(base, (0, 0), coarse)
    f = a - b
    return f / (f.std() + 1e-6)


def _blur_large(img: np.ndarray, sigma: float, factor: int = 8) -> np.ndarray:
    """A wide Gaussian blur computed at 1/factor resolution (the result is smooth anyway)."""
    h, w = img.shape
    small = cv2.resize(img, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), max(sigma / factor, 0.5))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    h, w = shape
    g = rng.standard_normal((max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))).astype(np.float32)
    f = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return f / (f.std() + 1e-6)


@dataclass
class _JointSpec:
    """One articulation between two tubular bones (all lengths in mm)."""

    gap: float                 # joint-space width at the centre
    curv: float                # surface curvature: surfaces at +-gap/2 - curv * v^2
    r_end: float               # half-width of the articular ends
    erosion_head: float = 0.0  # eroded half-width (mm) of the proximal bone's head
    erosion_base: float = 0.0
    depth_head: float = 0.0    # erosion cavity depth (mm)
    depth_base: float = 0.0
    bridge: float = 0.0        # half-width of bony bridging across the gap (ankylosis)
    sclerosis: float = 0.0     # 0..1 subchondral sclerosis (remodelling)
    osteophyte: float = 0.0    # marginal osteophyte size (mm)
    plate: float = 0.55        # subchondral plate thickness (mm)


def _joint_spec(plate: int, space: int, phase: str, r_end: float, gap_n: float, rng: np.random.Generator) -> _JointSpec:
    # Every draw happens whatever the labels, so one joint's labels never shift another joint's shape.
    curv, scl_r, ost_r, scl_p, ost_p = rng.uniform(0.030, 0.040), *rng.uniform(0, 1, 4)
    loss_p = (100 - plate) / 100.0
    spec = _JointSpec(gap=gap_n * space / 100.0, curv=curv / max(r_end / 6.0, 0.5) ** 2, r_end=r_end)
    if loss_p > 0:
        spec.erosion_head = loss_p * r_end * 0.95
        spec.erosion_base = loss_p * r_end * 0.75
        spec.depth_head = 0.9 + 2.6 * loss_p
        spec.depth_base = 0.5 + 1.3 * loss_p
    if space < 20:
        spec.bridge = r_end * (1.0 - space / 20.0) * 0.8 + 0.4 * r_end * (space == 0)
    if phase == "remodelling":
        spec.sclerosis = 0.4 + 0.6 * scl_r
        spec.osteophyte = 0.8 + 1.0 * ost_r
    elif phase in ("progression", "stable") and (plate < 100 or space < 100):
        spec.sclerosis = 0.35 * scl_p
        spec.osteophyte = 0.9 * ost_p * (1.0 - min(plate, space) / 100.0 + 0.3)
    return spec


_MU_CORT, _MU_TRAB, _MU_PLATE = 3.0, 1.25, 2.4


def _tube(att: np.ndarray, tex: np.ndarray, fr: _Frame, p0: np.ndarray, p1: np.ndarray, r_shaft: float,
          r_prox: float, r_dist: float, cortex: float, prox, dist, density: float = 1.0) -> None:
    """Add one tubular bone's projected attenuation to `att` (in place).

    p0, p1: canonical mm of the proximal and distal reference points (joint centres, or the ends).
    prox / dist: a _JointSpec (an articulation centred on that point), "flat" or "tuft".
    """
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    L = float(np.linalg.norm(p1 - p0))
    q0, q1 = fr(p0), fr(p1)
    ppm = fr.ppm
    a = (q1 - q0) / (L * ppm)                   # unit axis in image px
    d_mm = (p1 - p0) / L
    n = fr.A @ np.array([d_mm[1], -d_mm[0]])    # towards the thumb side: v > 0 is radial for both hands
    n /= np.linalg.norm(n)
    rmax = max(r_shaft, r_prox, r_dist) + 2.5
    corners = np.array([q0 + ppm * (s * rmax * n - 4.0 * a) for s in (-1, 1)]
                       + [q1 + ppm * (s * rmax * n + 4.0 * a) for s in (-1, 1)])
    roi = _roi(corners, 2, att.shape)
    if roi is None:
        return
    xs, ys = _grid(roi)
    dx, dy = xs - np.float32(q0[0]), ys - np.float32(q0[1])
    u = (dx * np.float32(a[0]) + dy * np.float32(a[1])) * np.float32(1.0 / ppm)
    v = (dx * np.float32(n[0]) + dy * np.float32(n[1])) * np.float32(1.0 / ppm)
    v2 = v * v

    lam_p, lam_d = 0.2 * L, 0.2 * L
    ep = np.exp(-(u / lam_p) ** 2)
    ed = np.exp(-((L - u) / lam_d) ** 2)
    R = r_shaft + (r_prox - r_shaft) * ep + (r_dist - r_shaft) * ed
    c = cortex * r_shaft * (1.0 - 0.8 * np.maximum(ep, ed))
    r_in = np.maximum(R - c, 0.2)
    outer = np.sqrt(np.maximum(R * R - v2, 0.0))
    inner = np.sqrt(np.maximum(r_in * r_in - v2, 0.0))
    chord = 2.0 * outer
    trab_f = np.float32(_MU_TRAB) * (1.0 + 0.2 * tex[roi[0]:roi[1], roi[2]:roi[3]])
    body = np.float32(_MU_CORT) * 2.0 * (outer - inner) + trab_f * 2.0 * inner
    inside = np.ones_like(u)
    extra = np.zeros_like(u)
    soft_px = np.float32(ppm)

    def end(spec, s_raw, is_head: bool):
        """Weights for one articular end; s_raw = depth into the bone from the surface (mm)."""
        nonlocal body, extra
        if spec is None:
            return
        if isinstance(spec, str):
            return
        ero = spec.erosion_head if is_head else spec.erosion_base
        depth = spec.depth_head if is_head else spec.depth_base
        s = s_raw
        if spec.bridge > 0 and not is_head:     # bony bridge: the base reaches across the gap
            br = np.clip((spec.bridge - np.abs(v)) * soft_px, 0, 1)
            s = s + br * (spec.gap + 0.3)
        w_in = np.clip(s * soft_px + 0.5, 0.0, 1.0)
        plate = (s >= 0) & (s < spec.plate)
        plate_w = plate.astype(np.float32)
        if ero > 0:
            rel = np.clip(1.0 - v2 / (ero * ero), 0.0, 1.0)
            cav_depth = depth * np.sqrt(rel)
            cavity = np.clip((cav_depth - s) * soft_px, 0.0, 1.0) * (rel > 0)
            plate_w = plate_w * (1.0 - (rel > 0.02))
            # lucent cavity with a thin sclerotic rim at its floor
            body = body * (1.0 - 0.72 * cavity)
            rim = np.exp(-((s - cav_depth) / 0.35) ** 2) * (rel > 0)
            extra += 0.55 * _MU_PLATE * chord * 0.35 * rim
        extra += _MU_PLATE * 0.42 * chord * plate_w
        if spec.sclerosis > 0:
            extra += 0.9 * spec.sclerosis * trab_f * chord * np.clip(1.0 - s / 3.0, 0, 1) * (s >= 0)
        nonlocal inside
        inside = inside * w_in

    if isinstance(prox, _JointSpec):
        end(prox, u - (prox.gap / 2 - prox.curv * v2), is_head=False)
    elif isinstance(prox, tuple) or prox == "flat":      # ("flat", tilt, curvature): u >= tilt*v + curv*v^2
        _, tilt, cv_ = prox if isinstance(prox, tuple) else ("flat", 0.0, 0.04)
        inside = inside * np.clip((u - tilt * v - cv_ * v2 / max(r_prox, 1)) * soft_px + 0.5, 0, 1)
    if isinstance(dist, _JointSpec):
        end(dist, (L - dist.gap / 2 - dist.curv * v2) - u, is_head=True)
    elif isinstance(dist, tuple) or dist == "flat":      # ("flat", tilt, curvature): u <= L + tilt*v - curv*v^2
        _, tilt, cv_ = dist if isinstance(dist, tuple) else ("flat", 0.0, 0.15)
        inside = inside * np.clip(((L + tilt * v - cv_ * v2 / max(r_dist, 1)) - u) * soft_px + 0.5, 0, 1)
    elif dist == "tuft":                        # rounded tip of a distal phalanx
        rt = r_dist
        tip = np.clip((u - (L - rt)) / rt, 0.0, None)
        cap = np.sqrt(np.clip(1.0 - tip * tip, 0.0, 1.0))
        outer_t = np.sqrt(np.maximum((R * cap) ** 2 - v2, 0.0))
        body = np.where(u > L - rt, np.float32(_MU_CORT) * 0.6 * 2 * outer_t + trab_f * 2 * outer_t * 0.5, body)
        chord = np.where(u > L - rt, 2 * outer_t, chord)
        inside = inside * np.clip((L - u) * soft_px + 0.5, 0, 1)
    total = (body + extra) * inside * np.float32(density)
    att[roi[0]:roi[1], roi[2]:roi[3]] += total.astype(np.float32)

    # marginal osteophytes at articular ends (small bony spurs)
    for spec, at_u, sgn in ((prox, 0.0, 1.0), (dist, L, -1.0)):
        if isinstance(spec, _JointSpec) and spec.osteophyte > 0.15:
            for side in (-1.0, 1.0):
                centre = p0 + (p1 - p0) * ((at_u + sgn * 1.2) / L) + side * (spec.r_end + 0.3 * spec.osteophyte) \
                    * np.array([(p1 - p0)[1], -(p1 - p0)[0]]) / L
                _ellipsoid(att, tex, fr, centre, spec.osteophyte * 0.9, spec.osteophyte * 0.6,
                           math.atan2((p1 - p0)[1], (p1 - p0)[0]), 1.5 * spec.osteophyte, density * 0.9, shell=0.0)


def _ellipsoid(att: np.ndarray, tex: np.ndarray, fr: _Frame, centre, a: float, b: float, angle: float,
               depth: float, density: float = 1.0, shell: float = 0.18, wobble: float = 0.0,
               phase: float = 0.0) -> None:
    """Projected hollow ellipsoid (semi-axes a along `angle`, b across, depth along the beam), mm."""
    q = fr(np.asarray(centre, float))
    ppm = fr.ppm
    r = max(a, b) * ppm + 2
    roi = _roi(np.array([q - r, q + r]), 1, att.shape)
    if roi is None:
        return
    xs, ys = _grid(roi)
    # the axis direction in the image
    d = fr(np.asarray(centre) + np.array([math.cos(angle), math.sin(angle)])) - q
    d = d / np.linalg.norm(d)
    dx, dy = (xs - np.float32(q[0])) / ppm, (ys - np.float32(q[1])) / ppm
    s = (dx * np.float32(d[0]) + dy * np.float32(d[1])) / a
    t = (-dx * np.float32(d[1]) + dy * np.float32(d[0])) / b
    rho2 = s * s + t * t
    if wobble > 0:                              # irregular outline (carpals are not ellipses)
        th = np.arctan2(t, s)
        rho2 = rho2 * (1.0 + wobble * np.sin(3.0 * th + phase) + 0.5 * wobble * np.sin(5.0 * th + 2.0 * phase))
    outer = np.sqrt(np.clip(1.0 - rho2, 0.0, None))
    trab = _MU_TRAB * (1.0 + 0.2 * tex[roi[0]:roi[1], roi[2]:roi[3]])
    total = 2 * depth * outer * trab
    if shell > 0:
        k = 1.0 - shell
        inner = np.sqrt(np.clip(1.0 - rho2 / (k * k), 0.0, None)) * k
        total = 2 * depth * (0.45 * _MU_CORT * (outer - inner)) + 2 * depth * inner * trab
    att[roi[0]:roi[1], roi[2]:roi[3]] += (total * density).astype(np.float32)


def _rot(v: np.ndarray, ang: float) -> np.ndarray:
    """Rotate a canonical direction towards +x (the thumb of a left hand) by `ang` rad."""
    c, s = math.cos(ang), math.sin(ang)
    return np.array([c * v[0] + s * v[1], -s * v[0] + c * v[1]])


def _dir(angle: float) -> np.ndarray:
    """Unit vector at `angle` rad from +y towards +x."""
    return np.array([math.sin(angle), math.cos(angle)])


# ---------------------------------------------------------------------------------------------
def generate_hand(patient: int, timepoint: int, shape: tuple[int, int] = IMAGE_SHAPE,
                  plan: PatientPlan | None = None) -> HandCase:
    """The radiograph of visit `timepoint` of `patient`, with its labels. Pure function of its arguments."""
    plan = plan or patient_plan(patient)
    if not 0 <= timepoint < plan.n_visits:
        raise ValueError(f"patient {patient} has visits 0..{plan.n_visits - 1}, not {timepoint}")
    seq = _streams(patient, timepoint + 1)
    rp, rq, rt, rj = (_rng(seq, k) for k in ("pose", "acquisition", "texture", "joints"))
    A = plan.anatomy
    H, W = shape
    child = "age_years" in A
    # a child's own draws come from a stream of their own: the adults' streams are drawn exactly as before
    rk = _rng(seq, "child") if child else None
    maturity = A.get("maturity", 1.0)

    # ---- pose of this visit ----
    angle = math.radians(rp.uniform(-18, 18))
    ppm = PX_PER_MM * rp.uniform(0.88, 1.08) * min(H / 768.0, W / 640.0)
    spread = rp.uniform(0.2, 1.3)
    thumb_abd = rp.uniform(-0.12, 0.22)
    mirror = plan.side == "right"
    origin_img = np.array([W / 2 + rp.uniform(-0.05, 0.05) * W, H / 2 + rp.uniform(-0.04, 0.05) * H])
    origin_mm = np.array([0.0, 82.0])
    if child:                               # a child's radiograph is framed on the hand: it fills the image
        ppm *= rk.uniform(0.95, 1.3) / A["hand_scale"]
        # children are radiographed with the fingers close together and the thumb held in (the real
        # paediatric radiographs): the adults' wide spreads and abducted thumbs are rare
        spread = rk.uniform(-0.15, 0.8)
        thumb_abd = rk.uniform(-0.3, 0.08)
        # a young child's hand is laid on the cassette as it comes: turned further, a finger off on its own
        angle = math.radians(rk.uniform(-32, 32))
        origin_mm = origin_mm * A["hand_scale"] + [0.0, rk.uniform(-8.0, 14.0)]
    fr = _Frame(ppm, angle, mirror, origin_img, origin_mm)
    flex = rp.uniform(-0.05, 0.05, (4, 3))
    if child:
        flex[:, 0] += rk.uniform(-0.12, 0.12, 4)
        flex[3, 0] -= rk.uniform(0.0, 0.3)          # the little finger often held off on its own

    # ---- joint specs of the scored joints ----
    # children: the gap between the ossified bones is mostly unossified cartilage, wide in the young
    gap_n_ratio = A["gap_ratio"] * ((2.6 - 1.5 * maturity) if child else 1.0)
    widths, lengths = A["widths"], A["lengths"]
    specs: dict[str, _JointSpec] = {}
    for fi in range(4):
        w_p1, w_p2, w_p3 = widths[fi][1], widths[fi][2], widths[fi][3]
        for kind, r_end in (("PIP", 1.55 * (w_p1 + w_p2) / 2), ("DIP", 1.5 * (w_p2 + w_p3) / 2)):
            j = JOINT_NAMES.index(f"{kind}{fi + 2}")
            specs[f"{kind}{fi + 2}"] = _joint_spec(int(plan.plate[timepoint, j]), int(plan.space[timepoint, j]),
                                                   plan.phase[timepoint][j], r_end, gap_n_ratio * r_end, rj)

    # ---- textures ----
    tex = _band_noise(rt, shape, 0.9 * ppm / 2.9, 2.6 * ppm / 2.9)
    tex = np.clip(tex, -2.5, 2.5) * np.float32(0.8)

    att = np.zeros(shape, np.float32)
    soft_mask = np.zeros(shape, np.uint8)
    dens = A["bone_density"]
    cortex = A["cortex"]

    def poly(points_mm, value=255):
        pts = np.round(fr(np.asarray(points_mm)) * 16).astype(np.int32)
        cv2.fillPoly(soft_mask, [pts], value, cv2.LINE_AA, shift=4)

    def disc(c_mm, r_mm):
        q = fr(np.asarray(c_mm))
        cv2.circle(soft_mask, (int(round(q[0] * 16)), int(round(q[1] * 16))), int(round(r_mm * ppm * 16)), 255,
                   -1, cv2.LINE_AA, shift=4)

    def limb(p_a, p_b, r_a, r_b):
        d = np.asarray(p_b, float) - np.asarray(p_a, float)
        d /= np.linalg.norm(d) + 1e-9
        nrm = np.array([-d[1], d[0]])
        poly([p_a + r_a * nrm, p_b + r_b * nrm, p_b - r_b * nrm, p_a - r_a * nrm])
        disc(p_a, r_a)
        disc(p_b, r_b)

    physis = A.get("physis_mm", 0.0)

    def epiphysis(joint_centre, axis, offset, r_end, kind):
        """A child's separate ossification centre beyond the joint gap (`offset` mm from the joint centre
        along `axis`, into the bone it belongs to); returns how far its metaphysis starts from the centre."""
        flat = 0.22 + 0.16 * maturity if kind == "base" else 0.3 + 0.15 * maturity
        half_h = max(0.3, flat * r_end)
        half_w = r_end * (0.45 + 0.55 * maturity) * rk.uniform(0.9, 1.08)
        if maturity * 12.0 + 1.0 > rk.uniform(1.2, 3.0):          # ossified by this bone age
            centre = joint_centre + axis * (offset + half_h)
            _ellipsoid(att, tex, fr, centre, half_h, half_w, math.atan2(axis[1], axis[0]), half_w * 0.9,
                       dens * 0.95, shell=0.14, wobble=0.04, phase=rk.uniform(0, 6.3))
        return offset + 2.0 * half_h + physis

    # ---- forearm: radius and ulna ----
    rad_end = np.array([8.0, 0.0]) * A["hand_scale"]
    uln_end = np.array([-13.5, -3.5]) * A["hand_scale"]
    if child:                               # shafts end at their physes; distal epiphyses beyond them
        up = np.array([0.0, -1.0])
        start_r = epiphysis(rad_end + [0.0, 0.8], up, 0.8, 10.0 * A["hand_scale"], "head")
        _tube(att, tex, fr, rad_end + [-4.0, -95.0], rad_end + [0.0, 0.8 - start_r], 7.0 * A["hand_scale"], 8.0,
              11.0 * A["hand_scale"], cortex * 0.8, "flat", ("flat", 0.0, 0.1), dens)
        if A["age_years"] > rk.uniform(5.0, 7.5):
            epiphysis(uln_end + [0.0, 0.8], up, 0.8, 5.0 * A["hand_scale"], "head")
        _tube(att, tex, fr, uln_end + [3.0, -95.0], uln_end + [0.0, -1.5], 5.0 * A["hand_scale"], 6.0,
              6.0 * A["hand_scale"], cortex * 0.8, "flat", ("flat", 0.0, 0.1), dens)
    else:
        _tube(att, tex, fr, rad_end + [-4.0, -95.0], rad_end, 8.0 * A["hand_scale"], 9.0, 13.5 * A["hand_scale"],
              cortex * 0.8, "flat", ("flat", 0.3, 0.5), dens)
        _tube(att, tex, fr, uln_end + [3.0, -95.0], uln_end, 5.5 * A["hand_scale"], 6.0, 7.0 * A["hand_scale"],
              cortex * 0.8, "flat", ("flat", -0.15, 1.2), dens)
        _ellipsoid(att, tex, fr, uln_end + [-4.5, 1.0], 1.6, 1.3, 1.2, 2.5, dens * 0.7, shell=0.0)  # ulnar styloid

    # ---- carpals (proximal and distal rows) ----
    hs = A["hand_scale"]
    carpals = [((13.5, 7.5), 11.0, 6.8, 1.0), ((2.0, 6.5), 8.2, 7.6, 0.2), ((-10.5, 10.5), 7.6, 6.2, 0.5),
               ((-13.5, 13.5), 5.0, 4.4, 0.0), ((19.5, 21.5), 7.8, 6.6, 0.8), ((10.0, 24.0), 6.4, 6.0, 0.3),
               ((0.5, 21.0), 7.0, 10.8, 0.05), ((-10.0, 22.0), 7.8, 8.6, -0.2)]
    # a child's carpals ossify one by one (scaphoid, lunate, triquetrum, pisiform, trapezium, trapezoid,
    # capitate, hamate: the years at which each appears), small and round at first
    carpal_onset = (5.5, 4.0, 2.5, 10.0, 5.0, 5.5, 0.3, 0.5)
    for k, ((cx, cy), a, b, ang) in enumerate(carpals):
        jit = rp.uniform(-0.5, 0.5, 2)
        ang_k, phase_k = ang + rp.uniform(-0.1, 0.1), rp.uniform(0, 6.3)
        if child:
            grown = (A["age_years"] - carpal_onset[k]) / 6.0 + 0.3
            if grown <= 0.3:
                continue
            g = min(1.0, grown)
            r = (a + b) / 2
            a, b = (r + (a - r) * g) * g, (r + (b - r) * g) * g
        _ellipsoid(att, tex, fr, np.array([cx, cy]) * hs + jit, a * hs, b * hs, ang_k,
                   8.5 * hs, dens * 0.75, shell=0.08, wobble=0.07, phase=phase_k)
    if not child:
        _ellipsoid(att, tex, fr, np.array([-10.5, 23.0]) * hs, 1.6 * hs, 1.4 * hs, 0.0, 4.0 * hs, dens * 0.5,
                   shell=0.0)                                                            # hook of the hamate

    # ---- metacarpals and fingers 2-5 ----
    centres: dict[str, np.ndarray] = {}
    axes: dict[str, np.ndarray] = {}
    r_ends: dict[str, float] = {}
    for fi in range(4):
        L_mc, L1, L2, L3 = lengths[fi]
        w_mc, w1, w2, w3 = widths[fi]
        base = np.array(A["mc_base"][fi])
        d_mc = _dir(A["mc_dir"][fi])
        mcp = base + L_mc * d_mc
        ang_f = A["mc_dir"][fi] + spread * _BASE["spread"][fi] + flex[fi, 0]
        d1 = _dir(ang_f)
        pip = mcp + L1 * d1
        d2 = _dir(ang_f + flex[fi, 1])
        dip = pip + L2 * d2
        d3 = _dir(ang_f + flex[fi, 1] + flex[fi, 2])
        tip = dip + L3 * d3
        pip_spec, dip_spec = specs[f"PIP{fi + 2}"], specs[f"DIP{fi + 2}"]
        mcp_spec = _JointSpec(gap=1.7 * hs * ((2.2 - 1.2 * maturity) if child else 1.0), curv=0.05, r_end=1.5 * w_mc)
        if child:
            # the metacarpal's head and each phalanx's base are epiphyses: the shafts start beyond a physis
            flat = ("flat", 0.0, 0.04)
            head_off = epiphysis(mcp, -d_mc, mcp_spec.gap / 2, 1.3 * w_mc, "head")
            _tube(att, tex, fr, base, mcp - head_off * d_mc, w_mc, 1.3 * w_mc, 1.3 * w_mc, cortex,
                  ("flat", 0.0, -0.05), flat, dens)
            # a child's phalangeal head is a narrow dome (its condyles) facing the wide, flat epiphysis of
            # the next phalanx; the joint centre is the gap at the dome's apex
            pip_head = replace(pip_spec, curv=rk.uniform(0.6, 1.0) / pip_spec.r_end)
            dip_head = replace(dip_spec, curv=rk.uniform(0.6, 1.0) / dip_spec.r_end)
            s1 = epiphysis(mcp, d1, mcp_spec.gap / 2, 1.5 * w1, "base")
            _tube(att, tex, fr, mcp + s1 * d1, pip, w1, 1.45 * w1, 0.8 * pip_spec.r_end, cortex, flat, pip_head,
                  dens)
            s2 = epiphysis(pip, d2, pip_spec.gap / 2, pip_spec.r_end * 0.9, "base")
            _tube(att, tex, fr, pip + s2 * d2, dip, w2, pip_spec.r_end * 0.9, 0.8 * dip_spec.r_end, cortex, flat,
                  dip_head, dens)
            s3 = epiphysis(dip, d3, dip_spec.gap / 2, dip_spec.r_end * 0.85, "base")
            _tube(att, tex, fr, dip + s3 * d3, tip, w3, dip_spec.r_end * 0.85, 1.15 * w3, cortex * 0.9, flat,
                  "tuft", dens)
        else:
            _tube(att, tex, fr, base, mcp, w_mc, 1.3 * w_mc, 1.6 * w_mc, cortex, ("flat", 0.0, -0.05), mcp_spec,
                  dens)
            _tube(att, tex, fr, mcp, pip, w1, 1.6 * w1, pip_spec.r_end, cortex, mcp_spec, pip_spec, dens)
            _tube(att, tex, fr, pip, dip, w2, pip_spec.r_end, dip_spec.r_end, cortex, pip_spec, dip_spec, dens)
            _tube(att, tex, fr, dip, tip, w3, dip_spec.r_end * 0.95, 1.25 * w3, cortex * 0.9, dip_spec, "tuft",
                  dens)
        centres[f"PIP{fi + 2}"], centres[f"DIP{fi + 2}"] = pip, dip
        axes[f"PIP{fi + 2}"], axes[f"DIP{fi + 2}"] = (d1 + d2) / 2, (d2 + d3) / 2
        r_ends[f"PIP{fi + 2}"], r_ends[f"DIP{fi + 2}"] = pip_spec.r_end, dip_spec.r_end
        # soft tissue of the finger (swollen over inflamed joints)
        soft = A["soft"]
        sw_p = 1.6 * (pip_spec.sclerosis < 0.4 and pip_spec.erosion_head > 0) * rp.uniform(0.3, 1.0)
        sw_d = 1.6 * (dip_spec.sclerosis < 0.4 and dip_spec.erosion_head > 0) * rp.uniform(0.3, 1.0)
        r_m, r_p, r_d, r_t = 10.0 * soft * hs, (8.6 + sw_p) * soft * hs, (7.2 + sw_d) * soft * hs, 6.0 * soft * hs
        limb(mcp - 8 * d_mc, mcp, r_m, r_m)
        limb(mcp, pip, r_m, r_p)
        limb(pip, dip, r_p, r_d)
        limb(dip, tip + 2.5 * d3, r_d, r_t)

    # ---- thumb ----
    t_base = np.array([19.0, 25.0]) * hs
    ang_t = 0.72 + thumb_abd
    L1t, L2t, L3t = A["thumb_len"]
    t_mcp = t_base + L1t * _dir(ang_t)
    t_ip = t_mcp + L2t * _dir(ang_t - 0.12)
    t_tip = t_ip + L3t * _dir(ang_t - 0.18)
    widen = (2.2 - 1.2 * maturity) if child else 1.0
    tj1 = _JointSpec(gap=1.6 * hs * widen, curv=0.05, r_end=6.2 * hs)
    tj2 = _JointSpec(gap=1.4 * hs * widen, curv=0.05, r_end=5.2 * hs)
    _tube(att, tex, fr, t_base, t_mcp, 4.4 * hs, 6.0 * hs, 6.2 * hs, cortex, "flat", tj1, dens)
    _tube(att, tex, fr, t_mcp, t_ip, 4.1 * hs, 6.2 * hs, 5.2 * hs, cortex, tj1, tj2, dens)
    _tube(att, tex, fr, t_ip, t_tip, 3.1 * hs, 5.0 * hs, 3.6 * hs, cortex * 0.9, tj2, "tuft", dens)
    for sgn in (-1, 1) if not child else ():            # sesamoids at the thumb MCP (ossified in adolescence)
        off = _rot(_dir(ang_t), sgn * math.pi / 2) * 4.8 * hs
        _ellipsoid(att, tex, fr, t_mcp - 3.5 * _dir(ang_t) + off, 2.2 * hs, 1.9 * hs, 0.0, 2.2 * hs, dens * 0.9)
    soft = A["soft"]
    limb(t_base, t_mcp, 13.0 * soft * hs, 10.0 * soft * hs)
    limb(t_mcp, t_ip, 10.0 * soft * hs, 8.5 * soft * hs)
    limb(t_ip, t_tip + 2.5 * _dir(ang_t - 0.18), 8.5 * soft * hs, 7.5 * soft * hs)

    # ---- palm, wrist and forearm envelope ----
    mcps = [np.array(A["mc_base"][fi]) + lengths[fi][0] * _dir(A["mc_dir"][fi]) for fi in range(4)]
    pw = 1.0 * soft
    palm = [mcps[3] + np.array([-10.5 * pw, -4.0]), mcps[2] + [0, 6.0], mcps[1] + [0, 7.0], mcps[0] + [6.0, 5.0],
            mcps[0] + [11.0 * pw, -6.0], t_base + _dir(ang_t) * 18 + [6.0 * pw, -8.0],
            np.array([28.0, 8.0]) * hs * pw, np.array([26.0, -12.0]) * hs * pw,
            np.array([22.0, -40.0]) * hs, np.array([24.0, -120.0]) * hs, np.array([-32.0, -120.0]) * hs,
            np.array([-27.0, -40.0]) * hs, np.array([-27.0 * pw, -10.0]) * hs, np.array([-29.0 * pw, 15.0]) * hs,
            mcps[3] + np.array([-12.0 * pw, -25.0])]
    poly(_chaikin(np.array(palm), 3))

    # ---- soft tissue thickness from the outline (a rounded profile, thicker over the palm) ----
    f32 = np.float32
    dist = cv2.distanceTransform((soft_mask > 127).astype(np.uint8), cv2.DIST_L2, 3)
    r0 = 10.0 * soft * hs
    dmm = np.minimum(dist, f32(r0 * ppm)) * f32(1.0 / ppm)
    thick = cv2.sqrt(dmm * (f32(2 * r0) - dmm))                  # chord of a rounded edge, / 2
    bulk = _blur_large(cv2.pow(dmm * f32(1.0 / r0), 4), 12 * ppm / 2.9, 4)
    soft_tex = 1.0 + 0.04 * _smooth_field(rt, (H // 8, W // 8), 5)
    soft_tex = cv2.resize(soft_tex, (W, H), interpolation=cv2.INTER_LINEAR)
    att_total = att + (thick * f32(2 * 0.68) + bulk * f32(0.68 * 10.0 * soft)) * soft_tex * f32(A.get("soft_density", 1.0))

    # ---- acquisition: attenuation -> display, heel effect, scatter, noise, blur ----
    a0 = rq.uniform(26.0, 40.0)
    trans = cv2.exp(att_total * f32(-1.0 / a0))             # transmitted fraction
    yy = np.linspace(-1, 1, H, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, W, dtype=np.float32)[None, :]
    heel = (1.0 + f32(rq.uniform(-0.08, 0.08)) * yy) * (1.0 + f32(rq.uniform(-0.05, 0.05)) * xx)
    n0 = rq.uniform(400, 2500)                               # quanta per pixel: quantum noise
    scatter = _blur_large(trans, 25.0)
    signal = cv2.addWeighted(trans, 0.88, scatter, rq.uniform(0.05, 0.18), 0.0) * heel
    noise = rq.standard_normal(shape, dtype=np.float32)
    noisy = signal + noise * cv2.sqrt(np.maximum(signal, f32(1e-3)) * f32(1.0 / n0))
    noisy = cv2.GaussianBlur(noisy, (0, 0), rq.uniform(0.5, 0.9))
    disp = cv2.log(np.maximum(noisy, f32(1e-3)))           # log detector response (negated below)
    sharpen = rq.uniform(0.2, 0.8)                           # CR-style unsharp masking
    disp = cv2.addWeighted(disp, -(1.0 + sharpen), cv2.GaussianBlur(disp, (0, 0), 3.0), sharpen, 0.0)
    if child:
        # dynamic-range compression of the paediatric radiographs: a share of a wide low-pass added back
        # lifts the background around the hand to a dark grey and flattens soft tissue against bone
        latitude = f32(rk.uniform(0.1, 0.4))
        disp = disp + latitude * _blur_large(np.maximum(disp, 0), rk.uniform(25.0, 60.0) * ppm / 2.9)
    lo_bg = rq.uniform(0.18, 0.36)
    top = float(np.percentile(disp[::4, ::4], 99.7))
    gain = (1.0 - lo_bg) * rq.uniform(0.85, 0.97) / max(top, 1e-3)
    base8 = cv2.convertScaleAbs(np.maximum(disp, 0), alpha=255.0 * gain, beta=255.0 * lo_bg)  # saturating uint8
    gamma = rq.uniform(0.85, 1.2)
    lut = (np.clip((np.arange(256) / 255.0) ** gamma, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    image = cv2.LUT(base8, lut)
    if rq.random() < 0.25:                                   # collimator edge: a bright strip
        k = int(rq.integers(4, 30))
        edge = int(rq.integers(0, 4))
        sl = [(slice(None), slice(0, k)), (slice(None), slice(W - k, W)), (slice(0, k), slice(None)),
              (slice(H - k, H), slice(None))][edge]
        image[sl] = cv2.add(image[sl], int(rq.uniform(0.3, 0.6) * 255))

    # ---- labels: boxes of the scored joints ----
    joints = []
    for name in JOINT_NAMES:
        j = JOINT_NAMES.index(name)
        c = centres[name]
        ax = axes[name] / np.linalg.norm(axes[name])
        nrm = np.array([-ax[1], ax[0]])
        r = r_ends[name]
        across, along = 1.22 * r, 1.0 * r
        rect = np.array([c + sa * along * ax + sc * across * nrm for sa in (-1, 1) for sc in (-1, 1)])
        q = fr(rect)
        x1, y1 = q.min(axis=0)
        x2, y2 = q.max(axis=0)
        cq = fr(c)
        joints.append(JointLabel(name=name, box=(round(float(x1), 2), round(float(y1), 2), round(float(x2), 2),
                                                 round(float(y2), 2)),
                                 center=(round(float(cq[0]), 2), round(float(cq[1]), 2)),
                                 plate=int(plan.plate[timepoint, j]), space=int(plan.space[timepoint, j]),
                                 phase=plan.phase[timepoint][j]))
    params = dict(patient=int(patient), timepoint=int(timepoint), side=plan.side,
                  age_years=A.get("age_years"),
                  pose=dict(rotation_deg=round(math.degrees(angle), 3), px_per_mm=round(ppm, 4),
                            spread=round(spread, 4), thumb_abduction=round(thumb_abd, 4)),
                  acquisition=dict(a0=round(a0, 3), quanta=round(n0, 1), sharpen=round(sharpen, 3),
                                   background=round(lo_bg, 4)),
                  joint_gap_mm={k: round(s.gap, 3) for k, s in specs.items()})
    return HandCase(image=image, patient=int(patient), timepoint=int(timepoint), months=plan.months[timepoint],
                    side=plan.side, joints=tuple(joints), params=params)


def _chaikin(pts: np.ndarray, iterations: int = 2) -> np.ndarray:
    for _ in range(iterations):
        q = np.roll(pts, -1, axis=0)
        a, b = 0.75 * pts + 0.25 * q, 0.25 * pts + 0.75 * q
        out = np.empty((2 * len(pts), 2))
        out[0::2], out[1::2] = a, b
        pts = out
    return pts


# ---------------------------------------------------------------------------------------------
def visits(patients: Iterable[int]) -> list[tuple[int, int]]:
    """Every (patient, timepoint) of the given patients, in order."""
    return [(int(p), t) for p in patients for t in range(patient_plan(p).n_visits)]


def image_id_for(patient: int, timepoint: int) -> str:
    return f"hand_p{int(patient):06d}_t{int(timepoint)}"


def write_dataset(out_dir: Path, patients: Sequence[int]) -> Path:
    """PNG radiographs + annotations/dataset.csv (boxes and GUSS compartments per joint, split by patient)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    split = split_of(patients)
    path = out_dir / "annotations" / "dataset.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for pid, t in visits(patients):
            case = generate_hand(pid, t)
            iid = image_id_for(pid, t)
            rel = f"images/{iid}.png"
            if not cv2.imwrite(str(out_dir / rel), case.image):
                raise OSError(f"could not write {rel}")
            row = [iid, rel, pid, t, case.months, case.side, split[pid]]
            for j in case.joints:
                row += [*j.box, j.plate, j.space, j.guss]
            w.writerow(row)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write hand radiograph phantoms with GUSS labels.")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--patients", type=int, default=20, help="the first N patient ids of the pool")
    ap.add_argument("--speed", type=int, default=0, help="time N hands and print ms per hand")
    a = ap.parse_args(argv)
    if a.speed:
        generate_hand(0, 0)
        t0 = time.perf_counter()
        n = 0
        for pid, t in visits(range(a.speed)):
            generate_hand(pid, t)
            n += 1
        print(f"{(time.perf_counter() - t0) * 1000 / n:.1f} ms per hand ({n} hands, {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[0]})")
        return 0
    if a.out is None:
        ap.error("--out is required unless --speed is given")
    path = write_dataset(a.out, list(PATIENT_POOL[: a.patients]))
    print(f"wrote the visits of {a.patients} patients; manifest {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
