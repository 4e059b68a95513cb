"""Train, evaluate and ship the hand models (finger-joint detector, two-stage GUSS scorers) on phantoms.

    python -m training.hand [--quick] [--out models/] [--patients 1000] [--models ID,ID] [--seed 0]

Models (files models/<id>.keras, version 1.0.0):
    hand-joint-detector        detector (default)   CenterNet-style heatmap per joint + box + laterality,
                                                    with a Mahalanobis out-of-distribution output
    hand-guss-scorer           scorer (default)     stage 1 peak vs not + stage 2 CORAL (20 thresholds),
                                                    plus CORAL heads for plate and space
    hand-guss-scorer-position  scorer               the same, told which joint it scores (one-hot planes)

Data: the first --patients patients of `training.phantoms.hand.PATIENT_POOL`, every visit of each,
split by patient 80/10/10 stratified on the patient-level peak/non-peak label (`split_of`). Training
uses the train patients, model selection the val patients, and the figures the test patients only,
computed from the shipped (reloaded) files END TO END as the app runs them: detector on the whole
radiograph, crops from the DETECTED boxes, the task's own preprocessing and decoding (tasks.hand).

Scorer training: two streams per step, each drawn with replacement and freshly augmented on every
draw (horizontal flip, rotation within 15 degrees, scale within 10%, box jitter, CLAHE half the time):
    stage 1  all training joints, binary cross-entropy with inverse-frequency class weights;
    stage 2  non-peak joints only, drawn with probability inversely proportional to the frequency of
             their GUSS value; CORAL loss on the GUSS head (20 thresholds) and on the plate and space
             heads (10 thresholds each).

`--quick` trains tiny versions into a temporary or given --out directory (never models/).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tasks.hand import (BOX_UNIT, CROP_MARGIN, DETECTOR_STRIDE, JOINT_NAMES, MIN_SURE_JOINTS,  # noqa: E402,F401
                        MISSING_THRESHOLD, PEAK_THRESHOLD, UNSURE_THRESHOLD, anatomy_check, classify_detection, crop_square,
                        decode_detections, decode_scores, detector_input, scorer_input)

TASK = "hand"
VERSION = "1.0.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED_MODELS_DIR = REPO_ROOT / "models"
DETECTOR_ID = "hand-joint-detector"
SCORER_ID = "hand-guss-scorer"
POSITION_ID = "hand-guss-scorer-position"
ALL_MODELS = (DETECTOR_ID, SCORER_ID, POSITION_ID)
DET_SIZE = 256
CROP_SIZE = 64
CTX_FACTOR = 1.4            # stored training crops show 1.4x the serving crop, for rotation/scale/jitter
CTX_SIZE = 96
N_CLASSES = len(JOINT_NAMES)


@dataclass(frozen=True)
class Budget:
    patients: int
    det_epochs: int
    det_batch: int
    scorer_steps: int
    scorer_batch: int          # per stream (stage 1 and stage 2 each)
    eval_every: int
    det_lr: float = 2e-3
    scorer_lr: float = 2e-3


FULL = Budget(patients=1000, det_epochs=14, det_batch=16, scorer_steps=1800, scorer_batch=48, eval_every=300)
QUICK = Budget(patients=24, det_epochs=1, det_batch=8, scorer_steps=6, scorer_batch=8, eval_every=3)


# -- data ---------------------------------------------------------------------------------------
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
    from training.phantoms.hand import generate_hand

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
    from training.phantoms.hand import visits

    jobs = [(p, t, split != "train") for p, t in visits(patients)]
    t0 = time.perf_counter()
    if workers > 1 and len(jobs) > 20 and "tensorflow" not in sys.modules:
        import multiprocessing as mp

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
class Data:
    train: HandSet
    val: HandSet
    test: HandSet
    n_patients: int
    split_counts: dict


def generate_data(n_patients: int, log: Callable[[str], None] | None = print, cache: Path | None = None) -> Data:
    from training.phantoms.hand import PATIENT_POOL, split_patients

    if cache is not None:
        path = Path(cache) / f"hand_data_{n_patients}.npz"
        if path.exists():
            import pickle

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
    data = Data(sets["train"], sets["val"], sets["test"], n_patients, counts)
    if cache is not None:
        import pickle

        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = Path(cache) / f".hand_data_{n_patients}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
        tmp.replace(Path(cache) / f"hand_data_{n_patients}.npz")        # readers never see half a file
    return data


# -- detector training --------------------------------------------------------------------
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


def augment_detector_batch(x: np.ndarray, centres: np.ndarray, sizes: np.ndarray, side: np.ndarray,
                           rng: np.random.Generator):
    """Flip (a mirrored left hand is a right hand), scale 0.9-1.1 and shift, intensity changes."""
    b, s = x.shape[0], x.shape[1]
    xo = np.empty((b, s, s), np.float32)
    co, so, sideo = centres.copy(), sizes.copy(), side.astype(np.float32).copy()
    for i in range(b):
        img = x[i].astype(np.float32) / 255.0
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
        xo[i] = np.clip(img, 0, 1)
    return xo[..., None], co, so, sideo


def _focal_loss(tf, y, p):
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of centres."""
    p = tf.clip_by_value(p, 1e-4, 1 - 1e-4)
    pos = tf.cast(tf.equal(y, 1.0), tf.float32)
    neg = 1.0 - pos
    pos_loss = -tf.math.log(p) * tf.square(1 - p) * pos
    neg_loss = -tf.math.log(1 - p) * tf.square(p) * tf.pow(1 - y, 4) * neg
    n = tf.maximum(tf.reduce_sum(pos), 1.0)
    return (tf.reduce_sum(pos_loss) + tf.reduce_sum(neg_loss)) / n


