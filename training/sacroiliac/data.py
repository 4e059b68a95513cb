"""Sacroiliac phantom data: the splits generated in memory, segmenter targets, classifier inputs
through the task's own `classifier_input`, augmentation, and the training batch feeders.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np
import tensorflow as tf

from tasks.sacroiliac import classifier_input, segmenter_input
from training.phantoms.sacroiliac import SEED_RANGES, generate_case
from training.toolbox.batches import ShuffledBatches


SEG_SIZE = 128


@dataclass
class Phantoms:
    """Phantom arrays of one split: images uint8 (N, 256, 256), masks uint8 {0,1}, labels."""

    split: str
    seeds: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    as_status: np.ndarray
    stage: np.ndarray
    sequence: np.ndarray | None = None     # "STIR" / "T1" per case (from the generator's parameters)

    def __len__(self) -> int:
        return len(self.seeds)

    def image01(self, i: int) -> np.ndarray:
        return self.images[i].astype(np.float32) / np.float32(255.0)

    def head(self, n: int) -> "Phantoms":
        return Phantoms(self.split, self.seeds[:n], self.images[:n], self.masks[:n], self.as_status[:n],
                        self.stage[:n], None if self.sequence is None else self.sequence[:n])

    @property
    def seed_text(self) -> str:
        return f"{int(self.seeds[0])}-{int(self.seeds[-1])}" if len(self) else "none"


@dataclass
class PhantomSplits:
    train: Phantoms
    val: Phantoms
    test: Phantoms


def generate_split(split: str, n: int, log: Callable[[str], None] | None = None) -> Phantoms:
    """The first `n` phantoms of `split` (seed order), generated in memory."""
    seeds = np.asarray(SEED_RANGES[split][:n], dtype=np.int64)
    images = np.zeros((len(seeds), 256, 256), np.uint8)
    masks = np.zeros((len(seeds), 256, 256), np.uint8)
    as_status, stage = np.zeros(len(seeds), np.int64), np.zeros(len(seeds), np.int64)
    sequence = np.empty(len(seeds), dtype=object)
    t0 = time.perf_counter()
    for i, seed in enumerate(seeds):
        case = generate_case(int(seed))
        images[i], masks[i], as_status[i], stage[i] = case.image, case.mask, case.as_status, case.stage
        sequence[i] = case.params["sequence"]
        if log and len(seeds) > 1000 and (i + 1) % 1000 == 0:
            log(f"  {split}: {i + 1}/{len(seeds)} phantoms ({time.perf_counter() - t0:.0f} s)")
    return Phantoms(split, seeds, images, masks, as_status, stage, sequence)


def generate_data(n_train: int, n_val: int, n_test: int, log: Callable[[str], None] | None = print) -> PhantomSplits:
    t0 = time.perf_counter()
    data = PhantomSplits(generate_split("train", n_train, log), generate_split("val", n_val, log),
                generate_split("test", n_test, log))
    if log:
        log(f"generated {n_train} train / {n_val} val / {n_test} test phantoms in {time.perf_counter() - t0:.0f} s")
    return data


def segmentation_target(mask: np.ndarray, size: int = SEG_SIZE) -> np.ndarray:
    """GT mask at model resolution: the fraction of each model pixel covered by the mask (area resize).

    A soft target rather than a nearest-neighbour sample: nearest sampling at 2x keeps the even pixels
    only, which shifts the thin joint band by half a full-resolution pixel and loses its sub-pixel edge;
    the area fraction is centred like the bilinear upsampling used at serving time, so the 0.5 contour
    of the upsampled prediction lands on the full-resolution boundary.
    """
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def segmentation_arrays(ph: Phantoms, size: int = SEG_SIZE) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(ph), size, size, 1), np.float32)
    y = np.empty((len(ph), size, size, 1), np.float32)
    for i in range(len(ph)):
        x[i] = segmenter_input(ph.image01(i), size)[0]
        y[i, :, :, 0] = segmentation_target(ph.masks[i], size)
    return x, y


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, max_grow: int = 2, max_shift: int = 3) -> np.ndarray:
    """Imitate segmentation error: dilate or erode by up to `max_grow` px and shift by up to `max_shift` px."""
    out = mask.astype(np.uint8)
    k = int(rng.integers(-max_grow, max_grow + 1))
    if k:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(k) + 1, 2 * abs(k) + 1))
        moved = cv2.dilate(out, kernel) if k > 0 else cv2.erode(out, kernel)
        if moved.any():
            out = moved
    dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    if dx or dy:
        h, w = out.shape
        shifted = cv2.warpAffine(out, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), flags=cv2.INTER_NEAREST)
        if shifted.any():
            out = shifted
    return out


def augment_image(img01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small intensity changes: gamma, contrast/brightness, Gaussian noise (result clipped to [0, 1])."""
    out = np.clip(img01, 0.0, 1.0) ** np.float32(np.exp(rng.uniform(-0.25, 0.25)))
    out = out * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.05, 0.05))
    sigma = rng.uniform(0.0, 0.025)
    if sigma > 0.002:
        out = out + rng.standard_normal(out.shape).astype(np.float32) * np.float32(sigma)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def classifier_targets(ph: Phantoms, idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    idx = np.arange(len(ph)) if idx is None else idx
    return {"as_status": one_hot(ph.as_status[idx], 2), "stage": one_hot(ph.stage[idx], 4)}


def classifier_arrays(ph: Phantoms, spec: dict[str, Any], masks: np.ndarray | None = None,
                      rng: np.random.Generator | None = None, augment: bool = False,
                      idx: np.ndarray | None = None) -> np.ndarray:
    """Classifier inputs through the task's `classifier_input`.

    masks: the masks to crop around (default the GT masks); with `rng`, each is perturbed first.
    augment: intensity augmentation and random left-right flips (anatomy is symmetric).
    """
    idx = np.arange(len(ph)) if idx is None else np.asarray(idx)
    x = np.empty((len(idx), *spec["shape"]), np.float32)
    for k, i in enumerate(idx):
        img = ph.image01(i)
        mask = ph.masks[i] if masks is None else masks[i]
        if rng is not None:
            mask = perturb_mask(mask, rng)
        if augment and rng is not None:
            img = augment_image(img, rng)
            if rng.random() < 0.5:
                img, mask = img[:, ::-1], mask[:, ::-1]
        x[k] = classifier_input(np.ascontiguousarray(img), np.ascontiguousarray(mask), spec)[0][0]
    return x


class ClassifierBatches(ShuffledBatches):
    """Training batches built on the fly: GT mask perturbed + intensity augmentation, new each epoch."""

    def __init__(self, ph: Phantoms, spec: dict[str, Any], batch_size: int, seed: int,
                 steps: int | None = None):
        self.ph, self.spec = ph, spec
        super().__init__(len(ph), batch_size, seed, steps)

    def epoch_order(self) -> np.ndarray:
        """Whole permutations, as many as the epoch's steps need."""
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        reps = int(np.ceil(self.steps * self.batch_size / self.n_items))
        return np.concatenate([rng.permutation(self.n_items) for _ in range(reps)])

    def batch(self, idx: np.ndarray, rng: np.random.Generator):
        x = classifier_arrays(self.ph, self.spec, rng=rng, augment=True, idx=idx)
        return x, classifier_targets(self.ph, idx)


def _repeating_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(min(len(x), 4096), seed=seed,
                                                             reshuffle_each_iteration=True)
    return ds.repeat().batch(batch_size).prefetch(2)
