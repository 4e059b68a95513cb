"""Train, evaluate and ship the sacroiliac (AS) models on synthetic phantoms.

    python -m training.sacroiliac [--quick] [--models ID,ID] [--out models/] [--seed 0]

Models (files models/<id>.keras, version 1.0.0):
    sij-attention-unet  segmenter, ours (default)     attention U-Net, Dice + BCE
    sij-unet-ref        segmenter, reference          plain U-Net 64-128-256-512, same data and loss
    sij-dual-head       classifier, ours (default)    joint-region crop + mask channel, two heads
    sij-cnn3-ref        classifier, reference         3-block CNN on the full image, Dense int8

Data: phantoms from `training.phantoms.sacroiliac`, images uint8/255 as the upload path gives them.
Train seeds from SEED_RANGES["train"], model selection on SEED_RANGES["val"], figures on
SEED_RANGES["test"] only, evaluated from the shipped (reloaded) files END TO END: the classifier
gets the crop of the *predicted* mask, exactly as `tasks.sacroiliac.SacroiliacTask.run` does.
Preprocessing is the task's own (`segmenter_input`, `classifier_input`).

`--quick` trains tiny versions (a few dozen images, one epoch) into a temporary or given
--out directory; it refuses to write into the committed models/ directory.
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

from tasks.sacroiliac import (MASK_THRESHOLD, MIN_REGION_PX, STAGE_NAMES, AS_NAMES,  # noqa: E402
                              classifier_input, classifier_probabilities, segmenter_input)
from tasks.metrics import accuracy, classification_report, dice_per_case, kappa_figure, macro_f1, mae, per_class_recall

TASK = "sacroiliac"
VERSION = "1.0.0"
SEG_SIZE = 128
REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED_MODELS_DIR = REPO_ROOT / "models"
OURS = ("sij-attention-unet", "sij-dual-head")
REFERENCES = ("sij-unet-ref", "sij-cnn3-ref")
ALL_MODELS = ("sij-attention-unet", "sij-unet-ref", "sij-dual-head", "sij-cnn3-ref")   # training order
SEGMENTERS = ("sij-attention-unet", "sij-unet-ref")
CLASSIFIERS = ("sij-dual-head", "sij-cnn3-ref")
PAIRED_SEGMENTER = {"sij-dual-head": "sij-attention-unet", "sij-cnn3-ref": "sij-unet-ref"}
COUNTERPART = {"sij-attention-unet": "sij-unet-ref", "sij-unet-ref": "sij-attention-unet",
               "sij-dual-head": "sij-cnn3-ref", "sij-cnn3-ref": "sij-dual-head"}

CLASSIFIER_SPECS: dict[str, dict[str, Any]] = {
    "sij-dual-head": {"shape": [128, 160, 2], "channels": ["image", "mask"], "crop": "joint_region",
                      "tta": "hflip"},
    "sij-cnn3-ref": {"shape": [128, 128, 1], "channels": ["image"], "crop": "full"},
}
SEGMENTER_SPEC = {"shape": [SEG_SIZE, SEG_SIZE, 1], "channels": ["image"], "crop": "full"}

META: dict[str, dict[str, Any]] = {
    "sij-attention-unet": dict(
        role="segmenter", reference=False, default=True, title="SIJ joint-region attention U-Net",
        architecture="Attention U-Net (Oktay et al. 2018): encoder 8-16-32, bottleneck 64, additive attention "
                     "gates on the skips, BatchNorm+ReLU double 3x3 convs, sigmoid output",
        description="Segments the sacroiliac joint region (both joints and the periarticular bone band) on a "
                    "semi-coronal MRI slice resized to 128x128; the mask focuses the classifier and its Grad-CAM."),
    "sij-unet-ref": dict(
        role="segmenter", reference=True, default=False, title="SIJ joint-region U-Net (reference)",
        architecture="Plain U-Net of the original design (Ronneberger et al. 2015): encoder 64-128-256, "
                     "bottleneck 512, mirrored decoder with 2x2 transposed convs, two 3x3 Conv+ReLU per block",
        description="Reference segmenter of the original design, trained on the same phantoms with the same loss "
                    "under a stated compute budget; kept for side-by-side comparison."),
    "sij-dual-head": dict(
        role="classifier", reference=False, default=True, title="SIJ AS status and stage, dual-head CNN",
        architecture="Compact CNN: image, mask and mask-gated image (image x mask) channels, full-resolution 3x3 "
                     "stem (16), three separable-conv BN+ReLU blocks (24, 48, 96) with max-pooling, 3x3 conv 128 "
                     "('gradcam_conv', 16x20), global average and global max pooling concatenated, dropout 0.3, "
                     "softmax heads as_status (2) and stage (4); left-right flip averaged at inference",
        description="Gives AS negative/positive and a stage (Normal, Early, Moderate, Advanced) from the crop "
                    "around the segmented joint region, with the predicted mask as a second input channel."),
    "sij-cnn3-ref": dict(
        role="classifier", reference=True, default=False, title="SIJ AS status and stage, 3-block CNN (reference)",
        architecture="Original design: Conv 32/64/128 (3x3 ReLU) each with 2x2 max-pooling, Flatten, Dense 128 "
                     "ReLU, dropout 0.5, softmax heads as_status (2) and stage (4); Dense layers int8-quantised "
                     "(Keras `model.quantize('int8')`) after training",
        description="Reference classifier of the original design on the whole slice resized to 128x128; kept "
                    "for side-by-side comparison."),
}


# -- budgets ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    n_train: int           # training phantoms (first n of SEED_RANGES["train"])
    epochs: int
    batch_size: int
    lr: float
    patience: int = 3      # early stopping on validation loss (best weights restored)
    steps_per_epoch: int | None = None   # None: one pass over n_train per epoch


FULL_BUDGETS = {
    "sij-attention-unet": Budget(n_train=4000, epochs=3, batch_size=16, lr=3e-3),
    "sij-unet-ref": Budget(n_train=6000, epochs=2, batch_size=8, lr=3e-4, steps_per_epoch=120),
    "sij-dual-head": Budget(n_train=32000, epochs=9, batch_size=16, lr=2e-3),
    "sij-cnn3-ref": Budget(n_train=6000, epochs=2, batch_size=32, lr=1e-3),
}
QUICK_BUDGETS = {k: Budget(n_train=48, epochs=1, batch_size=8, lr=1e-3, patience=1) for k in ALL_MODELS}
FULL_SIZES = dict(n_val=600, n_test=1000)
QUICK_SIZES = dict(n_val=16, n_test=24)


# -- data -----------------------------------------------------------------------------------
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
class Data:
    train: Phantoms
    val: Phantoms
    test: Phantoms


def generate_split(split: str, n: int, log: Callable[[str], None] | None = None) -> Phantoms:
    """The first `n` phantoms of `split` (seed order), generated in memory."""
    from training.phantoms.sacroiliac import SEED_RANGES, generate_case

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


def generate_data(n_train: int, n_val: int, n_test: int, log: Callable[[str], None] | None = print) -> Data:
    t0 = time.perf_counter()
    data = Data(generate_split("train", n_train, log), generate_split("val", n_val, log),
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


def _py_dataset_base():
    import keras

    return keras.utils.PyDataset


class ClassifierBatches(_py_dataset_base()):  # type: ignore[misc]
    """Training batches built on the fly: GT mask perturbed + intensity augmentation, new each epoch."""

    def __init__(self, ph: Phantoms, spec: dict[str, Any], batch_size: int, seed: int,
                 steps: int | None = None):
        super().__init__(workers=1, use_multiprocessing=False)
        self.ph, self.spec, self.batch_size, self.seed = ph, spec, batch_size, seed
        self.steps = steps or int(np.ceil(len(ph) / batch_size))
        self.epoch = 0
        self._order()

    def _order(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        reps = int(np.ceil(self.steps * self.batch_size / len(self.ph)))
        self.order = np.concatenate([rng.permutation(len(self.ph)) for _ in range(reps)])

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x = classifier_arrays(self.ph, self.spec, rng=rng, augment=True, idx=idx)
        return x, classifier_targets(self.ph, idx)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order()


# -- models and losses --------------------------------------------------------------------
def build(model_id: str, quick: bool = False):
    from training import architectures as A

    if model_id == "sij-attention-unet":
        return A.attention_unet((SEG_SIZE, SEG_SIZE, 1), name="sij_attention_unet")
    if model_id == "sij-unet-ref":
        filters = (8, 16, 32, 64) if quick else (64, 128, 256, 512)
        return A.unet((SEG_SIZE, SEG_SIZE, 1), filters=filters, name="sij_unet_ref")
    if model_id == "sij-dual-head":
        return A.dual_head_classifier(tuple(CLASSIFIER_SPECS[model_id]["shape"]), name="sij_dual_head")
    if model_id == "sij-cnn3-ref":
        return A.cnn3_reference(tuple(CLASSIFIER_SPECS[model_id]["shape"]), name="sij_cnn3_ref")
    raise ValueError(f"unknown model id {model_id!r}; known: {', '.join(ALL_MODELS)}")


def dice_bce_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice loss per image + binary cross-entropy (targets may be soft fractions)."""
    from keras import ops

    y_pred = ops.clip(y_pred, 1e-6, 1.0 - 1e-6)
    bce = -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
    bce = ops.mean(bce, axis=(1, 2, 3))
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    denom = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return bce + 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def _optimizer(budget: Budget, steps_per_epoch: int):
    import keras

    total = max(1, budget.epochs * steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(budget.lr, decay_steps=total, alpha=0.05,
                                                      warmup_target=None)
    return keras.optimizers.Adam(learning_rate=schedule)


@dataclass
class TrainResult:
    model_id: str
    model: Any
    budget: Budget
    wall_time_s: float
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)


