"""The hand models' training-data checks: the detector on whole radiographs, each scorer on joint crops.

    python -m training.hand.ood --out models [--patients 300]

The detector reads the letterboxed radiograph, a scorer the square crop of a detected joint (10% margin),
both as the app builds them (tasks.hand). Fitted on training-patient phantoms, threshold at 1% false
refusals on the validation patients' phantoms (cross-fitted by patient for the figure), then measured on
test-patient phantoms, on the real children's hands of ../shared/data (the detector's boxes; a child's
finger joints with open growth plates must be refused by the scorers, which only know adult joints) and
on every other kind of image there, documents and noise.

Folded into the registry's `ood` block (tasks.ood): an older detector file that computed its own distance
as an extra "ood" output is re-saved without it (`strip_builtin_check`).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from model_loader import ModelRegistry
from tasks.hand import (JOINT_NAMES, classify_detection, crop_square, decode_detections, detector_input,
                        scorer_input)
from training.hand.config import DETECTOR_ID, POSITION_ID, SCORER_ID
from training.ood import attach, describe, fit_check, model_features, probe_images
from training.phantoms.hand import CHILD_POOL, PATIENT_POOL, generate_hand, split_patients, visits
from training.toolbox.runs import data_dir

# Chosen by the share of real children's hands and other images refused at the same false-refusal rate.
LAYERS = {DETECTOR_ID: "stem_relu", SCORER_ID: "block2b_relu", POSITION_ID: "block1b_relu"}
# Cross-fitted by patient, a 1% quantile refuses about 1.2% of unseen patients' inputs; 0.5% keeps it under 1%.
RATE = 0.005
DATA = "synthetic adult hand phantoms"
DETECTOR_DATA = "synthetic adult and child hand phantoms"
CHILD_SHARE = 0.3           # the detector's check: children among its phantoms, as in its training set


def phantoms(split: str, n_patients: int, pool: range = PATIENT_POOL
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(radiographs 0-1, their true joint boxes, patient ids) of the split's first patients, every visit."""
    patients = split_patients(list(pool[:n_patients * 10]))[split][:n_patients]
    images, boxes, groups = [], [], []
    for pid, t in visits(patients):
        case = generate_hand(pid, t)
        images.append(case.image.astype(np.float32) / 255.0)
        boxes.append(np.asarray(case.boxes, np.float64))
        groups.append(pid)
    return images, boxes, groups


def crops_of(images: list[np.ndarray], boxes: list[np.ndarray], size: int, position_aware: bool) -> list[np.ndarray]:
    """Scorer inputs of every joint box, as tasks.hand builds them."""
    out = []
    for img, bs in zip(images, boxes):
        for j, box in enumerate(bs):
            crop, _ = crop_square(img, box)
            out.append(scorer_input(crop, size, j if position_aware else None))
    return out


def detected_boxes(detector, images: list[np.ndarray]) -> list[np.ndarray]:
    """The boxes the detector finds (not missing) on each image, in image pixels: what a scorer is given."""
    size = int(detector.entry.input_shape[0])
    found = []
    for img in images:
        x, lb = detector_input(img, size)
        out = detector(x)
        joints = decode_detections(out["heatmap"][0], out["box"][0], lb)
        found.append(np.array([d["box"] for d in joints if classify_detection(d["confidence"]) != "missing"]
                              ).reshape(-1, 4))
    return found


def strip_builtin_check(models_dir: Path) -> bool:
    """Re-save a detector that carries the old built-in "ood" output without it; True when it did."""
    import keras

    from training.export import register_model, save_for_shipping

    registry = ModelRegistry(models_dir)
    entry = registry.get(DETECTOR_ID)
    if entry is None or "ood" not in entry.outputs:
        return False
    model = registry.load(DETECTOR_ID).model
    heads = {k: v for k, v in model.output.items() if k != "ood"}
    save_for_shipping(keras.Model(model.inputs, heads, name=model.name), models_dir / entry.file)
    raw = dataclasses.asdict(entry)
    raw["outputs"] = [o for o in entry.outputs if o != "ood"]
    raw["input"] = {k: v for k, v in entry.input.items() if not k.startswith("ood")}
    raw["architecture"] = raw["architecture"].replace(
        "; plus a Mahalanobis out-of-distribution output on the pooled bottleneck", "")
    register_model(models_dir, raw)
    return True


