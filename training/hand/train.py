"""Training the hand models: the detector (focal loss on the heatmaps, L1 on boxes, laterality) with its
out-of-distribution calibration, and the two-stage GUSS scorers (two streams per step).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tasks.hand import DETECTOR_STRIDE
from training.export import sha256_file
from training.hand.config import POSITION_ID, Budget
from training.hand.data import (CROP_SIZE, CTX_SIZE, DET_SIZE, N_CLASSES, HandSplits, augment_crop,
                                augment_detector_batch, coral_targets, detector_targets, detector_training_set,
                                peak_class_weights, sampling_weights, with_position)
from training.hand.evaluate import evaluate_scorer_on_crops
from training.hand.model import (COMPARTMENT_THRESHOLDS, GUSS_THRESHOLDS, focal_loss,
                                 guss_scorer, joint_detector)
from training.toolbox.schedule import adam_cosine


def train_detector(data: HandSplits, budget: Budget, seed: int = 0, log: Callable[[str], None] = print,
                   quick: bool = False, init: Path | None = None):
    """The joint detector in two stages: `det_epochs` on the adult phantoms with the narrow augmentation, then
    `det_finetune_epochs` on adults and children with the wide one (lower learning rate). `init`: a detector
    file that stands for the first stage (its training is skipped)."""
    keras.utils.set_random_seed(seed)
    model = joint_detector(DET_SIZE, widths=(8, 8, 8, 8, 8) if quick else (16, 24, 32, 48, 64),
                           head_width=8 if quick else 32)
    rng = np.random.default_rng(seed)
    info: dict = {"batch_size": budget.det_batch}
    t0 = time.perf_counter()
    if init is not None:
        model.set_weights(keras.models.load_model(init, compile=False).get_weights())
        info["first_stage"] = {"from_file": Path(init).name, "sha256": sha256_file(init),
                               "epochs_run": budget.det_epochs}
        log(f"  detector: first stage from {init}")
    else:
        adults = detector_training_set(data, children=False)
        _fit_detector(model, adults, budget.det_epochs, budget.det_lr, budget.det_batch, False, rng, log, "stage 1")
        info["first_stage"] = {"epochs_run": budget.det_epochs, "radiographs": len(adults[0]), "lr": budget.det_lr,
                               "wall_time_s": round(time.perf_counter() - t0, 1)}
        t0 = time.perf_counter()
    everyone = detector_training_set(data, children=True, child_repeat=budget.child_repeat)
    if budget.det_finetune_epochs:
        _fit_detector(model, everyone, budget.det_finetune_epochs, budget.det_finetune_lr, budget.det_batch, True,
                      rng, log, "stage 2")
    info.update(epochs=budget.det_finetune_epochs,                # the second stage's (first_stage: the first's)
                wall_time_s=round(time.perf_counter() - t0, 1), train_radiographs=len(everyone[0]),
                train_child_radiographs=len(data.child_train) if data.child_train is not None else 0,
                child_repeat=budget.child_repeat)
    return model, info


def _fit_detector(model, arrays, epochs: int, lr: float, batch: int, wide: bool, rng: np.random.Generator,
                  log: Callable[[str], None], tag: str) -> None:
    det_x, det_centres, det_sizes, det_side = arrays
    out_size = DET_SIZE // DETECTOR_STRIDE
    steps_per_epoch = max(1, len(det_x) // batch)
    opt = adam_cosine(lr, steps_per_epoch * epochs, alpha=0.01)

    @tf.function(reduce_retracing=True)
    def step(x, heat, reg, side):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            l_heat = focal_loss(tf, heat, out["heatmap"])
            mask = reg[..., 4:5]
            n = tf.maximum(tf.reduce_sum(mask), 1.0)
            l_wh = tf.reduce_sum(tf.abs(out["box"][..., :2] - reg[..., :2]) * mask) / n
            l_off = tf.reduce_sum(tf.abs(out["box"][..., 2:4] - reg[..., 2:4]) * mask) / n
            l_side = tf.reduce_mean(keras.losses.binary_crossentropy(side[:, None], out["side"]))
            loss = l_heat + 2.0 * l_wh + l_off + 0.5 * l_side
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss, l_heat, l_wh, l_off, l_side

    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(det_x))
        acc = np.zeros(5)
        for k in range(steps_per_epoch):
            idx = order[k * batch:(k + 1) * batch]
            x, c, s, sd = augment_detector_batch(det_x[idx], det_centres[idx], det_sizes[idx], det_side[idx], rng,
                                                 wide=wide)
            heat, reg = detector_targets(c, s, out_size)
            acc += np.array([float(v) for v in step(x, heat, reg, sd)])
        acc /= steps_per_epoch
        log(f"  detector {tag} epoch {epoch + 1}/{epochs} ({len(det_x)} radiographs): loss {acc[0]:.3f} (heat "
            f"{acc[1]:.3f} wh {acc[2]:.3f} off {acc[3]:.3f} side {acc[4]:.3f}) {time.perf_counter() - t0:.0f} s")


def train_scorer(model_id: str, data: HandSplits, budget: Budget, seed: int = 0, log: Callable[[str], None] = print,
                 quick: bool = False):


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

    opt = adam_cosine(budget.scorer_lr, budget.scorer_steps, alpha=0.02)
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
            x1, x2 = with_position(x1, joint[i1]), with_position(x2, joint[i2])
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