def train_model(model_id: str, data: Data, budget: Budget, seed: int = 0, quick: bool = False,
                verbose: int = 2, log: Callable[[str], None] | None = print) -> TrainResult:
    """Train one model on `data.train` (first budget.n_train), selecting on `data.val`."""
    import keras

    keras.utils.set_random_seed(seed)
    train = data.train.head(budget.n_train)
    t0 = time.perf_counter()
    model = build(model_id, quick=quick)
    callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=budget.patience, restore_best_weights=True)]
    if model_id in SEGMENTERS:
        x, y = segmentation_arrays(train)
        xv, yv = segmentation_arrays(data.val)
        steps = budget.steps_per_epoch or int(np.ceil(len(x) / budget.batch_size))
        model.compile(optimizer=_optimizer(budget, steps), loss=dice_bce_loss)
        if budget.steps_per_epoch:
            ds = _repeating_dataset(x, y, budget.batch_size, seed)
            hist = model.fit(ds, epochs=budget.epochs, steps_per_epoch=steps, validation_data=(xv, yv),
                             callbacks=callbacks, verbose=verbose)
        else:
            hist = model.fit(x, y, batch_size=budget.batch_size, epochs=budget.epochs, shuffle=True,
                             validation_data=(xv, yv), callbacks=callbacks, verbose=verbose)
    else:
        spec = CLASSIFIER_SPECS[model_id]
        batches = ClassifierBatches(train, spec, budget.batch_size, seed, steps=budget.steps_per_epoch)
        # validation: GT masks with one fixed perturbation per case (no intensity augmentation)
        xv = classifier_arrays(data.val, spec, rng=np.random.default_rng([seed, 99]))
        model.compile(optimizer=_optimizer(budget, len(batches)),
                      loss={"as_status": "categorical_crossentropy", "stage": "categorical_crossentropy"},
                      metrics={"as_status": ["accuracy"], "stage": ["accuracy"]})
        hist = model.fit(batches, epochs=budget.epochs, validation_data=(xv, classifier_targets(data.val)),
                         callbacks=callbacks, verbose=verbose)
    wall = time.perf_counter() - t0
    history = {k: [round(float(v), 5) for v in vals] for k, vals in hist.history.items()}
    if log:
        log(f"{model_id}: trained {len(history.get('loss', []))} epochs in {wall:.0f} s")
    return TrainResult(model_id, model, budget, wall, len(history.get("loss", [])), history)


