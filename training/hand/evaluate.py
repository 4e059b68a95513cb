"""Hand figures: scores decoded as the app decodes them, detection metrics (IoU, AP@0.5, all eight
joints found), and the end-to-end evaluation (crops from the DETECTED boxes) on held-out patients.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from tasks.hand import (JOINT_NAMES, MISSING_THRESHOLD, PEAK_THRESHOLD, UNSURE_THRESHOLD, anatomy_check,
                        classify_detection, crop_square, decode_detections, decode_scores, detector_input,
                        scorer_input)
from tasks.metrics import mae
from training.hand.config import DETECTOR_ID, POSITION_ID, SCORER_ID
from training.hand.data import (CROP_SIZE, CTX_SIZE, DET_SIZE, N_CLASSES, HandSet, HandSplits, augment_crop,
                                with_position)
from training.toolbox.inference import compiled_inference
from training.toolbox.runs import json_safe


def predict_scores(model, x: np.ndarray, batch: int = 256) -> list[dict[str, Any]]:
    """Decoded scores (tasks.hand.decode_scores) for a batch of scorer inputs."""
    f = compiled_inference(model)
    out = []
    for i in range(0, len(x), batch):
        o = f(x[i:i + batch])
        peak = o["peak"].reshape(-1)
        for k in range(len(peak)):
            d = decode_scores(peak[k], o["guss"][k], o["plate"][k], o["space"][k])
            d["peak_probability"] = float(peak[k])
            out.append(d)
    return out


def evaluate_scorer_on_crops(model, hs: HandSet, position: bool) -> dict[str, float]:
    """Quick validation on centre crops of the TRUE boxes (used for model selection)."""
    ctx = hs.crops.reshape(-1, CTX_SIZE, CTX_SIZE)
    x = np.stack([augment_crop(c, None, train=False) for c in ctx])[..., None]
    if position:
        x = with_position(x, np.tile(np.arange(N_CLASSES), len(hs)))
    pred = np.array([d["guss"] for d in predict_scores(model, x)])
    return scoring_metrics(pred, hs.guss.reshape(-1))


def within(pred, target, k: float = 20) -> float:
    pred, target = np.asarray(pred, float).ravel(), np.asarray(target, float).ravel()
    return float((np.abs(pred - target) <= k).mean()) if pred.size else float("nan")


def scoring_metrics(pred, target) -> dict[str, float]:
    """The original protocol's four figures: MAE and Within-20 over all joints and over non-peak joints
    (non-peak = true GUSS below 200)."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    nonpeak = target < 200
    return {"mae_all": mae(pred, target), "mae_nonpeak": mae(pred[nonpeak], target[nonpeak]),
            "w20_all": within(pred, target), "w20_nonpeak": within(pred[nonpeak], target[nonpeak])}


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return float(inter / union) if union > 0 else 0.0


def average_precision(confidences: Sequence[float], correct: Sequence[bool], n_positives: int) -> float:
    """VOC-style AP (all-point interpolation): area under the precision-recall curve of detections
    ranked by confidence; `correct` marks true positives, `n_positives` counts the ground-truth objects."""
    if n_positives <= 0:
        return float("nan")
    order = np.argsort(-np.asarray(confidences, float), kind="stable")
    tp = np.asarray(correct, bool)[order].astype(float)
    if tp.size == 0:
        return 0.0
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_positives
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def detect_images(detector, images: Sequence[np.ndarray], thresholds: dict[str, float] | None = None
                  ) -> list[dict[str, Any]]:
    """Run the detector on radiographs (uint8 or [0,1]) exactly as the task does."""
    f = compiled_inference(detector)
    t = thresholds or {}
    out = []
    for img in images:
        img01 = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img
        x, lb = detector_input(img01, DET_SIZE)
        o = f(x)
        joints = decode_detections(o["heatmap"][0], o["box"][0], lb)
        for d in joints:
            d["status"] = classify_detection(d["confidence"], t.get("missing", MISSING_THRESHOLD),
                                             t.get("unsure", UNSURE_THRESHOLD))
        p_right = float(o["side"].reshape(-1)[0])
        anat = anatomy_check({d["name"]: d["center"] for d in joints if d["status"] != "missing"}, p_right)
        out.append({"joints": joints, "p_right": p_right, "anatomy": anat})
    return out


def detection_metrics(dets: list[dict[str, Any]], hs: HandSet) -> dict[str, Any]:
    ious = np.array([[iou(d["joints"][c]["box"], hs.boxes[i, c]) for c in range(N_CLASSES)]
                     for i, d in enumerate(dets)])
    conf = np.array([[d["joints"][c]["confidence"] for c in range(N_CLASSES)] for d in dets])
    found = np.array([[d["joints"][c]["status"] != "missing" for c in range(N_CLASSES)] for d in dets])
    sure = np.array([[d["joints"][c]["status"] == "found" for c in range(N_CLASSES)] for d in dets])
    correct = (ious >= 0.5) & found
    ap = {JOINT_NAMES[c]: average_precision(conf[:, c], ious[:, c] >= 0.5, len(dets)) for c in range(N_CLASSES)}
    anat_ok = np.array([d["anatomy"]["ok"] for d in dets])
    side_ok = np.array([(d["p_right"] >= 0.5) == bool(hs.side[i]) for i, d in enumerate(dets)])
    return {
        "all_eight_correct": float(correct.all(axis=1).mean()),
        "map50": float(np.mean(list(ap.values()))),
        "all_eight_sure_and_anatomy_ok": float(((correct & sure).all(axis=1) & anat_ok).mean()),
        "joints_missing": float((~found).mean()),
        "joints_unsure": float((found & ~sure).mean()),
        "hands_anatomy_flagged": float((~anat_ok).mean()),
        "side_accuracy": float(side_ok.mean()),
        "mean_iou": float(ious.mean()),
        "n_hands": len(dets),
        "ap50": ap,
        "_correct": correct, "_sure": sure, "_anat_ok": anat_ok,
    }


