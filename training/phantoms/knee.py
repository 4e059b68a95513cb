"""Knee radiograph phantoms (AP, a 224x224 crop centred on the tibiofemoral joint, like the OAI crops)
with a Kellgren-Lawrence grade and a hidden phenotype, drawn independently, and progression over time.

A case is a pure function of its seed (and the optional overrides). The seed is split into
independent random streams (anatomy, pose and acquisition, phenotype, grade, lesion details), so
for one seed the knee stays the same whatever grade or phenotype is asked for.

Anatomy, in a canonical LEFT knee as radiographed (medial compartment on the image left, fibular
head on the image right; a right knee is the mirror image): the distal femur with the medial and
lateral condyles and the intercondylar notch, the tibial plateau with both tibial spines and the
posterior plateau rim, the fibular head overlapping the lateral tibia, a faint patella over the
femur, cortical rims, subchondral plates, oriented trabecular texture, soft tissue; pose (rotation,
scale, shift), exposure, the CLAHE look of the real crops, noise and blur vary per case.

Disease: a severity s in [0, 5); the KL grade is floor(s) (labels from the generator's parameters,
never from the image). Each phenotype spreads the same severity over different lesions:

    medial       medial joint-space narrowing, medial osteophytes and sclerosis; varus alignment
    lateral      lateral joint-space narrowing, lateral osteophytes and sclerosis; valgus alignment
    osteophyte   large osteophytes at all four margins and sharp tibial spines, joint space kept
    sclerotic    both compartments moderately narrowed, broad subchondral sclerosis and cysts, dense bone

Near KL 4 the bone ends deform (all phenotypes): the condyles flatten and each tibial plateau wears in
proportion to its compartment's narrowing.

Besides its lesions each phenotype carries a trait that KL grading does not count and that is visible
even at KL 0, the known risk factors that make it a phenotype of the person: varus (medial) or valgus
(lateral) alignment of 3.5 +- 0.5 degrees; for the osteophyte-dominant (hypertrophic) phenotype taller,
sharper tibial spines and chondrocalcinosis, the calcium pyrophosphate deposition that goes with
hypertrophic OA (a thin calcified line inside each joint space, parallel to the plateau, and meniscal
calcification at the outer margins); denser bone with higher-contrast trabeculae and subchondral plates
(sclerotic).

Progression: a subject's severity grows linearly, s(t) = s0 + RATES[phenotype] * t (t in years,
0 to 10), so the phenotypes progress at their own rates; visits differ in pose and exposure.

CLI:  python -m training.phantoms.knee --out DIR --split train --count N
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks.knee import N_GRADES

PHENOTYPES = ("medial", "lateral", "osteophyte", "sclerotic")
RATES = {"medial": 0.22, "lateral": 0.13, "osteophyte": 0.06, "sclerotic": 0.33}   # KL units per year
SIDES = ("L", "R")
SEED_RANGES = {
    "train": range(0, 100_000),
    "val": range(100_000, 110_000),
    "test": range(1_000_000, 1_010_000),
    "cohort": range(2_000_000, 2_010_000),      # longitudinal subjects
}
VISIT_YEARS = (0, 2, 4, 6, 8, 10)
CSV_COLUMNS = ("image_id", "image_path", "kl_grade", "severity", "phenotype", "side", "years")
SIZE = 224
GENERATOR_VERSION = 5                     # bump when the images change (phantom caches are keyed by it)
_SS = 2                                   # supersampling of the drawing canvas


@dataclass(frozen=True)
class KneeCase:
    image: np.ndarray          # uint8 (size, size), as displayed (a right knee mirrored)
    grade: int                 # KL 0..4 = floor(severity)
    severity: float
    phenotype: str             # hidden phenotype
    side: str                  # "L" / "R"
    years: float               # time since baseline (0 for cross-sectional cases)
    params: dict               # JSON-safe generating parameters (joint-space widths, osteophytes ...)

    @property
    def phenotype_index(self) -> int:
        return PHENOTYPES.index(self.phenotype)


# -- lesion amounts -------------------------------------------------------------------------
def lesions(severity: float, phenotype: str, rng: np.random.Generator) -> dict[str, float]:
    """Lesion amounts for one knee: fractions of joint-space narrowing, osteophyte lengths (px at 224),
    sclerosis (0..1) per compartment, spine sharpening, cysts, deformity, bone density, alignment (deg),
    chondrocalcinosis (0..1)."""
    u = float(np.clip(severity, 0, 4.99)) / 4.0            # 0 .. ~1.25
    j = lambda: rng.uniform(0.85, 1.15)                      # noqa: E731 - per-lesion variation
    if phenotype == "medial":
        d = dict(jsn_m=0.80 * u, jsn_l=0.06 * u, ost_m=11 * u, ost_l=3 * u, scl_m=0.55 * u, scl_l=0.05 * u,
                 spines=0.2 * u, cysts=0.0, density=0.0, align=3.5, calc=0.0)
    elif phenotype == "lateral":
        d = dict(jsn_m=0.06 * u, jsn_l=0.80 * u, ost_m=3 * u, ost_l=11 * u, scl_m=0.05 * u, scl_l=0.55 * u,
                 spines=0.2 * u, cysts=0.0, density=0.0, align=-3.5, calc=0.0)
    elif phenotype == "osteophyte":
        d = dict(jsn_m=0.22 * u, jsn_l=0.22 * u, ost_m=15 * u, ost_l=15 * u, scl_m=0.08 * u, scl_l=0.08 * u,
                 spines=1.0 + 0.8 * u, cysts=0.0, density=0.0, align=0.0, calc=1.0)
    elif phenotype == "sclerotic":
        d = dict(jsn_m=0.42 * u, jsn_l=0.42 * u, ost_m=4 * u, ost_l=4 * u, scl_m=0.25 + 0.8 * u,
                 scl_l=0.25 + 0.8 * u, spines=0.1 * u, cysts=float(u > 0.6), density=1.0, align=0.0,
                 calc=0.0)
    else:
        raise ValueError(f"unknown phenotype {phenotype!r}; known: {PHENOTYPES}")
    out = {k: (v * j() if k not in ("align", "cysts", "density", "calc") else v) for k, v in d.items()}
    out["align"] = d["align"] + rng.normal(0, 0.5)
    out["calc"] = d["calc"] * rng.uniform(0.8, 1.0)
    out["deform"] = max(0.0, (severity - 3.9)) * 1.0      # bone-end deformity only near KL 4
    out["jsn_m"], out["jsn_l"] = min(out["jsn_m"], 0.95), min(out["jsn_l"], 0.95)
    return out


# -- drawing helpers --------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float, aniso: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-std smooth noise; `aniso` > 1 stretches the features vertically (trabeculae)."""
    h, w = shape
    gh = max(2, int(math.ceil(h / (cell * aniso))) + 2)
    gw = max(2, int(math.ceil(w / cell)) + 2)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    f = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return (f - f.mean()) / (f.std() + 1e-6)


