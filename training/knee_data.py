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
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks.knee import canonical, grader_input

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "val")
CACHE_DIR = Path(os.environ.get("JOINTSCAN_KNEE_CACHE", "/tmp/jointscan_knee_cache"))
_NAME = re.compile(r"^(?P<patient>.+?)(?P<side>[LR])$")


def data_dir() -> Path:
    return Path(os.environ.get("JOINTSCAN_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


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
    csv_path = Path(csv_path)
    rows = []
    with csv_path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            grade, side = int(rec["kl_grade"]), rec["side"].strip().upper()
            if not 0 <= grade <= 4 or side not in ("L", "R"):
                raise ValueError(f"bad row in {csv_path}: {rec}")
            rows.append(((csv_path.parent / rec["image_path"]).resolve(), grade, side))
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