def score_detected(scorer, hs: HandSet, dets: list[dict[str, Any]], position: bool, correct: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """Crops from the DETECTED boxes (joints found with IoU >= 0.5 and the right name), scored as served."""
    xs, where = [], []
    for i, d in enumerate(dets):
        img01 = hs.images[i].astype(np.float32) / 255.0
        for c in range(N_CLASSES):
            if not correct[i, c]:
                continue
            crop, _ = crop_square(img01, d["joints"][c]["box"])
            xs.append(scorer_input(crop, CROP_SIZE, c if position else None))
            where.append((i, c))
    x = np.stack(xs) if xs else np.zeros((0, CROP_SIZE, CROP_SIZE, 1 + position * N_CLASSES), np.float32)
    pred = predict_scores(scorer, x) if len(x) else []
    idx = tuple(np.array(where).T) if where else (np.zeros(0, int), np.zeros(0, int))
    return {"guss": np.array([p["guss"] for p in pred]), "plate": np.array([p["plate"] for p in pred]),
            "space": np.array([p["space"] for p in pred]), "peak_p": np.array([p["peak_probability"] for p in pred]),
            "true_guss": hs.guss[idx], "true_plate": hs.plate[idx], "true_space": hs.space[idx],
            "joint": idx[1] if where else np.zeros(0, int)}


def protocol_table(train_guss: np.ndarray, scored: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Rows of the original protocol's table: baselines A (always 200), B (train mean, train median), the scorers."""
    any_run = next(iter(scored.values()))
    target = any_run["true_guss"]
    mean_v, median_v = float(np.mean(train_guss)), float(np.median(train_guss))
    rows = {"baseline A: always 200": scoring_metrics(np.full(len(target), 200.0), target),
            f"baseline B: train mean ({mean_v:.1f})": scoring_metrics(np.full(len(target), mean_v), target),
            f"baseline B: train median ({median_v:.0f})": scoring_metrics(np.full(len(target), median_v), target)}
    for name, s in scored.items():
        rows[name] = scoring_metrics(s["guss"], s["true_guss"])
    return rows


def compartment_metrics(s: dict[str, np.ndarray]) -> dict[str, float]:
    y = s["true_guss"] == 200
    p = s["peak_p"] >= PEAK_THRESHOLD
    return {
        "stage1_accuracy": float((y == p).mean()) if len(y) else float("nan"),
        "stage1_sensitivity_nonpeak": float((~p[~y]).mean()) if (~y).any() else float("nan"),
        "stage1_specificity_peak": float(p[y].mean()) if y.any() else float("nan"),
        "plate_mae": mae(s["plate"], s["true_plate"]), "space_mae": mae(s["space"], s["true_space"]),
        "plate_mae_nonpeak": mae(s["plate"][~y], s["true_plate"][~y]),
        "space_mae_nonpeak": mae(s["space"][~y], s["true_space"][~y]),
        "n_joints": int(len(y)), "n_nonpeak": int((~y).sum()),
    }


def format_table(rows: dict[str, dict[str, float]]) -> str:
    head = f"{'':44s} {'MAE all':>8s} {'MAE non-peak':>13s} {'W20 all':>8s} {'W20 non-peak':>13s}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lines.append(f"{name:44s} {m['mae_all']:8.1f} {m['mae_nonpeak']:13.1f} {100 * m['w20_all']:7.1f}% "
                     f"{100 * m['w20_nonpeak']:12.1f}%")
    return "\n".join(lines)


def evaluate_all(models: dict[str, Any], data: HandSplits, thresholds: dict[str, float] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    hs = data.test
    det = models.get(DETECTOR_ID)
    out: dict[str, Any] = {"scorers": {}}
    if det is None:
        return out
    dets = detect_images(det, hs.images, thresholds)
    dm = detection_metrics(dets, hs)
    correct = dm.pop("_correct")
    dm.pop("_sure"), dm.pop("_anat_ok")
    out["detector"] = json_safe(dm)
    log(f"test detection: all eight correct {100 * dm['all_eight_correct']:.1f}% of {dm['n_hands']} hands, "
        f"mAP50 {dm['map50']:.4f}, anatomy flagged {100 * dm['hands_anatomy_flagged']:.1f}%")
    if data.child_test is not None and len(data.child_test):
        kids = detection_metrics(detect_images(det, data.child_test.images, thresholds), data.child_test)
        for k in ("_correct", "_sure", "_anat_ok"):
            kids.pop(k)
        out["detector_children"] = json_safe(kids)
        log(f"test detection, child phantoms: all eight correct {100 * kids['all_eight_correct']:.1f}% of "
            f"{kids['n_hands']} hands, mAP50 {kids['map50']:.4f}, joints unsure {100 * kids['joints_unsure']:.1f}%")
    scored = {}
    for mid in (SCORER_ID, POSITION_ID):
        if mid in models:
            scored[mid] = score_detected(models[mid], hs, dets, mid == POSITION_ID, correct)
    if scored:
        table = protocol_table(data.train.guss.reshape(-1), scored)
        log("test scoring (crops from detected boxes):\n" + format_table(table))
        for mid, s in scored.items():
            out["scorers"][mid] = json_safe({**table[mid], **compartment_metrics(s),
                                              "baseline_a": table["baseline A: always 200"]})
    return out
