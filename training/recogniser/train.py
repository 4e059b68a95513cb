"""Train, evaluate and export the image recogniser (tasks/recognition.py).

    python -m training.recogniser --out models                 # held-out figures, then the shipped model
    python -m training.recogniser --quick --out /tmp/rec       # tiny smoke run (tests)

One fit that leaves out the held-out patients, cases and files (training/recogniser/data.py); the
confusion matrix on them is the shipped model's own, as the card says. Training views are drawn once per fit from a seeded
generator (kinds balanced), so a fit is reproducible; the model is small enough that a fit takes
a few minutes on 2 cores, so no checkpointing is needed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tasks.metrics import accuracy, confusion_matrix
from tasks.recognition import INPUT_SIZE, KINDS, RECOGNITION, letterbox
from training.recogniser.data import (HELD_OUT_DICOM, HELD_OUT_HANDS, HELD_OUT_SIJ_CASES, OTHER_OF, Source,
                                      document, far_view, phantom_sources, real_sources, sample, texture)
from training.toolbox.runs import data_dir

MODEL_ID = "image-recogniser"
VERSION = "1.0.0"
SEED = 20261202


def build_model(size: int = INPUT_SIZE, widths: tuple[int, ...] = (16, 32, 64, 96)):
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for i, width in enumerate(widths[1:], start=1):
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=f"block{i}")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
    x = layers.Conv2D(widths[-1], 3, padding="same", use_bias=False, name="gradcam_conv")(x)
    x = layers.BatchNormalization(name="gradcam_bn")(x)
    x = layers.ReLU(name="gradcam_relu")(x)
    pooled = layers.Concatenate(name="pooled")([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    pooled = layers.Dropout(0.2, name="dropout")(pooled)
    outputs = layers.Dense(len(KINDS), activation="softmax", name="kind")(pooled)
    return keras.Model(inputs, outputs, name="image_recogniser")


def views(sources: list[Source], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = np.zeros((n, INPUT_SIZE, INPUT_SIZE, 1), np.uint8)
    ys = np.zeros(n, np.int64)
    for i, (img, label) in enumerate(sample(sources, rng, n)):
        xs[i, :, :, 0] = np.rint(letterbox(img) * 255)
        ys[i] = label
    return xs, ys


def held_out_set(sources: list[Source], seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The held-out images as they are (no augmentation), far views of them as the 'other' kinds,
    and fresh documents and textures: (x, y, origin of each)."""
    rng = np.random.default_rng(seed)
    images, labels, origins = [], [], []
    for s in sources:
        images.append(s.image)
        labels.append(s.label)
        origins.append("phantom" if "phantom" in s.group else "real")
    task_sources = [s for s in sources if s.kind in OTHER_OF]
    for _ in range(200):
        s = task_sources[int(rng.integers(len(task_sources)))]
        images.append(far_view(s, rng))
        labels.append(KINDS.index(OTHER_OF[s.kind]))
        origins.append("far view")
    for _ in range(150):
        images.append(document(rng, sources[int(rng.integers(len(sources)))].image if rng.random() < 0.4 else None))
        labels.append(KINDS.index("document"))
        origins.append("made up")
        images.append(texture(rng))
        labels.append(KINDS.index("photo_or_noise"))
        origins.append("made up")
    x = np.stack([letterbox(img) for img in images])[..., None].astype(np.float32)
    return x, np.asarray(labels), origins


def fit(sources: list[Source], n_views: int, epochs: int, seed: int, log: Callable[[str], None]):
    import keras

    keras.utils.set_random_seed(seed)
    t0 = time.time()
    x, y = views(sources, n_views, seed)
    log(f"views: {len(x)} drawn in {time.time() - t0:.0f} s; per kind {np.bincount(y, minlength=len(KINDS)).tolist()}")
    model = build_model()
    steps = epochs * int(np.ceil(len(x) / 64))
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x.astype(np.float32) / 255.0, y, batch_size=64, epochs=epochs, verbose=2, shuffle=True)
    return model, time.time() - t0


