"""Warm latency of one knee through the knee task: grade, phenotype and Grad-CAM (budget 0.3 s per knee).

    python benchmarks/knee_speed.py [--models models] [--n 40] [--threads 2]

What it measures: KneeTask.run on a decoded knee (real val radiographs when ../shared/data/knee_kl is there,
knee phantoms otherwise) with the registered knee-kl-grader, after warm-up (model loaded, compiled call
traced, Grad-CAM model built, catalogue read), TensorFlow limited to --threads CPU threads; plus the stages
inside: the model call on the knee and its mirror, Grad-CAM, the phenotype assignment, the overlays.
Prints median and 90th percentile and the ratio to the 0.3 s budget; exits 0 (SKIP when no model).
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
import tensorflow as tf  # noqa: E402

from imaging.gradcam import grad_cams  # noqa: E402
from imaging.io import read_image  # noqa: E402
from imaging.overlay import heatmap_overlay  # noqa: E402
from model_loader import ModelRegistry  # noqa: E402
from tasks.knee import TASK, catalogue_for, gradcam_target, grader_input, phenotype_card_image  # noqa: E402
from training.knee import data as knee_data  # noqa: E402
from training.phantoms.knee import generate_knee  # noqa: E402

BUDGET_S = 0.3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    reg = ModelRegistry(args.models)
    entry = reg.get("knee-kl-grader")
    if entry is None or reg.problem(entry.id):
        print("SKIP: knee-kl-grader is not available in", args.models)
        return 0
    # Before the first TensorFlow operation: the thread pools cannot be resized once the runtime has started.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    if knee_data.available():
        rows = knee_data.list_split("val")[:: max(1, 826 // args.n)][: args.n]
        images = [read_image(p.read_bytes()) for p, _, _ in rows]
        source = f"{len(images)} real val radiographs (224x224)"
    else:
        images = [read_image(cv2.imencode(".png", generate_knee(s).image)[1].tobytes()) for s in range(args.n)]
        source = f"{len(images)} knee phantoms (224x224; real data absent)"

    t_load = time.perf_counter()
    lm = reg.load(entry.id)
    cat = catalogue_for(lm)
    load_s = time.perf_counter() - t_load
    for im in images[:3]:                                     # warm-up: trace, build Grad-CAM model
        TASK.run(im, {"grader": [lm]}, {"side": "auto"})

    totals, parts = [], {"model call (knee + mirror)": [], "Grad-CAM": [], "phenotype assignment": [],
                         "overlays": []}
    size = entry.input_shape[0]
    for im in images:
        t0 = time.perf_counter()
        out = TASK.run(im, {"grader": [lm]}, {"side": "auto"})
        totals.append(time.perf_counter() - t0)
        res = out.models[0].result
        # the stages again, one by one, for the breakdown
        x = grader_input(im.pixels, size)
        pair = np.stack([x, x[:, ::-1]])[..., None]
        t1 = time.perf_counter()
        o = lm(pair)
        t2 = time.perf_counter()
        canon = 0 if res["side"] == "L" else 1
        cam = grad_cams(lm.gradcam_model(), pair[canon:canon + 1], [gradcam_target(res["decision_head"], res["grade"])[0]])[0]
        t3 = time.perf_counter()
        cat.assign(np.asarray(o["embedding"])[canon], res["grade"])
        t4 = time.perf_counter()
        heatmap_overlay(im.pixels, cam)
        if res["phenotype"].get("assigned"):
            phenotype_card_image(cat, res["grade"], res["phenotype"]["cluster"], canon == 1)
        t5 = time.perf_counter()
        for k, v in zip(parts, (t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[k].append(v)

    med, p90 = np.median(totals), np.percentile(totals, 90)
    print(f"Knee task speed (warm), {source}; model {entry.id} ({entry.params:,} parameters, input {size} px); "
          f"TensorFlow on {args.threads} CPU threads ({os.cpu_count()} CPUs visible, load average "
          f"{os.getloadavg()[0]:.1f})")
    print(f"first load (model + catalogue): {load_s:.2f} s")
    print(f"{'stage':34} {'median ms':>10} {'p90 ms':>8}")
    for k, v in parts.items():
        print(f"{k:34} {np.median(v) * 1000:>10.1f} {np.percentile(v, 90) * 1000:>8.1f}")
    print(f"{'whole KneeTask.run per knee':34} {med * 1000:>10.1f} {p90 * 1000:>8.1f}")
    print(f"budget {BUDGET_S:.1f} s per knee: median uses {med / BUDGET_S:.0%} of it, p90 {p90 / BUDGET_S:.0%} "
          f"({'within' if p90 <= BUDGET_S else 'OVER'} budget)")
    print("rerun: python benchmarks/knee_speed.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
