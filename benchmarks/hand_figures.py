"""Hand pipeline figures: the original protocol's table on held-out test patients, detection
AP@0.5 per joint class, the share of hands with all eight joints found and named correctly, and what
the detector does with the real paediatric hands.

What it measures, on what:
  - the SHIPPED models of models/registry.json (the default hand detector, every hand scorer), reloaded
    from their files as the app loads them;
  - the held-out TEST patients of the phantom split the models were trained with (the same first N
    patients of the pool, split by patient 80/10/10 stratified on peak/non-peak), all their visits,
    regenerated from their seeds;
  - end to end as served: detector on the whole radiograph, crops from the DETECTED boxes (joints
    found with IoU >= 0.5 and the right name), the task's own preprocessing and decoding;
  - baselines A (always 200) and B (train mean, train median) on the same joints;
  - the real children's hands in $JOINTSCAN_DATA_DIR/hand_xray_paediatric (default ../shared/data):
    the full task, as the app runs it (skipped with a message when the folder is absent).

Rerun:  .venv/bin/python benchmarks/hand_figures.py [--models-dir models] [--patients N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from imaging.io import read_image  # noqa: E402
from model_loader import ModelRegistry  # noqa: E402
from tasks.hand import MIN_SURE_JOINTS, MISSING_THRESHOLD, TASK, UNSURE_THRESHOLD  # noqa: E402
from training.hand.config import FULL_BUDGET  # noqa: E402
from training.hand.data import generate_split  # noqa: E402
from training.hand.evaluate import (compartment_metrics, detect_images, detection_metrics, format_table,  # noqa: E402
                                    protocol_table, score_detected)
from training.phantoms.hand import patient_plan, split_patients  # noqa: E402


def data_dir() -> Path:
    return Path(os.environ.get("JOINTSCAN_DATA_DIR", ROOT.parent / "shared" / "data"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--patients", type=int, default=None, help="default: as recorded in the detector's registry entry")
    a = ap.parse_args(argv)

    reg = ModelRegistry(a.models_dir)
    entries = reg.entries("hand")
    det_entry = next((e for e in entries if e.role == "detector" and e.default), None) \
        or next((e for e in entries if e.role == "detector"), None)
    scorer_entries = [e for e in entries if e.role == "scorer"]
    if det_entry is None or not scorer_entries:
        print(f"no hand detector/scorer in {a.models_dir / 'registry.json'}; train them with: python -m training.hand")
        return 0
    problems = {e.id: reg.problem(e.id) for e in [det_entry, *scorer_entries] if reg.problem(e.id)}
    if problems:
        print(f"unusable models: {problems}")
        return 1
    n = a.patients or int(det_entry.training.get("patients", FULL_BUDGET.patients))
    t0 = time.perf_counter()
    test_patients = split_patients(list(range(n)))["test"]
    test = generate_split("test", test_patients, log=None)
    train_guss = train_guss_of(split_patients(list(range(n)))["train"])
    gen_s = time.perf_counter() - t0

    det = reg.load(det_entry.id).model
    thresholds = {"missing": det_entry.input.get("missing_threshold", MISSING_THRESHOLD),
                  "unsure": det_entry.input.get("unsure_threshold", UNSURE_THRESHOLD)}
    dets = detect_images(det, test.images, thresholds)
    dm = detection_metrics(dets, test)
    correct = dm.pop("_correct")
    scored = {e.id: score_detected(reg.load(e.id).model, test, dets, "joint_onehot" in e.input["channels"], correct)
              for e in scorer_entries}
    rows = protocol_table(train_guss, scored)

    print(f"Hand pipeline on held-out TEST patients: {len(test_patients)} patients, {len(test)} radiographs "
          f"(phantoms regenerated in {gen_s:.0f} s; models from {a.models_dir}; first {n} patients of the pool)")
    print()
    print(f"Scoring, original protocol (crops from the detected boxes of {det_entry.id}; "
          f"{len(next(iter(scored.values()))['true_guss'])} joints, "
          f"{int((next(iter(scored.values()))['true_guss'] < 200).sum())} non-peak)")
    print(format_table(rows))
    base_a = rows["baseline A: always 200"]["w20_nonpeak"]
    for mid, s in scored.items():
        w = rows[mid]["w20_nonpeak"]
        ratio = w / base_a if base_a > 0 else float("inf")
        print(f"  {mid}: non-peak Within-20 = {ratio:.1f}x baseline A" if np.isfinite(ratio)
              else f"  {mid}: baseline A has 0% non-peak Within-20 (ours {100 * w:.1f}%)")
    print()
    print("Stage 1 and the compartments")
    print(f"{'':30s} {'stage-1 acc':>11s} {'non-peak found':>14s} {'peak found':>10s} {'plate MAE':>9s} {'space MAE':>9s}")
    for mid, s in scored.items():
        c = compartment_metrics(s)
        print(f"{mid:30s} {100 * c['stage1_accuracy']:10.1f}% {100 * c['stage1_sensitivity_nonpeak']:13.1f}% "
              f"{100 * c['stage1_specificity_peak']:9.1f}% {c['plate_mae']:9.1f} {c['space_mae']:9.1f}")
    print()
    print(f"Detection ({det_entry.id}, missing below {thresholds['missing']}, unsure below {thresholds['unsure']})")
    print("  AP@0.5 per class: " + "  ".join(f"{k} {v:.3f}" for k, v in dm["ap50"].items()))
    print(f"  mAP@0.5 {dm['map50']:.3f}; mean IoU {dm['mean_iou']:.3f}")
    print(f"  hands with all eight found and named correctly (IoU >= 0.5): {100 * dm['all_eight_correct']:.1f}% "
          f"({int(round(dm['all_eight_correct'] * dm['n_hands']))}/{dm['n_hands']})")
    print(f"  ... and all eight sure with consistent anatomy: {100 * dm['all_eight_sure_and_anatomy_ok']:.1f}%")
    print(f"  joints missing {100 * dm['joints_missing']:.2f}%, unsure {100 * dm['joints_unsure']:.2f}%, "
          f"hands flagged by the anatomy check {100 * dm['hands_anatomy_flagged']:.1f}%, "
          f"laterality correct {100 * dm['side_accuracy']:.1f}%")
    n_sure = np.array([sum(j["status"] == "found" for j in d["joints"]) for d in dets])
    anat = np.array([d["anatomy"]["ok"] for d in dets])
    confident = (n_sure == 8) & anat
    scored = (n_sure >= MIN_SURE_JOINTS) & anat
    print(f"  in the app: hands shown as confident {100 * confident.mean():.1f}%, hands scored at all "
          f"(>= {MIN_SURE_JOINTS} joints sure, anatomy ok) {100 * scored.mean():.1f}%, before the training-data checks:")
    for entry in [det_entry, *scorer_entries]:
        check = entry.ood or {}
        figures = check.get("figures", {})
        print(f"  {entry.id} training-data check ({check.get('layer', 'none')}): test phantoms refused "
              f"{100 * figures.get('test_phantoms_refused', float('nan')):.1f}%, real children's hands refused "
              f"{100 * figures.get('hand_real_refused', float('nan')):.1f}% (registry figures, training.hand.ood)")
    print()
    real_hands(reg, det_entry, scorer_entries)
    return 0


def train_guss_of(patients) -> np.ndarray:
    return np.concatenate([patient_plan(p).guss.ravel() for p in patients])


def real_hands(reg, det_entry, scorer_entries) -> None:
    folder = data_dir() / "hand_xray_paediatric"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        print(f"Real paediatric hands: skipped, {folder} is absent (set JOINTSCAN_DATA_DIR).")
        return
    default_scorer = next((e for e in scorer_entries if e.default), scorer_entries[0])
    models = {"detector": [reg.load(det_entry.id)], "scorer": [reg.load(default_scorer.id)]}
    print(f"Real paediatric hands ({folder}; children, open growth plates, no OA: never seen in training)")
    print(f"{'file':8s} {'size':>10s} {'found':>5s} {'unsure':>6s} {'miss':>4s} {'side':>5s} {'anatomy':>8s} "
          f"{'OOD score':>9s} {'OOD':>4s} {'scored':>6s}  verdict")
    for f in files:
        image = read_image(f.read_bytes())
        out = TASK.run(image, models, {})
        d, s = out.models[0].result, out.models[1].result
        verdict = "confident" if out.summary["confident"] else "NOT CONFIDENT"
        conf = " ".join(f"{j['name']}:{j['confidence']:.2f}" for j in d["joints"])
        print(f"{f.name:8s} {image.width:4d}x{image.height:<5d} {d['n_found']:5d} {d['n_unsure']:6d} {d['n_missing']:4d} "
              f"{str(d['side']):>5s} {('ok' if d['anatomy_ok'] else 'broken'):>8s} "
              f"{(d['ood_score'] if d['ood_score'] is not None else float('nan')):9.2f} "
              f"{('yes' if d['out_of_distribution'] else 'no'):>4s} {s['n_scored']:6d}  {verdict}")
        print(f"{'':8s} confidences {conf}")
        if d["anatomy_problems"]:
            print(f"{'':8s} anatomy: {'; '.join(d['anatomy_problems'])}")


if __name__ == "__main__":
    raise SystemExit(main())
