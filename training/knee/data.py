"""The real knee radiographs (OAI crops, ../shared/data/knee_kl): listing, manifests, a pre-resized cache.

Layout: <data>/knee_kl/{train,val}/{0..4}/<OAI patient id><L|R>.jpg (224x224, 8-bit, CLAHE already
applied: we never enhance again). The folder name is the KL grade; the splits are patient-disjoint.
The dataset's official test split is not here, so every figure on `val` is a validation figure.

The data folder is found through one setting: JOINTSCAN_DATA_DIR, default <repo>/../shared/data.
A clinic can train on its own images with a manifest instead: a CSV with columns
`image_path,kl_grade,side` (side L or R; paths relative to the CSV), read by `read_manifest`.

`load_split` decodes every image once, applies the task's own preprocessing (`tasks.knee.grader_input`
at the model's input size, then the canonical orientation: right knees mirrored), and keeps the
result as a uint8 array cached under /tmp (never committed), so training epochs touch no JPEG.

Also the quick mode's stand-in (knee phantoms when the real folder is absent) and the training
augmentation and targets. No Keras here.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from tasks.knee import N_GRADES, canonical, grader_input
from training.knee.config import Config
from training.manifest import read_manifest_rows
from training.phantoms.knee import SEED_RANGES, generate_knee
from training.toolbox.runs import data_dir


CACHE_DIR = Path(os.environ.get("JOINTSCAN_KNEE_CACHE", "/tmp/jointscan_knee_cache"))
_NAME = re.compile(r"^(?P<patient>.+?)(?P<side>[LR])$")


def knee_dir() -> Path:
    return data_dir() / "knee_kl"


def available() -> bool:
    return (knee_dir() / "train").is_dir() and (knee_dir() / "val").is_dir()


@dataclass
class KneeSet:
    """One split: preprocessed canonical images uint8 (N, S, S), grades, sides, ids (file stems)."""

    split: str
    images: np.ndarray
    grades: np.ndarray
    sides: np.ndarray        # "L" / "R"
    ids: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.grades)

    def subset(self, idx) -> "KneeSet":
        idx = np.asarray(idx)
        return KneeSet(self.split, self.images[idx], self.grades[idx], self.sides[idx], self.ids[idx],
                       [self.paths[i] for i in idx])


def side_of(stem: str) -> str:
    m = _NAME.match(stem)
    if not m:
        raise ValueError(f"cannot read the side (L/R) from file name {stem!r}")
    return m.group("side")


def patient_of(stem: str) -> str:
    """The OAI patient id of a file name (the name without its side letter): a patient's two knees share it."""
    m = _NAME.match(stem)
    if not m:
        raise ValueError(f"cannot read the patient id from file name {stem!r}")
    return m.group("patient")


def list_split(split: str, root: Path | None = None) -> list[tuple[Path, int, str]]:
    """(path, grade, side) of every image of a split, sorted by path."""
    root = Path(root or knee_dir()) / split
    if not root.is_dir():
        raise FileNotFoundError(f"no knee_kl split at {root}")
    rows = []
    for grade_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        grade = int(grade_dir.name)
        for path in sorted(grade_dir.glob("*.jpg")):
            rows.append((path, grade, side_of(path.stem)))
    return rows


def read_manifest(csv_path: str | os.PathLike) -> list[tuple[Path, int, str]]:
    """A clinic's own data: CSV with image_path, kl_grade, side (L/R); paths relative to the CSV."""
    rows = []
    for rec in read_manifest_rows(csv_path, ("image_path", "kl_grade", "side"), paths=("image_path",)):
        grade, side = int(rec["kl_grade"]), rec["side"].upper()
        if not 0 <= grade <= 4 or side not in ("L", "R"):
            raise ValueError(f"bad row in {csv_path}: {rec}")
        rows.append((Path(rec["image_path"]).resolve(), grade, side))
    return rows


def read_grey01(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"cannot read {path}")
    return img.astype(np.float32) / np.float32(255.0)


