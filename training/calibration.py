"""Temperature scaling of the shipped classification heads, fitted on validation data, with the expected
calibration error (ECE) before and after.

    python -m training.calibration --out models [--models knee-kl-grader sij-dual-head ...] [--bins 15]

One code path for every model: a small adapter per task gives, for each head on its validation data, the
head's raw output as the task reads it (the tasks' own preprocessing and decoding), the true class, the
class the task decides, and the group (patient or phantom) each input belongs to. Per head:

- T minimises the negative log-likelihood of the true class under the calibrated class probabilities
  (`scipy.optimize.minimize_scalar`, bounded, over log T); the T shipped is fitted on all of val;
- ECE: equal-width confidence bins (15 by default); the confidence is the calibrated probability of the
  class the task decides (the top class for softmax and sigmoid heads; for CORAL heads the grade the task
  decides, which need not be the distribution's top grade), against whether that decision is right;
- a head whose class another head decides (the knee's grade comes from its regression head) gets a second
  step, the decided class's own recalibration (tasks.calibration.recalibrate_decided), fitted after T;
- ECE before: the raw probabilities on all of val; ECE after: 5-fold cross-fitting over groups (a
  patient's inputs all on one fold), each fold scored with what was fitted on the other four, so the
  figure is not measured on the data that fitted it. The knee has no test split (the dataset's official
  test split is deliberately absent), so this is its only honest after-figure; the phantom models get the
  same treatment, one method for all.

The block goes into the registry entry (`calibration`, read by tasks.calibration when serving) and a
"## Calibration" section into the model card.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.optimize import minimize_scalar

from model_loader import ModelRegistry
from sklearn.linear_model import LogisticRegression

from tasks.calibration import (DEFAULT_BINS, EPS, _logit, calibrated_probabilities, class_probabilities,
                               expected_calibration_error, reliability_table)
from training.export import KEPT_SECTIONS, register_model
from training.ood import write_card_section

CARD_SECTION = KEPT_SECTIONS["calibration"]
T_BOUNDS = (0.05, 20.0)
FOLDS = 5
FOLD_SEED = 0
SPREAD_SEEDS = tuple(range(10))
CALIBRATED_MODELS = ("knee-kl-grader", "sij-dual-head", "sij-cnn3-ref", "hand-guss-scorer", "hand-guss-scorer-position")


@dataclass
class HeadData:
    """One head's validation predictions."""

    kind: str               # "softmax" | "sigmoid" | "coral" (tasks.calibration.class_probabilities)
    raw: np.ndarray         # the head's raw output per input, as the task reads it
    labels: np.ndarray      # the true class per input
    decided: np.ndarray     # the class the task decides per input (no temperature changes it)
    groups: np.ndarray      # the patient (or phantom) of each input: cross-fitting keeps a group on one side
    confidence: str         # what the confidence is, in words (for the card)
    population: str         # which validation inputs, in words
    recalibrate_decided: bool = False   # the class is decided by another head: recalibrate its probability too
    offset_per_class: bool = True       # ... with an offset per decided class (few classes, enough inputs each)


@dataclass
class Validation:
    heads: dict[str, HeadData]
    fitted_on: str          # the validation data, in words
    group_word: str         # what a cross-fitting group is ("patients", "phantoms")


