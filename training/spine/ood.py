"""The spine segmenters' training-data check, fitted on the real training slices.

    python -m training.spine.ood --out models [--models spine-attention-unet] [--layer enc1_2_relu]

Features: the segmenter's input as the app builds it, at an early encoder layer (tasks.ood). Fitted on
the slices of the training patients, threshold on the validation patients' slices (cross-fitted by patient
for the figure), then measured on every other kind of image in ../shared/data, generated documents and
noise, which must be refused.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from imaging.io import read_image
from model_loader import ModelRegistry
from tasks.spine import spine_input
from training.ood import attach, describe, fit_check, model_features, probe_images
from training.spine.data import manifest_from_folder, patient_split, split_rows
from training.toolbox.runs import data_dir

LAYERS = {"spine-attention-unet": "enc1_2_relu", "spine-unet-ref": "enc1_conv2"}
# The threshold: 1.25 times the largest distance among the validation patients' slices. With 7 validation
# patients a quantile is not enough: each patient's slices lie at their own distance (medians 8 to 12), and
# leaving one patient out, a 1% quantile of the others refused 7% of the slices of a new patient. Other
# anatomy lies at 23 and beyond.
RATE, MARGIN = 0.0, 1.25


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+", default=["spine-attention-unet"])
    parser.add_argument("--layer", default=None, help="the layer to read (default: LAYERS of the model)")
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--margin", type=float, default=MARGIN)
    parser.add_argument("--dry-run", action="store_true", help="print the figures, register nothing")
    args = parser.parse_args(argv)
    registry = ModelRegistry(args.out)
    rows = manifest_from_folder()
    _, val_patients = patient_split([r["patient"] for r in rows])
    train_rows, val_rows = split_rows(rows, val_patients)
    images = {name: [read_image(Path(r["image_path"]).read_bytes()).pixels for r in part]
              for name, part in (("train", train_rows), ("val", val_rows))}
    probes = probe_images(data_dir(), own={"spine"})
    for model_id in args.models:
        model = registry.load(model_id)
        layer = args.layer or LAYERS[model_id]
        hw = tuple(model.entry.input_shape[:2])
        feats = lambda imgs: model_features(model, [spine_input(i, hw) for i in imgs], layer)  # noqa: E731
        fit = fit_check(feats(images["train"]), feats(images["val"]), [r["patient"] for r in val_rows],
                        {kind: feats(imgs) for kind, imgs in probes.items()}, args.rate,
                        threshold_from=f"{len(val_rows)} slices of {len(val_patients)} validation patients",
                        margin=args.margin)
        describe(model_id, fit)
        if not args.dry_run:
            attach(args.out, dataclasses.asdict(registry.get(model_id)), layer, fit.distribution, fit.threshold,
                   args.rate, f"{len(train_rows)} slices of the SPIDER training patients", fit.figures,
                   f"python -m training.spine.ood --out models --models {model_id} --layer {layer} --rate {args.rate} "
                   f"--margin {args.margin}",
                   data="real sagittal T2 lumbar spine MRI (SPIDER)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
