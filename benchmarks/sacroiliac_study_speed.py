"""Warm latency of one sacroiliac study through the study task (budget 3 s for 25 slices on 2 CPU cores).

    python benchmarks/sacroiliac_study_speed.py [--models models] [--n 5] [--threads 2]

What it measures: SacroiliacStudyTask.run on a decoded real study (STIR and T1 of case 1007 when
../shared/data/sij_mri_nifti is there, else a synthetic 25-slice volume) with the task's default models (the
attention U-Net for the region and the learned oedema segmenter: what an upload runs), then again with the
reference U-Net added as for a side-by-side comparison (region on every slice of both sequences, oedema, ASAS,
SPARCC-style count, the slice-viewer pictures and Grad-CAMs of every slice, both Grad-CAMs on the key slice),
plus the PNG encoding of every picture as the job stores them; after one warm-up run, TensorFlow limited to
--threads CPU threads. Prints median and worst of --n runs, the cost per slice, and the ratio to the budget;
exits 0 (SKIP when no model).
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
import tensorflow as tf  # noqa: E402

from imaging.overlay import encode_png  # noqa: E402
from imaging.volume import read_study  # noqa: E402
from model_loader import ModelRegistry, ModelUnavailable  # noqa: E402
from tasks.sacroiliac_study import TASK  # noqa: E402
from training.toolbox.runs import data_dir  # noqa: E402

BUDGET_S = 3.0


def a_study():
    root = data_dir() / "sij_mri_nifti" / "images" / "pre"
    files = [root / "1007_STIR.nii.gz", root / "1007_T1W.nii.gz"]
    if all(f.exists() for f in files):
        return read_study([f.read_bytes() for f in files], names=[f.name for f in files]), "real case 1007, STIR + T1W"
    import gzip

    import nibabel as nib

    rng = np.random.default_rng(0)
    vol = (100 + rng.normal(0, 5, (336, 336, 25))).astype(np.float32)
    affine = np.zeros((4, 4))
    affine[0, 0], affine[2, 1], affine[1, 2], affine[3, 3] = -0.595, 0.595, -3.3, 1.0     # semi-coronal slices
    blob = gzip.compress(nib.Nifti1Image(vol, affine).to_bytes())
    return read_study([blob], names=["synthetic_STIR.nii.gz"]), "synthetic 25-slice STIR (no real studies here)"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    registry = ModelRegistry(args.models)
    defaults = {role: [e.id for e in registry.entries(TASK.name) if e.role == role and e.default]
                for role in ("segmenter", "lesion")}
    compared = {**defaults, "segmenter": [e.id for e in registry.entries(TASK.name) if e.role == "segmenter"]}
    study, what = a_study()
    n_slices = study.volumes[0].n_slices
    print(f"study: {what}, {n_slices} slices, {len(study.volumes)} series, {args.threads} threads, {args.n} runs")
    for label, chosen in (("default models", defaults), ("with the reference U-Net beside it", compared)):
        try:
            models = {role: [registry.load(m) for m in ids] for role, ids in chosen.items() if ids}
        except ModelUnavailable as exc:
            print(f"SKIP: {exc.message}")
            return 0

        def once() -> tuple[float, float]:
            t0 = time.perf_counter()
            output = TASK.run(study, models, {})
            t1 = time.perf_counter()
            for img in list(output.images.values()) + [i for m in output.models for i in m.images.values()]:
                encode_png(img)
            return t1 - t0, time.perf_counter() - t0

        once()                                      # warm-up: compiled calls traced, Grad-CAM models built
        runs = [once() for _ in range(args.n)]
        task_s = sorted(r[0] for r in runs)
        total_s = sorted(r[1] for r in runs)
        median = total_s[len(total_s) // 2]
        print(f"\n{label}: {', '.join(m for ids in chosen.values() for m in ids)}")
        print(f"  task (region, both oedema methods, ASAS, pictures, Grad-CAMs): median "
              f"{task_s[len(task_s) // 2]:.2f} s")
        print(f"  with PNG encoding of every picture: median {median:.2f} s, worst {total_s[-1]:.2f} s")
        print(f"  per slice: {1000 * median / n_slices:.0f} ms; scaled to 25 slices: {median * 25 / n_slices:.2f} s "
              f"(budget {BUDGET_S:.1f} s, {median * 25 / n_slices / BUDGET_S:.0%} of it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