def _repeating_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(min(len(x), 4096), seed=seed,
                                                             reshuffle_each_iteration=True)
    return ds.repeat().batch(batch_size).prefetch(2)


# -- shipping -------------------------------------------------------------------------------
def ship(result: TrainResult, out_dir: Path) -> tuple[Path, Any]:
    """Save `<out_dir>/<id>.keras` (float16 storage; the reference CNN's Dense layers int8, the reference
    U-Net's convolution kernels int8 per output channel) and reload it."""
    import keras

    from imaging.layers import custom_objects
    from training.export import save_for_shipping
    from training.quantize import quantize_convolutions

    model = result.model
    if result.model_id == "sij-cnn3-ref":
        model.quantize("int8")            # Dense layers only; convolutions stay float
    elif result.model_id == "sij-unet-ref":
        model = quantize_convolutions(model)   # 7.7 M conv weights: int8 keeps the file well under budget
    path = save_for_shipping(model, Path(out_dir) / f"{result.model_id}.keras")
    shipped = keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    return path, shipped


def load_shipped(out_dir: Path, model_id: str):
    """A model previously shipped into `out_dir` (verified against its registry entry), or None."""
    from model_loader import ModelRegistry

    registry = ModelRegistry(out_dir)
    if registry.get(model_id) is None or registry.problem(model_id) is not None:
        return None
    return registry.load(model_id).model


# -- evaluation -----------------------------------------------------------------------------
_INFER: dict[int, tuple[Any, Any]] = {}


def _infer_fn(model):
    """One compiled inference call per model object (as the serving path does)."""
    import tensorflow as tf

    cached = _INFER.get(id(model))
    if cached is None or cached[0] is not model:
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)   # any batch size, one trace
        cached = (model, tf.function(lambda x: model(x, training=False), input_signature=[spec]))
        _INFER[id(model)] = cached
    return cached[1]


def served_mask(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The full-resolution mask the task derives from a segmenter's probability map (see SacroiliacTask._segment)."""
    found = int((prob > MASK_THRESHOLD).sum()) >= MIN_REGION_PX
    h, w = shape
    mask = (cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) > MASK_THRESHOLD).astype(np.uint8)
    if not found:
        mask[:] = 0
    return mask


def predict_masks(model, ph: Phantoms, batch_size: int = 32) -> np.ndarray:
    """Served masks (full resolution, uint8 {0,1}) of a segmenter on every case of `ph`."""
    import tensorflow as tf

    size = int(model.input_shape[1])
    infer = _infer_fn(model)
    out = np.zeros(ph.masks.shape, np.uint8)
    for s in range(0, len(ph), batch_size):
        idx = range(s, min(s + batch_size, len(ph)))
        x = np.concatenate([segmenter_input(ph.image01(i), size) for i in idx])
        prob = np.asarray(infer(tf.constant(x)))[..., 0]
        for k, i in enumerate(idx):
            out[i] = served_mask(prob[k], ph.masks[i].shape)
    return out


