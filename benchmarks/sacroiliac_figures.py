"""Sacroiliac figures: our pipeline against the reference pipeline, on held-out test phantoms.

What it measures (all with the committed models, loaded through `model_loader.ModelRegistry`):
  * accuracy on the first N phantoms of SEED_RANGES["test"] (never used for training or model selection),
    END TO END: the segmenter's served mask (upsampled, thresholded) focuses the classifier, exactly as
    `tasks.sacroiliac.SacroiliacTask.run` does. Ours = sij-attention-unet + sij-dual-head;
    reference = sij-unet-ref + sij-cnn3-ref (the reference CNN reads the full image).
  * warm latency per scan through `tasks.sacroiliac.TASK.run` (segmentation, classification, Grad-CAM of
    both heads and focused Grad-CAM, overlays), after warm-up, on this machine's CPU;
  * the classifier file sizes.
Targets: Dice >= 0.90, AS accuracy >= 97%, stage macro-F1 >= 0.85 with every stage recall >= 0.70;
ours <= 0.5 s per scan and >= 3x faster than the reference; our classifier file >= 10x smaller.

Rerun:  .venv/bin/python benchmarks/sacroiliac_figures.py [--n 500] [--scans 30] [--models-dir models]
Prints a table and exits 0 (also when a target is missed: the table says so).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from imaging.io import DecodedImage  # noqa: E402
from model_loader import ModelRegistry  # noqa: E402
from tasks.sacroiliac import STAGE_NAMES, TASK  # noqa: E402
from training.sacroiliac.data import generate_split  # noqa: E402
from training.sacroiliac.evaluate import (classification_metrics, predict_classes, predict_masks,  # noqa: E402
                                          segmentation_metrics)

ATTENTION_PIPELINE = ("sij-attention-unet", "sij-dual-head")
REFERENCE_PIPELINE = ("sij-unet-ref", "sij-cnn3-ref")


def _pipeline_figures(seg, cls, ph):
    masks = predict_masks(seg.model, ph)
    seg_m = segmentation_metrics(masks, ph)
    as_pred, stage_pred = predict_classes(cls.model, ph, cls.entry.input, masks)
    cls_m = classification_metrics(as_pred, stage_pred, ph)
    return seg_m, cls_m, stage_pred


def _latency(task, seg, cls, ph, scans: int, warmup: int):
    images = [DecodedImage(pixels=ph.image01(i), kind="png") for i in range(min(len(ph), scans + warmup))]
    models = {"segmenter": [seg], "classifier": [cls]}
    for img in images[:warmup]:
        task.run(img, models, {})
    times, stages = [], []
    for img in images[warmup:]:
        t0 = time.perf_counter()
        out = task.run(img, models, {})
        times.append(time.perf_counter() - t0)
        stages.append(out.models[1].result["stage"])
    return np.array(times), stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="held-out test phantoms for the accuracy figures")
    ap.add_argument("--scans", type=int, default=30, help="timed scans per pipeline (after warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    a = ap.parse_args(argv)

    registry = ModelRegistry(a.models_dir)
    problems = {m: registry.problem(m) for m in ATTENTION_PIPELINE + REFERENCE_PIPELINE}
    if any(problems.values()):
        for m, p in problems.items():
            if p:
                print(f"{m}: {p}")
        print("Cannot benchmark: train and register the models first (python -m training.sacroiliac).")
        return 0
    loaded = {m: registry.load(m) for m in ATTENTION_PIPELINE + REFERENCE_PIPELINE}

    t0 = time.perf_counter()
    ph = generate_split("test", a.n)
    print(f"generated {a.n} test phantoms (seeds {ph.seed_text}) in {time.perf_counter() - t0:.0f} s")
    figures = {}
    for label, (seg_id, cls_id) in (("ours", ATTENTION_PIPELINE), ("reference", REFERENCE_PIPELINE)):
        t0 = time.perf_counter()
        seg_m, cls_m, stage_pred = _pipeline_figures(loaded[seg_id], loaded[cls_id], ph)
        times, served = _latency(TASK, loaded[seg_id], loaded[cls_id], ph, a.scans, a.warmup)
        agree = int(np.sum(np.array(served) == stage_pred[a.warmup:a.warmup + len(served)]))
        figures[label] = dict(seg=seg_m, cls=cls_m, times=times, agree=agree, n_timed=len(served),
                              size=registry.get(cls_id).size_bytes, seg_size=registry.get(seg_id).size_bytes,
                              ids=(seg_id, cls_id), eval_s=time.perf_counter() - t0)

    o, r = figures["ours"], figures["reference"]
    rows = [("segmenter / classifier", f"{o['ids'][0]} / {o['ids'][1]}", f"{r['ids'][0]} / {r['ids'][1]}", "", "")]

    def add(name, fo, fr, fmt, target=""):
        rows.append((name, fmt(fo), fmt(fr), "", target))

    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    add("segmentation Dice (mean)", o["seg"]["dice_mean"], r["seg"]["dice_mean"], num, ">= 0.90")
    add("segmentation Dice (5th pct)", o["seg"]["dice_p05"], r["seg"]["dice_p05"], num)
    add("AS accuracy", o["cls"]["as_accuracy"], r["cls"]["as_accuracy"], pct, ">= 97%")
    add("stage accuracy", o["cls"]["stage_accuracy"], r["cls"]["stage_accuracy"], pct)
    add("stage macro-F1", o["cls"]["stage_macro_f1"], r["cls"]["stage_macro_f1"], num, ">= 0.85")
    for name in STAGE_NAMES:
        add(f"recall {name}", o["cls"]["stage_recall"][name], r["cls"]["stage_recall"][name], num, ">= 0.70")
    add("stage quadratic kappa", o["cls"]["stage_qwk"], r["cls"]["stage_qwk"], num)
    med_o, med_r = float(np.median(o["times"])), float(np.median(r["times"]))
    p95_o, p95_r = float(np.percentile(o["times"], 95)), float(np.percentile(r["times"], 95))
    rows.append(("latency per scan, median (s)", f"{med_o:.3f}", f"{med_r:.3f}", f"ref/ours {med_r / med_o:.1f}x",
                 "ours <= 0.5 s; >= 3x"))
    rows.append(("latency per scan, p95 (s)", f"{p95_o:.3f}", f"{p95_r:.3f}", f"ref/ours {p95_r / p95_o:.1f}x", ""))
    rows.append(("classifier file (KiB)", f"{o['size'] / 1024:.0f}", f"{r['size'] / 1024:.0f}",
                 f"ref/ours {r['size'] / o['size']:.1f}x", ">= 10x"))
    rows.append(("segmenter file (KiB)", f"{o['seg_size'] / 1024:.0f}", f"{r['seg_size'] / 1024:.0f}",
                 f"ref/ours {r['seg_size'] / o['seg_size']:.1f}x", ""))
    rows.append(("TASK.run stage == batch eval", f"{o['agree']}/{o['n_timed']}", f"{r['agree']}/{r['n_timed']}", "",
                 "all"))

    widths = [max(len(str(row[i])) for row in rows + [("metric", "ours", "reference", "ratio", "target")])
              for i in range(5)]
    line = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    print()
    print(f"Sacroiliac pipeline figures: {a.n} held-out test phantoms (seeds {ph.seed_text}), end to end "
          f"(classifier on the crop of the predicted mask).")
    print(f"Latency: {len(o['times'])} scans per pipeline after {a.warmup} warm-up, TASK.run with segmentation, "
          f"classification, Grad-CAM (both heads), focused Grad-CAM and overlays.")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, TensorFlow "
          f"{tf.__version__}, no GPU ({len(tf.config.list_physical_devices('GPU'))} visible).")
    print()
    print(line(("metric", "ours", "reference", "ratio", "target")))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    stage_ok = all(v is not None and v >= 0.70 for v in o["cls"]["stage_recall"].values())
    checks = {
        "Dice >= 0.90": o["seg"]["dice_mean"] >= 0.90,
        "AS accuracy >= 97%": (o["cls"]["as_accuracy"] or 0) >= 0.97,
        "stage macro-F1 >= 0.85": (o["cls"]["stage_macro_f1"] or 0) >= 0.85,
        "every stage recall >= 0.70": stage_ok,
        "ours <= 0.5 s per scan": med_o <= 0.5,
        "ours >= 3x faster than reference": med_r / med_o >= 3.0,
        "classifier file >= 10x smaller": r["size"] / o["size"] >= 10.0,
    }
    print()
    print("targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()))
    print(f"Rerun: .venv/bin/python benchmarks/sacroiliac_figures.py --n {a.n} --scans {a.scans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
