"""Semi-coronal sacroiliac-joint MRI phantoms (STIR-like and T1-like) with AS stage by construction.

A case is a pure function of its seed (and the optional stage / sequence overrides).
The seed is split into independent random streams, so that for one seed the anatomy,
the pose, the acquisition (bias field, noise, blur, contrast) and the normal variants
stay identical whatever stage is asked for; only the lesion stream depends on the stage.
That lets `generate_case(seed, stage=0)` and `generate_case(seed, stage=2)` differ only
where lesions were drawn, i.e. inside the joint-region mask.

Geometry is described in a canonical 256-pixel frame (about 1 mm per pixel, patient's
posterior at the bottom, as in the real semi-coronal series) and every point is mapped
through the pose transform before drawing, so shapes are rasterised once, anti-aliased,
directly in the output frame.  Labels (mask, stage, AS status, lesion list) come from
the generating parameters only, never from image statistics.

CLI:  python -m training.phantoms.sacroiliac --out DIR --split train --count N
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

STAGE_NAMES = ("Normal", "Early", "Moderate", "Advanced")
SEQUENCES = ("STIR", "T1")
SEED_RANGES = {
    "train": range(0, 100_000),
    "val": range(100_000, 110_000),
    "test": range(1_000_000, 1_010_000),
}
CSV_COLUMNS = ("image_id", "image_path", "mask_path", "AS_status", "stage", "stage_name",
               "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
SIDE_NAMES = ("image_left", "image_right")
CANON = 256.0            # canonical frame size (pixels ~ 1 mm)
_C = CANON / 2.0

# Relative signal of each tissue before bias field, gain, noise and gamma.
_SIGNAL = {
    "T1": dict(air=0.0, fat=0.90, muscle=0.21, psoas=0.18, marrow_s=0.46, marrow_i=0.43, marrow_l5=0.40,
               cortex=0.06, cartilage=0.22, disc=0.26, nucleus=0.30, csf=0.12, nerve=0.28, vessel=0.10,
               bowel=0.38, bowel_wall=0.22, fascia=0.78, oedema=0.14, sclerosis=0.05, fatmeta=0.86,
               erosion=0.25, ankylosis=0.58),
    "STIR": dict(air=0.0, fat=0.25, muscle=0.17, psoas=0.08, marrow_s=0.16, marrow_i=0.15, marrow_l5=0.14,
                 cortex=0.04, cartilage=0.34, disc=0.45, nucleus=0.90, csf=0.95, nerve=0.45, vessel=0.85,
                 bowel=0.30, bowel_wall=0.20, fascia=0.62, oedema=0.72, sclerosis=0.05, fatmeta=0.09,
                 erosion=0.62, ankylosis=0.14),
}


@dataclass(frozen=True)
class SacroiliacCase:
    image: np.ndarray                   # uint8 (size, size)
    mask: np.ndarray                    # uint8 (size, size) in {0, 1}: both joints + periarticular bone
    as_status: int                      # 1 when stage >= 1
    stage: int                          # 0..3
    bbox: tuple[int, int, int, int]     # x1, y1, x2, y2 of the mask (end-exclusive)
    params: dict                        # JSON-safe generating parameters

    @property
    def stage_name(self) -> str:
        return STAGE_NAMES[self.stage]


# ---------------------------------------------------------------------------------------------
# small geometry helpers (canonical coordinates, numpy arrays of shape (k, 2) as x, y)
def _chaikin(pts: np.ndarray, iterations: int = 2, closed: bool = True) -> np.ndarray:
    for _ in range(iterations):
        p = pts
        q = np.roll(p, -1, axis=0) if closed else p[1:]
        p0 = p if closed else p[:-1]
        a = 0.75 * p0 + 0.25 * q
        b = 0.25 * p0 + 0.75 * q
        out = np.empty((2 * len(a), 2))
        out[0::2], out[1::2] = a, b
        pts = out if closed else np.vstack([p[:1], out, p[-1:]])
    return pts


def _ellipse(cx: float, cy: float, a: float, b: float, ang: float = 0.0, n: int = 28,
             wobble: np.ndarray | None = None) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 if wobble is None else wobble
    x, y = a * np.cos(t) * r, b * np.sin(t) * r
    c, s = math.cos(ang), math.sin(ang)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _offset(curve: np.ndarray, normal: np.ndarray, d) -> np.ndarray:
    d = np.asarray(d, dtype=float)
    return curve + normal * (d[:, None] if d.ndim else d)


def _band(curve: np.ndarray, normal: np.ndarray, d0, d1) -> np.ndarray:
    """Closed polygon between two offsets of a curve (offsets may vary along it)."""
    return np.vstack([_offset(curve, normal, d0), _offset(curve, normal, d1)[::-1]])


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _smooth_noise(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with features about `cell` pixels across."""
    k = max(2, int(math.ceil(n / cell)) + 2)
    g = rng.standard_normal((k, k)).astype(np.float32)
    f = cv2.resize(g, (n, n), interpolation=cv2.INTER_CUBIC)
    return f / (f.std() + 1e-6)


