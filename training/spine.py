"""Train, evaluate and export the lumbar spine MRI segmenters (issue 5).

    python -m training.spine                                   # both models into models/ (~40 min, 2 cores)
    python -m training.spine --models spine-attention-unet     # ours only
    python -m training.spine --quick --out /tmp/spine-models   # tiny smoke run (tests, notebook quick mode)

Data: `<JOINTSCAN_DATA_DIR>/spine_mri/{images,masks}/<patient>_t2_SPACE_slice<N>.png`
(default data dir: the repository's parent / "shared" / "data"), or any manifest CSV
with the columns image_path, mask_path, patient (relative paths are relative to the
CSV), so a clinic can train on its own slices. Masks hold the dataset's values
0 background, 76 vertebra, 29 disc, 150 canal (see tasks.spine.DATASET_VALUES).

The split is by patient, seeded: about 80 % of the patients train, the rest validate;
no patient has slices on both sides. Preprocessing is `tasks.spine.spine_input`, the
same function the app serves with; the validation figures are measured on the
reloaded shipped (float16-stored) file, at the masks' own resolution, through
`tasks.spine.labels_from_probs`, exactly as the app predicts. No checkpoint is chosen
on the validation patients: each model trains for a fixed schedule and its last
weights ship.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from tasks.spine import (CLASS_NAMES, N_CLASSES, STRUCTURES, labels_from_probs, spine_input,
                         to_class_indices)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET_FOLDER = "spine_mri"
SEED = 1234
VAL_FRACTION = 0.2
TASK = "spine"

OURS, REF = "spine-attention-unet", "spine-unet-ref"
ALIASES = {"ours": OURS, "attention": OURS, "attention-unet": OURS, "ref": REF, "unet": REF, "unet-ref": REF}


@dataclass(frozen=True)
class ModelSpec:
    """What one model is and how it trains (the fixed budget is part of the spec)."""

    id: str
    title: str
    architecture: str
    builder: str                     # name in training.architectures.BUILDERS
    builder_kwargs: dict[str, Any]
    input_hw: tuple[int, int]
    epochs: int
    batch_size: int
    lr: float
    gradcam_layer: str
    reference: bool
    default: bool
    description: str
    budget_min: float | None = None      # wall-clock training budget; None: exactly `epochs`
    budget_note: str = ""


SPECS: dict[str, ModelSpec] = {
    OURS: ModelSpec(
        id=OURS, title="Spine segmenter: Attention U-Net (4 classes)",
        architecture="Attention U-Net, encoder 12-24-48-96, bottleneck 192, BN+ReLU double convs, "
                     "additive attention gates on the skips, softmax over 4 classes",
        builder="attention_unet", builder_kwargs={"filters": (12, 24, 48, 96, 192)},
        input_hw=(240, 192), epochs=40, batch_size=8, lr=2e-3, gradcam_layer="dec0_2_relu",
        reference=False, default=True, budget_min=24,
        description="Segments vertebrae, intervertebral discs and the spinal canal on a sagittal T2 lumbar "
                    "spine MRI slice (ours; the default)."),
    REF: ModelSpec(
        id=REF, title="Spine segmenter: U-Net reference (4 classes)",
        architecture="Plain U-Net of the original design: encoder 64-128-256, bottleneck 512, Conv+ReLU "
                     "double convs (no batch norm), transposed-conv upsampling, softmax over 4 classes",
        builder="unet", builder_kwargs={"filters": (64, 128, 256, 512)},
        input_hw=(160, 128), epochs=8, batch_size=8, lr=5e-4, gradcam_layer="dec0_conv2",
        reference=True, default=False, budget_min=13,
        description="The plain U-Net reference (~7.7 M parameters), trained on the same patient split for "
                    "comparison with the Attention U-Net.",
        budget_note="Fixed compute budget: {budget:.0f} minutes of training wall time on 2 shared CPU cores, "
                    "at {h}x{w} (half the dataset's resolution); that fitted {epochs} epochs (about "
                    "{epoch_min:.1f} minutes per epoch for this 7.7 M-parameter network). Its figures say what "
                    "this architecture reaches in that budget, not its ceiling."),
}


# -- data ----------------------------------------------------------------------------
def data_dir() -> Path:
    """The shared data folder: $JOINTSCAN_DATA_DIR, else <repo>/../shared/data."""
    env = os.environ.get("JOINTSCAN_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


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


def write_manifest(rows: Iterable[dict[str, str]], path: str | os.PathLike) -> Path:
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image_path", "mask_path", "patient"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in ("image_path", "mask_path", "patient")})
    return path


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """A CSV with image_path, mask_path, patient; relative paths are taken relative to the CSV."""
    path = Path(path)
    rows = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image_path", "mask_path", "patient"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"manifest {path} lacks the column(s) {sorted(missing)}")
        for r in reader:
            row = {k: str(r[k]).strip() for k in ("image_path", "mask_path", "patient")}
            for k in ("image_path", "mask_path"):
                if not Path(row[k]).is_absolute():
                    row[k] = str(path.parent / row[k])
            rows.append(row)
    return rows


def patient_split(patients: Iterable[str], val_fraction: float = VAL_FRACTION, seed: int = SEED
                  ) -> tuple[list[str], list[str]]:
    """(train patients, validation patients): a seeded shuffle of the sorted unique ids, disjoint."""
    unique = sorted(set(patients), key=_natural)
    if len(unique) < 2:
        raise ValueError("a patient split needs at least two patients")
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
    return sorted(order[n_val:], key=_natural), sorted(order[:n_val], key=_natural)


def _natural(pid: str):
    return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def split_rows(rows: Sequence[dict[str, str]], val_patients: Iterable[str]
               ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    val = set(val_patients)
    return [r for r in rows if r["patient"] not in val], [r for r in rows if r["patient"] in val]


def load_pair(row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [0, 1] as the app decodes it, class-index mask uint8) of one manifest row."""
    from imaging.io import read_image

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