def predict_classes(model, ph: Phantoms, spec: dict[str, Any], masks: np.ndarray | None,
                    batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (as_status, stage) class indices; `masks` = the focus masks (None: all empty)."""
    import tensorflow as tf

    infer = _infer_fn(model)
    masks = np.zeros_like(ph.masks) if masks is None else masks
    as_pred, stage_pred = [], []
    for s in range(0, len(ph), batch_size):
        idx = np.arange(s, min(s + batch_size, len(ph)))
        x = classifier_arrays(ph, spec, masks=masks, idx=idx)
        out = classifier_probabilities(lambda b: infer(tf.constant(b)), x, spec)
        as_pred.append(out["as_status"].argmax(-1))
        stage_pred.append(out["stage"].argmax(-1))
    return np.concatenate(as_pred), np.concatenate(stage_pred)


def _sequence_groups(ph: Phantoms) -> dict[str, np.ndarray]:
    if ph.sequence is None:
        return {}
    return {str(q): np.flatnonzero(ph.sequence == q) for q in sorted(set(ph.sequence))}


def segmentation_metrics(pred_masks: np.ndarray, ph: Phantoms) -> dict[str, Any]:
    d = dice_per_case(pred_masks, ph.masks)
    by_seq = {q: round(float(d[idx].mean()), 4) for q, idx in _sequence_groups(ph).items() if idx.size}
    return {
        "test_cases": len(ph), "test_seeds": ph.seed_text,
        "dice_mean": round(float(d.mean()), 4), "dice_median": round(float(np.median(d)), 4),
        "dice_p05": round(float(np.percentile(d, 5)), 4),
        "region_found_rate": round(float(np.mean(pred_masks.reshape(len(ph), -1).any(axis=1))), 4),
        **({"dice_mean_by_sequence": by_seq} if by_seq else {}),
    }


def classification_metrics(as_pred: np.ndarray, stage_pred: np.ndarray, ph: Phantoms) -> dict[str, Any]:
    stage_rep = classification_report(ph.stage, stage_pred, STAGE_NAMES)
    as_rep = classification_report(ph.as_status, as_pred, AS_NAMES)
    return {
        "test_cases": len(ph), "test_seeds": ph.seed_text,
        "as_accuracy": as_rep["accuracy"],
        "as_sensitivity": as_rep["recall"]["positive"], "as_specificity": as_rep["recall"]["negative"],
        "stage_accuracy": stage_rep["accuracy"], "stage_macro_f1": stage_rep["macro_f1"],
        "stage_recall": stage_rep["recall"], "stage_precision": stage_rep["precision"],
        "stage_qwk": round(kappa_figure(ph.stage, stage_pred, 4), 4),
        "stage_mae": round(mae(stage_pred, ph.stage), 4),
        "as_confusion": as_rep["confusion_matrix"], "stage_confusion": stage_rep["confusion_matrix"],
        **_by_sequence(as_pred, stage_pred, ph),
    }


def _by_sequence(as_pred: np.ndarray, stage_pred: np.ndarray, ph: Phantoms) -> dict[str, Any]:
    groups = {q: idx for q, idx in _sequence_groups(ph).items() if idx.size}
    if not groups:
        return {}
    return {
        "as_accuracy_by_sequence": {q: round(accuracy(as_pred[i], ph.as_status[i]), 4) for q, i in groups.items()},
        "stage_macro_f1_by_sequence": {q: round(macro_f1(ph.stage[i], stage_pred[i], 4), 4)
                                       for q, i in groups.items()},
        "early_recall_by_sequence": {q: _recall_of(ph.stage[i], stage_pred[i], 1) for q, i in groups.items()},
    }


def _recall_of(target: np.ndarray, pred: np.ndarray, cls: int) -> float | None:
    r = per_class_recall(target, pred, 4)[cls]
    return None if not np.isfinite(r) else round(float(r), 4)


def evaluate_pipeline(segmenter, classifier, classifier_id: str, ph: Phantoms,
                      seg_masks: np.ndarray | None = None) -> dict[str, Any]:
    """End-to-end figures: segment, then classify the crop of the predicted mask (as the task does)."""
    spec = CLASSIFIER_SPECS[classifier_id]
    out: dict[str, Any] = {}
    if segmenter is not None and seg_masks is None:
        seg_masks = predict_masks(segmenter, ph)
    if seg_masks is not None:
        out["segmentation"] = segmentation_metrics(seg_masks, ph)
    out["classification"] = classification_metrics(*predict_classes(classifier, ph, spec, seg_masks), ph)
    return out


# -- export ------------------------------------------------------------------------------
def _entry(model_id: str, result: TrainResult, metrics: dict[str, Any], data: Data, seed: int,
           quick: bool, out_dir: Path) -> dict[str, Any]:
    meta = META[model_id]
    role = meta["role"]
    b = result.budget
    command = f"python -m training.sacroiliac --models {model_id} --out {_display_out(out_dir)} --seed {seed}"
    if quick:
        command = command.replace("python -m training.sacroiliac", "python -m training.sacroiliac --quick")
    steps = b.steps_per_epoch or int(np.ceil(b.n_train / b.batch_size))
    if role == "segmenter":
        inp, outputs, gradcam = dict(SEGMENTER_SPEC), ["mask"], None
    else:
        inp, outputs, gradcam = dict(CLASSIFIER_SPECS[model_id]), ["as_status", "stage"], "gradcam_conv"
    return {
        "id": model_id, "task": TASK, "role": role, "version": VERSION, "title": meta["title"],
        "architecture": meta["architecture"], "reference": meta["reference"], "default": meta["default"],
        "file": f"{model_id}.keras", "input": inp, "outputs": outputs, "gradcam_layer": gradcam,
        "training": {
            "data": "synthetic semi-coronal SIJ MRI phantoms (training.phantoms.sacroiliac), STIR and T1, "
                    "uint8/255 images; labels from the generator's parameters",
            "split": (f"train seeds {int(data.train.seeds[0])}-{int(data.train.seeds[0]) + b.n_train - 1} "
                      f"(SEED_RANGES['train']), model selection on val seeds {data.val.seed_text} "
                      f"(SEED_RANGES['val']), figures on test seeds {data.test.seed_text} (SEED_RANGES['test'])"),
            "seed": seed, "epochs": result.epochs_run, "command": command,
            "wall_time_s": round(result.wall_time_s, 1),
            "n_train": b.n_train, "n_val": len(data.val), "batch_size": b.batch_size,
            "steps_per_epoch": steps, "learning_rate": b.lr, "epochs_max": b.epochs,
            "loss": "Dice + binary cross-entropy" if role == "segmenter" else "categorical cross-entropy (both heads)",
            "quick": quick,
        },
        "metrics": metrics, "card": f"cards/{model_id}.md", "description": meta["description"],
    }


def _display_out(out_dir: Path) -> str:
    try:
        rel = Path(out_dir).resolve().relative_to(REPO_ROOT)
        return str(rel) + "/"
    except ValueError:
        return str(out_dir)


def _fmt_pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def card_sections(entry: dict[str, Any], others: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Card sections for a sacroiliac model; `others` = registry entries by id (for the comparison columns)."""
    mid, tr, m = entry["id"], entry.get("training", {}), entry.get("metrics", {})
    role = entry["role"]
    counterpart = others.get(COUNTERPART[mid])
    sections: dict[str, str] = {}
    sections["Training data"] = (
        "Synthetic semi-coronal sacroiliac-joint MRI phantoms from `training.phantoms.sacroiliac` (STIR-like and "
        "T1-like, pose/scale/bias-field/noise variation; stage 0-3 drawn uniformly, AS status = stage >= 1; "
        "masks and labels from the generator's parameters, never from the image). Disjoint seed ranges: "
        f"{tr.get('split', '')}. Images enter as uint8/255, the same as an uploaded PNG, through the task's own "
        "preprocessing (`tasks.sacroiliac.segmenter_input` / `classifier_input`)."
    )
    if role == "segmenter":
        how = ("Target: the GT mask area-resized to 128x128 (soft fraction per pixel, centred like the bilinear "
               "upsampling used at serving). No augmentation (every phantom is a new pose and acquisition).")
    elif mid == "sij-dual-head":
        how = ("Input: crop around the joint-region mask (10% margin) resized to 128x160 (height x width, about "
               "the joint region's own size and aspect, so small lesions keep their pixels), mask as second channel. "
               "During training the GT mask is randomly dilated/eroded (up to 2 px) and shifted (up to 3 px) so the "
               "classifier tolerates segmentation error; intensity augmentation (gamma, gain/offset, noise) and "
               "random left-right flips. Validation uses one fixed perturbation per case. At inference the crop "
               "and its left-right mirror go through the model as one batch and the probabilities are averaged "
               "(input `tta: hflip`; the figures below include it).")
    else:
        how = ("Input: the whole slice resized to 128x128 (no crop, no mask). Intensity augmentation and left-right "
               "flips as for the dual-head model. After training the Dense layers are quantised to int8 with "
               "Keras `model.quantize('int8')` (convolutions stay float) so the file fits the repository budget; "
               "the figures below are from the quantised, shipped file.")
    sections["Training"] = (
        f"{how}\n\nBudget: {tr.get('n_train')} training phantoms, batch {tr.get('batch_size')}, "
        f"{tr.get('steps_per_epoch')} steps/epoch, up to {tr.get('epochs_max')} epochs (ran {tr.get('epochs')}, early "
        f"stopping on validation loss with best weights restored), Adam with cosine decay from "
        f"{tr.get('learning_rate')}, loss {tr.get('loss')}. Wall time {tr.get('wall_time_s', 0):.0f} s on a shared "
        f"2-core CPU machine (no GPU) while other training jobs ran, so an upper bound. Seed {tr.get('seed')}."
        + (" This is a compute-limited reference: trained honestly on the same data and loss, but the budget above "
           "is all it got; a longer run would likely improve it." if entry.get("reference") else "")
    )
    sections["Metrics on held-out data"] = _metrics_section(entry, counterpart)
    limits = [
        "Phantoms are not patients: every figure here is on synthetic images from the same generator as the "
        "training data. There is no real-patient validation; the one real SIJ patient in the shared data is "
        "unlabelled and serves only ingestion and display checks.",
        "Real scans differ in anatomy, field of view, slice position, coil and sequence parameters, artefacts and "
        "co-existing disease; expect performance on them to be much lower and unknown.",
        "Staging is a simplified 4-level construct of the phantom generator (Normal, Early, Moderate, Advanced), "
        "not a clinical classification (e.g. not ASAS/SPARCC/modified New York grading).",
    ]
    if role == "segmenter":
        limits.append("The mask is a band around both joint lines; slices without visible joints (or far outside "
                      "the trained pose range) give an empty or partial mask, reported as 'no joint region found'.")
    elif mid == "sij-dual-head":
        limits.append("The classifier sees only the crop around the predicted joint region: a missed or misplaced "
                      "mask degrades it (the card reports the GT-mask figure beside the end-to-end one).")
        by_seq = m.get("as_accuracy_by_sequence") or {}
        early = m.get("early_recall_by_sequence") or {}
        limits.append("Early disease (one or two small oedema foci) is the hardest class and the main source of AS "
                      "errors (Normal<->Early confusions), above all on T1-like images, where oedema is a faint dark "
                      "focus in grey marrow"
                      + (f": AS accuracy {', '.join(f'{q} {_fmt_pct(v)}' for q, v in by_seq.items())}; Early recall "
                         f"{', '.join(f'{q} {_fmt_pct(v)}' for q, v in early.items())}" if by_seq else "")
                      + "."
                      + (" The project's AS-accuracy target (97%) is not reached."
                         if (m.get("as_accuracy") or 0) < 0.97 else ""))
    else:
        limits.append("The whole slice is downsampled to 128 px, halving the resolution at which small early lesions "
                      "are seen.")
    sections["Known failure modes and limits"] = "\n".join(f"- {s}" for s in limits)
    return sections


def _image_steps(entry: dict[str, Any]) -> int:
    tr = entry.get("training", {})
    return int((tr.get("steps_per_epoch") or 0) * (tr.get("epochs") or 0) * (tr.get("batch_size") or 0))


def _compute_note(entry: dict[str, Any], counterpart: dict[str, Any] | None) -> str:
    if not counterpart:
        return ""
    parts = [f"`{e['id']}` {_image_steps(e):,} image-steps ({e.get('training', {}).get('wall_time_s', 0):.0f} s)"
             for e in (entry, counterpart)]
    return ("\n\nTraining compute behind each column (images seen x epochs; wall time on the shared machine): "
            + ", ".join(parts) + ". The reference is compute-limited: compare accuracy with that in mind; "
            "latency and file size do not depend on it.")


def _metrics_section(entry: dict[str, Any], counterpart: dict[str, Any] | None) -> str:
    from training.export import metrics_table

    m = entry.get("metrics", {})
    label = f"`{entry['id']}`" + (" (reference)" if entry.get("reference") else " (ours)")
    rows: dict[str, dict[str, Any]] = {}
    if entry["role"] == "segmenter":
        def seg_row(mm: dict[str, Any]) -> dict[str, Any]:
            r = {k: mm.get(k) for k in ("dice_mean", "dice_median", "dice_p05", "region_found_rate")}
            r.update({f"dice_mean {q}": v for q, v in (mm.get("dice_mean_by_sequence") or {}).items()})
            return r

        rows[label] = seg_row(m)
        if counterpart and counterpart.get("metrics"):
            clabel = f"`{counterpart['id']}`" + (" (reference)" if counterpart.get("reference") else " (ours)")
            rows[clabel] = seg_row(counterpart["metrics"])
        keys = list(dict.fromkeys(k for r in rows.values() for k in r))
        intro = (f"{m.get('test_cases')} held-out test phantoms (seeds {m.get('test_seeds')}), evaluated from the "
                 "shipped file: the predicted probability map is upsampled to 256x256, thresholded at 0.5, and "
                 "compared with the GT mask (Dice per case).")
    else:
        def flat(mm: dict[str, Any]) -> dict[str, Any]:
            r = {k: mm.get(k) for k in ("as_accuracy", "as_sensitivity", "as_specificity", "stage_accuracy",
                                          "stage_macro_f1", "stage_qwk", "stage_mae")}
            for name, v in (mm.get("stage_recall") or {}).items():
                r[f"recall {name}"] = v
            for q, v in (mm.get("as_accuracy_by_sequence") or {}).items():
                r[f"as_accuracy {q}"] = v
            for q, v in (mm.get("early_recall_by_sequence") or {}).items():
                r[f"recall Early {q}"] = v
            if "stage_macro_f1_gt_mask" in mm:
                r["stage_macro_f1 (GT mask)"] = mm["stage_macro_f1_gt_mask"]
                r["as_accuracy (GT mask)"] = mm.get("as_accuracy_gt_mask")
            return r

        rows[label] = flat(m)
        if counterpart and counterpart.get("metrics"):
            clabel = f"`{counterpart['id']}`" + (" (reference)" if counterpart.get("reference") else " (ours)")
            rows[clabel] = flat(counterpart["metrics"])
        keys = list(dict.fromkeys(k for r in rows.values() for k in r))
        intro = (f"{m.get('test_cases')} held-out test phantoms (seeds {m.get('test_seeds')}), evaluated END TO END "
                 f"from the shipped file: segmenter `{m.get('segmenter')}` predicts the mask, the classifier gets "
                 "the input built from that predicted mask exactly as `tasks.sacroiliac.SacroiliacTask.run` does.")
        for r in rows.values():
            for k in keys:
                r.setdefault(k, None)
        cm = m.get("stage_confusion")
        if cm:
            intro_cm = "\n\nStage confusion matrix (rows true, columns predicted; Normal, Early, Moderate, Advanced):\n\n```\n" \
                       + "\n".join(" ".join(f"{v:4d}" for v in row) for row in cm) + "\n```"
        else:
            intro_cm = ""
        return intro + "\n\n" + metrics_table(rows, keys) + _compute_note(entry, counterpart) + intro_cm
    return intro + "\n\n" + metrics_table(rows, keys) + _compute_note(entry, counterpart)


def write_cards(out_dir: Path) -> None:
    from training.export import write_model_card

    registry_path = Path(out_dir) / "registry.json"
    if not registry_path.exists():
        return
    entries = {e["id"]: e for e in json.loads(registry_path.read_text())["models"] if e.get("task") == TASK}
    for entry in entries.values():
        write_model_card(out_dir, entry, card_sections(entry, entries))


# -- the whole run ---------------------------------------------------------------------------
@dataclass
class Session:
    """One training run: what to train, where it goes, the data, and what has been done so far."""

    model_ids: list[str]
    out_dir: Path
    quick: bool
    seed: int
    budgets: dict[str, Budget]
    sizes: dict[str, int]
    data: Data | None = None
    results: dict[str, TrainResult] = field(default_factory=dict)
    shipped: dict[str, Any] = field(default_factory=dict)       # id -> model reloaded from its shipped file
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # segmenter id -> served masks on data.test


def prepare(model_ids: Sequence[str] = ALL_MODELS, out_dir: str | os.PathLike | None = None, quick: bool = False,
            seed: int = 0, budgets: dict[str, Budget] | None = None, sizes: dict[str, int] | None = None,
            generate: bool = True, log: Callable[[str], None] | None = print) -> Session:
    """Check the request, pick budgets (quick or full) and generate the phantoms in memory."""
    unknown = [m for m in model_ids if m not in ALL_MODELS]
    if unknown:
        raise ValueError(f"unknown model ids: {unknown}; known: {', '.join(ALL_MODELS)}")
    ids = [m for m in ALL_MODELS if m in model_ids]
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="jointscan-sij-") if quick else COMMITTED_MODELS_DIR
    out = Path(out_dir)
    if quick and out.resolve() == COMMITTED_MODELS_DIR.resolve():
        raise ValueError("--quick must not write into the committed models/ directory; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    session = Session(ids, out, quick, seed, dict(QUICK_BUDGETS if quick else FULL_BUDGETS, **(budgets or {})),
                      dict(QUICK_SIZES if quick else FULL_SIZES, **(sizes or {})))
    if generate:
        session.data = generate_data(max(session.budgets[m].n_train for m in ids), session.sizes["n_val"],
                                     session.sizes["n_test"], log)
    return session


