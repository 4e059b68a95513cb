"""Shipping the hand models: files, reloaded evaluation, registry entries and model cards."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import keras

from tasks.hand import (BOX_UNIT, DEFAULT_SDC, DETECTOR_STRIDE, JOINT_NAMES, MISSING_THRESHOLD,
                        UNSURE_THRESHOLD)
from training.export import register_model, save_for_shipping, write_model_card
from training.hand.config import DETECTOR_ID, FULL_BUDGET, POSITION_ID, SCORER_ID
from training.hand.data import CROP_SIZE, DET_SIZE, N_CLASSES, HandSplits
from training.hand.evaluate import evaluate_all
from training.hand.real_hands import FOLDER as REAL_FOLDER, joints_against_marks, task_detector
from training.toolbox.runs import repo_relative


TASK = "hand"
VERSION = "1.0.0"
META: dict[str, dict[str, Any]] = {
    DETECTOR_ID: dict(
        role="detector", default=True, title="Hand finger-joint detector (CenterNet-style)",
        architecture="CenterNet-style (Zhou et al. 2019): 3x3 stride-2 stem, four stride-2 separable-conv "
                     "blocks (24-32-48-64, 1/32 at the bottleneck), bilinear decoder with additive skips to 1/4, "
                     "heads: 8 sigmoid centre heatmaps, box (width, height, sub-cell offset), laterality "
                     "(P(right hand))",
        description="Finds PIP2-PIP5 and DIP2-DIP5 on a whole hand radiograph letterboxed to 256x256: one "
                    "heatmap per joint gives the centre and its confidence; below the missing threshold a joint "
                    "is reported missing, below the unsure threshold its score is withheld.",
        outputs=["heatmap", "box", "side"], gradcam_layer=None),
    SCORER_ID: dict(
        role="scorer", default=True, title="Hand GUSS scorer, two-stage (peak + CORAL)",
        architecture="Compact CNN on a 64x64 joint crop: 3x3 stride-2 stem (16), separable-conv blocks "
                     "(32, 48), 3x3 conv 64 'gradcam_conv' (16x16), global average pooling, dense 64; heads: "
                     "'peak' sigmoid (stage 1), 'guss' CORAL over 20 thresholds (stage 2), 'plate' and 'space' "
                     "CORAL over 10 thresholds each",
        description="Scores one finger joint on the GUSS scale: stage 1 decides intact (200) or not; otherwise "
                    "stage 2 gives the GUSS (0-190) from its cumulative probabilities, split into subchondral "
                    "plate and joint space by the compartment heads.",
        outputs=["peak", "guss", "plate", "space"], gradcam_layer="gradcam_conv"),
    POSITION_ID: dict(
        role="scorer", default=False, title="Hand GUSS scorer, two-stage, position-aware",
        architecture="As hand-guss-scorer, with 8 extra constant input planes (the one-hot joint identity, "
                     "PIP2..DIP5) whose pooled values are embedded (dense 16) and joined to the image features",
        description="The two-stage GUSS scorer told which joint it scores; otherwise identical in data, "
                    "training and decoding to hand-guss-scorer, for comparison.",
        outputs=["peak", "guss", "plate", "space"], gradcam_layer="gradcam_conv"),
}


def input_spec(model_id: str) -> dict[str, Any]:
    if model_id == DETECTOR_ID:
        spec = {"shape": [DET_SIZE, DET_SIZE, 1], "channels": ["image"], "crop": "letterbox",
                "stride": DETECTOR_STRIDE, "box_unit": BOX_UNIT,
                "missing_threshold": MISSING_THRESHOLD, "unsure_threshold": UNSURE_THRESHOLD}
    elif model_id == POSITION_ID:
        spec = {"shape": [CROP_SIZE, CROP_SIZE, 1 + N_CLASSES], "channels": ["image", "joint_onehot"],
                "crop": "joint_square_10pct", "joint_order": list(JOINT_NAMES)}
    else:
        spec = {"shape": [CROP_SIZE, CROP_SIZE, 1], "channels": ["image"], "crop": "joint_square_10pct"}
    return spec


def command_for(out_dir: Path, quick: bool, patients: int, seed: int) -> str:
    cmd = f"python -m training.hand --out {repo_relative(out_dir)}"
    if quick:
        cmd += " --quick"
    if patients != FULL_BUDGET.patients and not quick:
        cmd += f" --patients {patients}"
    if seed:
        cmd += f" --seed {seed}"
    return cmd


def export_models(models: dict[str, Any], infos: dict[str, dict], data: HandSplits, out_dir: Path, quick: bool, seed: int,
             log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Save (float16), RELOAD, evaluate end to end on the test patients, register and write cards."""


    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reloaded = {}
    for mid, model in models.items():
        path = save_for_shipping(model, out_dir / f"{mid}.keras")
        reloaded[mid] = keras.models.load_model(path, compile=False)
    evaluation = evaluate_all(reloaded, data, infos.get(DETECTOR_ID, {}).get("thresholds"), log=log)
    entries = {}
    for mid, model in reloaded.items():
        meta = META[mid]
        test = evaluation.get("detector") if mid == DETECTOR_ID else evaluation["scorers"].get(mid)
        metrics = {"test": test or {}, "split": data.split_counts}
        if mid == DETECTOR_ID and evaluation.get("detector_children"):
            metrics["test_children"] = evaluation["detector_children"]
        entry = {
            "id": mid, "task": TASK, "role": meta["role"], "version": VERSION, "title": meta["title"],
            "architecture": meta["architecture"], "reference": False, "default": meta["default"],
            "file": f"{mid}.keras", "input": input_spec(mid), "outputs": meta["outputs"],
            "gradcam_layer": meta["gradcam_layer"],
            "training": {"data": f"hand phantoms (training.phantoms.hand), first {data.n_patients} patients of the "
                                 "pool, all visits; split by patient 80/10/10 stratified on peak/non-peak"
                                 + (f"; and {data.n_children} child phantoms (open growth plates, no OA) split "
                                    "the same way, for the detector only" if mid == DETECTOR_ID and data.n_children
                                    else ""),
                         "seed": seed, "patients": data.n_patients,
                         "command": command_for(out_dir, quick, data.n_patients, seed),
                         **{k: v for k, v in infos[mid].items() if k not in ("val_history", "thresholds")}},
            "metrics": metrics,
            "description": meta["description"],
        }
        entries[mid] = register_model(out_dir, entry, model=model)
        write_model_card(out_dir, entries[mid], card_sections(mid, entries[mid], evaluation, infos[mid], data))
        log(f"shipped {mid}: {entries[mid]['size_bytes'] / 1024:.0f} KiB, {entries[mid]['params']:,} parameters")
    if DETECTOR_ID in entries:
        # Each model's training-data check (training.hand.ood), fitted on fresh phantoms of the same split.
        from training.hand.ood import fit_checks

        fit_checks(out_dir, tuple(entries), patients=8 if quick else 200, log=log)
        registry = json.loads((Path(out_dir) / "registry.json").read_text())
        entries = {m["id"]: m for m in registry["models"] if m["id"] in entries}
        # The detector as served (its check in place) on the real children's hands, against the marks.
        real = joints_against_marks(task_detector(out_dir, DETECTOR_ID))
        if real is not None:
            evaluation["detector_real"] = {k: v for k, v in real.items() if k != "rows"}
            entry = dict(entries[DETECTOR_ID])
            entry["metrics"] = {**entry["metrics"], "real_children": evaluation["detector_real"]}
            entries[DETECTOR_ID] = register_model(out_dir, entry)
            write_model_card(out_dir, entries[DETECTOR_ID],
                             card_sections(DETECTOR_ID, entries[DETECTOR_ID], evaluation, infos[DETECTOR_ID], data))
            log(f"real children's hands: {real['found']} found, {real['unsure']} unsure, {real['missing']} missing "
                f"of {real['joints']}; {real['located']} located within a quarter finger width")
    return entries