# -- fitting ---------------------------------------------------------------------------------------
def nll(kind: str, raw: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true classes at temperature T."""
    probs = class_probabilities(kind, raw, temperature)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, None))))


def fit_temperature(kind: str, raw: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The T that minimises the NLL; searched over log T, where the NLL is better conditioned (T = 0.5 and
    T = 2 are equally far from 1)."""
    res = minimize_scalar(lambda lt: nll(kind, raw, labels, float(np.exp(lt))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def fit_decided(head: HeadData, temperature: float, idx: np.ndarray) -> dict[str, Any] | None:
    """The decided class's recalibration (tasks.calibration.recalibrate_decided) fitted on `idx`: a
    logistic regression of whether the decision was right on the logit of the decided class's probability
    at T, with an offset per decided class; None when every decision there was right (or none was)."""
    probs = class_probabilities(head.kind, head.raw[idx], temperature)
    decided = head.decided[idx]
    right = decided == head.labels[idx]
    if right.all() or not right.any():
        return None
    k = probs.shape[1]
    columns = [_logit(probs[np.arange(len(idx)), decided])]
    if head.offset_per_class:
        columns += [decided == c for c in range(1, k)]
    fit = LogisticRegression(C=1.0).fit(np.column_stack(columns), right)
    slope, intercept = float(fit.coef_[0][0]), float(fit.intercept_[0])
    per_class = fit.coef_[0][1:] if head.offset_per_class else np.zeros(k - 1)
    return {"method": "logistic", "coef": round(slope, 6),
            "offsets": [round(intercept, 6)] + [round(intercept + float(c), 6) for c in per_class],
            "inputs": "the logit of the decided class's probability at T" + (
                ", and an offset per decided class" if head.offset_per_class else "")}


def fit_head(head: HeadData, idx: np.ndarray) -> dict[str, Any]:
    """{"temperature": T, "decided": ... or None} fitted on the inputs `idx`."""
    t = fit_temperature(head.kind, head.raw[idx], head.labels[idx])
    return {"temperature": t, "decided": fit_decided(head, t, idx) if head.recalibrate_decided else None}


def shown_probabilities(head: HeadData, fitted: dict[str, Any] | None, idx: np.ndarray) -> np.ndarray:
    """The class probabilities the app would show for the inputs `idx` (raw when `fitted` is None)."""
    return calibrated_probabilities(head.kind, head.raw[idx], head.decided[idx], fitted)


def confidence_and_correct(head: HeadData, probs: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    decided = head.decided[idx]
    return probs[np.arange(len(idx)), decided], decided == head.labels[idx]


def mean_nll(head: HeadData, probs: np.ndarray, idx: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(idx)), head.labels[idx]], EPS, None))))


def fold_of(groups: np.ndarray, folds: int = FOLDS, seed: int = FOLD_SEED) -> np.ndarray:
    """Fold per input: the distinct groups shuffled (seeded) and dealt round the folds."""
    names, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    deal = np.empty(len(names), np.int64)
    deal[np.random.default_rng(seed).permutation(len(names))] = np.arange(len(names)) % folds
    return deal[inverse]


def cross_fitted(head: HeadData, seed: int) -> tuple[np.ndarray, float, list[float]]:
    """Each input's shown confidence when what is shown was fitted on the other folds; the mean NLL of the
    true class so measured; each fold's temperature."""
    n = len(head.labels)
    fold = fold_of(head.groups, FOLDS, seed)
    conf, fold_t, nll_sum = np.empty(n), [], 0.0
    for f in range(FOLDS):
        fit_idx, score_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if not len(score_idx):
            continue
        fitted = fit_head(head, fit_idx)
        fold_t.append(fitted["temperature"])
        probs = shown_probabilities(head, fitted, score_idx)
        conf[score_idx], _ = confidence_and_correct(head, probs, score_idx)
        nll_sum += mean_nll(head, probs, score_idx) * len(score_idx) / n
    return conf, nll_sum, fold_t


def calibrate_head(head: HeadData, n_bins: int = DEFAULT_BINS, fitted_on: str = "validation data",
                   group_word: str = "groups") -> dict[str, Any]:
    """The registry's spec of one head: fitted on all of val, ECE before (raw) and after (cross-fitted)."""
    n = len(head.labels)
    every = np.arange(n)
    shipped = fit_head(head, every)
    conf_after, nll_after, fold_t = cross_fitted(head, FOLD_SEED)
    raw = shown_probabilities(head, None, every)
    conf_before, correct = confidence_and_correct(head, raw, every)
    r = lambda v: round(float(v), 4)  # noqa: E731
    spec = {
        "method": "temperature",
        "temperature": r(shipped["temperature"]),
        "ece_before": r(expected_calibration_error(conf_before, correct, n_bins)),
        "ece_after": r(expected_calibration_error(conf_after, correct, n_bins)),
        "n_bins": n_bins,
        "n": n,
        "fitted_on": fitted_on,
        "ece_after_from": f"{FOLDS}-fold cross-fitting over {group_word} (seed {FOLD_SEED})",
        "accuracy": r(correct.mean()),
        "nll_before": r(mean_nll(head, raw, every)),
        "nll_after": r(nll_after),
        "fold_temperatures": [r(t) for t in fold_t],
        "confidence": head.confidence,
        "population": head.population,
        "reliability_before": [[r(c), r(a), k] for c, a, k in reliability_table(conf_before, correct, n_bins)],
        "reliability_after": [[r(c), r(a), k] for c, a, k in reliability_table(conf_after, correct, n_bins)],
    }
    # The after-figure depends on how the groups fall into folds: its spread over other seeds.
    seeds = [expected_calibration_error(cross_fitted(head, seed)[0], correct, n_bins) for seed in SPREAD_SEEDS]
    spec["ece_after_over_fold_seeds"] = {"seeds": len(SPREAD_SEEDS), "min": r(min(seeds)), "mean": r(np.mean(seeds)),
                                         "max": r(max(seeds))}
    if shipped["decided"]:
        spec["decided"] = shipped["decided"]
    return spec


