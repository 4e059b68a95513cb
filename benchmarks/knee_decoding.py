"""What the shipped knee grader gains from test-time augmentation beyond the mirror and from grade cut-offs
fitted on data, on the REAL radiographs of ../shared/data/knee_kl (val split, 826 knees).

    .venv/bin/python benchmarks/knee_decoding.py [--models models] [--shift 6] [--scale 0.06]

Views: the task's own reading (the image and its mirror, averaged), the same at scale 1 +- `--scale` about the
centre and shifted by +- `--shift` pixels along each axis, and every view averaged. Cut-offs: the regression
value's four grade boundaries (0.5, 1.5, 2.5, 3.5 as served) fitted by coordinate search for accuracy, QWK or
their sum, cross-fitted over five folds of patients (each fold decoded with cut-offs fitted on the other
four), so no knee is decoded with cut-offs it helped to choose. Val also chose each grader's epoch, so these
remain validation figures. Skips (exit 0) when the data or the model is absent. Nothing here is served: it
measures whether either lever is worth serving.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from model_loader import ModelRegistry  # noqa: E402
from tasks.knee import N_GRADES  # noqa: E402
from tasks.metrics import accuracy, kappa_figure, mae  # noqa: E402
from training.knee import data as knee_data  # noqa: E402
from training.knee.evaluate import predict_tta  # noqa: E402
from training.knee.train import set_threads  # noqa: E402

MODEL_ID = "knee-kl-grader"
SERVED_CUTS = (0.5, 1.5, 2.5, 3.5)   # tasks.knee.decode_value's boundaries: round half up


def warp(images: np.ndarray, scale: float, dx: float, dy: float) -> np.ndarray:
    """Each uint8 image scaled about its centre and shifted (reflected borders, as a crop a little off)."""
    size = images.shape[1]
    c = size / 2
    m = np.array([[scale, 0, c - scale * c + dx], [0, scale, c - scale * c + dy]], np.float32)
    return np.stack([cv2.warpAffine(im, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                     for im in images])


def grades_at(values: np.ndarray, cuts) -> np.ndarray:
    return np.searchsorted(np.asarray(cuts, float), values, side="right")


def fit_cuts(values: np.ndarray, grades: np.ndarray, objective, rounds: int = 3) -> list[float]:
    """Coordinate search of the four boundaries from the served ones, each within +-0.4 in steps of 0.02."""
    cuts = list(SERVED_CUTS)
    for _ in range(rounds):
        for i in range(len(cuts)):
            best = (objective(grades_at(values, cuts), grades), cuts[i])
            for t in np.arange(SERVED_CUTS[i] - 0.4, SERVED_CUTS[i] + 0.401, 0.02):
                trial = cuts[:i] + [float(t)] + cuts[i + 1:]
                if all(a < b for a, b in zip(trial, trial[1:])):
                    score = objective(grades_at(values, trial), grades)
                    if score > best[0]:
                        best = (score, float(t))
            cuts[i] = best[1]
    return cuts


def cross_fitted(values: np.ndarray, grades: np.ndarray, patients: np.ndarray, objective, folds: int = 5
                 ) -> np.ndarray:
    ids = np.unique(patients)
    fold_of = dict(zip(ids, np.random.default_rng(0).permutation(len(ids)) % folds))
    fold = np.array([fold_of[p] for p in patients])
    out = np.empty_like(grades)
    for k in range(folds):
        cuts = fit_cuts(values[fold != k], grades[fold != k], objective)
        out[fold == k] = grades_at(values[fold == k], cuts)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--shift", type=float, default=6.0, help="pixels")
    ap.add_argument("--scale", type=float, default=0.06)
    args = ap.parse_args(argv)
    if not knee_data.available():
        print(f"SKIP: real knee data not found at {knee_data.knee_dir()} (set JOINTSCAN_DATA_DIR)")
        return 0
    reg = ModelRegistry(args.models)
    if reg.get(MODEL_ID) is None or reg.problem(MODEL_ID):
        print(f"SKIP: {MODEL_ID} unavailable in {args.models}")
        return 0
    set_threads()
    t0 = time.perf_counter()
    model = reg.load(MODEL_ID)
    val = knee_data.load_split("val", reg.get(MODEL_ID).input_shape[0])
    grades = val.grades
    patients = np.array([knee_data.patient_of(s) for s in val.ids])
    s, d = args.scale, args.shift
    views = {"served (image + mirror)": (1.0, 0, 0), f"scale {1 + s:g}": (1 + s, 0, 0),
             f"scale {1 - s:g}": (1 - s, 0, 0), f"shift x +{d:g}": (1.0, d, 0), f"shift x -{d:g}": (1.0, -d, 0),
             f"shift y +{d:g}": (1.0, 0, d), f"shift y -{d:g}": (1.0, 0, -d)}
    values = {name: predict_tta(model, val.images if name.startswith("served") else warp(val.images, *v))["kl_value"]
              for name, v in views.items()}
    served = values["served (image + mirror)"]
    scales = np.mean([served, values[f"scale {1 + s:g}"], values[f"scale {1 - s:g}"]], axis=0)
    every = np.mean(list(values.values()), axis=0)

    def row(name: str, pred: np.ndarray) -> None:
        print(f"{name:58} {accuracy(pred, grades):>8.3f} {kappa_figure(grades, pred, N_GRADES):>6.3f} "
              f"{mae(pred, grades):>6.3f}")

    print(f"knee KL on {len(grades)} val knees ({len(np.unique(patients))} patients), the shipped {MODEL_ID}")
    print(f"{'':58} {'accuracy':>8} {'QWK':>6} {'MAE':>6}")
    for name, v in values.items():
        row(f"view: {name}", grades_at(v, SERVED_CUTS))
    row(f"views: served and both scales averaged", grades_at(scales, SERVED_CUTS))
    row(f"views: all {len(values)} averaged", grades_at(every, SERVED_CUTS))
    objectives = {"accuracy": lambda p, g: accuracy(p, g),
                  "QWK": lambda p, g: kappa_figure(g, p, N_GRADES),
                  "accuracy + QWK": lambda p, g: accuracy(p, g) + kappa_figure(g, p, N_GRADES)}
    for view_name, v in (("served", served), ("all views", every)):
        for name, objective in objectives.items():
            cuts = fit_cuts(v, grades, objective)
            row(f"{view_name}, cut-offs for {name} (cross-fitted)", cross_fitted(v, grades, patients, objective))
            print(f"{'':4}(fitted on all val: {', '.join(f'{c:.2f}' for c in cuts)})")
    print(f"{'targets of the issue':58} {'>=0.67':>8} {'>=0.86':>6} {'<=0.40':>6}")
    print(f"\n({time.perf_counter() - t0:.0f} s; rerun: python benchmarks/knee_decoding.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