def _poly(canvas: np.ndarray, pts, value: float = 1.0) -> None:
    p = np.round(np.asarray(pts, np.float64) * _SS * 16).astype(np.int32)
    cv2.fillPoly(canvas, [p], value, lineType=cv2.LINE_AA, shift=4)


def _line(canvas: np.ndarray, pts, value: float, thickness: float) -> None:
    p = np.round(np.asarray(pts, np.float64) * _SS * 16).astype(np.int32)
    cv2.polylines(canvas, [p], False, value, max(1, int(round(thickness * _SS))), lineType=cv2.LINE_AA, shift=4)


def _ellipse_pts(cx, cy, a, b, ang=0.0, n=40, t0=0.0, t1=2 * math.pi):
    t = np.linspace(t0, t1, n)
    c, s = math.cos(ang), math.sin(ang)
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _bezier(p0, p1, p2, p3, n=24):
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2, p3 = map(np.asarray, (p0, p1, p2, p3))
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def _rot(pts, ang_deg, cx, cy):
    a = math.radians(ang_deg)
    c, s = math.cos(a), math.sin(a)
    p = np.asarray(pts, np.float64) - (cx, cy)
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], axis=1) + (cx, cy)


# -- the phantom --------------------------------------------------------------------------------
def _superellipse_bottom(x, cx, a, low, b_left, b_right, p=2.6):
    """Bottom contour of a condyle: y = low at the centre, rising by b_left / b_right at the two ends."""
    t = np.clip((x - cx) / a, -1, 1)
    rise = 1 - (1 - np.abs(t) ** p) ** (1 / p)
    return low - np.where(t < 0, b_left, b_right) * rise


