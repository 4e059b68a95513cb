"""The knee grader's training-data check, fitted on the real training radiographs.

    python -m training.knee.ood --out models [--layer m0_s0_down_relu]

Features: the grader's input as the app builds it (the upload as given, before its mirror), at an early
layer of the first ensemble member (tasks.ood). Fitted on the knee_kl training radiographs, threshold at
1% false refusals on the validation radiographs (cross-fitted by patient for the figure), then measured on
every other kind of image in ../shared/data, generated documents and noise, which must be refused.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from model_loader import ModelRegistry
from tasks.knee import grader_input
from training.knee.data import list_split, patient_of, read_grey01
from training.ood import (attach, describe, fit_check, model_features,
                          probe_images)
from training.toolbox.runs import data_dir

MODEL_ID = "knee-kl-grader"
LAYER = "m0_s0_down_relu"
# The threshold refuses 0.5% of the validation radiographs: cross-fitted by patient, a 1% quantile refuses
# about 1.2% of unseen knees, over the 1% the product promises.
RATE = 0.005


def inputs_of(images01, size: int) -> list[np.ndarray]:
    return [grader_input(img, size)[..., None] for img in images01]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--layer", default=LAYER)
    parser.add_argument("--rate", type=float, default=RATE, help="false-refusal rate on validation radiographs")
    parser.add_argument("--train", type=int, default=0, help="at most this many training radiographs (0: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, register nothing")
    args = parser.parse_args(argv)
    registry = ModelRegistry(args.out)
    model = registry.load(MODEL_ID)
    size = int(model.entry.input_shape[0])
    train_rows = list_split("train")
    if args.train:
        train_rows = train_rows[:: max(1, len(train_rows) // args.train)][:args.train]
    val_rows = list_split("val")
    train = model_features(model, inputs_of((read_grey01(p) for p, _, _ in train_rows), size), args.layer)
    val = model_features(model, inputs_of((read_grey01(p) for p, _, _ in val_rows), size), args.layer)
    probes = {kind: model_features(model, inputs_of(images, size), args.layer)
              for kind, images in probe_images(data_dir(), own={"knee"}).items()}
    fit = fit_check(train, val, [patient_of(p.stem) for p, _, _ in val_rows], probes, args.rate,
                    threshold_from=f"{len(val_rows)} validation radiographs")
    describe(MODEL_ID, fit)
    if not args.dry_run:
        attach(args.out, dataclasses.asdict(registry.get(MODEL_ID)), args.layer, fit.distribution, fit.threshold,
               args.rate, f"{len(train_rows)} knee_kl training radiographs", fit.figures,
               f"python -m training.knee.ood --out models --layer {args.layer} --rate {args.rate}",
               data="real knee radiographs of the Osteoarthritis Initiative")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