def _streak_noise(horiz: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate a field of horizontal streaks to `angle_deg` (muscle fibre texture)."""
    n = horiz.shape[0]
    R = cv2.getRotationMatrix2D((n / 2.0, n / 2.0), -angle_deg, 1.0)
    f = cv2.warpAffine(horiz, R, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return f / (f.std() + 1e-6)


# ---------------------------------------------------------------------------------------------
class _Canvas:
    """Painter's-algorithm compositor drawing canonical shapes through the pose transform."""

    def __init__(self, n: int, M: np.ndarray, zoom: float):
        self.n = n
        self.M = M
        self.zoom = zoom                     # output pixels per canonical pixel
        self.img = np.zeros((n, n), np.float32)
        self.bone = np.zeros((n, n), np.float32)

    def tf(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.M[:, :2].T + self.M[:, 2]

    def _alpha(self, polys, mode: str, thickness: float = 1.0, blur: float = 0.0, closed: bool = False):
        P = [self.tf(np.asarray(p, dtype=float)) for p in polys]
        allp = np.vstack(P)
        th = max(1, int(round(thickness * self.zoom))) if mode == "line" else 0
        pad = 2 + th + 3.0 * blur * self.zoom
        x0 = max(0, int(math.floor(allp[:, 0].min() - pad)))
        y0 = max(0, int(math.floor(allp[:, 1].min() - pad)))
        x1 = min(self.n, int(math.ceil(allp[:, 0].max() + pad)) + 1)
        y1 = min(self.n, int(math.ceil(allp[:, 1].max() + pad)) + 1)
        if x1 <= x0 or y1 <= y0:
            return None, None
        buf = np.zeros((y1 - y0, x1 - x0), np.uint8)
        ip = [np.round((p - (x0, y0)) * 16.0).astype(np.int32) for p in P]
        if mode == "fill":
            cv2.fillPoly(buf, ip, 255, cv2.LINE_AA, shift=4)
        else:
            cv2.polylines(buf, ip, closed, 255, th, cv2.LINE_AA, shift=4)
        a = buf.astype(np.float32) * (1.0 / 255.0)
        if blur > 0:
            a = cv2.GaussianBlur(a, (0, 0), blur * self.zoom)
        return a, (slice(y0, y1), slice(x0, x1))

    def _blend(self, a, roi, value, opacity: float, bone: str | None):
        if a is None:
            return
        if opacity != 1.0:
            a = a * opacity
        if bone == "gate":                    # lesions live in bone only
            a = a * self.bone[roi]
        v = value[roi] if isinstance(value, np.ndarray) else value
        im = self.img[roi]
        im += a * (v - im)
        if bone == "set":
            b = self.bone[roi]
            b += a * (1.0 - b)
        elif bone is None:
            self.bone[roi] *= 1.0 - a

    def fill(self, polys, value, opacity=1.0, blur=0.0, bone=None):
        a, roi = self._alpha(polys, "fill", blur=blur)
        self._blend(a, roi, value, opacity, bone)

    def line(self, pts, value, thickness=1.0, opacity=1.0, blur=0.0, closed=False, bone=None):
        a, roi = self._alpha([pts], "line", thickness=thickness, blur=blur, closed=closed)
        self._blend(a, roi, value, opacity, bone)


# ---------------------------------------------------------------------------------------------
def _rngs(seed: int) -> dict[str, np.random.Generator]:
    names = ("anatomy", "pose", "acquisition", "sequence", "stage", "texture", "lesion0", "lesion1",
             "lesion2", "lesion3")
    kids = np.random.SeedSequence([int(seed), 0x51AC]).spawn(len(names))
    return {k: np.random.default_rng(s) for k, s in zip(names, kids)}


def _joint_curve(j: dict, side: int, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Joint line points (top to bottom) and unit normals pointing laterally (towards the ilium)."""
    t = np.linspace(0.0, 1.0, n)
    u = (j["u_top"] + t * (j["u_bot"] - j["u_top"]) + j["bow"] * np.sin(np.pi * t)
         + j["wig_amp"] * np.sin(2 * np.pi * j["wig_freq"] * t + j["wig_phase"]) * np.sin(np.pi * t) ** 0.5
         + j["wig2"] * np.sin(2 * np.pi * 2.3 * j["wig_freq"] * t + 1.7 * j["wig_phase"]))
    y = j["y_top"] + t * (j["y_bot"] - j["y_top"]) + j["sag"] * np.sin(np.pi * t)
    pts = np.stack([_C + side * u, y], axis=1)
    tan = np.gradient(pts, axis=0)
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    nrm = np.stack([tan[:, 1], -tan[:, 0]], axis=1)
    nrm *= np.sign(nrm[:, :1] * side + 1e-9)
    return pts, nrm


def _wiggly(rng: np.random.Generator, p0, p1, amp: float, k: int = 5) -> np.ndarray:
    """A tortuous curve from p0 to p1 (vessels, fascial planes)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    t = np.linspace(0, 1, k)[:, None]
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9)
    off = rng.uniform(-amp, amp, (k, 1)) * np.sin(np.pi * t)
    return _chaikin(p0 + t * d + off * nrm, 3, closed=False)


def _rounded_rect(x0, y0, x1, y1, r) -> np.ndarray:
    pts = np.array([[x0 + r, y0], [x1 - r, y0], [x1, y0 + r], [x1, y1 - r], [x1 - r, y1], [x0 + r, y1],
                    [x0, y1 - r], [x0, y0 + r]], float)
    return _chaikin(pts, 3)


def _draw_anatomy(rng: np.random.Generator, sequence: str, cv: _Canvas, tex: dict):
    S = _SIGNAL[sequence]
    U = rng.uniform
    A: dict = {}
    t1 = sequence == "T1"

    # tissue values with texture (image-frame fields shared by all stages of a seed)
    fine, coarse, patch, streak = tex["fine"], tex["coarse"], tex["patch"], tex["striation"]
    marrow_tex = (1.0 + U(0.07, 0.13) * fine + U(0.06, 0.13) * coarse + U(0.03, 0.08) * tex["mottle"]
                  + (U(0.05, 0.18) if t1 else -U(0.0, 0.1)) * np.clip(patch - 0.3, 0, 2))
    # muscle: intermediate signal with sparse oblique intramuscular fat streaks
    fat_streak = np.clip((streak - 0.8) * 0.7, 0, 1)
    muscle = (S["muscle"] * (1.0 + 0.06 * coarse + 0.05 * fine + U(0.05, 0.12) * tex["mottle"])
              + (S["fat"] - S["muscle"]) * U(0.15, 0.4) * fat_streak)
    psoas = S["psoas"] * (1.0 + 0.06 * coarse + 0.04 * fine) + (S["fat"] - S["psoas"]) * 0.05 * fat_streak
    fat = S["fat"] * (1.0 + 0.05 * coarse + 0.03 * fine)

    # ---- body outline / subcutaneous fat / gluteal muscle ----
    xs = np.linspace(-90, CANON + 90, 40)
    skin_y, skin_curv, cleft = U(218, 234), U(12, 28), U(4, 12)
    asym = U(-5, 5)
    xn = (xs - _C) / _C
    skin = skin_y - skin_curv * xn ** 2 + asym * xn - cleft * np.exp(-((xs - _C) / 7.0) ** 2)
    cv.fill([np.vstack([np.stack([xs, skin], 1), [[CANON + 90, -90], [-90, -90]]])], fat)
    fat_l, fat_r, fat_c = U(12, 28), U(12, 28), U(16, 30)
    fat_th = np.where(xs < _C, fat_l, fat_r) + (fat_c - 0.5 * (fat_l + fat_r)) * np.exp(-((xs - _C) / 35.0) ** 2)
    inner = skin - fat_th + U(-1.5, 1.5, len(xs))
    cv.fill([np.vstack([_chaikin(np.stack([xs, inner], 1), 2, closed=False), [[CANON + 90, -90], [-90, -90]]])],
            muscle)
    A["skin"] = dict(y=round(skin_y, 2), curvature=round(skin_curv, 2),
                     fat_thickness=[round(fat_l, 1), round(fat_r, 1)])

    # ---- per-side joint, ilium and wing parameters (left/right asymmetric) ----
    joints, sides = [], (-1, 1)
    base = dict(u_top=U(51, 58), y_top=U(97, 105), u_bot=U(42, 49), y_bot=U(168, 180))
    for side in sides:
        joints.append(dict(u_top=base["u_top"] + U(-3, 3), y_top=base["y_top"] + U(-3, 3),
                           u_bot=base["u_bot"] + U(-3, 3), y_bot=base["y_bot"] + U(-4, 4),
                           bow=U(-3.5, 2.0), sag=U(-2, 2), wig_amp=U(0.5, 1.8), wig_freq=U(1.5, 3.5),
                           wig_phase=U(0, 2 * np.pi), wig2=U(0.0, 0.7),
                           gap=U(0.8, 1.5), cortex=U(0.8, 1.4),
                           il_width=U(18, 26), wing_rise=U(0.22, 0.38), wing_curv=U(-3, 6),
                           wing_th=U(12, 18), wing_th0=U(24, 32)))
    A["joints"] = [{k: round(float(v), 3) for k, v in j.items()} for j in joints]
    curves = [_joint_curve(j, s) for j, s in zip(joints, sides)]

    # ---- ilium outlines ----
    ilia, wings_top, lat_planes = [], [], []
    for (pts, nrm), j, side in zip(curves, joints, sides):
        npt = len(pts)
        tip = pts[-1] + np.array([side * 3.0, 7.0])
        lat_low = pts[int(npt * 0.8)] + nrm[int(npt * 0.8)] * j["il_width"] * 0.55
        lat_mid = pts[npt // 2] + nrm[npt // 2] * j["il_width"]
        lat_up = pts[int(npt * 0.2)] + nrm[int(npt * 0.2)] * j["il_width"] * 1.2
        # the wing: a band rising laterally from above the joint to beyond the field of view
        u0 = j["u_top"] + 0.6 * j["il_width"]
        uu = np.linspace(u0, 185.0, 9)
        du = (uu - u0) / (185.0 - u0)
        yc = j["y_top"] + 1.0 - j["wing_rise"] * (uu - u0) + j["wing_curv"] * 4 * du * (1 - du)
        half = 0.5 * (j["wing_th0"] + (j["wing_th"] - j["wing_th0"]) * np.sqrt(du))
        lo = np.stack([_C + side * uu, yc + half], 1)
        hi = np.stack([_C + side * uu, yc - half], 1)
        top_in = pts[0] + np.array([side * 3.0, -7.0])
        outer = _chaikin(np.vstack([tip, lat_low, lat_mid, lat_up, lo[2:], hi[::-1][:-1], top_in]), 2, closed=False)
        ilia.append(np.vstack([pts, outer]))      # medial border = joint line, then lateral contour
        lp = _chaikin(np.vstack([tip, lat_low, lat_mid, lat_up, lo[2:6]]), 2, closed=False)
        lat_planes.append(lp + np.array([side * U(2.0, 3.5), U(0.5, 2.0)]))
        wings_top.append(_chaikin(np.vstack([top_in, hi[1:]]), 2, closed=False))

    # ---- pelvis above the wings: retroperitoneal fat, bowel, iliacus, psoas, vessels ----
    sac_top = U(93, 102)
    up_curve = _chaikin(np.vstack([wings_top[0][::-1], [[_C, sac_top - 4]], wings_top[1]]), 2, closed=False)
    bowel_val = S["bowel"] * (1.0 + 0.12 * tex["mottle"] + 0.2 * tex["patch"])
    cv.fill([np.vstack([up_curve, [[CANON + 90, -90], [-90, -90]]])], fat)
    A["bowel_loops"] = 0
    for side in sides:
        for _ in range(int(rng.integers(6, 11))):
            cx, cy = _C + side * U(62, 135), U(-30, 70)
            a, b = U(13, 26), U(11, 22)
            wob = 1 + 0.1 * np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False) * rng.integers(2, 5) + U(0, 6))
            ang = U(0, np.pi)
            cv.fill([_ellipse(cx, cy, a, b, ang, wobble=wob)], S["bowel_wall"], blur=0.5)
            cv.fill([_ellipse(cx, cy, a - 2.0, b - 2.0, ang, wobble=wob)], bowel_val, blur=0.8)
            for _ in range(int(rng.integers(0, 2))):
                cv.fill([_ellipse(cx + U(-a, a) * 0.5, cy + U(-b, b) * 0.5, U(1.5, 5), U(1.5, 4))], 0.02,
                        opacity=U(0.6, 1.0), blur=0.6)
            A["bowel_loops"] += 1
    for side, wt in zip(sides, wings_top):           # iliacus on the inner surface of the wing, fat above it
        th = U(3, 10) + U(-2, 2, len(wt))
        upper = _chaikin(np.stack([wt[:, 0] + side * 2.0, wt[:, 1] - th], 1), 2, closed=False)
        cv.line(upper, fat, thickness=U(2.5, 5.0), opacity=U(0.7, 1.0), blur=0.6)
        cv.fill([np.vstack([wt, upper[::-1]])], psoas, blur=0.5)
    A["psoas"] = []
    for side in sides:
        cx, cy, rx, ry = _C + side * U(47, 58), U(45, 66), U(20, 28), U(25, 35)
        ang = side * U(0.0, 0.3)
        th_ = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        wob = 1 + 0.05 * np.sin(th_ * 2 + U(0, 6)) + 0.03 * np.sin(th_ * 3 + U(0, 6))
        cv.fill([_ellipse(cx, cy, rx, ry, ang, wobble=wob)], psoas)
        A["psoas"].append([round(cx, 1), round(cy, 1), round(rx, 1), round(ry, 1)])
        for _ in range(int(rng.integers(1, 3))):      # iliac vessels beside the psoas: flow void or bright
            vx, vy = cx + side * (rx + U(2, 8)), cy + U(-ry, ry)
            cv.fill([_ellipse(vx, vy, U(2, 4.5), U(2, 4.5), U(0, 3))], S["vessel"] if rng.random() < 0.6 else 0.05,
                    blur=0.4)

    # ---- L5 body and L5/S1 disc ----
    disc_th, hw = U(5, 9), U(24, 30)
    d_lo = sac_top - 0.5
    d_hi = d_lo - disc_th
    vb = _rounded_rect(_C - hw, d_hi - 90, _C + hw, d_hi - 0.5, 4)
    cv.fill([vb], S["marrow_l5"] * marrow_tex, bone="set")
    cv.line(vb, S["cortex"], thickness=1.0, closed=True, opacity=0.6)
    disc = _rounded_rect(_C - hw - 1, d_hi, _C + hw + 1, d_lo + 1, 2.5)
    cv.fill([disc], S["disc"])
    d2 = d_hi - U(58, 68)                             # L4/L5 disc near the top of the field
    cv.fill([_rounded_rect(_C - hw - 1, d2 - disc_th, _C + hw + 1, d2, 2.5)], S["disc"])
    cv.fill([_ellipse(_C + U(-4, 4), d2 - 0.5 * disc_th, hw * 0.6, disc_th * 0.25)], S["nucleus"], blur=0.7)
    cv.fill([_ellipse(_C + U(-4, 4), 0.5 * (d_lo + d_hi), hw * 0.6, disc_th * 0.25)], S["nucleus"], blur=0.7)

    # ---- fascial planes, intermuscular fat and tortuous vessels in the gluteal muscles ----
    for side, (pts, nrm), j in zip(sides, curves, joints):
        start = pts[-1] + np.array([side * 4.0, 8.0])
        end = np.array([_C + side * 180, start[1] + U(-35, 5)])
        cv.line(_wiggly(rng, start, end, 10), fat, thickness=U(1.0, 2.2), opacity=U(0.5, 0.9), blur=0.5)
        for _ in range(int(rng.integers(2, 7))):
            p0 = np.array([_C + side * U(60, 135), U(105, 200)])
            a0 = math.radians(U(-60, 40))              # pointing laterally, mostly downwards
            ang = a0 if side > 0 else np.pi - a0
            L = U(25, 70)
            p1 = p0 + L * np.array([math.cos(ang), math.sin(ang)])
            cv.line(_wiggly(rng, p0, p1, L * 0.08, k=4), S["fascia"], thickness=1.0, opacity=U(0.3, 0.8))
        # fat / vessels in the plane along the lateral border of the ilium and under the wing
        lp = lat_planes[0 if side < 0 else 1]
        i0 = int(rng.integers(0, len(lp) // 3))
        i1 = int(rng.integers(i0 + len(lp) // 3, len(lp) + 1))
        cv.line(lp[i0:i1], S["fascia"], thickness=1.0, opacity=U(0.3, 0.7), blur=0.3)
        # fat along the lower lateral border of the sacrum (between sacrum and gluteus maximus)
        seg = np.array([pts[-14], pts[-1] + [side * 2, 6], [_C + side * U(12, 20), U(206, 222)]])
        cv.line(_chaikin(seg, 2, closed=False), fat, thickness=U(2, 5), opacity=U(0.5, 0.9), blur=1.0)

    # ---- ilia ----
    for poly, j in zip(ilia, joints):
        cv.fill([poly], S["marrow_i"] * marrow_tex, bone="set")
        cv.line(poly, S["cortex"], thickness=1.0, closed=True, opacity=U(0.7, 0.95))

    # ---- sacrum ----
    tip_y, tip_w = U(206, 220), U(9, 15)
    (pl, nl), (pr, nr) = curves
    top = np.array([pl[0], [_C - 28, sac_top + U(-1, 3)], [_C, sac_top], [_C + 28, sac_top + U(-1, 3)], pr[0]])
    low_r = np.array([pr[-1], pr[-1] + [-U(4, 9), 14], [_C + tip_w, tip_y - 6], [_C, tip_y]])
    low_l = np.array([[_C - tip_w, tip_y - 6], pl[-1] + [U(4, 9), 14], pl[-1]])
    lower = _chaikin(np.vstack([low_r, low_l]), 3, closed=False)
    sac = np.vstack([_chaikin(top, 1, closed=False)[1:-1], pr, lower, pl[::-1]])
    cv.fill([sac], S["marrow_s"] * marrow_tex, bone="set")
    A["sacrum"] = dict(top_y=round(sac_top, 2), tip_y=round(tip_y, 2))
    # midline sacral bodies: slightly different marrow, transverse remnant discs
    mid_w = U(13, 17)
    body = _chaikin(np.array([[_C - mid_w, sac_top + 3], [_C + mid_w, sac_top + 3],
                              [_C + mid_w * 0.7, tip_y - 8], [_C - mid_w * 0.7, tip_y - 8]]), 2)
    cv.fill([body], S["marrow_s"] * marrow_tex * (U(0.78, 0.95) if t1 else U(0.95, 1.15)), opacity=0.7, blur=2.0,
            bone="set")
    # sacral canal (CSF) in the midline, seen when the slice passes through it
    A["canal_visible"] = bool(rng.random() < 0.4)
    if A["canal_visible"]:
        cw = U(3.0, 5.5)
        canal = _chaikin(np.array([[_C - cw, sac_top - 2], [_C + cw, sac_top - 2], [_C + cw * 0.4, tip_y - U(25, 45)],
                                   [_C - cw * 0.4, tip_y - 30]]), 2)
        cv.fill([canal], S["csf"], opacity=U(0.3, 0.8), blur=1.0)
    f_y1, f_y2 = U(124, 136), U(156, 168)
    for yy, w in ((0.5 * (sac_top + f_y1) + 6, 1.0), (0.5 * (f_y1 + f_y2), 0.9), (f_y2 + U(14, 20), 0.7)):
        seg = np.array([[_C - mid_w * w, yy + U(-1, 1)], [_C, yy + U(-1.5, 1.5)], [_C + mid_w * w, yy + U(-1, 1)]])
        cv.line(_chaikin(seg, 2, closed=False), S["disc"] * 0.9, thickness=1.0, opacity=U(0.3, 0.7), blur=0.4,
                bone="set")
    # sacral foramina: fat-filled (T1 bright) around a nerve root, irregular ("claw") outline
    fsz = U(4.5, 7.0)
    A["foramina"] = []
    for side in sides:
        for fy, fu in ((f_y1, U(19, 25)), (f_y2, U(22, 30))):
            cx, cy = _C + side * fu, fy + U(-2, 2)
            a, b = fsz * U(0.8, 1.2), fsz * U(1.1, 1.6)
            wob = 1 + 0.1 * np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False) * rng.integers(2, 4) + U(0, 6))
            e = _ellipse(cx, cy, a, b, U(-0.4, 0.4), wobble=wob)
            cv.fill([e], S["fat"] * U(0.7, 0.95) if t1 else S["nerve"] * U(0.5, 0.8), blur=0.6)
            for _ in range(int(rng.integers(1, 3))):       # nerve roots / vessels inside the foramen
                cv.fill([_ellipse(cx + U(-0.4, 0.4) * a, cy + U(-0.4, 0.4) * b, a * U(0.12, 0.22), b * U(0.15, 0.35),
                                  U(0, 3))], S["nerve"], blur=0.5, opacity=U(0.6, 1.0))
            A["foramina"].append([round(cx, 1), round(cy, 1), round(a, 1), round(b, 1)])
    cv.line(sac, S["cortex"], thickness=1.0, closed=True, opacity=U(0.45, 0.7))

    # ---- the sacroiliac joints: dark subchondral plates around a thin cartilage / fluid line ----
    for (pts, nrm), j in zip(curves, joints):
        cv.line(pts, S["cortex"], thickness=j["gap"] + 2 * j["cortex"], opacity=U(0.7, 0.9), blur=0.35)
        cv.line(pts, S["cartilage"], thickness=1.0, opacity=min(1.0, 0.45 * j["gap"]))

    # ---- normal variants: small periarticular fat, vessels (not disease) ----
    A["variants"] = []
    for k, (pts, nrm) in enumerate(curves):
        if rng.random() < 0.5:
            i = int(rng.integers(8, 40))
            d = rng.choice([-1, 1]) * U(3, 5)
            c = pts[i] + nrm[i] * d
            ang = math.atan2(nrm[i, 0], -nrm[i, 1])
            a, b = U(1.5, 3.5), U(1.0, 1.8)
            cv.fill([_ellipse(c[0], c[1], a, b, ang)], S["fatmeta"], opacity=U(0.25, 0.5), blur=0.6, bone="gate")
            A["variants"].append(dict(kind="periarticular_fat", side=k, t=round(i / 47, 3),
                                      area_px=round(math.pi * a * b * (cv.zoom ** 2), 1)))
        for _ in range(int(rng.integers(0, 3))):
            i = int(rng.integers(5, 43))
            c = pts[i] + nrm[i] * U(6, 14)
            r = U(0.8, 1.5)
            cv.fill([_ellipse(c[0], c[1], r, r * U(1, 2.5), U(0, np.pi))], S["vessel"], opacity=U(0.4, 0.8),
                    bone="gate")
            A["variants"].append(dict(kind="vessel", side=k, t=round(i / 47, 3)))
    return A, curves, joints


def _draw_lesions(rng: np.random.Generator, stage: int, sequence: str, cv: _Canvas, tex: dict,
                  curves, joints, band: float, px: float) -> list[dict]:
    """Lesions of the given stage, all inside the joint band (|offset| + half-width <= band).

    Shapes are drawn in canonical units; the returned sizes are output-image pixels (`px` per unit).
    """
    S = _SIGNAL[sequence]
    U = rng.uniform
    out: list[dict] = []
    npts = len(curves[0][0])
    marrow_tex = 1.0 + 0.1 * tex["fine"]

    def at(side_k: int, t: float):
        i = int(np.clip(round(t * (npts - 1)), 0, npts - 1))
        pts, nrm = curves[side_k]
        tan = np.array([-nrm[i, 1], nrm[i, 0]])
        return pts[i], nrm[i], math.atan2(tan[1], tan[0])

    def oedema(k, length, width, strength, bone_side=None):
        t = U(0.12, 0.88)
        bs = int(rng.choice([-1, 1])) if bone_side is None else bone_side
        p, nv, ang = at(k, t)
        half_plate = 0.5 * joints[k]["gap"] + joints[k]["cortex"]
        width = min(width, band - half_plate - 0.8)
        d = bs * (half_plate + width * U(0.9, 1.1))
        d = math.copysign(min(abs(d), band - width - 0.3), d)
        c = p + nv * d
        wob = 1 + 0.15 * np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False) * rng.integers(2, 5) + U(0, 6))
        poly = _ellipse(c[0], c[1], length, width, ang, wobble=wob)
        # graded signal: a brighter core inside a softer rim
        cv.fill([poly], S["oedema"] * marrow_tex, opacity=strength * 0.7, blur=1.5, bone="gate")
        cv.fill([_ellipse(c[0], c[1], length * 0.6, width * 0.6, ang)], S["oedema"] * marrow_tex,
                opacity=strength * 0.6, blur=0.9, bone="gate")
        out.append(dict(type="oedema", side=k, bone="ilium" if bs > 0 else "sacrum", t=round(t, 3),
                        length_px=round(2 * length * px, 2), width_px=round(2 * width * px, 2),
                        area_px=round(math.pi * length * width * px * px, 1), strength=round(strength, 3)))

    def erosion(k, radius):
        t = U(0.1, 0.9)
        p, nv, ang = at(k, t)
        bs = int(rng.choice([-1, 1]))
        c = p + nv * bs * U(0.4, 1.6)
        wob = 1 + 0.25 * np.sin(np.linspace(0, 2 * np.pi, 20, endpoint=False) * rng.integers(2, 4) + U(0, 6))
        e = _ellipse(c[0], c[1], radius * U(1.0, 1.6), radius, ang, n=20, wobble=wob)
        cv.line(e, S["sclerosis"], thickness=1.0, closed=True, opacity=0.5)
        cv.fill([e], S["erosion"])
        out.append(dict(type="erosion", side=k, bone="ilium" if bs > 0 else "sacrum", t=round(t, 3),
                        radius_px=round(radius * px, 2), area_px=round(math.pi * radius * radius * 1.3 * px * px, 1)))

    def sclerosis(k, thick, opacity):
        t0 = U(0.05, 0.55)
        t1 = min(0.97, t0 + U(0.2, 0.45))
        i0, i1 = int(t0 * (npts - 1)), int(t1 * (npts - 1)) + 1
        pts, nrm = curves[k]
        seg, nseg = pts[i0:i1], nrm[i0:i1]
        bs = 1 if rng.random() < 0.75 else -1          # iliac side predominates
        half_plate = 0.5 * joints[k]["gap"] + joints[k]["cortex"]
        thick = min(thick, band - half_plate - 0.3)
        prof = np.sin(np.linspace(0, np.pi, len(seg))) ** 0.6
        poly = _band(seg, nseg, bs * half_plate * 0.6, bs * (half_plate + thick * (0.3 + 0.7 * prof)))
        cv.fill([poly], S["sclerosis"], opacity=opacity, blur=0.9, bone="gate")
        out.append(dict(type="sclerosis", side=k, bone="ilium" if bs > 0 else "sacrum",
                        t0=round(t0, 3), t1=round(t1, 3), thickness_px=round(thick * px, 2),
                        area_px=round(_poly_area(poly) * px * px, 1), opacity=round(opacity, 3)))

    def fat_meta(k, length, width, opacity):
        t = U(0.15, 0.85)
        p, nv, ang = at(k, t)
        bs = int(rng.choice([-1, 1]))
        half_plate = 0.5 * joints[k]["gap"] + joints[k]["cortex"]
        width = min(width, 0.5 * (band - half_plate - 0.5))
        c = p + nv * bs * (half_plate + width)
        cv.fill([_ellipse(c[0], c[1], length, width, ang)], S["fatmeta"], opacity=opacity, blur=0.7, bone="gate")
        out.append(dict(type="fat_metaplasia", side=k, bone="ilium" if bs > 0 else "sacrum", t=round(t, 3),
                        length_px=round(2 * length * px, 2), width_px=round(2 * width * px, 2),
                        area_px=round(math.pi * length * width * px * px, 1), opacity=round(opacity, 3)))

    def ankylosis(k, t0, t1):
        pts, nrm = curves[k]
        i0, i1 = int(t0 * (npts - 1)), int(t1 * (npts - 1)) + 1
        seg = pts[i0:i1]
        j = joints[k]
        th = j["gap"] + 2 * j["cortex"] + 1.5
        cv.line(seg, S["ankylosis"] * marrow_tex, thickness=th, opacity=1.0, blur=0.6)
        # residual irregular specks of the former joint line
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(seg)))
            cv.fill([_ellipse(seg[i, 0], seg[i, 1], U(0.8, 2.0), U(0.6, 1.2), U(0, np.pi))], S["cortex"],
                    opacity=U(0.3, 0.7))
        out.append(dict(type="ankylosis", side=k, extent="complete" if t1 - t0 >= 0.999 else "partial",
                        t0=round(t0, 3), t1=round(t1, 3),
                        length_px=round(float(np.sum(np.linalg.norm(np.diff(seg, axis=0), axis=1))) * px, 1)))

    if stage == 0:
        return out
    if stage == 1:
        sides = [int(rng.integers(0, 2))] if rng.random() < 0.6 else [0, 1]
        for k in sides:
            oedema(k, U(3.0, 6.0), U(2.0, 3.5), U(0.55, 0.9))
        if rng.random() < 0.35:
            erosion(int(rng.integers(0, 2)), U(1.0, 1.6))
    elif stage == 2:
        for _ in range(int(rng.integers(2, 6))):
            oedema(int(rng.integers(0, 2)), U(6.0, 14.0), U(3.0, 6.0), U(0.75, 1.0))
        for _ in range(int(rng.integers(2, 6))):
            erosion(int(rng.integers(0, 2)), U(1.5, 2.8))
        for _ in range(int(rng.integers(1, 3))):
            sclerosis(int(rng.integers(0, 2)), U(2.0, 3.5), U(0.35, 0.6))
        if rng.random() < 0.5:
            fat_meta(int(rng.integers(0, 2)), U(3, 7), U(1.5, 3.0), U(0.4, 0.7))
    else:
        for k in (0, 1):
            r = rng.random()
            if r < 0.35:
                ankylosis(k, 0.0, 1.0)
            elif r < 0.9 or k == 1 and not any(o["type"] == "ankylosis" for o in out):
                t0 = U(0.0, 0.5)
                ankylosis(k, t0, min(1.0, t0 + U(0.25, 0.55)))
        for _ in range(int(rng.integers(2, 5))):
            sclerosis(int(rng.integers(0, 2)), U(3.0, 5.5), U(0.6, 0.95))
        for _ in range(int(rng.integers(2, 7))):
            erosion(int(rng.integers(0, 2)), U(1.5, 3.0))
        for _ in range(int(rng.integers(1, 4))):          # backfill / fat metaplasia
            fat_meta(int(rng.integers(0, 2)), U(3, 8), U(1.5, 3.5), U(0.5, 0.9))
        for _ in range(int(rng.integers(0, 3))):
            oedema(int(rng.integers(0, 2)), U(3.0, 8.0), U(1.5, 3.5), U(0.4, 0.8))
    return out


