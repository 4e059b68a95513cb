"""Validation figures of the shipped knee KL grader on the REAL radiographs (../shared/data/knee_kl, val split).

    python benchmarks/knee_figures.py [--models models] [--app-path 100]

What it measures: the shipped file (models/knee-kl-grader.keras, through the registry, checksum checked)
on all 826 val knees (patient-disjoint from train; there is no test split here, so these are validation
figures, and val also chose the epoch and the decision head). Preprocessing and decoding are the task's own
(tasks.knee: grader_input, test-time flip, decide). Per head (regression, CORAL, their mean): accuracy of
the rounded grade, quadratic-weighted kappa, MAE of the integer grade (and of the continuous value),
per-grade recall; the confusion matrix of the kept head; side detection; baselines beside them.
`--app-path N`: N val images also go through the full upload path (bytes -> imaging.io -> KneeTask.run)
to show it gives the same grades. Skips (exit 0) when the data folder or the model is absent.
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

import numpy as np  # noqa: E402

from imaging.io import read_image  # noqa: E402
from model_loader import ModelRegistry  # noqa: E402
from tasks.knee import GRADE_NAMES, TASK, decide  # noqa: E402
from tasks.metrics import accuracy, kappa_figure, mae  # noqa: E402
from training.knee import data as knee_data  # noqa: E402
from training.knee.evaluate import figures, predict_tta  # noqa: E402
from training.knee.train import set_threads  # noqa: E402

MODEL_ID = "knee-kl-grader"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--app-path", type=int, default=100, help="val images also run through the upload path")
    args = ap.parse_args(argv)

    if not knee_data.available():
        print(f"SKIP: real knee data not found at {knee_data.knee_dir()} (set JOINTSCAN_DATA_DIR)")
        return 0
    reg = ModelRegistry(args.models)
    entry = reg.get(MODEL_ID)
    if entry is None or reg.problem(MODEL_ID):
        print(f"SKIP: {MODEL_ID} unavailable in {args.models}: {reg.problem(MODEL_ID) if entry else 'not registered'}")
        return 0

    set_threads()
    lm = reg.load(MODEL_ID)
    size = entry.input_shape[0]
    head = entry.input.get("decision_head", "regression")
    t = time.perf_counter()
    val = knee_data.load_split("val", size)
    pred = predict_tta(lm, val.images)
    figs = figures(val.grades, pred)
    side_acc = float((pred["canon_ok"] > 0.5).mean())
    n = len(val)
    print(f"Knee KL grading, VALIDATION figures (val split, {n} knees, real OAI radiographs; no test split exists)")
    print(f"model {MODEL_ID} v{entry.version} sha256 {entry.sha256[:12]}, {entry.params:,} parameters, "
          f"{entry.size_bytes / 1024:.0f} KiB, input {size} px, test-time flip; decision head kept: {head}")
    for i, r in enumerate(entry.training.get("members") or [entry.training]):
        first = r.get("first_stage") or {}
        print(f"training, grader {i + 1}: seed {r.get('seed')}, "
              + (f"{first.get('epochs_run')} epochs at {first['config']['size']} px "
                 f"({(first.get('wall_time_s') or 0) / 60:.0f} min), then " if first else "")
              + f"{r.get('epochs')} epochs at {r.get('size', size)} px ({(r.get('wall_time_s') or 0) / 60:.0f} min), "
              f"best epoch {r.get('best_epoch')} (chosen on val)")
    print()

    majority = np.zeros(n, int)
    rows = [(f"{h} head" + (" (kept)" if h == head else ""), figs[h]) for h in figs]
    print(f"{'':34} {'accuracy':>8} {'QWK':>6} {'MAE':>6} {'MAE(cont)':>9}")
    for name, f in rows:
        print(f"{name:34} {f['accuracy']:>8.3f} {f['qwk']:>6.3f} {f['mae']:>6.3f} {f['mae_continuous']:>9.3f}")
    print(f"{'baseline: always KL 0':34} {accuracy(majority, val.grades):>8.3f} "
          f"{kappa_figure(val.grades, majority, 5):>6.3f} {mae(majority, val.grades):>6.3f}")
    print(f"{'calibration: 2.8 M res-CNN 128 px':34} {0.493:>8.3f} {0.72:>6.3f} {0.62:>6.3f}")
    print(f"{'original design (regression)':34} {'':>8} {'':>6} {0.87:>6.3f}")
    print(f"{'published, ImageNet-pretrained':34} {0.70:>8.3f} {0.88:>6.3f}")
    print(f"{'targets of the issue':34} {'>=0.65':>8} {'>=0.85':>6} {'<=0.45':>6}")
    k = figs[head]
    print(f"\nratios to the targets ({head}): accuracy {k['accuracy'] / 0.65:.2f}, QWK {k['qwk'] / 0.85:.2f}, "
          f"MAE {0.45 / k['mae']:.2f} (>= 1 meets the target)")
    print(f"ratios to the calibration CNN: accuracy {k['accuracy'] / 0.493:.2f}, QWK {k['qwk'] / 0.72:.2f}, "
          f"MAE {0.62 / k['mae']:.2f} (> 1 better)")
    print("\nper-grade recall (" + head + "): " + ", ".join(
        f"{g} {r:.3f}" if r is not None else f"{g} n/a" for g, r in k["recall"].items()))
    print("\nconfusion matrix (" + head + "; rows true, columns predicted):")
    print("        " + " ".join(f"{g:>6}" for g in GRADE_NAMES))
    for i, row in enumerate(k["confusion_matrix"]):
        print(f"{GRADE_NAMES[i]:>7} " + " ".join(f"{v:>6}" for v in row))
    print(f"\nside (L/R) detection from the image: {side_acc:.3f}")

    if args.app_path:
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(n, size=min(args.app_path, n), replace=False))
        want, _ = decide(pred["kl_value"][idx], pred["kl_coral"][idx], head)
        got, side_ok, ph = [], 0, 0
        for i, w in zip(idx, want):
            res = TASK.run(read_image(Path(val.paths[i]).read_bytes()), {"grader": [lm]}, {"side": "auto"}).models[0].result
            got.append(res["grade"])
            side_ok += res["side"] == val.sides[i]
            ph += bool(res["phenotype"].get("assigned"))
        got = np.array(got)
        print(f"upload path on {len(idx)} val knees (bytes -> imaging.io -> KneeTask.run, side detected): same grade "
              f"as above {np.mean(got == want):.3f}, accuracy {np.mean(got == val.grades[idx]):.3f}, side right "
              f"{side_ok / len(idx):.3f}, phenotype assigned {ph / len(idx):.3f}")
    print(f"\n({time.perf_counter() - t:.0f} s; rerun: python benchmarks/knee_figures.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