def train_and_ship(session: Session, model_id: str, verbose: int = 2,
                   log: Callable[[str], None] | None = print) -> Path:
    """Train one model, save it for shipping into session.out_dir and keep the reloaded file's model."""
    if log:
        log(f"== training {model_id} ({session.budgets[model_id]})")
    session.results[model_id] = train_model(model_id, session.data, session.budgets[model_id], seed=session.seed,
                                            quick=session.quick, verbose=verbose, log=log)
    path, session.shipped[model_id] = ship(session.results[model_id], session.out_dir)
    if log:
        log(f"   shipped {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


def _segmenter_for(session: Session, model_id: str):
    if model_id not in session.shipped:
        found = load_shipped(session.out_dir, model_id)
        if found is not None:
            session.shipped[model_id] = found
    return session.shipped.get(model_id)


def evaluate_shipped(session: Session, model_id: str, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Held-out test figures of a shipped model, end to end for classifiers (paired segmenter's masks)."""
    test = session.data.test
    t0 = time.perf_counter()
    if model_id in SEGMENTERS:
        session.masks[model_id] = predict_masks(session.shipped[model_id], test)
        metrics = segmentation_metrics(session.masks[model_id], test)
    else:
        seg_id = PAIRED_SEGMENTER[model_id]
        if _segmenter_for(session, seg_id) is None:     # fall back to the other segmenter
            seg_id = COUNTERPART[seg_id]
        seg = _segmenter_for(session, seg_id)
        if seg is not None and seg_id not in session.masks:
            session.masks[seg_id] = predict_masks(seg, test)
        spec = CLASSIFIER_SPECS[model_id]
        preds = predict_classes(session.shipped[model_id], test, spec, session.masks.get(seg_id))
        metrics = {"segmenter": seg_id if seg is not None else None, **classification_metrics(*preds, test)}
        if seg is None:
            metrics["note"] = "no segmenter available: evaluated with empty focus masks (full image)"
        if spec["crop"] == "joint_region":
            gt = classification_metrics(*predict_classes(session.shipped[model_id], test, spec, test.masks), test)
            metrics["stage_macro_f1_gt_mask"] = gt["stage_macro_f1"]
            metrics["as_accuracy_gt_mask"] = gt["as_accuracy"]
    session.metrics[model_id] = metrics
    if log:
        log(f"   evaluated {model_id} on {len(test)} test phantoms in {time.perf_counter() - t0:.0f} s: "
            + json.dumps({k: v for k, v in metrics.items() if not k.endswith("confusion")}))
    return metrics


def export(session: Session, model_id: str) -> dict[str, Any]:
    """Register a trained, shipped and evaluated model in session.out_dir/registry.json."""
    from training.export import register_model

    entry = _entry(model_id, session.results[model_id], session.metrics[model_id], session.data, session.seed,
                   session.quick, session.out_dir)
    return register_model(session.out_dir, entry, model=session.shipped[model_id])


def run(model_ids: Sequence[str] = ALL_MODELS, out_dir: str | os.PathLike | None = None, quick: bool = False,
        seed: int = 0, log: Callable[[str], None] = print, verbose: int = 2,
        budgets: dict[str, Budget] | None = None, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """Train `model_ids`, ship them into `out_dir`, evaluate the shipped files, register them, write cards."""
    session = prepare(model_ids, out_dir, quick, seed, budgets, sizes, log=log)
    for mid in session.model_ids:
        train_and_ship(session, mid, verbose=verbose, log=log)
    summary: dict[str, Any] = {"out_dir": str(session.out_dir), "models": {}}
    for mid in session.model_ids:
        evaluate_shipped(session, mid, log=log)
        stored = export(session, mid)
        summary["models"][mid] = {"file": str(session.out_dir / stored["file"]), "size_bytes": stored["size_bytes"],
                                  "params": stored["params"], "wall_time_s": stored["training"]["wall_time_s"],
                                  "metrics": stored["metrics"]}
    write_cards(session.out_dir)
    return summary


def reevaluate(model_ids: Sequence[str] = ALL_MODELS, out_dir: str | os.PathLike = COMMITTED_MODELS_DIR,
               n_test: int = FULL_SIZES["n_test"], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate already shipped models again (no training) and refresh their metrics and cards.

    For when the evaluation changes (new figures) but the files do not: each registry entry keeps its
    training record, file and checksum; only `metrics` is replaced.
    """
    from training.export import register_model

    out = Path(out_dir)
    entries = {e["id"]: e for e in json.loads((out / "registry.json").read_text())["models"]}
    ids = [m for m in ALL_MODELS if m in model_ids]
    session = Session(ids, out, False, 0, dict(FULL_BUDGETS), dict(FULL_SIZES, n_test=n_test))
    empty = generate_split("val", 0)
    session.data = Data(empty, empty, generate_split("test", n_test, log))
    for mid in ids:
        model = load_shipped(out, mid)
        if model is None:
            raise ValueError(f"{mid} is not registered in {out} or its file does not verify")
        session.shipped[mid] = model
    for mid in ids:
        metrics = evaluate_shipped(session, mid, log=log)
        register_model(out, {**entries[mid], "metrics": metrics}, model=session.shipped[mid])
    write_cards(out)
    return {"out_dir": str(out), "models": {m: {"metrics": session.metrics[m]} for m in ids}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.sacroiliac", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (tests, notebook quick mode); needs a non-models/ --out")
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated ids (default: all four)")
    ap.add_argument("--out", default=None, help="output directory (default models/, or a temp dir with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="no training: re-evaluate the shipped models in --out and refresh their metrics and cards")
    a = ap.parse_args(argv)
    ids = [m.strip() for m in a.models.split(",") if m.strip()]
    try:
        if a.evaluate_only:
            summary = reevaluate(ids, a.out or COMMITTED_MODELS_DIR)
            print(json.dumps({k: v["metrics"] for k, v in summary["models"].items()}, indent=1))
            return 0
        summary = run(ids, a.out, quick=a.quick, seed=a.seed, verbose=a.verbose)
    except ValueError as exc:
        ap.error(str(exc))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in summary["models"].items()},
                     indent=2))
    print(f"registry: {Path(summary['out_dir']) / 'registry.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