def matrix_markdown(matrix: np.ndarray) -> str:
    short = [k.replace("_", " ") for k in KINDS]
    head = "| true \\ recognised | " + " | ".join(short) + " | n | recall |\n|---" + "|---" * (len(KINDS) + 2) + "|\n"
    rows = []
    for i, name in enumerate(short):
        n = int(matrix[i].sum())
        if n:
            rows.append(f"| {name} | " + " | ".join(str(int(v)) for v in matrix[i]) + f" | {n} | {matrix[i, i] / n:.3f} |")
    return head + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--views", type=int, default=32000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch, for tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.views, args.epochs = 400, 1
    log = print
    t0 = time.time()
    root = data_dir()
    sources = real_sources(root, knee_per_grade=6 if args.quick else 250)
    sources += phantom_sources(*((8, 8, 4) if args.quick else (300, 300, 120)))
    if not sources:
        raise SystemExit("no sources")
    train = [s for s in sources if not s.held_out]
    held = [s for s in sources if s.held_out]
    log(f"sources: {len(train)} training, {len(held)} held out; decoded in {time.time() - t0:.0f} s")

    model, wall_eval = fit(train, args.views, args.epochs, SEED, log)
    x_h, y_h, origins = held_out_set(held, SEED + 1)
    predicted = np.asarray(model.predict(x_h, batch_size=256, verbose=0)).argmax(axis=1)
    matrix = confusion_matrix(y_h, predicted, len(KINDS))
    origin = np.asarray(origins)
    by_origin = {o: round(accuracy(predicted[origin == o], y_h[origin == o]), 4) for o in sorted(set(origins))}
    overall = accuracy(predicted, y_h)
    log("held-out confusion (rows true, columns recognised, order " + ", ".join(KINDS) + "):\n" + str(matrix))
    log(f"held-out accuracy {overall:.4f}; by origin {by_origin}")

    args.out.mkdir(parents=True, exist_ok=True)
    from training.export import register_model, save_for_shipping, write_model_card

    save_for_shipping(model, args.out / f"{MODEL_ID}.keras")
    command = "python -m training.recogniser --out models" + (" --quick" if args.quick else
                                                              f" --views {args.views} --epochs {args.epochs}")
    entry: dict[str, Any] = {
        "id": MODEL_ID, "task": RECOGNITION, "role": "recogniser", "version": VERSION,
        "title": "Image recogniser: which anatomy and modality an upload is",
        "architecture": "Compact CNN on the whole image letterboxed to 96x96: 3x3 stride-2 stem (16), three "
                        "separable-conv BN+ReLU blocks (32, 64, 96) with max-pooling, 3x3 conv 96 "
                        "('gradcam_conv'), global average and max pooling, dropout 0.2, softmax over "
                        f"{len(KINDS)} kinds",
        "reference": False, "default": True, "file": f"{MODEL_ID}.keras",
        "input": {"shape": [INPUT_SIZE, INPUT_SIZE, 1], "channels": ["image"], "crop": "letterbox"},
        "outputs": ["kind"], "gradcam_layer": "gradcam_conv",
        "training": {"command": command, "seed": SEED, "epochs": args.epochs, "views": args.views,
                     "wall_time_s": round(wall_eval, 1),
                     "held_out": {"sij_cases": list(HELD_OUT_SIJ_CASES), "sij_dicom": "patient1",
                                  "hands": list(HELD_OUT_HANDS), "dicom": list(HELD_OUT_DICOM),
                                  "knee": "the dataset's val split", "spine": "training.spine validation patients",
                                  "phantoms": "the generators' test seeds"}},
        "metrics": {"held_out": {"accuracy": round(overall, 4), "by_origin": by_origin, "n": int(matrix.sum()),
                                 "kinds": list(KINDS), "confusion": matrix.tolist()}},
        "card": f"cards/{MODEL_ID}.md",
        "description": "Says what an upload is (knee or hand radiograph, sagittal lumbar spine MRI, semi-coronal "
                       "sacroiliac MRI, or something else) before a task reads it; a task refuses an upload "
                       "confidently recognised as another kind.",
    }
    stored = register_model(args.out, entry, model=model)
    write_model_card(args.out, stored, {
        "Training data": (
            "Real images of every folder of `../shared/data`, decoded as uploads are: knee radiographs "
            "(`knee_kl`, 250 per grade and split), sagittal spine MRI (`spine_mri`, every slice), semi-coronal "
            "SIJ MRI (`sij_mri_nifti` every slice of every T1W and STIR volume, normalised per volume; "
            "`sij_mri_dicom`), children's hand radiographs, and the other DICOM files (chest, tibia, ankle CT, "
            "MR) as 'other' kinds; phantoms of the sacroiliac, knee and hand tasks as their kinds; and made-up "
            "negatives: the task images turned 90-270 degrees or cropped to 15-40% (as 'other radiograph' or "
            "'other MRI or CT'), generated documents, tables and screenshots (some with a picture pasted in), "
            "fractal textures, noise, smooth scenes and blank frames. Kinds are balanced when views are drawn.\n\n"
            "Held out by patient, case or file (never by image): SIJ cases " + ", ".join(HELD_OUT_SIJ_CASES)
            + " and the DICOM patient, hands " + ", ".join(HELD_OUT_HANDS) + ", the files "
            + ", ".join(HELD_OUT_DICOM) + ", the knee dataset's validation patients, the spine validation "
            "patients, and the phantoms of the generators' test seeds. The shipped model is the one measured "
            "below: it never saw the held-out sources."),
        "Metrics on held-out data": (
            f"Accuracy {overall:.3f} over {int(matrix.sum())} held-out images; by origin: "
            + ", ".join(f"{k} {v:.3f}" for k, v in by_origin.items()) + ".\n\n" + matrix_markdown(matrix)
            + "\n\nBaseline: always the most frequent held-out kind would score "
            f"{matrix.sum(axis=1).max() / matrix.sum():.3f}."),
        "Known failure modes and limits": (
            "Only five real hand radiographs (children) and a handful of other-anatomy DICOM files exist here, so "
            "'hand radiograph' rests largely on phantoms and 'other radiograph' on four real files plus made-up "
            "views; adult hands, lateral knee views, other MRI planes (axial SIJ, sagittal cervical spine) and "
            "CT were never seen and may be misnamed. A refusal needs 50% certainty; below it the upload goes on "
            "to the task, whose models' own training-data checks then judge it. Not for clinical use."),
    })
    log(json.dumps(stored["metrics"]["held_out"]["by_origin"]))
    log(f"done in {time.time() - t0:.0f} s")
    return 0