def fit_checks(out_dir: Path, model_ids=tuple(LAYERS), patients: int = 200, rate: float = RATE,
               layer: str | None = None, dry_run: bool = False, log=print) -> dict[str, Any]:
    """Fit (and unless `dry_run`, register) the checks of `model_ids` in `out_dir`; their figures by id."""
    out_dir = Path(out_dir)
    if not dry_run and strip_builtin_check(out_dir):
        log(f"{DETECTOR_ID}: re-saved without its built-in ood output")
    registry = ModelRegistry(out_dir)
    sizes = (("train", patients), ("val", max(4, patients // 4)), ("test", max(4, patients // 4)))
    sets = {split: phantoms(split, n) for split, n in sizes}
    # The detector also trains on children: its check knows them (the scorers' checks must not)
    kids = {split: phantoms(split, max(2, int(n * CHILD_SHARE)), CHILD_POOL) for split, n in sizes}
    with_kids = {s: tuple(a + b for a, b in zip(sets[s], kids[s])) for s in sets}
    probes = probe_images(data_dir(), own=set())
    detector = registry.load(DETECTOR_ID)
    figures = {}
    for model_id in model_ids:
        model = registry.load(model_id)
        chosen = layer or LAYERS[model_id]
        size = int(model.entry.input_shape[0])
        if model_id == DETECTOR_ID:
            def inputs(images):
                return [detector_input(i, size)[0][0] for i in images]
            feats = {s: model_features(model, inputs(with_kids[s][0]), chosen) for s in with_kids}
            groups = with_kids["val"][2]
            probe_feats = {k: model_features(model, inputs(v), chosen) for k, v in probes.items()}
            what = "radiographs"
        else:
            position = model_id == POSITION_ID
            feats = {s: model_features(model, crops_of(sets[s][0], sets[s][1], size, position), chosen) for s in sets}
            groups = [g for g in sets["val"][2] for _ in JOINT_NAMES]
            # What the scorer would be given: the crops of the detector's boxes on each probe image.
            probe_feats = {}
            for kind, images in probes.items():
                crops = [scorer_input(crop_square(img, b)[0], size, 0 if position else None)
                         for img, bs in zip(images, detected_boxes(detector, images)) for b in bs]
                if crops:
                    probe_feats[kind] = model_features(model, crops, chosen)
            what = "joint crops"
        fit = fit_check(feats["train"], feats["val"], groups, {**probe_feats, "test_phantoms": feats["test"]}, rate,
                        threshold_from=f"{len(feats['val'])} validation-patient {what}")
        describe(model_id, fit, log)
        figures[model_id] = fit.figures
        if not dry_run:
            attach(out_dir, dataclasses.asdict(registry.get(model_id)), chosen, fit.distribution, fit.threshold,
                   rate, f"{len(feats['train'])} training-patient phantom {what}", fit.figures,
                   f"python -m training.hand.ood --out models --models {model_id} --patients {patients} "
                   f"--layer {chosen} --rate {rate}", data=DETECTOR_DATA if model_id == DETECTOR_ID else DATA)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+", default=list(LAYERS))
    parser.add_argument("--patients", type=int, default=200,
                        help="training phantom patients (validation and test: a quarter as many)")
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--layer", default=None, help="the layer to read (default: LAYERS of each model)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, register nothing")
    args = parser.parse_args(argv)
    fit_checks(args.out, args.models, args.patients, args.rate, args.layer, args.dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