# -- the per-task adapters: validation predictions through the tasks' own preprocessing --------------
def knee_validation(registry: ModelRegistry, model_id: str, log: Callable[[str], None]) -> Validation:
    from tasks.knee import N_GRADES, decide
    from training.knee import data as knee_data
    from training.knee.evaluate import predict_tta

    if not knee_data.available():
        raise SystemExit(f"the real knee data is not at {knee_data.knee_dir()} (set JOINTSCAN_DATA_DIR)")
    model = registry.load(model_id)
    entry = model.entry
    val = knee_data.load_split("val", entry.input_shape[0])       # grader_input + canonical, as the task
    pred = predict_tta(model, val.images)                          # the upload and its mirror, as the task
    head = entry.input.get("decision_head", "regression")
    grade, _ = decide(pred["kl_value"], pred["kl_coral"], head)
    patients = np.array([knee_data.patient_of(s) for s in val.ids])
    log(f"{model_id}: {len(val)} val knees of {len(set(patients))} patients")
    return Validation(
        {"kl_coral": HeadData("coral", pred["kl_coral"].reshape(-1, N_GRADES - 1), val.grades, grade, patients,
                              f"the calibrated probability of the grade the task decides ({head} decision head)",
                              "every val knee", recalibrate_decided=head != "coral")},
        f"the {len(val)} validation knees of knee_kl (real OAI radiographs, {len(set(patients))} patients); "
        "the dataset's test split is not here, so these are validation figures", "patients")


@lru_cache(maxsize=1)
def _sacroiliac_val():
    from training.sacroiliac.data import generate_split
    from training.sacroiliac.train import FULL_SIZES

    return generate_split("val", FULL_SIZES["n_val"])


def sacroiliac_validation(registry: ModelRegistry, model_id: str, log: Callable[[str], None]) -> Validation:
    from tasks.sacroiliac import classifier_probabilities
    from training.sacroiliac.data import classifier_arrays
    from training.sacroiliac.evaluate import predict_masks
    from training.sacroiliac.model import PAIRED_SEGMENTER

    ph = _sacroiliac_val()
    model = registry.load(model_id)
    spec = model.entry.input
    # The classifier reads the crop around the shipped segmenter's served mask (as training/sacroiliac/ood.py);
    # a full-image, image-only classifier never sees the mask, so no segmenter runs for it.
    uses_mask = spec.get("crop") == "joint_region" or "mask" in spec.get("channels", [])
    seg_id = PAIRED_SEGMENTER[model_id]
    masks = predict_masks(registry.load(seg_id).model, ph) if uses_mask else np.zeros_like(ph.masks)
    probs: dict[str, list[np.ndarray]] = {"as_status": [], "stage": []}
    for s in range(0, len(ph), 64):
        idx = np.arange(s, min(s + 64, len(ph)))
        out = classifier_probabilities(model, classifier_arrays(ph, spec, masks=masks, idx=idx), spec)
        for head in probs:
            probs[head].append(out[head])
    heads = {}
    for head, labels in (("as_status", ph.as_status), ("stage", ph.stage)):
        p = np.concatenate(probs[head])
        heads[head] = HeadData("softmax", p, np.asarray(labels), p.argmax(axis=1), ph.seeds,
                               "the calibrated probability of the top class", "every val phantom")
    log(f"{model_id}: {len(ph)} val phantoms" + (f", crops around {seg_id}'s served masks" if uses_mask else ""))
    return Validation(heads, f"the {len(ph)} validation phantoms of the sacroiliac training run (seeds "
                             f"{ph.seed_text})" + (f", cropped around {seg_id}'s served masks" if uses_mask else ""),
                      "phantoms")