def preprocess(rows: list[tuple[Path, int, str]], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.empty((len(rows), size, size), np.uint8)
    for i, (path, _, side) in enumerate(rows):
        x = canonical(grader_input(read_grey01(path), size), side)
        images[i] = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    grades = np.array([g for _, g, _ in rows], np.int64)
    sides = np.array([s for _, _, s in rows])
    return images, grades, sides


def load_split(split: str, size: int, rows: list[tuple[Path, int, str]] | None = None,
               cache: bool = True) -> KneeSet:
    rows = rows if rows is not None else list_split(split)
    key = hashlib.sha1("\n".join(f"{p}|{g}|{s}" for p, g, s in rows).encode()).hexdigest()[:12]
    cache_file = CACHE_DIR / f"knee_{split}_{size}_{key}.npz"
    if cache and cache_file.exists():
        z = np.load(cache_file)
        images, grades, sides = z["images"], z["grades"], z["sides"]
    else:
        images, grades, sides = preprocess(rows, size)
        if cache:
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npz")
            np.savez(tmp, images=images, grades=grades, sides=sides)
            tmp.replace(cache_file)
    ids = np.array([p.stem for p, _, _ in rows])
    return KneeSet(split, images, grades, sides.astype(str), ids, [str(p) for p, _, _ in rows])


def augment(img01: np.ndarray, rng: np.random.Generator, mirror: bool | None = None) -> tuple[np.ndarray, float]:
    """Light augmentation of one canonical image in [0, 1]; returns (image, mirrored 0/1).

    mirror None: a mirror flip with probability 0.5; True / False: forced (the second contrastive view)."""
    s = img01.shape[0]
    ang = rng.uniform(-8, 8)
    scale = rng.uniform(0.92, 1.08)
    tx, ty = rng.uniform(-0.05, 0.05, 2) * s
    m = cv2.getRotationMatrix2D((s / 2, s / 2), ang, scale)
    m[:, 2] += (tx, ty)
    out = cv2.warpAffine(img01, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    gamma = math.exp(rng.uniform(-0.15, 0.15))
    out = np.clip(out, 0, 1) ** gamma
    out = (out - 0.5) * rng.uniform(0.9, 1.1) + 0.5 + rng.uniform(-0.06, 0.06)
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(0.005, 0.02), out.shape).astype(np.float32)
    mirrored = float(rng.random() < 0.5) if mirror is None else float(mirror)
    if mirrored:
        out = out[:, ::-1]
    return np.clip(out, 0, 1).astype(np.float32), mirrored


def targets(grades: np.ndarray, mirrored: np.ndarray) -> dict[str, np.ndarray]:
    g = np.asarray(grades, np.int64)
    coral = (g[:, None] > np.arange(N_GRADES - 1)[None, :]).astype(np.float32)
    return {"kl_value": g.astype(np.float32)[:, None], "kl_coral": coral,
            "mirrored": np.asarray(mirrored, np.float32)[:, None]}


def load_data(cfg: Config, quick: bool, log: Callable[[str], None]):
    if available():
        t = time.perf_counter()
        sets = []
        for split, n, seed in (("train", cfg.n_train, cfg.seed), ("val", cfg.n_val, cfg.seed + 1)):
            rows = list_split(split)
            if n:   # a stratified subset, chosen before any image is decoded
                rows = [rows[i] for i in _stratified(np.array([g for _, g, _ in rows]), n, seed)]
            sets.append(load_split(split, cfg.size, rows=rows, cache=not n))
        train, val = sets
        source = "real OAI radiographs (knee_kl)"
        log(f"data: {len(train)} train / {len(val)} val real knees at {cfg.size} px ({time.perf_counter() - t:.0f} s)")
    elif quick:
        train, val = _phantom_sets(cfg, log)
        source = "knee phantoms (real data folder absent; quick mode only)"
    else:
        raise SystemExit(f"the real knee data is not at {knee_dir()} (set JOINTSCAN_DATA_DIR)")
    return train, val, source


def _stratified(grades: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per = [rng.permutation(np.flatnonzero(grades == g)) for g in range(N_GRADES)]
    idx, k = [], 0
    while len(idx) < min(n, len(grades)):
        p = per[k % N_GRADES]
        if len(p) > k // N_GRADES:
            idx.append(p[k // N_GRADES])
        k += 1
    return np.sort(np.array(idx))


def _phantom_sets(cfg: Config, log):
    sets = []
    for split, n in (("train", cfg.n_train or 40), ("val", cfg.n_val or 20)):
        seeds = list(SEED_RANGES[split])[:n]
        cases = [generate_knee(s) for s in seeds]
        imgs = np.stack([np.rint(canonical(grader_input(c.image / 255.0, cfg.size), c.side) * 255).astype(np.uint8)
                         for c in cases])
        sets.append(KneeSet(split, imgs, np.array([c.grade for c in cases]),
                                      np.array([c.side for c in cases]), np.array([f"phantom{s}" for s in seeds]),
                                      [f"phantom:{s}" for s in seeds]))
    log(f"data: {len(sets[0])} train / {len(sets[1])} val knee phantoms at {cfg.size} px")
    return sets