def _render(anat: dict, les: dict, acq: dict, rng_tex: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    n = SIZE * _SS
    x0, y0 = anat["x0"], anat["y0"]
    wm, wl = anat["half_m"], anat["half_l"]            # half-widths of the medial / lateral sides
    jsw_m = anat["jsw_m"] * (1 - les["jsn_m"])
    jsw_l = anat["jsw_l"] * (1 - les["jsn_l"])
    align = les["align"]                                # varus > 0: the femur tilts onto the medial side
    jsw_m = max(0.7, jsw_m - 0.45 * max(align, 0))
    jsw_l = max(0.7, jsw_l + 0.45 * min(align, 0))

    femur = np.zeros((n, n), np.float32)
    tibia = np.zeros((n, n), np.float32)
    fib = np.zeros((n, n), np.float32)
    pat = np.zeros((n, n), np.float32)
    notch_sh = np.zeros((n, n), np.float32)
    lines = np.zeros((n, n), np.float32)      # cortical rims, subchondral plates, physeal scars
    scl = np.zeros((n, n), np.float32)
    cyst = np.zeros((n, n), np.float32)
    osteo = np.zeros((n, n), np.float32)

    # -- femur: metaphysis flaring into two condyles, intercondylar notch between them
    flat = 1.0 + 0.8 * les["deform"]
    nh, nw = anat["notch_h"], anat["notch_w"]
    mc_low, lc_low = y0 - jsw_m / 2, y0 - jsw_l / 2
    xm = np.linspace(x0 - wm, x0 - nw, 40)
    xl = np.linspace(x0 + nw, x0 + wl, 40)
    cm, am = (x0 - wm + x0 - nw) / 2, (wm - nw) / 2
    cl, al = (x0 + nw + x0 + wl) / 2, (wl - nw) / 2
    med_cond = np.stack([xm, _superellipse_bottom(xm, cm, am, mc_low, anat["corner_m"], 8 - jsw_m / 2,
                                                  anat["cond_p"] * flat)], 1)
    lat_cond = np.stack([xl, _superellipse_bottom(xl, cl, al, lc_low, 8 - jsw_l / 2, anat["corner_l"],
                                                  anat["cond_p"] * flat)], 1)
    notch = _bezier(med_cond[-1], (x0 - nw * 1.05, y0 - nh - 5), (x0 + nw * 1.05, y0 - nh - 5), lat_cond[0], 16)
    top = -30
    left_side = _bezier((x0 - anat["shaft_m"], top), (x0 - anat["shaft_m"], y0 - 80),
                        (x0 - wm - 3, y0 - anat["corner_m"] - 30), med_cond[0], 16)
    right_side = _bezier(lat_cond[-1], (x0 + wl + 3, y0 - anat["corner_l"] - 30),
                         (x0 + anat["shaft_l"], y0 - 80), (x0 + anat["shaft_l"], top), 16)
    fem_outline = _rot(np.vstack([left_side, med_cond, notch[1:-1], lat_cond, right_side]), -align, x0, y0)
    articular_f = _rot(np.vstack([med_cond, lat_cond]), -align, x0, y0)
    _poly(femur, fem_outline)
    _poly(notch_sh, _rot(_ellipse_pts(x0, y0 - nh + 4, nw * 1.2, nh * 0.8, 0, 32), -align, x0, y0))

    # -- tibia: medial plateau slightly concave, lateral flat, two spines, metaphysis narrowing down
    # bone-end attrition where the cartilage is lost: each compartment in proportion to its narrowing
    # (a knee narrowed on both sides wears on both sides, not on whichever side narrowed a little more)
    worst = max(les["jsn_m"], les["jsn_l"], 1e-6)
    dm = 2.5 * les["deform"] * les["jsn_m"] / worst
    dl = 2.5 * les["deform"] * les["jsn_l"] / worst
    mp, lp = y0 + jsw_m / 2, y0 + jsw_l / 2
    sp_h = anat["spine_h"] * (1 + 0.45 * les["spines"])
    sp_w = anat["spine_w"] * (1 - 0.3 * min(1.0, les["spines"]))
    xmp = np.linspace(x0 - wm - 3, x0 - 15, 30)
    t = (xmp - (x0 - wm / 2 - 9)) / ((wm - 12) / 2)
    med_plat = np.stack([xmp, mp + (anat["conc"] + dm) * (1 - t ** 2) + 5 * np.clip((-t - 0.85) / 0.15, 0, 1) ** 2], 1)
    xlp = np.linspace(x0 + 15, x0 + wl + 3, 30)
    t = (xlp - (x0 + wl / 2 + 9)) / ((wl - 12) / 2)
    lat_plat = np.stack([xlp, lp - 0.8 * (1 - t ** 2) + dl * (1 - t ** 2) + 5 * np.clip((t - 0.85) / 0.15, 0, 1) ** 2], 1)
    pk = min(mp, lp)
    spines = np.vstack([_bezier(med_plat[-1], (x0 - 12, mp - 2), (x0 - 6 - sp_w, pk - sp_h), (x0 - 5, pk - sp_h), 10),
                        _bezier((x0 - 5, pk - sp_h), (x0 - 3, pk - sp_h * 0.55), (x0 + 2, pk - sp_h * 0.55),
                                (x0 + 5, pk - sp_h * 0.9), 8),
                        _bezier((x0 + 5, pk - sp_h * 0.9), (x0 + 6 + sp_w, pk - sp_h * 0.9), (x0 + 12, lp - 2),
                                lat_plat[0], 10)])
    bottom = SIZE + 30
    tib_right = _bezier(lat_plat[-1], (x0 + wl + 2, lp + 30), (x0 + anat["tshaft_l"], lp + 55),
                        (x0 + anat["tshaft_l"], bottom), 20)
    tib_left = _bezier((x0 - anat["tshaft_m"], bottom), (x0 - anat["tshaft_m"], mp + 55), (x0 - wm - 2, mp + 30),
                       med_plat[0], 20)
    tib_outline = np.vstack([med_plat, spines, lat_plat, tib_right, tib_left])
    _poly(tibia, tib_outline)
    articular_t = np.vstack([med_plat, lat_plat])

    # -- fibular head (lateral, overlapping the tibia's margin) and neck; patella over the femur
    fx, fy = x0 + wl * anat["fib_x"], lp + anat["fib_y"]
    fhead = _ellipse_pts(fx, fy, anat["fib_a"], anat["fib_b"], 0.25, 40)
    _poly(fib, fhead)
    _poly(fib, [(fx - anat["fib_a"] * 0.55, fy), (fx + anat["fib_a"] * 0.75, fy), (fx + anat["fib_a"] * 0.45, bottom),
                (fx - anat["fib_a"] * 0.35, bottom)])
    _poly(pat, _ellipse_pts(x0 + anat["pat_dx"], y0 - anat["pat_dy"], anat["pat_a"], anat["pat_b"], 0.0, 48))

    # -- osteophytes: spurs at the four margins
    def spur(bx, by, direction, length, up):
        if length < 0.6:
            return
        w = 2.5 + 0.5 * length
        tip = (bx + direction * length, by + up * length * 0.55)
        _poly(osteo, [(bx - direction * 2, by - up * w * 0.3), (bx + direction * length * 0.35, by - up * 0.5),
                      tip, (bx + direction * length * 0.3, by + up * w * 0.7), (bx - direction * 2, by + up * w * 1.1)])

    om, ol = les["ost_m"], les["ost_l"]
    spur(med_plat[0, 0] + 1, med_plat[0, 1] + 1, -1, om * anat["ost_var"][0], -1)        # medial tibial
    spur(lat_plat[-1, 0] - 1, lat_plat[-1, 1] + 1, +1, ol * anat["ost_var"][1], -1)      # lateral tibial
    fm = _rot(np.array([med_cond[3], lat_cond[-4]]), -align, x0, y0)
    spur(fm[0, 0] + 1, fm[0, 1] - 2, -1, 0.85 * om * anat["ost_var"][2], +1)             # medial femoral
    spur(fm[1, 0] - 1, fm[1, 1] - 2, +1, 0.85 * ol * anat["ost_var"][3], +1)             # lateral femoral

    # -- rims: cortex, subchondral plates, the posterior plateau rim, physeal scars
    _line(lines, fem_outline[1:-1], 1.0, 1.2)
    _line(lines, articular_t, 1.0, 1.5)
    _line(lines, articular_f, 0.7, 1.3)
    _line(lines, np.vstack([tib_right, tib_left]), 0.8, 1.2)
    _line(lines, articular_t + (0, anat["rim_dy"]), 0.45, 1.0)
    _line(lines, fhead, 0.45, 1.0)
    _line(lines, notch, 0.6, 1.0)
    xs = np.linspace(x0 - wm + 8, x0 + wl - 8, 24)
    _line(lines, np.stack([xs, y0 - anat["phys_f"] + 2.5 * np.sin(xs / 17 + anat["x0"])], 1), 0.35, 1.0)
    xs = np.linspace(x0 - wm + 12, x0 + wl - 12, 24)
    _line(lines, np.stack([xs, y0 + anat["phys_t"] + 2.0 * np.sin(xs / 13 + anat["y0"])], 1), 0.3, 1.0)

    # -- chondrocalcinosis: a thin line midway across each joint space, meniscal triangles at the margins
    calc = np.zeros((n, n), np.float32)
    if les["calc"] > 0:
        for plat, jsw, outer in ((med_plat, jsw_m, 0), (lat_plat, jsw_l, -1)):
            _line(calc, plat[3:-3] - (0, 0.5 * jsw), 1.0, 1.5)
            ox, oy = plat[outer]
            sgn = -1 if outer == 0 else 1         # the triangle points out of the joint
            _poly(calc, [(ox - sgn, oy - 0.15 * jsw), (ox + 3.5 * sgn, oy - 0.5 * jsw), (ox - sgn, oy - 0.85 * jsw)], 0.8)

    # -- subchondral sclerosis bands per compartment, cysts
    for amount, plat, xr in ((les["scl_m"], med_plat, (x0 - wm, x0 - 10)), (les["scl_l"], lat_plat, (x0 + 10, x0 + wl))):
        if amount <= 0.02:
            continue
        a = min(1.3, amount)
        th = 3 + 10 * a
        _poly(scl, np.vstack([plat, (plat + (0, th))[::-1]]), a)
        cond = articular_f[(articular_f[:, 0] > xr[0] + 6) & (articular_f[:, 0] < xr[1] - 4)]
        if len(cond) > 2:
            _poly(scl, np.vstack([cond, (cond - (0, th * 0.8))[::-1]]), 0.8 * a)
    if les["cysts"] > 0:
        for k in range(int(anat["n_cysts"])):
            sgn = -1 if k % 2 == 0 else 1
            cx = x0 + sgn * anat["cyst_x"][k]
            cy = (mp if sgn < 0 else lp) + anat["cyst_y"][k]
            _poly(cyst, _ellipse_pts(cx, cy, anat["cyst_r"][k], anat["cyst_r"][k] * 0.8, 0, 20))

    # -- compose: soft tissue + summed bone attenuation with trabecular texture
    fine = _smooth_noise(rng_tex, (n, n), 1.4 * _SS, aniso=6.0)
    coarse = _smooth_noise(rng_tex, (n, n), 10 * _SS, aniso=2.0)
    tex = (0.9 + 0.7 * les["density"]) * fine + 0.15 * coarse     # dense, coarser trabeculae: sclerotic trait
    dens = 1.0 + 0.25 * les["density"]
    img = np.full((n, n), acq["soft"], np.float32)
    xx = np.linspace(-1, 1, n, dtype=np.float32)[None, :]
    img = img + acq["soft_curve"] * (1 - xx ** 2) + 0.02 * coarse
    img *= 1 - acq["edge_dark"] * np.clip((np.abs(xx) - acq["edge_pos"]) / (1 - acq["edge_pos"] + 1e-6), 0, 1)
    bone = np.clip(femur + tibia + osteo, 0, 1)
    b = acq["bone"]
    img += b * dens * bone * (1 + acq["tex_amp"] * tex)
    img -= b * 0.2 * notch_sh * femur
    img += b * 0.75 * fib * (1 + acq["tex_amp"] * tex)
    img += acq["patella"] * pat
    img += acq["rim"] * (1 + 0.6 * les["density"]) * lines * np.clip(bone + fib, 0, 1)
    img += b * 0.6 * cv2.GaussianBlur(scl, (0, 0), 1.8 * _SS) * bone
    img -= b * 0.55 * cv2.GaussianBlur(cyst, (0, 0), 0.8 * _SS) * bone
    if les["calc"] > 0:
        img += b * 1.1 * les["calc"] * cv2.GaussianBlur(calc, (0, 0), 0.5 * _SS) * (1 - bone)
    img = cv2.GaussianBlur(img, (0, 0), acq["blur"] * _SS)

    # -- pose (rotation, scale, shift) on the supersampled canvas, then down to the output size
    c = n / 2
    m = cv2.getRotationMatrix2D((c, c), acq["rot"], acq["scale"])
    m[:, 2] += (acq["dx"] * _SS, acq["dy"] * _SS)
    img = cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img = np.clip((img - acq["lo"]) / (acq["hi"] - acq["lo"]), 0, 1) ** acq["gamma"]
    u8 = np.rint(img * 255).astype(np.uint8)
    tile = max(2, int(round(8 * size / SIZE)))
    u8 = cv2.createCLAHE(clipLimit=acq["clahe"], tileGridSize=(tile, tile)).apply(u8)   # as the real crops
    noise = rng_tex.normal(0, acq["noise"], (size, size))
    out = np.clip(u8.astype(np.float32) + noise, 0, 255)
    params = dict(jsw_medial_px=round(float(jsw_m), 2), jsw_lateral_px=round(float(jsw_l), 2),
                  osteophyte_medial_px=round(float(om), 2), osteophyte_lateral_px=round(float(ol), 2),
                  sclerosis_medial=round(float(les["scl_m"]), 3), sclerosis_lateral=round(float(les["scl_l"]), 3),
                  alignment_deg=round(float(align), 2), spines=round(float(les["spines"]), 3),
                  chondrocalcinosis=round(float(les["calc"]), 3),
                  cysts=bool(les["cysts"] > 0), deformity=round(float(les["deform"]), 3),
                  attrition_medial_px=round(float(dm), 2), attrition_lateral_px=round(float(dl), 2))
    return np.rint(out).astype(np.uint8), params


def _anatomy(rng: np.random.Generator) -> dict:
    half = rng.uniform(86, 98)
    return dict(
        x0=SIZE / 2 + rng.uniform(-5, 5), y0=SIZE * 0.56 + rng.uniform(-8, 8),
        half_m=half * rng.uniform(0.98, 1.05), half_l=half * rng.uniform(0.94, 1.0),
        shaft_m=rng.uniform(72, 88), shaft_l=rng.uniform(70, 86), tshaft_m=rng.uniform(62, 76),
        tshaft_l=rng.uniform(58, 72), jsw_m=rng.uniform(7.5, 10.0), jsw_l=rng.uniform(8.5, 11.5),
        notch_h=rng.uniform(22, 30), notch_w=rng.uniform(11, 15), corner_m=rng.uniform(30, 42),
        corner_l=rng.uniform(28, 40), cond_p=rng.uniform(1.8, 2.3), conc=rng.uniform(0.5, 2.0),
        spine_h=rng.uniform(9, 14), spine_w=rng.uniform(3, 6),
        fib_x=rng.uniform(0.85, 1.02), fib_y=rng.uniform(62, 80), fib_a=rng.uniform(17, 23), fib_b=rng.uniform(14, 19),
        pat_dx=rng.uniform(-8, 14), pat_dy=rng.uniform(50, 75), pat_a=rng.uniform(34, 46), pat_b=rng.uniform(40, 55),
        rim_dy=rng.uniform(4, 9), ost_var=rng.uniform(0.8, 1.2, 4), phys_f=rng.uniform(62, 80), phys_t=rng.uniform(45, 60),
        n_cysts=rng.integers(1, 4), cyst_x=rng.uniform(25, 60, 3), cyst_y=rng.uniform(6, 16, 3), cyst_r=rng.uniform(2, 4, 3),
    )


def _acquisition(rng: np.random.Generator) -> dict:
    return dict(
        soft=rng.uniform(0.24, 0.36), soft_curve=rng.uniform(0.0, 0.08), edge_dark=rng.uniform(0.0, 0.6),
        edge_pos=rng.uniform(0.75, 0.95), bone=rng.uniform(0.30, 0.40), tex_amp=rng.uniform(0.07, 0.13),
        patella=rng.uniform(0.03, 0.08), rim=rng.uniform(0.08, 0.16), blur=rng.uniform(0.3, 0.6),
        rot=rng.uniform(-4, 4), scale=rng.uniform(0.93, 1.07), dx=rng.uniform(-7, 7), dy=rng.uniform(-7, 7),
        lo=rng.uniform(0.12, 0.2), hi=rng.uniform(0.85, 1.05), gamma=rng.uniform(0.85, 1.2),
        clahe=rng.uniform(1.5, 2.5), noise=rng.uniform(3, 8),
    )


def _streams(seed: int, n: int = 6):
    ss = np.random.SeedSequence([int(seed), 20240607])
    return [np.random.default_rng(s) for s in ss.spawn(n)]


def generate_knee(seed: int, grade: int | None = None, phenotype: str | None = None, side: str | None = None,
                  severity: float | None = None, size: int = SIZE) -> KneeCase:
    """A cross-sectional knee: grade (uniform 0-4) and phenotype (uniform) drawn independently from the seed."""
    r_anat, r_acq, r_phen, r_grade, r_les, r_tex = _streams(seed)
    anat, acq = _anatomy(r_anat), _acquisition(r_acq)
    ph = phenotype if phenotype is not None else PHENOTYPES[int(r_phen.integers(len(PHENOTYPES)))]
    sd = side if side is not None else SIDES[int(r_phen.integers(2))]
    g_drawn = int(r_grade.integers(N_GRADES))
    frac = r_grade.uniform(0.15, 0.85)
    if severity is None:
        severity = (grade if grade is not None else g_drawn) + frac
    return _case(anat, acq, ph, sd, float(severity), 0.0, r_les, r_tex, size)


def subject(seed: int) -> dict:
    """A longitudinal subject: phenotype, side and baseline severity (KL 0-2) from the seed."""
    r_anat, r_acq, r_phen, r_grade, r_les, r_tex = _streams(seed)
    ph = PHENOTYPES[int(r_phen.integers(len(PHENOTYPES)))]
    sd = SIDES[int(r_phen.integers(2))]
    s0 = float(r_grade.uniform(0.2, 1.6))
    return {"phenotype": ph, "side": sd, "severity0": s0, "rate": RATES[ph]}


def severity_at(subj: dict, years: float) -> float:
    return float(min(4.95, subj["severity0"] + subj["rate"] * years))


def generate_visit(seed: int, years: float, size: int = SIZE) -> KneeCase:
    """A longitudinal subject's knee `years` after baseline: same anatomy and lesion details, severity
    s0 + rate * years, a new pose and exposure per visit."""
    r_anat, _, _, _, r_les, _ = _streams(seed)
    subj = subject(seed)
    anat = _anatomy(r_anat)
    visit = np.random.default_rng([int(seed), int(round(years * 100)), 77])
    acq = _acquisition(visit)
    return _case(anat, acq, subj["phenotype"], subj["side"], severity_at(subj, years), float(years),
                 r_les, visit, size)


def _case(anat, acq, ph, sd, severity, years, r_les, r_tex, size) -> KneeCase:
    les = lesions(severity, ph, r_les)
    img, params = _render(anat, les, acq, r_tex, size)
    if sd == "R":
        img = np.ascontiguousarray(img[:, ::-1])
    grade = int(min(N_GRADES - 1, math.floor(severity)))
    params.update(severity=round(severity, 3))
    return KneeCase(img, grade, round(severity, 3), ph, sd, years, params)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write knee phantoms and a manifest CSV.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="train", choices=tuple(SEED_RANGES))
    ap.add_argument("--count", type=int, default=100)
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with (out / f"{args.split}.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for i in range(args.count):
            seed = SEED_RANGES[args.split][i]
            case = generate_visit(seed, 0.0) if args.split == "cohort" else generate_knee(seed)
            name = f"images/{args.split}_{seed}.png"
            cv2.imwrite(str(out / name), case.image)
            w.writerow([f"{args.split}_{seed}", name, case.grade, case.severity, case.phenotype, case.side, case.years])
    print(f"wrote {args.count} phantoms to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