def train_detector(data: Data, budget: Budget, seed: int = 0, log: Callable[[str], None] = print, quick: bool = False):
    import keras
    import tensorflow as tf

    from training.hand_models import joint_detector

    keras.utils.set_random_seed(seed)
    model = joint_detector(DET_SIZE, widths=(8, 8, 8, 8, 8) if quick else (16, 24, 32, 48, 64),
                           head_width=8 if quick else 32)
    out_size = DET_SIZE // DETECTOR_STRIDE
    tr = data.train
    steps_per_epoch = max(1, len(tr) // budget.det_batch)
    total = steps_per_epoch * budget.det_epochs
    sched = keras.optimizers.schedules.CosineDecay(budget.det_lr, total, alpha=0.01,
                                                   warmup_target=None)
    opt = keras.optimizers.Adam(sched)

    @tf.function(reduce_retracing=True)
    def step(x, heat, reg, side):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            l_heat = _focal_loss(tf, heat, out["heatmap"])
            mask = reg[..., 4:5]
            n = tf.maximum(tf.reduce_sum(mask), 1.0)
            l_wh = tf.reduce_sum(tf.abs(out["box"][..., :2] - reg[..., :2]) * mask) / n
            l_off = tf.reduce_sum(tf.abs(out["box"][..., 2:4] - reg[..., 2:4]) * mask) / n
            l_side = tf.reduce_mean(keras.losses.binary_crossentropy(side[:, None], out["side"]))
            loss = l_heat + 2.0 * l_wh + l_off + 0.5 * l_side
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss, l_heat, l_wh, l_off, l_side

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for epoch in range(budget.det_epochs):
        order = rng.permutation(len(tr))
        acc = np.zeros(5)
        for k in range(steps_per_epoch):
            idx = order[k * budget.det_batch:(k + 1) * budget.det_batch]
            x, c, s, sd = augment_detector_batch(tr.det_x[idx], tr.det_centres[idx], tr.det_sizes[idx],
                                                 tr.side[idx], rng)
            heat, reg = detector_targets(c, s, out_size)
            acc += np.array([float(v) for v in step(x, heat, reg, sd)])
        acc /= steps_per_epoch
        log(f"  detector epoch {epoch + 1}/{budget.det_epochs}: loss {acc[0]:.3f} (heat {acc[1]:.3f} wh {acc[2]:.3f} "
            f"off {acc[3]:.3f} side {acc[4]:.3f}) {time.perf_counter() - t0:.0f} s")
    return model, {"epochs": budget.det_epochs, "batch_size": budget.det_batch, "wall_time_s": round(time.perf_counter() - t0, 1),
                   "train_radiographs": len(tr)}


def add_ood_output(model, feature_sets: Sequence[np.ndarray], shrinkage: float = 0.1):
    """The detector with an extra output "ood": the mean squared Mahalanobis z-score of its pooled
    bottleneck features (layer "side_pool") against the training radiographs (Lee et al. 2018).

    Built from standard layers (Dense with the whitening matrix, Multiply, Dense of ones), so the
    shipped file needs no custom code.
    """
    import keras
    from keras import layers

    feats = np.concatenate(feature_sets).astype(np.float64)
    mu = feats.mean(axis=0)
    cov = np.cov(feats, rowvar=False)
    d = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
    vals, vecs = np.linalg.eigh(cov)
    whiten = vecs @ np.diag(1.0 / np.sqrt(np.maximum(vals, 1e-8))) @ vecs.T      # symmetric Sigma^-1/2
    pooled = model.get_layer("side_pool").output
    z = layers.Dense(d, name="ood_whiten")(pooled)
    sq = layers.Multiply(name="ood_square")([z, z])
    ood = layers.Dense(1, use_bias=False, name="ood")(sq)
    out = keras.Model(model.input, {**model.output, "ood": ood}, name=model.name)
    out.get_layer("ood_whiten").set_weights([whiten.T.astype(np.float32), (-(whiten @ mu)).astype(np.float32)])
    out.get_layer("ood").set_weights([np.full((d, 1), 1.0 / d, np.float32)])
    return out


def pooled_features(model, x_uint8: np.ndarray, batch: int = 32) -> np.ndarray:
    import keras

    feat_model = keras.Model(model.input, model.get_layer("side_pool").output)
    out = []
    for i in range(0, len(x_uint8), batch):
        xb = x_uint8[i:i + batch].astype(np.float32)[..., None] / 255.0
        out.append(np.asarray(feat_model(xb, training=False)))
    return np.concatenate(out) if out else np.zeros((0, 1))


# -- scorer training ------------------------------------------------------------------------
_CLAHE_CACHE: dict = {}


def augment_crop(ctx: np.ndarray, rng: np.random.Generator, out_size: int = CROP_SIZE, train: bool = True
                 ) -> np.ndarray:
    """A serving-geometry crop (out_size, float [0,1]) from a stored context crop, freshly augmented:
    horizontal flip, rotation within 15 degrees, scale within 10%, a small box jitter, CLAHE half the
    time, gamma; then the same percentile scaling as serving. train=False: the plain centre crop."""
    from imaging.normalize import percentile_scale

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


def _with_position(x: np.ndarray, joint: np.ndarray) -> np.ndarray:
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


def train_scorer(model_id: str, data: Data, budget: Budget, seed: int = 0, log: Callable[[str], None] = print,
                 quick: bool = False):
    import keras
    import tensorflow as tf

    from training.hand_models import COMPARTMENT_THRESHOLDS, GUSS_THRESHOLDS, guss_scorer

    position = model_id == POSITION_ID
    keras.utils.set_random_seed(seed + (7 if position else 3))
    model = guss_scorer(CROP_SIZE, widths=(4, 8, 8, 8) if quick else (16, 32, 48, 64), position_aware=position)
    tr = data.train
    crops = tr.crops.reshape(-1, CTX_SIZE, CTX_SIZE)
    guss = tr.guss.reshape(-1)
    plate, space = tr.plate.reshape(-1), tr.space.reshape(-1)
    joint = np.tile(np.arange(N_CLASSES), len(tr))
    nonpeak = np.nonzero(guss < 200)[0]
    cw = peak_class_weights(guss)
    w2 = sampling_weights(guss[nonpeak])
    # CORAL biases start at the training frequencies of each threshold among non-peak joints
    for head, vals, k in (("guss", guss[nonpeak], GUSS_THRESHOLDS), ("plate", plate[nonpeak], COMPARTMENT_THRESHOLDS),
                          ("space", space[nonpeak], COMPARTMENT_THRESHOLDS)):
        freq = np.clip(coral_targets(vals, k).mean(axis=0), 0.01, 0.99)
        layer = model.get_layer(head)
        kern, _ = layer.get_weights()
        layer.set_weights([kern, np.log(freq / (1 - freq)).astype(np.float32)])

    sched = keras.optimizers.schedules.CosineDecay(budget.scorer_lr, budget.scorer_steps, alpha=0.02)
    opt = keras.optimizers.Adam(sched)
    bce = keras.losses.binary_crossentropy

    @tf.function(reduce_retracing=True)
    def step(x1, y1, w1, x2, g2, p2, s2):
        with tf.GradientTape() as tape:
            o1 = model(x1, training=True)
            o2 = model(x2, training=True)
            l1 = tf.reduce_sum(w1 * bce(y1[:, None], o1["peak"])) / tf.reduce_sum(w1)
            lg = tf.reduce_mean(bce(g2, o2["guss"]))
            lp = tf.reduce_mean(bce(p2, o2["plate"]))
            ls = tf.reduce_mean(bce(s2, o2["space"]))
            loss = l1 + 4.0 * lg + 2.0 * (lp + ls)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss, l1, lg, lp, ls

    rng = np.random.default_rng(seed + 11)
    B = budget.scorer_batch
    best, best_weights, history, best_step = None, None, [], None
    t0 = time.perf_counter()
    acc = np.zeros(5)
    for it in range(1, budget.scorer_steps + 1):
        i1 = rng.integers(0, len(guss), B)                              # stage 1: uniform, class weights
        i2 = nonpeak[rng.choice(len(nonpeak), B, p=w2)]                 # stage 2: inverse-frequency draws
        x1 = np.stack([augment_crop(crops[i], rng) for i in i1])[..., None]
        x2 = np.stack([augment_crop(crops[i], rng) for i in i2])[..., None]
        if position:
            x1, x2 = _with_position(x1, joint[i1]), _with_position(x2, joint[i2])
        y1 = (guss[i1] == 200).astype(np.float32)
        w1 = np.where(y1 == 1, cw[1], cw[0]).astype(np.float32)
        acc += np.array([float(v) for v in step(x1, y1, w1, x2, coral_targets(guss[i2], GUSS_THRESHOLDS),
                                                coral_targets(plate[i2], COMPARTMENT_THRESHOLDS),
                                                coral_targets(space[i2], COMPARTMENT_THRESHOLDS))])
        if it % budget.eval_every == 0 or it == budget.scorer_steps:
            m = evaluate_scorer_on_crops(model, data.val, position)
            history.append({"step": it, **{k: round(v, 4) for k, v in m.items()}})
            n = budget.eval_every if it % budget.eval_every == 0 else it % budget.eval_every
            log(f"  {model_id} step {it}/{budget.scorer_steps}: loss {acc[0] / n:.3f} (peak {acc[1] / n:.3f} guss "
                f"{acc[2] / n:.3f} plate {acc[3] / n:.3f} space {acc[4] / n:.3f}) | val MAE {m['mae_all']:.1f} "
                f"non-peak {m['mae_nonpeak']:.1f} W20 non-peak {m['w20_nonpeak']:.3f} {time.perf_counter() - t0:.0f} s")
            acc[:] = 0
            score = m["mae_all"] + m["mae_nonpeak"]
            if best is None or score < best:
                best, best_weights, best_step = score, [w.copy() for w in model.get_weights()], it
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, {"steps": budget.scorer_steps, "batch_size_per_stream": B, "class_weights": cw,
                   "epochs": round(budget.scorer_steps * 2 * B / len(guss), 1),   # draws / training joints
                   "wall_time_s": round(time.perf_counter() - t0, 1), "val_history": history, "best_step": best_step,
                   "train_joints": int(len(guss)), "train_nonpeak_joints": int(len(nonpeak))}


def _infer(model):
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: {k: np.asarray(v) for k, v in fn(tf.convert_to_tensor(x, tf.float32)).items()}


def predict_scores(model, x: np.ndarray, batch: int = 256) -> list[dict[str, Any]]:
    """Decoded scores (tasks.hand.decode_scores) for a batch of scorer inputs."""
    f = _infer(model)
    out = []
    for i in range(0, len(x), batch):
        o = f(x[i:i + batch])
        peak = o["peak"].reshape(-1)
        for k in range(len(peak)):
            d = decode_scores(peak[k], o["guss"][k], o["plate"][k], o["space"][k])
            d["peak_probability"] = float(peak[k])
            out.append(d)
    return out


def evaluate_scorer_on_crops(model, hs: HandSet, position: bool) -> dict[str, float]:
    """Quick validation on centre crops of the TRUE boxes (used for model selection)."""
    ctx = hs.crops.reshape(-1, CTX_SIZE, CTX_SIZE)
    x = np.stack([augment_crop(c, None, train=False) for c in ctx])[..., None]
    if position:
        x = _with_position(x, np.tile(np.arange(N_CLASSES), len(hs)))
    pred = np.array([d["guss"] for d in predict_scores(model, x)])
    return scoring_metrics(pred, hs.guss.reshape(-1))


# -- metrics (plain NumPy) --------------------------------------------------------------------
def within(pred, target, k: float = 20) -> float:
    pred, target = np.asarray(pred, float).ravel(), np.asarray(target, float).ravel()
    return float((np.abs(pred - target) <= k).mean()) if pred.size else float("nan")


def mae(pred, target) -> float:
    pred, target = np.asarray(pred, float).ravel(), np.asarray(target, float).ravel()
    return float(np.abs(pred - target).mean()) if pred.size else float("nan")


def scoring_metrics(pred, target) -> dict[str, float]:
    """The original protocol's four figures: MAE and Within-20 over all joints and over non-peak joints
    (non-peak = true GUSS below 200)."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    nonpeak = target < 200
    return {"mae_all": mae(pred, target), "mae_nonpeak": mae(pred[nonpeak], target[nonpeak]),
            "w20_all": within(pred, target), "w20_nonpeak": within(pred[nonpeak], target[nonpeak])}


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return float(inter / union) if union > 0 else 0.0


def average_precision(confidences: Sequence[float], correct: Sequence[bool], n_positives: int) -> float:
    """VOC-style AP (all-point interpolation): area under the precision-recall curve of detections
    ranked by confidence; `correct` marks true positives, `n_positives` counts the ground-truth objects."""
    if n_positives <= 0:
        return float("nan")
    order = np.argsort(-np.asarray(confidences, float), kind="stable")
    tp = np.asarray(correct, bool)[order].astype(float)
    if tp.size == 0:
        return 0.0
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_positives
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


# -- end-to-end evaluation ---------------------------------------------------------------------
def detect_images(detector, images: Sequence[np.ndarray], thresholds: dict[str, float] | None = None
                  ) -> list[dict[str, Any]]:
    """Run the detector on radiographs (uint8 or [0,1]) exactly as the task does."""
    f = _infer(detector)
    t = thresholds or {}
    out = []
    for img in images:
        img01 = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img
        x, lb = detector_input(img01, DET_SIZE)
        o = f(x)
        joints = decode_detections(o["heatmap"][0], o["box"][0], lb)
        for d in joints:
            d["status"] = classify_detection(d["confidence"], t.get("missing", MISSING_THRESHOLD),
                                             t.get("unsure", UNSURE_THRESHOLD))
        p_right = float(o["side"].reshape(-1)[0])
        anat = anatomy_check({d["name"]: d["center"] for d in joints if d["status"] != "missing"}, p_right)
        out.append({"joints": joints, "p_right": p_right, "anatomy": anat,
                    "ood": float(o["ood"].reshape(-1)[0]) if "ood" in o else None})
    return out


def detection_metrics(dets: list[dict[str, Any]], hs: HandSet) -> dict[str, Any]:
    ious = np.array([[iou(d["joints"][c]["box"], hs.boxes[i, c]) for c in range(N_CLASSES)]
                     for i, d in enumerate(dets)])
    conf = np.array([[d["joints"][c]["confidence"] for c in range(N_CLASSES)] for d in dets])
    found = np.array([[d["joints"][c]["status"] != "missing" for c in range(N_CLASSES)] for d in dets])
    sure = np.array([[d["joints"][c]["status"] == "found" for c in range(N_CLASSES)] for d in dets])
    correct = (ious >= 0.5) & found
    ap = {JOINT_NAMES[c]: average_precision(conf[:, c], ious[:, c] >= 0.5, len(dets)) for c in range(N_CLASSES)}
    anat_ok = np.array([d["anatomy"]["ok"] for d in dets])
    side_ok = np.array([(d["p_right"] >= 0.5) == bool(hs.side[i]) for i, d in enumerate(dets)])
    return {
        "all_eight_correct": float(correct.all(axis=1).mean()),
        "map50": float(np.mean(list(ap.values()))),
        "all_eight_sure_and_anatomy_ok": float(((correct & sure).all(axis=1) & anat_ok).mean()),
        "joints_missing": float((~found).mean()),
        "joints_unsure": float((found & ~sure).mean()),
        "hands_anatomy_flagged": float((~anat_ok).mean()),
        "side_accuracy": float(side_ok.mean()),
        "mean_iou": float(ious.mean()),
        "n_hands": len(dets),
        "ap50": ap,
        "_correct": correct, "_sure": sure, "_anat_ok": anat_ok,
    }


def score_detected(scorer, hs: HandSet, dets: list[dict[str, Any]], position: bool, correct: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """Crops from the DETECTED boxes (joints found with IoU >= 0.5 and the right name), scored as served."""
    xs, where = [], []
    for i, d in enumerate(dets):
        img01 = hs.images[i].astype(np.float32) / 255.0
        for c in range(N_CLASSES):
            if not correct[i, c]:
                continue
            crop, _ = crop_square(img01, d["joints"][c]["box"])
            xs.append(scorer_input(crop, CROP_SIZE, c if position else None))
            where.append((i, c))
    x = np.stack(xs) if xs else np.zeros((0, CROP_SIZE, CROP_SIZE, 1 + position * N_CLASSES), np.float32)
    pred = predict_scores(scorer, x) if len(x) else []
    idx = tuple(np.array(where).T) if where else (np.zeros(0, int), np.zeros(0, int))
    return {"guss": np.array([p["guss"] for p in pred]), "plate": np.array([p["plate"] for p in pred]),
            "space": np.array([p["space"] for p in pred]), "peak_p": np.array([p["peak_probability"] for p in pred]),
            "true_guss": hs.guss[idx], "true_plate": hs.plate[idx], "true_space": hs.space[idx],
            "joint": idx[1] if where else np.zeros(0, int)}


def protocol_table(train_guss: np.ndarray, scored: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Rows of the original protocol's table: baselines A (always 200), B (train mean, train median), the scorers."""
    any_run = next(iter(scored.values()))
    target = any_run["true_guss"]
    mean_v, median_v = float(np.mean(train_guss)), float(np.median(train_guss))
    rows = {"baseline A: always 200": scoring_metrics(np.full(len(target), 200.0), target),
            f"baseline B: train mean ({mean_v:.1f})": scoring_metrics(np.full(len(target), mean_v), target),
            f"baseline B: train median ({median_v:.0f})": scoring_metrics(np.full(len(target), median_v), target)}
    for name, s in scored.items():
        rows[name] = scoring_metrics(s["guss"], s["true_guss"])
    return rows


def compartment_metrics(s: dict[str, np.ndarray]) -> dict[str, float]:
    y = s["true_guss"] == 200
    p = s["peak_p"] >= PEAK_THRESHOLD
    return {
        "stage1_accuracy": float((y == p).mean()) if len(y) else float("nan"),
        "stage1_sensitivity_nonpeak": float((~p[~y]).mean()) if (~y).any() else float("nan"),
        "stage1_specificity_peak": float(p[y].mean()) if y.any() else float("nan"),
        "plate_mae": mae(s["plate"], s["true_plate"]), "space_mae": mae(s["space"], s["true_space"]),
        "plate_mae_nonpeak": mae(s["plate"][~y], s["true_plate"][~y]),
        "space_mae_nonpeak": mae(s["space"][~y], s["true_space"][~y]),
        "n_joints": int(len(y)), "n_nonpeak": int((~y).sum()),
    }


def format_table(rows: dict[str, dict[str, float]]) -> str:
    head = f"{'':44s} {'MAE all':>8s} {'MAE non-peak':>13s} {'W20 all':>8s} {'W20 non-peak':>13s}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lines.append(f"{name:44s} {m['mae_all']:8.1f} {m['mae_nonpeak']:13.1f} {100 * m['w20_all']:7.1f}% "
                     f"{100 * m['w20_nonpeak']:12.1f}%")
    return "\n".join(lines)