@lru_cache(maxsize=1)
def _hand_val(n_patients: int):
    from training.hand.data import generate_split
    from training.phantoms.hand import PATIENT_POOL, split_patients

    return generate_split("val", split_patients(list(PATIENT_POOL[:n_patients]))["val"])


@lru_cache(maxsize=1)
def _hand_detections(registry: ModelRegistry, n_patients: int):
    from training.hand.config import DETECTOR_ID
    from training.hand.evaluate import detect_images, detection_metrics

    hs = _hand_val(n_patients)
    dets = detect_images(registry.load(DETECTOR_ID).model, hs.images)
    return dets, detection_metrics(dets, hs)["_correct"]


def hand_validation(registry: ModelRegistry, model_id: str, log: Callable[[str], None]) -> Validation:
    from tasks.hand import GUSS_STEP, JOINT_NAMES, PEAK_THRESHOLD, crop_square, scorer_input, stage2_score
    from training.hand.config import DETECTOR_ID

    entry = registry.get(model_id)
    n_patients = int(entry.training.get("patients", 1000))
    hs = _hand_val(n_patients)          # before TensorFlow loads, so the phantoms are drawn in worker processes
    model = registry.load(model_id)
    dets, correct = _hand_detections(registry, n_patients)
    size = entry.input_shape[0]
    position = "joint_onehot" in entry.input.get("channels", [])
    # Crops from the shipped detector's boxes, as the task scores them; joints it found (IoU >= 0.5,
    # right name), so each crop has its true score.
    xs, truth, patient = [], [], []
    for i, d in enumerate(dets):
        img01 = hs.images[i].astype(np.float32) / 255.0
        for c in np.flatnonzero(correct[i]):
            crop, _ = crop_square(img01, d["joints"][c]["box"])
            xs.append(scorer_input(crop, size, int(c) if position else None))
            truth.append(int(hs.guss[i, c]))
            patient.append(int(hs.patient[i]))
    x, truth, patient = np.stack(xs), np.array(truth), np.array(patient)
    if (truth % GUSS_STEP).any():
        raise ValueError("hand phantom GUSS labels are expected in steps of 10")
    outs = [model(x[s:s + 256]) for s in range(0, len(x), 256)]
    peak = np.concatenate([np.asarray(o["peak"]).reshape(-1) for o in outs])
    guss = np.concatenate([np.asarray(o["guss"]) for o in outs])
    stage2 = peak < PEAK_THRESHOLD                      # the joints stage 2 scores (stage 1 says not intact)
    heads = {
        "peak": HeadData("sigmoid", peak, (truth == 200).astype(np.int64), (~stage2).astype(np.int64), patient,
                         "the calibrated probability of the stage-1 decision (intact or not)",
                         "every val joint the detector found"),
        "guss": HeadData("coral", guss[stage2], truth[stage2] // GUSS_STEP,
                         stage2_score(guss[stage2]) // GUSS_STEP, patient[stage2],
                         "the calibrated probability of the stage-2 GUSS the task gives (its CORAL rank, 0-190)",
                         "the val joints stage 1 sends to stage 2", recalibrate_decided=True,
                         offset_per_class=False),     # 20 classes, some with a handful of joints
    }
    log(f"{model_id}: {len(x)} val joints ({len(JOINT_NAMES)} per hand, {len(dets)} hands, "
        f"{len(set(patient))} patients), {int(stage2.sum())} scored by stage 2")
    return Validation(heads, f"the {len(x)} joints of the {len(dets)} validation radiographs "
                             f"({len(set(patient))} patients) of the hand training run that {DETECTOR_ID} found",
                      "patients")


ADAPTERS: dict[str, Callable[[ModelRegistry, str, Callable[[str], None]], Validation]] = {
    "knee": knee_validation, "sacroiliac": sacroiliac_validation, "hand": hand_validation}


