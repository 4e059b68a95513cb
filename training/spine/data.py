"""Spine MRI data: the dataset folder or a manifest CSV, the patient split, slices through the task's own
`spine_input`, and MRI-appropriate augmentation (no flips: sagittal anterior/posterior orientation matters).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from imaging.io import read_image
from tasks.spine import N_CLASSES, spine_input, to_class_indices
from training.manifest import read_manifest_rows
from training.toolbox.runs import data_dir


DATASET_FOLDER = "spine_mri"
SEED = 1234
VAL_FRACTION = 0.2


def dataset_dir() -> Path:
    return data_dir() / DATASET_FOLDER


def patient_of(filename: str) -> str:
    """`107_t2_SPACE_slice53.png` -> `107` (the file-name prefix before the first underscore)."""
    return Path(filename).name.split("_", 1)[0]


def manifest_from_folder(folder: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Rows {image_path, mask_path, patient} for every image with a mask of the same name."""
    folder = Path(folder) if folder else dataset_dir()
    images, masks = folder / "images", folder / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise FileNotFoundError(f"no {folder}/images and {folder}/masks folders")
    rows = []
    for img in sorted(images.iterdir()):
        if img.suffix.lower() not in (".png", ".jpg", ".jpeg", ".dcm") or not (masks / img.name).exists():
            continue
        rows.append({"image_path": str(img), "mask_path": str(masks / img.name), "patient": patient_of(img.name)})
    return rows


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """A CSV with image_path, mask_path, patient; relative paths are taken relative to the CSV."""
    columns = ("image_path", "mask_path", "patient")
    return [{k: r[k] for k in columns}
            for r in read_manifest_rows(path, columns, paths=("image_path", "mask_path"))]


def patient_split(patients: Iterable[str], val_fraction: float = VAL_FRACTION, seed: int = SEED
                  ) -> tuple[list[str], list[str]]:
    """(train patients, validation patients): a seeded shuffle of the sorted unique ids, disjoint."""
    unique = sorted(set(patients), key=patient_sort_key)
    if len(unique) < 2:
        raise ValueError("a patient split needs at least two patients")
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
    return sorted(order[n_val:], key=patient_sort_key), sorted(order[:n_val], key=patient_sort_key)


def patient_sort_key(pid: str):
    return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def split_rows(rows: Sequence[dict[str, str]], val_patients: Iterable[str]
               ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    val = set(val_patients)
    return [r for r in rows if r["patient"] not in val], [r for r in rows if r["patient"] in val]


def load_pair(row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [0, 1] as the app decodes it, class-index mask uint8) of one manifest row."""
    image = read_image(Path(row["image_path"]).read_bytes()).pixels
    mask = cv2.imread(row["mask_path"], cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"cannot read mask {row['mask_path']}")
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != image.shape:
        raise ValueError(f"mask {row['mask_path']} is {mask.shape}, its image {image.shape}")
    return image, to_class_indices(mask)


def load_arrays(rows: Sequence[dict[str, str]], hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs (n, h, w, 1) via spine_input and class masks (n, h, w) resized by nearest neighbour."""
    xs = np.zeros((len(rows), hw[0], hw[1], 1), np.float32)
    ys = np.zeros((len(rows), hw[0], hw[1]), np.uint8)
    for i, row in enumerate(rows):
        img, mask = load_pair(row)
        xs[i] = spine_input(img, hw)
        ys[i] = cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return xs, ys


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (h, w, 1) input and its (h, w) label map: rotation <= 10 deg, scale <= 10 %, shift <= 5 %,
    then intensity: gamma 0.7-1.5, contrast x0.85-1.15, brightness +-0.05, light Gaussian noise."""
    h, w = y.shape
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.9, 1.1)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.05, 0.05, 2) * (w, h)
    img = cv2.warpAffine(x[..., 0], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    lab = cv2.warpAffine(y, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.7, 1.5)
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    if rng.random() < 0.5:
        img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)[..., None], lab


def _batches(xs: np.ndarray, ys: np.ndarray, batch_size: int, seed: int):
    """Endless shuffled, augmented, one-hot batches."""
    rng = np.random.default_rng(seed)
    eye = np.eye(N_CLASSES, dtype=np.float32)
    while True:
        order = rng.permutation(len(xs))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            pairs = [augment(xs[i], ys[i], rng) for i in idx]
            yield np.stack([p[0] for p in pairs]), eye[np.stack([p[1] for p in pairs])]