# -- shipping --------------------------------------------------------------------------------
META: dict[str, dict[str, Any]] = {
    DETECTOR_ID: dict(
        role="detector", default=True, title="Hand finger-joint detector (CenterNet-style)",
        architecture="CenterNet-style (Zhou et al. 2019): 3x3 stride-2 stem, four stride-2 separable-conv "
                     "blocks (24-32-48-64, 1/32 at the bottleneck), bilinear decoder with additive skips to 1/4, "
                     "heads: 8 sigmoid centre heatmaps, box (width, height, sub-cell offset), laterality "
                     "(P(right hand)); plus a Mahalanobis out-of-distribution output on the pooled bottleneck",
        description="Finds PIP2-PIP5 and DIP2-DIP5 on a whole hand radiograph letterboxed to 256x256: one "
                    "heatmap per joint gives the centre and its confidence; below the missing threshold a joint "
                    "is reported missing, below the unsure threshold its score is withheld.",
        outputs=["heatmap", "box", "side", "ood"], gradcam_layer=None),
    SCORER_ID: dict(
        role="scorer", default=True, title="Hand GUSS scorer, two-stage (peak + CORAL)",
        architecture="Compact CNN on a 64x64 joint crop: 3x3 stride-2 stem (16), separable-conv blocks "
                     "(32, 48), 3x3 conv 64 'gradcam_conv' (16x16), global average pooling, dense 64; heads: "
                     "'peak' sigmoid (stage 1), 'guss' CORAL over 20 thresholds (stage 2), 'plate' and 'space' "
                     "CORAL over 10 thresholds each",
        description="Scores one finger joint on the GUSS scale: stage 1 decides intact (200) or not; otherwise "
                    "stage 2 gives the GUSS (0-190) from its cumulative probabilities, split into subchondral "
                    "plate and joint space by the compartment heads.",
        outputs=["peak", "guss", "plate", "space"], gradcam_layer="gradcam_conv"),
    POSITION_ID: dict(
        role="scorer", default=False, title="Hand GUSS scorer, two-stage, position-aware",
        architecture="As hand-guss-scorer, with 8 extra constant input planes (the one-hot joint identity, "
                     "PIP2..DIP5) whose pooled values are embedded (dense 16) and joined to the image features",
        description="The two-stage GUSS scorer told which joint it scores; otherwise identical in data, "
                    "training and decoding to hand-guss-scorer, for comparison.",
        outputs=["peak", "guss", "plate", "space"], gradcam_layer="gradcam_conv"),
}