# -- augmentation (MRI-appropriate; no flips: sagittal anterior/posterior orientation matters) ----------
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


# -- loss --------------------------------------------------------------------------
def dice_ce_loss(background_weight: float = 0.0, smooth: float = 1.0):
    """Categorical cross-entropy + (1 - soft Dice), Dice averaged over classes computed on the whole
    batch; background enters the Dice average with `background_weight` (0: foreground classes only)."""
    from keras import ops

    weights = np.ones(N_CLASSES, np.float32)
    weights[0] = background_weight
    weights = weights / weights.sum()

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        ce = -ops.mean(ops.sum(y_true * ops.log(y_pred), axis=-1))
        inter = ops.sum(y_true * y_pred, axis=(0, 1, 2))
        denom = ops.sum(y_true, axis=(0, 1, 2)) + ops.sum(y_pred, axis=(0, 1, 2))
        soft_dice = (2.0 * inter + smooth) / (denom + smooth)
        return ce + 1.0 - ops.sum(soft_dice * ops.convert_to_tensor(weights))

    loss.__name__ = "dice_ce"
    return loss


# -- evaluation --------------------------------------------------------------------
def predict_probs(model, xs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Softmax maps of (n, h, w, 1) inputs through one compiled call (the serving path)."""
    import tensorflow as tf

    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    out = [np.asarray(infer(tf.convert_to_tensor(xs[i:i + batch_size]))) for i in range(0, len(xs), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,) + tuple(model.output_shape[1:]), np.float32)


def evaluate(model, rows: Sequence[dict[str, str]], hw: tuple[int, int], batch_size: int = 8) -> dict[str, Any]:
    """Dice per structure on `rows` at the masks' own resolution, as the app predicts.

    dice_<structure>: pooled over all slices (2 sum|A&B| / (sum|A| + sum|B|));
    patient_dice_<structure>: mean over patients of each patient's pooled Dice.
    """
    inter = np.zeros(N_CLASSES)
    total = np.zeros(N_CLASSES)
    per_patient: dict[str, np.ndarray] = {}
    for start in range(0, len(rows), 32):
        chunk = rows[start:start + 32]
        pairs = [load_pair(r) for r in chunk]
        xs = np.stack([spine_input(img, hw) for img, _ in pairs])
        probs = predict_probs(model, xs, batch_size)
        for r, (img, mask), p in zip(chunk, pairs, probs):
            pred = labels_from_probs(p, mask.shape)
            pp = per_patient.setdefault(r["patient"], np.zeros((2, N_CLASSES)))
            for c in range(1, N_CLASSES):
                a, b = pred == c, mask == c
                i, t = float((a & b).sum()), float(a.sum() + b.sum())
                inter[c] += i
                total[c] += t
                pp[0, c] += i
                pp[1, c] += t
    metrics: dict[str, Any] = {}
    for c in range(1, N_CLASSES):
        name = CLASS_NAMES[c]
        metrics[f"dice_{name}"] = round(2 * inter[c] / total[c], 4) if total[c] else None
        vals = [2 * v[0, c] / v[1, c] for v in per_patient.values() if v[1, c]]
        metrics[f"patient_dice_{name}"] = round(float(np.mean(vals)), 4) if vals else None
    fg = [metrics[f"dice_{s}"] for s in STRUCTURES if metrics[f"dice_{s}"] is not None]
    metrics["mean_dice"] = round(float(np.mean(fg)), 4) if fg else None
    metrics["n_slices"] = len(rows)
    metrics["n_patients"] = len(per_patient)
    return metrics


# -- training ----------------------------------------------------------------------
def build(spec: ModelSpec, input_hw: tuple[int, int] | None = None):
    from training.architectures import BUILDERS

    hw = input_hw or spec.input_hw
    return BUILDERS[spec.builder]((hw[0], hw[1], 1), n_classes=N_CLASSES, **spec.builder_kwargs)


class BudgetCosine:
    """Cosine learning-rate decay over a plan of epochs that a wall-clock budget may shorten.

    Without a budget the plan is `max_epochs`. With one, the plan is set after the first epoch (which
    includes tracing) and revised once after the second: as many epochs as fit in the budget at the
    measured pace, at most `max_epochs`. Training stops when the plan is done, so the schedule always
    decays fully. The number of epochs run is recorded, and `--epochs N` reproduces it without a budget.
    """

    def __init__(self, base_lr: float, steps_per_epoch: int, max_epochs: int, budget_s: float | None,
                 alpha: float = 0.02, log=print, tag: str = ""):
        self.base_lr, self.steps, self.max_epochs = base_lr, steps_per_epoch, max_epochs
        self.budget_s, self.alpha, self.log, self.tag = budget_s, alpha, log, tag
        self.plan = max_epochs

    def lr(self, epoch: int, batch: int) -> float:
        progress = min(1.0, (epoch * self.steps + batch) / max(1, self.plan * self.steps))
        return self.base_lr * (self.alpha + (1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * progress)))

    def callback(self):
        import keras

        outer = self

        class _Cb(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.t_start = self.t_epoch = time.perf_counter()
                self.epoch = 0

            def on_epoch_begin(self, epoch, logs=None):
                self.t_epoch = time.perf_counter()
                self.epoch = epoch

            def on_train_batch_begin(self, batch, logs=None):
                self.model.optimizer.learning_rate.assign(outer.lr(self.epoch, batch))

            def on_epoch_end(self, epoch, logs=None):
                now = time.perf_counter()
                if outer.budget_s and epoch in (0, 1):
                    pace = now - self.t_epoch
                    fit = epoch + 1 + int((outer.budget_s - (now - self.t_start)) // pace)
                    new_plan = max(epoch + 1, min(outer.max_epochs, fit))
                    if new_plan != outer.plan:
                        outer.log(f"[{outer.tag}] budget {outer.budget_s / 60:.0f} min at {pace:.0f} s/epoch: "
                                  f"plan {new_plan} epochs")
                    outer.plan = new_plan
                if epoch + 1 >= outer.plan:
                    self.model.stop_training = True

        return _Cb()


def train_one(spec: ModelSpec, train_rows, val_rows, *, epochs: int, input_hw: tuple[int, int],
              seed: int, budget_s: float | None = None, mixed_precision: bool = True, log=print):
    """Train a fresh model of `spec` on `train_rows`; returns (float32 model, history dict, wall s, epochs run).

    Training computes in mixed bfloat16 (about 1.5x faster on CPUs with AVX512-BF16; variables stay
    float32); the returned model is a float32 build of the same architecture holding the trained weights,
    so the shipped file computes in float32 like every other model.
    """
    import keras

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    xs, ys = load_arrays(train_rows, input_hw)
    vx, vy = load_arrays(val_rows, input_hw)
    log(f"[{spec.id}] {len(xs)} training / {len(vx)} validation slices at {input_hw[0]}x{input_hw[1]}, "
        f"at most {epochs} epoch(s)" + (f" within {budget_s / 60:.0f} min" if budget_s else ""))
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed_precision else "float32")
    try:
        model = build(spec, input_hw)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    bs = min(spec.batch_size, len(xs))
    steps = max(1, len(xs) // bs)
    plan = BudgetCosine(spec.lr, steps, epochs, budget_s, log=log, tag=spec.id)
    model.compile(optimizer=keras.optimizers.Adam(spec.lr), loss=dice_ce_loss(),
                  metrics=[keras.metrics.OneHotMeanIoU(N_CLASSES, name="miou")])
    eye = np.eye(N_CLASSES, dtype=np.float32)

    class Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            log(f"[{spec.id}] epoch {epoch + 1}/{plan.plan} " + " ".join(f"{k} {v:.4f}" for k, v in logs.items())
                + f" ({time.perf_counter() - t0:.0f} s)")

    hist = model.fit(_batches(xs, ys, bs, seed), steps_per_epoch=steps, epochs=epochs,
                     validation_data=(vx, eye[vy]), validation_batch_size=bs,
                     verbose=0, callbacks=[plan.callback(), Log()])
    wall = time.perf_counter() - t0
    history = {k: [round(float(v), 4) for v in vals] for k, vals in hist.history.items()}
    ran = len(history.get("loss", [])) or epochs
    shipped = build(spec, input_hw)                      # float32 policy
    shipped.set_weights(model.get_weights())
    return shipped, history, wall, ran


def _command(args_models: Sequence[str], quick: bool, out: str, extra: str = "") -> str:
    parts = ["python -m training.spine", "--models " + " ".join(args_models), f"--out {out}"]
    if quick:
        parts.insert(1, "--quick")
    return " ".join(parts) + extra


def export_one(spec: ModelSpec, model, out_dir: Path, *, val_rows, val_patients, train_patients, input_hw,
               epochs: int, seed: int, wall_s: float, command: str, data_desc: str, history: dict,
               budget_min: float | None = None,
               log=print) -> dict[str, Any]:
    """save_for_shipping -> reload -> evaluate the shipped file -> register_model (card written later)."""
    import keras

    from imaging.layers import custom_objects
    from training.export import register_model, save_for_shipping

    path = save_for_shipping(model, out_dir / f"{spec.id}.keras")
    shipped = keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    t0 = time.perf_counter()
    metrics = evaluate(shipped, val_rows, input_hw)
    log(f"[{spec.id}] shipped file on {len(val_patients)} validation patients: "
        + ", ".join(f"{k} {metrics[k]}" for k in ("dice_vertebra", "dice_disc", "dice_canal"))
        + f" ({time.perf_counter() - t0:.0f} s)")
    entry = {
        "id": spec.id, "task": TASK, "role": "segmenter", "version": "1.0.0", "title": spec.title,
        "architecture": spec.architecture, "reference": spec.reference, "default": spec.default,
        "file": path.name,
        "input": {"shape": [int(input_hw[0]), int(input_hw[1]), 1], "channels": ["image"],
                  "preprocessing": "tasks.spine.spine_input (resize, 1-99 percentile scaling)"},
        "outputs": ["labels"],
        "gradcam_layer": spec.gradcam_layer,
        "training": {
            "data": data_desc,
            "split": sorted(val_patients, key=_natural),
            "train_patients": sorted(train_patients, key=_natural),
            "seed": seed, "epochs": epochs, "command": command, "wall_time_s": round(wall_s, 1),
            "loss": "categorical cross-entropy + soft Dice (vertebra, disc, canal)",
            "augmentation": "rotation <= 10 deg, scale <= 10 %, shift <= 5 %, gamma 0.7-1.5, contrast, "
                            "brightness, light noise; no flips",
            "budget": (spec.budget_note.format(epochs=epochs, h=input_hw[0], w=input_hw[1], budget=budget_min,
                                               epoch_min=wall_s / 60 / max(epochs, 1))
                       if spec.budget_note and budget_min else None),
            "budget_min": budget_min,
            "precision": "trained in mixed bfloat16, shipped and evaluated in float32 (weights stored float16)",
            "final_train_loss": history.get("loss", [None])[-1],
            "final_val_loss": history.get("val_loss", [None])[-1],
        },
        "metrics": {**metrics, "evaluated_on": "validation patients, shipped float16-stored file, "
                                               "dataset resolution (256x320)"},
        "card": f"cards/{spec.id}.md",
        "description": spec.description,
    }
    return register_model(out_dir, entry, model=shipped)


def write_cards(out_dir: Path, log=print) -> None:
    """(Re)write the card of every spine model in `out_dir`'s registry, each with the others' figures beside."""
    from training.export import metrics_table, write_model_card

    reg_path = out_dir / "registry.json"
    if not reg_path.exists():
        return
    entries = [m for m in json.loads(reg_path.read_text()).get("models", []) if m.get("task") == TASK]
    keys = ["dice_vertebra", "dice_disc", "dice_canal", "mean_dice",
            "patient_dice_vertebra", "patient_dice_disc", "patient_dice_canal"]
    rows = {f"{m['id']}" + (" (reference)" if m.get("reference") else " (ours)"): m.get("metrics", {})
            for m in entries}
    for m in entries:
        tr = m.get("training", {})
        present = (out_dir / m["file"]).exists() and m["file"] not in _git_ignored(out_dir)
        sections = {
            "Training data": (
                f"{tr.get('data')}.\n\nSplit by patient (seeded, seed {tr.get('seed')}): "
                f"{len(tr.get('train_patients', []))} patients train, {len(tr.get('split', []))} validate; no "
                f"patient has slices on both sides. Validation patients: {', '.join(tr.get('split', []))}. "
                "There is no separate test set; the figures below are validation figures. No checkpoint was "
                "selected on them: the weights after the last epoch ship (the validation loss was only logged)."),
            "Training": (
                f"Loss: {tr.get('loss')}. Adam with cosine decay, batch 8; {tr.get('precision', 'float32')}. "
                f"Augmentation: {tr.get('augmentation')}. "
                f"Input {m['input']['shape'][0]}x{m['input']['shape'][1]} (preprocessing "
                "`tasks.spine.spine_input`, shared with the app). "
                f"{tr.get('epochs')} epochs, {tr.get('wall_time_s', 0):.0f} s wall on 2 shared CPU cores"
                + (f" (a {tr['budget_min']:.0f}-minute training budget decided how many epochs fit; the "
                   "regenerate command below repeats that number)" if tr.get("budget_min") else "") + "."
                + (f"\n\n**{tr['budget']}**" if tr.get("budget") else "")),
            "Metrics on held-out data": (
                "Dice per structure on the validation patients, measured on the reloaded shipped file at the "
                "dataset's resolution (probabilities resized bilinearly, then argmax, as the app does). "
                "`dice_*`: pooled over all validation slices; `patient_dice_*`: mean of per-patient Dice. "
                "Targets: vertebra >= 0.90, disc >= 0.85, canal >= 0.85.\n\n" + metrics_table(rows, keys)
                + "\n\nRerun `python benchmarks/spine_figures.py` for these figures with latency and file size."),
            "Known failure modes and limits": (
                "- Trained on 2-D sagittal T2 SPACE slices of one public dataset (SPIDER, 33 patients, "
                "downscaled by 2); other sequences (T1, STIR), axial slices, other scanners or fields of view "
                "are out of distribution and will segment worse or wrongly, without warning.\n"
                "- Lateral (parasagittal) slices, where the canal is thin or absent and the vertebrae show "
                "pedicles and facets, are the hardest: the canal is the first structure to be missed there.\n"
                "- The vertebra label covers the whole vertebra, so posterior elements appear as separate "
                "islands; the app counts as vertebrae only components that touch a disc. Vertebrae and discs "
                "cut by the image edge count like whole ones; a transitional or fused segment changes the "
                "count. Counts are not levels: the model does not name L1-S1.\n"
                "- Severely degenerated, collapsed or herniated discs, implants and metal artefacts are rare "
                "or absent in the training data.\n"
                "- Inputs are percentile-scaled per slice; a slice dominated by a bright artefact is "
                "normalised badly."),
        }
        if not present:
            sections["File"] = (f"The file `{m['file']}` is not committed to git (all committed models together "
                                "must stay under about 20 MiB); the registry reports it as missing until it is "
                                f"regenerated with `{tr.get('command')}`. The figures above were measured on the "
                                "shipped file before it was left out.")
        write_model_card(out_dir, m, sections)
    log(f"model cards written for {', '.join(m['id'] for m in entries)}")


def _git_ignored(out_dir: Path) -> set[str]:
    """File names listed in `<out_dir>/.gitignore` (models too large to commit are kept out of git)."""
    path = out_dir / ".gitignore"
    if not path.exists():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


# -- command line ------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.spine", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=[OURS, REF],
                   help=f"which models to train: {OURS} (alias ours), {REF} (alias ref)")
    p.add_argument("--out", default=str(REPO_ROOT / "models"), help="models folder (registry.json, cards/)")
    p.add_argument("--manifest", help="CSV with image_path, mask_path, patient (default: the shared data folder)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4 patients, 8 slices each, 1 epoch, 64x48 input; for tests and the notebook")
    p.add_argument("--epochs", type=int,
                   help="train every chosen model for exactly this many epochs (no time budget)")
    p.add_argument("--budget-min", type=float,
                   help="wall-clock training budget per model in minutes (default: each model's own; "
                        "the epochs that fit, at most the model's maximum, are run and recorded)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    p.add_argument("--cards-only", action="store_true", help="only rewrite the spine model cards in --out")
    args = p.parse_args(argv)
    if args.cards_only:
        write_cards(Path(args.out))
        return 0

    chosen = []
    for name in args.models:
        mid = ALIASES.get(name, name)
        if mid not in SPECS:
            p.error(f"unknown model {name!r}; choose from {', '.join(SPECS)}")
        chosen.append(mid)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    if args.manifest:
        rows = read_manifest(args.manifest)
        data_desc = f"manifest {args.manifest}"
    else:
        folder = dataset_dir()
        if not folder.is_dir():
            print(f"spine data not found at {folder}; set JOINTSCAN_DATA_DIR", file=sys.stderr)
            return 2
        rows = manifest_from_folder(folder)
        data_desc = ("SPIDER lumbar spine MRI (van der Graaf et al., Scientific Data 2024, CC BY 4.0): "
                     f"{len(rows)} sagittal T2 SPACE slices of {len({r['patient'] for r in rows})} patients, "
                     "downscaled by 2 to 256x320, masks of vertebrae, discs and spinal canal")
    train_p, val_p = patient_split([r["patient"] for r in rows], args.val_fraction, args.seed)
    if args.quick:
        train_p, val_p = train_p[:2], val_p[:2]
        keep = {}
        for r in rows:
            if r["patient"] in set(train_p + val_p):
                keep.setdefault(r["patient"], []).append(r)
        rows = [r for group in keep.values() for r in group[:8]]
        data_desc += " (quick smoke subset: 4 patients, 8 slices each)"
    train_rows, val_rows = split_rows(rows, val_p)
    print(f"patients: {len(train_p)} train, {len(val_p)} validation ({', '.join(val_p)}); "
          f"slices: {len(train_rows)} train, {len(val_rows)} validation", flush=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    for mid in chosen:
        spec = SPECS[mid]
        hw = (64, 48) if args.quick else spec.input_hw
        epochs = args.epochs or (1 if args.quick else spec.epochs)
        budget_min = None if (args.epochs or args.quick) else (args.budget_min or spec.budget_min)
        model, history, wall, ran = train_one(spec, train_rows, val_rows, epochs=epochs, input_hw=hw,
                                              seed=args.seed, budget_s=budget_min * 60 if budget_min else None,
                                              log=log)
        # The command that reproduces this file: the epochs actually run, without a time budget.
        command = _command([mid], args.quick, "models" if not args.quick else str(out_dir),
                           (f" --seed {args.seed}" if args.seed != SEED else "")
                           + (f" --manifest {args.manifest}" if args.manifest else "")
                           + ("" if args.quick else f" --epochs {ran}"))
        entry = export_one(spec, model, out_dir, val_rows=val_rows, val_patients=val_p, train_patients=train_p,
                           input_hw=hw, epochs=ran, seed=args.seed, wall_s=wall, command=command,
                           data_desc=data_desc, history=history, budget_min=budget_min, log=log)
        log(f"[{mid}] wrote {out_dir / entry['file']} ({entry['size_bytes'] / 2**20:.2f} MiB, "
            f"{entry['params']:,} parameters), training {wall:.0f} s, {ran} epochs")
        del model
    write_cards(out_dir, log=log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
