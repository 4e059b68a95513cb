"""Lumbar spine MRI segmenters, side by side: validation Dice per structure, latency, file size.

What it measures: for each spine model in the registry (ours: spine-attention-unet; reference:
spine-unet-ref), the **shipped** file as the app loads it (checksum verified), on the validation
patients recorded in its registry entry (the training split):
  - Dice per structure (vertebra, disc, canal) at the dataset's resolution (256x320), pooled over
    all validation slices, through the app's own pre- and post-processing (tasks.spine);
  - inference time per slice, batch 1, warm, median of 30 calls: the compiled model call alone, and
    the whole task run (model + Grad-CAM + overlays + counts);
  - file size and parameters.
Ratios are ours / reference. Skips (exit 0, with a message) when the data or a model file is absent.

    python benchmarks/spine_figures.py [--models-dir models] [--repeats 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from imaging.io import DecodedImage  # noqa: E402
from model_loader import ModelRegistry  # noqa: E402
from tasks.spine import TASK, spine_input  # noqa: E402
from training.spine.data import dataset_dir, load_pair, manifest_from_folder, patient_split, split_rows  # noqa: E402
from training.spine.evaluate import evaluate  # noqa: E402

TARGETS = {"vertebra": 0.90, "disc": 0.85, "canal": 0.85}


def _median_ms(fn, repeats: int) -> float:
    fn()
    fn()                                    # warm: traced, caches filled
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", default=str(ROOT / "models"))
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)

    folder = dataset_dir()
    if not folder.is_dir():
        print(f"SKIP: spine data not found at {folder} (set JOINTSCAN_DATA_DIR).")
        return 0
    reg = ModelRegistry(args.models_dir)
    entries = sorted(reg.entries("spine"), key=lambda e: (e.reference, e.id))
    if not entries:
        print(f"SKIP: no spine models in {reg.registry_path}; train them with: python -m training.spine")
        return 0

    rows = manifest_from_folder(folder)
    results = []
    for e in entries:
        problem = reg.problem(e.id)
        row = {"entry": e, "problem": problem}
        results.append(row)
        if problem:
            print(f"SKIP {e.id}: {problem}")
            continue
        val_p = e.training.get("split") or patient_split([r["patient"] for r in rows])[1]
        _, val_rows = split_rows(rows, val_p)
        lm = reg.load(e.id)
        row["metrics"] = evaluate(lm.model, val_rows, tuple(e.input_shape[:2]))
        img, _ = load_pair(val_rows[len(val_rows) // 2])
        x = spine_input(img, e.input_shape[:2])[None]
        row["model_ms"] = _median_ms(lambda: lm(x), args.repeats)
        image = DecodedImage(img, "png")
        row["task_ms"] = _median_ms(lambda: TASK.run(image, {"segmenter": [lm]}, {"structure": "disc"}),
                                    max(5, args.repeats // 3))
        row["n"] = (row["metrics"]["n_patients"], row["metrics"]["n_slices"])

    measured = [r for r in results if "metrics" in r]
    if measured:
        n_pat, n_sl = measured[0]["n"]
        print(f"Spine MRI segmentation, {n_pat} validation patients ({n_sl} slices), shipped files, "
              f"Dice at 256x320 pooled over slices; latency batch 1, warm, median; {os.cpu_count()} CPU cores visible")
    header = ("model", "input", "params", "file MiB", "Dice vertebra", "Dice disc", "Dice canal", "mean Dice",
              "model ms/slice", "task ms/slice")
    lines = [header]
    for r in results:
        e = r["entry"]
        tag = f"{e.id} ({'reference' if e.reference else 'ours'})"
        size = f"{e.size_bytes / 2**20:.2f}" if e.size_bytes else "n/a"
        shape = f"{e.input_shape[0]}x{e.input_shape[1]}"
        if "metrics" in r:
            m = r["metrics"]
            lines.append((tag, shape, f"{e.params:,}", size, f"{m['dice_vertebra']:.4f}", f"{m['dice_disc']:.4f}",
                          f"{m['dice_canal']:.4f}", f"{m['mean_dice']:.4f}", f"{r['model_ms']:.1f}",
                          f"{r['task_ms']:.1f}"))
        else:
            m = e.metrics
            lines.append((tag + " [file absent: registry figures]", shape, f"{e.params:,}" if e.params else "n/a",
                          size, *(f"{m.get(k):.4f}" if m.get(k) is not None else "n/a"
                                  for k in ("dice_vertebra", "dice_disc", "dice_canal", "mean_dice")), "n/a", "n/a"))
    ours = next((r for r in measured if not r["entry"].reference), None)
    ref = next((r for r in measured if r["entry"].reference), None)
    if ours and ref:
        mo, mr = ours["metrics"], ref["metrics"]
        lines.append(("ratio ours / reference", "", f"{ours['entry'].params / ref['entry'].params:.2f}",
                      f"{ours['entry'].size_bytes / ref['entry'].size_bytes:.2f}",
                      *(f"{mo[k] / mr[k]:.2f}" if mr[k] else "n/a"
                        for k in ("dice_vertebra", "dice_disc", "dice_canal", "mean_dice")),
                      f"{ours['model_ms'] / ref['model_ms']:.2f}", f"{ours['task_ms'] / ref['task_ms']:.2f}"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if measured:
        best = max(measured, key=lambda r: r["metrics"]["mean_dice"] or 0)
        verdict = ", ".join(f"{s} {best['metrics'][f'dice_{s}']:.3f} {'>=' if best['metrics'][f'dice_{s}'] >= t else '<'} "
                            f"{t:.2f}" for s, t in TARGETS.items())
        met = all(best["metrics"][f"dice_{s}"] >= t for s, t in TARGETS.items())
        print(f"Targets (better model, {best['entry'].id}): {verdict}: {'all met' if met else 'NOT all met'}.")
    print("Rerun: python benchmarks/spine_figures.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