# ---------------------------------------------------------------------------------------------
def generate_case(seed: int, *, stage: int | None = None, sequence: str | None = None,
                  size: int = 256) -> SacroiliacCase:
    """One phantom; a pure function of (seed, stage, sequence, size)."""
    seed = int(seed)
    R = _rngs(seed)
    if stage is None:
        stage = int(R["stage"].integers(0, 4))
    stage = int(stage)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0..3, got {stage}")
    if sequence is None:
        sequence = SEQUENCES[int(R["sequence"].integers(0, 2))]
    sequence = {"stir": "STIR", "t1": "T1"}.get(str(sequence).lower())
    if sequence is None:
        raise ValueError("sequence must be 'STIR' or 'T1'")
    n = int(size)

    # pose: rotation, scale, translation about the image centre
    rp = R["pose"]
    rot, scale = rp.uniform(-12, 12), rp.uniform(0.85, 1.15)
    tx, ty = rp.uniform(-14, 14), rp.uniform(-12, 12)
    band = rp.uniform(7.5, 10.0)            # half-width of the joint region (canonical px ~ mm)
    zoom = n / CANON
    th = math.radians(rot)
    Rm = scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    M = np.zeros((2, 3))
    M[:, :2] = zoom * Rm
    M[:, 2] = zoom * (np.array([_C + tx, _C + ty]) - Rm @ np.array([_C, _C]))

    # textures in the output frame (shared by all stages of the seed)
    rt = R["texture"]
    base = rt.standard_normal((n, n)).astype(np.float32)
    fine = cv2.GaussianBlur(base, (0, 0), 0.8 * zoom)
    fine /= fine.std() + 1e-6
    ang_l, ang_r = 35 + rot + rt.uniform(-10, 10), 145 + rot + rt.uniform(-10, 10)
    horiz = cv2.blur(base, (int(15 * zoom) | 1, 1))
    s_l, s_r = _streak_noise(horiz, ang_l), _streak_noise(horiz[::-1].copy(), ang_r)
    wx = np.clip((np.arange(n) - n / 2) / (0.1 * n) + 0.5, 0, 1)[None, :]
    tex = dict(fine=fine, coarse=_smooth_noise(rt, n, 14 * zoom), patch=_smooth_noise(rt, n, 7 * zoom),
               mottle=_smooth_noise(rt, n, 4 * zoom), striation=(1 - wx) * s_l + wx * s_r)

    cv = _Canvas(n, M, zoom * scale)
    anatomy, curves, joints = _draw_anatomy(R["anatomy"], sequence, cv, tex)
    lesions = _draw_lesions(R[f"lesion{stage}"], stage, sequence, cv, tex, curves, joints, band, scale * zoom)

    # the joint-region mask: a band following each joint line
    mask = np.zeros((n, n), np.uint8)
    thick = max(1, int(round(2 * band * scale * zoom)))
    for pts, _ in curves:
        ip = np.round(cv.tf(pts) * 16).astype(np.int32)
        cv2.polylines(mask, [ip], False, 1, thick, cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:                                       # cannot happen for the pose ranges used
        raise RuntimeError(f"empty joint mask for seed {seed}")
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    # acquisition: partial-volume blur, coil bias field, Rician noise, gain and gamma
    ra = R["acquisition"]
    img = cv.img
    blur = ra.uniform(0.45, 0.95)
    img = cv2.GaussianBlur(img, (0, 0), blur * zoom)
    sharp = ra.uniform(0.1, 0.5)                           # edge overshoot (k-space truncation / filtering)
    img = img + sharp * (img - cv2.GaussianBlur(img, (0, 0), 1.6 * zoom))
    yy = np.linspace(-1, 1, n, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, n, dtype=np.float32)[None, :]
    b = ra.uniform(-0.5, 0.5, 6) * np.array([0.3, 0.25, 0.35, 0.35, 0.2, 1.0])
    b[0] = abs(b[0]) * 2.0 + 0.3            # posterior (bottom) surface coil is brighter
    bias = np.exp(b[0] * yy + b[1] * xx + b[2] * xx * xx + b[3] * yy * yy + b[4] * xx * yy
                  + 0.08 * b[5] * _smooth_noise(ra, n, 90 * zoom)).astype(np.float32)
    img = img * bias
    sigma = ra.uniform(0.02, 0.055) if sequence == "STIR" else ra.uniform(0.012, 0.04)
    nz = ra.standard_normal((2, n, n), dtype=np.float32) * sigma
    img = np.sqrt((img + nz[0]) ** 2 + nz[1] ** 2)
    if ra.random() < 0.5:                                  # mild interpolation smoothing of the noise
        img = cv2.GaussianBlur(img, (0, 0), 0.45 * zoom)
    gain, gamma = ra.uniform(0.85, 1.15), ra.uniform(0.85, 1.15)
    ref = 1.25 if sequence == "T1" else 0.95
    img = np.clip(img * (gain / ref), 0, 1) ** gamma
    image = (img * 255.0 + 0.5).astype(np.uint8)

    for item in lesions + anatomy["variants"]:
        item["side"] = SIDE_NAMES[item["side"]]
    params = dict(
        seed=seed, sequence=sequence, stage=stage, size=n,
        pose=dict(rotation_deg=round(rot, 3), scale=round(scale, 4), tx_px=round(tx * zoom, 2),
                  ty_px=round(ty * zoom, 2)),
        acquisition=dict(blur_sigma=round(blur, 3), sharpen=round(sharp, 3), noise_sigma=round(float(sigma), 4),
                         snr_fat=round(_SIGNAL[sequence]["fat"] / sigma, 2), bias=[round(float(v), 4) for v in b],
                         gain=round(gain, 4), gamma=round(gamma, 4)),
        joint_band_halfwidth_px=round(band * scale * zoom, 3),
        anatomy=anatomy,
        lesions=lesions,
    )
    return SacroiliacCase(image=image, mask=mask, as_status=int(stage >= 1), stage=stage, bbox=bbox, params=params)


def generate_batch(seeds: Iterable[int], **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cases = [generate_case(s, **kw) for s in seeds]
    n = kw.get("size", 256)
    if not cases:
        return (np.zeros((0, n, n), np.uint8), np.zeros((0, n, n), np.uint8),
                np.zeros(0, np.int64), np.zeros(0, np.int64))
    return (np.stack([c.image for c in cases]), np.stack([c.mask for c in cases]),
            np.array([c.as_status for c in cases], np.int64), np.array([c.stage for c in cases], np.int64))


def image_id_for(seed: int) -> str:
    return f"sij_{int(seed):07d}"


def write_dataset(out_dir: Path, seeds: Iterable[int]) -> Path:
    """PNG images and masks (0/255) plus annotations/dataset.csv (paths relative to out_dir)."""
    out_dir = Path(out_dir)
    for sub in ("images", "masks", "annotations"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "annotations" / "dataset.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for seed in seeds:
            c = generate_case(seed)
            iid = image_id_for(seed)
            ip, mp = f"images/{iid}.png", f"masks/{iid}.png"
            if not cv2.imwrite(str(out_dir / ip), c.image) or not cv2.imwrite(str(out_dir / mp), c.mask * 255):
                raise OSError(f"could not write {iid} under {out_dir}")
            w.writerow([iid, ip, mp, c.as_status, c.stage, c.stage_name, *c.bbox])
    return csv_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write sacroiliac MRI phantoms with labels.")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--split", choices=sorted(SEED_RANGES), default="train")
    ap.add_argument("--count", type=int, default=100)
    a = ap.parse_args(argv)
    rng = SEED_RANGES[a.split]
    if not 0 < a.count <= len(rng):
        ap.error(f"--count must be 1..{len(rng)} for split {a.split}")
    path = write_dataset(a.out, rng[: a.count])
    print(f"wrote {a.count} {a.split} cases; manifest {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