# -- the registry and the card ------------------------------------------------------------------------
def card_text(block: dict[str, Any], fitted_on: str, group_word: str, command: str) -> str:
    """The card's account of its calibration, from the registry's `calibration` block."""
    def spread(s: dict[str, Any]) -> str:
        sp = s.get("ece_after_over_fold_seeds")
        return f"{sp['min']:.4f}-{sp['max']:.4f}" if sp else ""

    rows = "\n".join(f"| `{h}` | {s['temperature']:.3f} | {s['ece_before']:.4f} | {s['ece_after']:.4f} | {spread(s)} | "
                     f"{s['n']} | {s['accuracy']:.3f} | {s['population']} |" for h, s in block.items())
    decided = "".join(f" The `{h}` head's decided class is recalibrated after T ({s['decided']['inputs']}: logistic "
                      "regression of whether the decision was right), because another head decides it."
                      for h, s in block.items() if s.get("decided"))
    n_bins = next(iter(block.values()))["n_bins"]
    confidences = "; ".join(f"`{h}`: {s['confidence']}" for h, s in block.items())
    return (f"Every probability the app shows from these heads is calibrated by temperature scaling: the logits are "
            f"divided by T (softmax heads: logits = log p; sigmoid and CORAL heads: each threshold's logit), "
            f"T minimising the negative log-likelihood of the true class on {fitted_on}. T > 1 softens, T < 1 "
            f"sharpens; no decision changes (an argmax, and every threshold at 0.5, stay where they are).{decided}\n\n"
            "| head | T | ECE before | ECE after | after, other fold seeds | n | accuracy | inputs |\n"
            f"|---|---|---|---|---|---|---|---|\n{rows}\n\n"
            f"ECE: {n_bins} equal-width confidence bins, the confidence against whether the decision is right "
            f"({confidences}). Before: the raw probabilities. After: {FOLDS}-fold cross-fitting over {group_word} (a "
            f"group's inputs all in one fold; each fold scored with what was fitted on the others), so the figure "
            "is not measured on the inputs that fitted it; the T shipped is fitted on all of them. "
            "The models page draws the reliability diagrams.\n\n"
            f"Regenerate: `{command}`")


def attach(models_dir: Path, model_id: str, block: dict[str, Any], validation: Validation, command: str
           ) -> dict[str, Any]:
    """Record the block in the model's registry entry (every other field as it is) and in its card."""
    raw = json.loads((Path(models_dir) / "registry.json").read_text())
    entry = next(m for m in raw["models"] if m["id"] == model_id)
    stored = register_model(models_dir, dict(entry, calibration=block))
    if stored.get("card"):
        write_card_section(Path(models_dir) / stored["card"], CARD_SECTION,
                           card_text(block, validation.fitted_on, validation.group_word, command))
    return stored


def _log(message: str) -> None:
    print(message, flush=True)


def calibrate(models_dir: Path, model_id: str, n_bins: int = DEFAULT_BINS,
              log: Callable[[str], None] = _log) -> dict[str, Any]:
    registry = ModelRegistry(models_dir)
    entry = registry.get(model_id)
    if entry is None:
        raise SystemExit(f"{model_id} is not registered in {models_dir}")
    if entry.task not in ADAPTERS:
        raise SystemExit(f"{model_id}: no calibration adapter for task {entry.task!r}")
    t0 = time.perf_counter()
    validation = ADAPTERS[entry.task](registry, model_id, log)
    block = {head: calibrate_head(data, n_bins, validation.fitted_on, validation.group_word)
             for head, data in validation.heads.items()}
    command = f"python -m training.calibration --out models --models {model_id}" + (
        f" --bins {n_bins}" if n_bins != DEFAULT_BINS else "")
    attach(models_dir, model_id, block, validation, command)
    for head, s in block.items():
        log(f"{model_id} {head}: T {s['temperature']:.3f} (folds {s['fold_temperatures'][0]:.3f}, "
            f"{s['fold_temperatures'][1]:.3f}), ECE before {s['ece_before']:.4f} after {s['ece_after']:.4f} "
            f"({n_bins} bins, cross-fitted; over {s['ece_after_over_fold_seeds']['seeds']} fold seeds "
            f"{s['ece_after_over_fold_seeds']['min']:.4f}-{s['ece_after_over_fold_seeds']['max']:.4f}), "
            f"n {s['n']}, accuracy {s['accuracy']:.3f}, "
            f"NLL {s['nll_before']:.4f} -> {s['nll_after']:.4f}")
    log(f"{model_id}: done in {time.perf_counter() - t0:.0f} s")
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibration", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"), help="the models folder (registry and cards)")
    parser.add_argument("--models", nargs="+", default=list(CALIBRATED_MODELS))
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for model_id in args.models:
        calibrate(args.out, model_id, args.bins)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