def card_sections(mid: str, entry: dict[str, Any], evaluation: dict[str, Any], info: dict[str, Any],
                  data: HandSplits) -> dict[str, str]:
    sc = data.split_counts
    training_data = (
        f"Synthetic PA hand radiographs from `training.phantoms.hand` (768x640 px, left and right hands, pose, "
        f"exposure, noise and anatomy varied; labels by construction). The first {data.n_patients} patients of "
        f"the phantom pool with all their visits (2-4 each), split by patient 80/10/10 stratified on the "
        f"patient-level peak/non-peak label: train {sc['train']['patients']} patients / "
        f"{sc['train']['radiographs']} radiographs, val {sc['val']['patients']} / {sc['val']['radiographs']}, test "
        f"{sc['test']['patients']} / {sc['test']['radiographs']}. About two thirds of joints are at the intact peak "
        f"(GUSS 200); the rest are long-tailed towards 0.")
    if mid == DETECTOR_ID:
        m = evaluation.get("detector", {})
        ap = m.get("ap50", {})
        metrics = (f"Held-out test patients ({m.get('n_hands')} radiographs), end to end as served:\n\n"
                   f"- all eight joints found (above the missing threshold) with IoU >= 0.5 and the right name: "
                   f"**{100 * (m.get('all_eight_correct') or 0):.1f}%** of hands\n"
                   f"- AP@0.5 per class: " + ", ".join(f"{k} {v:.3f}" for k, v in ap.items()) + "\n"
                   f"- mean IoU {m.get('mean_iou')}, joints missing {m.get('joints_missing')}, unsure "
                   f"{m.get('joints_unsure')}, hands flagged by the anatomy check {m.get('hands_anatomy_flagged')}, "
                   f"laterality accuracy {m.get('side_accuracy')}")
        kids = evaluation.get("detector_children")
        if kids:
            metrics += (f"\n\nChild phantoms of held-out patients ({kids.get('n_hands')} radiographs): all eight "
                        f"correct **{100 * (kids.get('all_eight_correct') or 0):.1f}%** of hands, mAP@0.5 "
                        f"{kids.get('map50')}, joints unsure {kids.get('joints_unsure')}, missing "
                        f"{kids.get('joints_missing')}.")
        real = evaluation.get("detector_real") or (entry.get("metrics") or {}).get("real_children")
        if real:
            metrics += (f"\n\nReal children's hands ({real['hands']} radiographs of "
                        f"`../shared/data/{REAL_FOLDER}`, {real['joints']} joints against centres marked by eye in "
                        f"`benchmarks/data/hand_real_joints.csv`): {real['found']} found, {real['unsure']} unsure, "
                        f"{real['missing']} missing; {real['located']} located within a quarter of a finger width "
                        f"({real['located_and_found']} of them found with confidence), median distance "
                        f"{real['median_distance']} finger widths. Per joint: `python benchmarks/hand_real_joints.py`.")
        n_kids = info.get("train_child_radiographs") or 0
        first = info.get("first_stage") or {}
        training = (f"Penalty-reduced focal loss on the heatmaps, L1 on box size and offset at the centres, "
                    f"binary cross-entropy on laterality; Adam with cosine decay, batch {info.get('batch_size')}. "
                    f"Two stages: {first.get('epochs_run')} epochs on the adult training radiographs with mirror (which "
                    "turns a left hand into a right one), scale 0.9-1.1, shift, gamma, blur and noise"
                    + (f" (here taken from `{first['from_file']}`, sha256 `{first['sha256'][:12]}...`)"
                       if first.get("from_file") else "")
                    + f"; then {info.get('epochs') or 0} epochs at a lower learning rate on "
                    f"{info.get('train_radiographs')} radiographs"
                    + (f" ({n_kids} children's radiographs, each {info.get('child_repeat') or 1} time(s) per "
                       "epoch)" if n_kids else "")
                    + " with scale 0.8-1.3, lead side markers and collimator edges added. The training-data check "
                    "(below) compares its stem features with those of the training radiographs.")
        failure = ("Trained on phantom hands: adults and, for this detector only, children with open growth plates. "
                   "Hands with missing or amputated fingers, severe deformity, casts, strongly oblique projections "
                   "or several hands in one image are outside what it has seen: the training-data check and the "
                   "anatomy check are meant to flag them. A child's hand gets boxes, never GUSS scores (the scorers' "
                   "own check refuses its joints). On the real children's hands many joints are found only as "
                   "unsure, the boxes sit about a tenth of a finger width proximal of the joint gap, and an infant's "
                   "turned hand is mostly missed. Not validated on patients.")
    else:
        m = evaluation.get("scorers", {}).get(mid, {})
        a = m.get("baseline_a", {})
        metrics = (f"Held-out test patients, crops from the DETECTED boxes (as served), {m.get('n_joints')} joints "
                   f"({m.get('n_nonpeak')} non-peak):\n\n"
                   "| | MAE all | MAE non-peak | Within-20 all | Within-20 non-peak |\n|---|---|---|---|---|\n"
                   f"| this model | {m.get('mae_all')} | {m.get('mae_nonpeak')} | {m.get('w20_all')} | {m.get('w20_nonpeak')} |\n"
                   f"| baseline A (always 200) | {a.get('mae_all')} | {a.get('mae_nonpeak')} | {a.get('w20_all')} | "
                   f"{a.get('w20_nonpeak')} |\n\n"
                   f"Stage 1 accuracy {m.get('stage1_accuracy')} (non-peak recognised {m.get('stage1_sensitivity_nonpeak')}, "
                   f"peak recognised {m.get('stage1_specificity_peak')}); plate MAE {m.get('plate_mae')}, space MAE "
                   f"{m.get('space_mae')} (non-peak joints: {m.get('plate_mae_nonpeak')} / {m.get('space_mae_nonpeak')}). "
                   "The full table with baseline B and both scorers: `python benchmarks/hand_figures.py`.")
        training = (f"{info.get('steps')} steps (about {info.get('epochs')} epochs' worth of draws), each with two "
                    f"streams of {info.get('batch_size_per_stream')} crops "
                    "drawn with replacement and freshly augmented (flip, rotation within 15 degrees, scale within 10%, "
                    "box jitter, CLAHE half the time, gamma): stage 1 from all training joints with binary "
                    f"cross-entropy and inverse-frequency class weights {info.get('class_weights')}; stage 2 from "
                    "non-peak joints drawn inversely to the frequency of their GUSS value, CORAL loss on the 20 "
                    "GUSS thresholds and on the 10 plate and 10 space thresholds. Adam with cosine decay; the "
                    "weights with the best validation MAE (all + non-peak, true-box crops) are kept. Plate and "
                    "space: the reported GUSS is the stage-2 CORAL decision (the protocol's figure); the plate and "
                    "space heads decide how it splits, so plate + space = GUSS always.")
        failure = ("Trained on phantom joints: real erosions, osteophytes, subluxation, overlapping fingers and "
                   "projection changes differ. Scores for a joint whose detection is unsure, or for a hand flagged by "
                   "the anatomy or out-of-distribution checks, are withheld by the app. Steps of 10 below about "
                   f"{DEFAULT_SDC} points are within the scorer's error: use the smallest detectable change "
                   f"({DEFAULT_SDC}) when following "
                   "a patient.")
    return {"Training data": training_data, "Training": training, "Metrics on held-out data": metrics,
            "Known failure modes and limits": failure}