def input_spec(model_id: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    if model_id == DETECTOR_ID:
        spec = {"shape": [DET_SIZE, DET_SIZE, 1], "channels": ["image"], "crop": "letterbox",
                "stride": DETECTOR_STRIDE, "box_unit": BOX_UNIT,
                "missing_threshold": MISSING_THRESHOLD, "unsure_threshold": UNSURE_THRESHOLD}
    elif model_id == POSITION_ID:
        spec = {"shape": [CROP_SIZE, CROP_SIZE, 1 + N_CLASSES], "channels": ["image", "joint_onehot"],
                "crop": "joint_square_10pct", "joint_order": list(JOINT_NAMES)}
    else:
        spec = {"shape": [CROP_SIZE, CROP_SIZE, 1], "channels": ["image"], "crop": "joint_square_10pct"}
    spec.update(extra or {})
    return spec


def command_for(out_dir: Path, quick: bool, patients: int, seed: int) -> str:
    try:
        shown = str(Path(out_dir).resolve().relative_to(REPO_ROOT))
    except ValueError:
        shown = str(out_dir)
    cmd = f"python -m training.hand --out {shown}"
    if quick:
        cmd += " --quick"
    if patients != FULL.patients and not quick:
        cmd += f" --patients {patients}"
    if seed:
        cmd += f" --seed {seed}"
    return cmd


def ship_all(models: dict[str, Any], infos: dict[str, dict], data: Data, out_dir: Path, quick: bool, seed: int,
             log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Save (float16), RELOAD, evaluate end to end on the test patients, register and write cards."""
    import keras

    from training.export import register_model, save_for_shipping, write_model_card

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reloaded = {}
    for mid, model in models.items():
        path = save_for_shipping(model, out_dir / f"{mid}.keras")
        reloaded[mid] = keras.models.load_model(path, compile=False)
    evaluation = evaluate_all(reloaded, data, infos.get(DETECTOR_ID, {}).get("thresholds"), log=log)
    entries = {}
    for mid, model in reloaded.items():
        meta = META[mid]
        extra = infos[mid].pop("input_extra", {}) if mid == DETECTOR_ID else {}
        test = evaluation.get("detector") if mid == DETECTOR_ID else evaluation["scorers"].get(mid)
        metrics = {"test": test or {}, "split": data.split_counts}
        entry = {
            "id": mid, "task": TASK, "role": meta["role"], "version": VERSION, "title": meta["title"],
            "architecture": meta["architecture"], "reference": False, "default": meta["default"],
            "file": f"{mid}.keras", "input": input_spec(mid, extra), "outputs": meta["outputs"],
            "gradcam_layer": meta["gradcam_layer"],
            "training": {"data": f"hand phantoms (training.phantoms.hand), first {data.n_patients} patients of the "
                                 "pool, all visits; split by patient 80/10/10 stratified on peak/non-peak",
                         "seed": seed, "patients": data.n_patients,
                         "command": command_for(out_dir, quick, data.n_patients, seed),
                         **{k: v for k, v in infos[mid].items() if k not in ("val_history", "thresholds")}},
            "metrics": metrics,
            "description": meta["description"],
        }
        entries[mid] = register_model(out_dir, entry, model=model)
        write_model_card(out_dir, entries[mid], card_sections(mid, entries[mid], evaluation, infos[mid], data))
        log(f"shipped {mid}: {entries[mid]['size_bytes'] / 1024:.0f} KiB, {entries[mid]['params']:,} parameters")
    return entries


def evaluate_all(models: dict[str, Any], data: Data, thresholds: dict[str, float] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    hs = data.test
    det = models.get(DETECTOR_ID)
    out: dict[str, Any] = {"scorers": {}}
    if det is None:
        return out
    dets = detect_images(det, hs.images, thresholds)
    dm = detection_metrics(dets, hs)
    correct = dm.pop("_correct")
    dm.pop("_sure"), dm.pop("_anat_ok")
    out["detector"] = _json_safe(dm)
    log(f"test detection: all eight correct {100 * dm['all_eight_correct']:.1f}% of {dm['n_hands']} hands, "
        f"mAP50 {dm['map50']:.4f}, anatomy flagged {100 * dm['hands_anatomy_flagged']:.1f}%")
    scored = {}
    for mid in (SCORER_ID, POSITION_ID):
        if mid in models:
            scored[mid] = score_detected(models[mid], hs, dets, mid == POSITION_ID, correct)
    if scored:
        table = protocol_table(data.train.guss.reshape(-1), scored)
        log("test scoring (crops from detected boxes):\n" + format_table(table))
        for mid, s in scored.items():
            out["scorers"][mid] = _json_safe({**table[mid], **compartment_metrics(s),
                                              "baseline_a": table["baseline A: always 200"]})
    return out


def _json_safe(d: Any) -> Any:
    if isinstance(d, dict):
        return {str(k): _json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_json_safe(v) for v in d]
    if isinstance(d, (np.floating, float)):
        return None if not np.isfinite(d) else round(float(d), 4)
    if isinstance(d, (np.integer,)):
        return int(d)
    return d


def card_sections(mid: str, entry: dict[str, Any], evaluation: dict[str, Any], info: dict[str, Any],
                  data: Data) -> dict[str, str]:
    sc = data.split_counts
    training_data = (
        f"Synthetic PA hand radiographs from `training.phantoms.hand` (768x640 px, left and right hands, pose, "
        f"exposure, noise and anatomy varied; labels by construction). The first {data.n_patients} patients of "
        f"the phantom pool with all their visits (2-4 each), split by patient 80/10/10 stratified on the "
        f"patient-level peak/non-peak label: train {sc['train']['patients']} patients / "
        f"{sc['train']['radiographs']} radiographs, val {sc['val']['patients']} / {sc['val']['radiographs']}, test "
        f"{sc['test']['patients']} / {sc['test']['radiographs']}. About two thirds of joints are at the intact peak "
        f"(GUSS 200); the rest are long-tailed towards 0.")
    if mid == DETECTOR_ID:
        m = evaluation.get("detector", {})
        ap = m.get("ap50", {})
        metrics = (f"Held-out test patients ({m.get('n_hands')} radiographs), end to end as served:\n\n"
                   f"- all eight joints found (above the missing threshold) with IoU >= 0.5 and the right name: "
                   f"**{100 * (m.get('all_eight_correct') or 0):.1f}%** of hands\n"
                   f"- AP@0.5 per class: " + ", ".join(f"{k} {v:.3f}" for k, v in ap.items()) + "\n"
                   f"- mean IoU {m.get('mean_iou')}, joints missing {m.get('joints_missing')}, unsure "
                   f"{m.get('joints_unsure')}, hands flagged by the anatomy check {m.get('hands_anatomy_flagged')}, "
                   f"laterality accuracy {m.get('side_accuracy')}")
        training = (f"Penalty-reduced focal loss on the heatmaps, L1 on box size and offset at the centres, "
                    f"binary cross-entropy on laterality; Adam with cosine decay, {info.get('epochs')} epochs of "
                    f"{info.get('train_radiographs')} radiographs, batch {info.get('batch_size')}; augmentation: "
                    f"mirror (which turns a left hand into a right one), scale 0.9-1.1, shift, gamma, blur, noise. "
                    f"The out-of-distribution output is the mean squared whitened distance of the pooled bottleneck "
                    f"features to those of the training radiographs; its threshold is set from the validation "
                    f"radiographs.")
        failure = ("Trained on adult phantom hands only. Real radiographs, children's hands (open growth plates, "
                   "wide physes), hands with missing or amputated fingers, severe deformity, casts, or several "
                   "hands in one image are outside what it has seen: the out-of-distribution check and the anatomy "
                   "check are meant to flag them, and the app then withholds scores. Not validated on patients.")
    else:
        m = evaluation.get("scorers", {}).get(mid, {})
        a = m.get("baseline_a", {})
        metrics = (f"Held-out test patients, crops from the DETECTED boxes (as served), {m.get('n_joints')} joints "
                   f"({m.get('n_nonpeak')} non-peak):\n\n"
                   "| | MAE all | MAE non-peak | Within-20 all | Within-20 non-peak |\n|---|---|---|---|---|\n"
                   f"| this model | {m.get('mae_all')} | {m.get('mae_nonpeak')} | {m.get('w20_all')} | {m.get('w20_nonpeak')} |\n"
                   f"| baseline A (always 200) | {a.get('mae_all')} | {a.get('mae_nonpeak')} | {a.get('w20_all')} | "
                   f"{a.get('w20_nonpeak')} |\n\n"
                   f"Stage 1 accuracy {m.get('stage1_accuracy')} (non-peak recognised {m.get('stage1_sensitivity_nonpeak')}, "
                   f"peak recognised {m.get('stage1_specificity_peak')}); plate MAE {m.get('plate_mae')}, space MAE "
                   f"{m.get('space_mae')} (non-peak joints: {m.get('plate_mae_nonpeak')} / {m.get('space_mae_nonpeak')}). "
                   "The full table with baseline B and both scorers: `python benchmarks/hand_figures.py`.")
        training = (f"{info.get('steps')} steps (about {info.get('epochs')} epochs' worth of draws), each with two "
                    f"streams of {info.get('batch_size_per_stream')} crops "
                    "drawn with replacement and freshly augmented (flip, rotation within 15 degrees, scale within 10%, "
                    "box jitter, CLAHE half the time, gamma): stage 1 from all training joints with binary "
                    f"cross-entropy and inverse-frequency class weights {info.get('class_weights')}; stage 2 from "
                    "non-peak joints drawn inversely to the frequency of their GUSS value, CORAL loss on the 20 "
                    "GUSS thresholds and on the 10 plate and 10 space thresholds. Adam with cosine decay; the "
                    "weights with the best validation MAE (all + non-peak, true-box crops) are kept. Plate and "
                    "space: the reported GUSS is the stage-2 CORAL decision (the protocol's figure); the plate and "
                    "space heads decide how it splits, so plate + space = GUSS always.")
        failure = ("Trained on phantom joints: real erosions, osteophytes, subluxation, overlapping fingers and "
                   "projection changes differ. Scores for a joint whose detection is unsure, or for a hand flagged by "
                   "the anatomy or out-of-distribution checks, are withheld by the app. Steps of 10 below about "
                   "20 points are within the scorer's error: use the smallest detectable change (20) when following "
                   "a patient.")
    return {"Training data": training_data, "Training": training, "Metrics on held-out data": metrics,
            "Known failure modes and limits": failure}


# -- the whole pipeline --------------------------------------------------------------------------
def calibrate_detector(detector, data: Data, log: Callable[[str], None] = print) -> tuple[Any, dict[str, Any]]:
    """Add the out-of-distribution output and set its threshold from the validation radiographs."""
    feats = pooled_features(detector, data.train.det_x)
    model = add_ood_output(detector, [feats])
    f = _infer(model)
    val_scores = []
    for i in range(0, len(data.val.det_x), 32):
        xb = data.val.det_x[i:i + 32].astype(np.float32)[..., None] / 255.0
        val_scores.append(f(xb)["ood"].reshape(-1))
    val_scores = np.concatenate(val_scores) if val_scores else np.array([1.0])
    # Twice the 99.5th percentile of the validation radiographs: a phantom hand is practically never
    # flagged, an image whose features lie well outside the training distribution is.
    threshold = float(np.percentile(val_scores, 99.5) * 2.0)
    log(f"OOD score on val: median {np.median(val_scores):.2f}, 99.5% {np.percentile(val_scores, 99.5):.2f}; "
        f"threshold {threshold:.2f}")
    return model, {"ood_threshold": round(threshold, 3), "ood_val_median": round(float(np.median(val_scores)), 3)}


def run(out_dir: Path, quick: bool = False, patients: int | None = None, seed: int = 0,
        model_ids: Sequence[str] = ALL_MODELS, cache: Path | None = None, log: Callable[[str], None] = print,
        reuse: bool = False) -> dict[str, dict[str, Any]]:
    budget = QUICK if quick else FULL
    n = patients or budget.patients
    out_dir = Path(out_dir)
    if quick and out_dir.resolve() == COMMITTED_MODELS_DIR.resolve():
        raise SystemExit("--quick refuses to write tiny models into the committed models/ directory")
    t0 = time.perf_counter()
    data = generate_data(n, log=log, cache=cache)
    import keras

    models, infos = {}, {}
    for mid in ALL_MODELS:
        if mid in model_ids:
            if mid == DETECTOR_ID:
                det, info = train_detector(data, budget, seed, log, quick)
                det, extra = calibrate_detector(det, data, log)
                info["input_extra"] = extra
                models[mid], infos[mid] = det, info
            else:
                models[mid], infos[mid] = train_scorer(mid, data, budget, seed, log, quick)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{mid}.train.json").write_text(json.dumps(_json_safe(infos[mid]), indent=1))
        elif reuse and (out_dir / f"{mid}.keras").exists():
            models[mid] = keras.models.load_model(out_dir / f"{mid}.keras", compile=False)
            infos[mid] = _training_info(out_dir, mid)
    entries = ship_all(models, infos, data, out_dir, quick, seed, log)
    for mid in entries:                                   # recorded in the registry now
        (out_dir / f"{mid}.train.json").unlink(missing_ok=True)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return entries


def _training_info(out_dir: Path, mid: str) -> dict[str, Any]:
    """What training recorded for a model being reused: its <id>.train.json, else its registry entry."""
    side = Path(out_dir) / f"{mid}.train.json"
    if side.exists():
        info = json.loads(side.read_text())
    else:
        reg = json.loads((Path(out_dir) / "registry.json").read_text())
        entry = next(m for m in reg["models"] if m["id"] == mid)
        info = {k: v for k, v in entry.get("training", {}).items() if k not in ("data", "seed", "command", "patients")}
        if mid == DETECTOR_ID:
            info["input_extra"] = {k: v for k, v in entry["input"].items() if k.startswith("ood")}
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train, evaluate and ship the hand models on phantoms.")
    ap.add_argument("--quick", action="store_true", help="tiny models, a few patients, seconds")
    ap.add_argument("--out", type=Path, default=None, help="models directory (default: models/, or a temp dir with --quick)")
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated ids to train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="cache the generated phantoms here (development)")
    ap.add_argument("--reuse", action="store_true",
                    help="load the models not being trained from --out and evaluate/ship everything together")
    a = ap.parse_args(argv)
    out = a.out or (Path(tempfile.mkdtemp(prefix="hand_quick_")) if a.quick else COMMITTED_MODELS_DIR)
    ids = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = set(ids) - set(ALL_MODELS)
    if unknown:
        ap.error(f"unknown model ids: {', '.join(sorted(unknown))}")
    run(out, quick=a.quick, patients=a.patients, seed=a.seed, model_ids=ids, cache=a.cache, reuse=a.reuse,
        log=lambda s: print(s, flush=True))
    print(f"models in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
