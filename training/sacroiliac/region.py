"""The disease-region segmenter on real sacroiliac studies: cross-validation by case, resumable training.

    python -m training.sacroiliac.region --folds 0,1,2 --epochs 25 --work /tmp/jointscan_sij_region
    python -m training.sacroiliac.region --folds none --final --epochs 25 --work /tmp/jointscan_sij_region
    python -m training.sacroiliac.region --folds none --export models/ --work /tmp/jointscan_sij_region

`--export` ships the final model of `--work` (float16 weights) into the registry with its model card, beside
the cross-validated figures of the same --work.

Each fold trains on six cases and is scored on the other three: per-slice Dice (mean and 5th
percentile over the slices where the reference or the prediction holds region) and per-case volume
Dice, for each sequence, on the study's own grid. `--final` trains on all nine cases (the model to
ship). A stopped run continues from its last finished epoch when started again with the same --work
(Keras' BackupAndRestore keeps the weights, the optimiser and the epoch; the augmentation stream of
the remaining epochs starts afresh); a fold that finished with the same configuration is read back, not
trained again.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import keras
import numpy as np

from tasks.metrics import dice
from imaging.normalize import normalise_volume
from tasks.sacroiliac_region import REGION_SIZE, region_mask, slice_stacks
from training.architectures import attention_unet, unet
from training.sacroiliac.model import dice_bce_loss
from training.sacroiliac.studies import (CASE_FOLDS, STUDY_OOD_EXEMPT, Case, RegionExamples, folds_of,
                                         labelled_cases, read_volume,
                                         region_examples)
from training.toolbox.batches import ShuffledBatches
from training.toolbox.runs import json_safe, trained_once
from training.toolbox.schedule import adam_cosine


@dataclass(frozen=True)
class RegionConfig:
    architecture: str = "attention_unet"         # or "unet" (the reference)
    filters: tuple[int, ...] = (8, 16, 32, 64)
    size: int = REGION_SIZE
    epochs: int = 25
    steps_per_epoch: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    seed: int = 0


QUICK = RegionConfig(filters=(4, 8, 16), size=64, epochs=2, steps_per_epoch=2, batch_size=2)


MODEL_NAMES = {"attention_unet": "sij_region_attention_unet", "unet": "sij_region_unet_ref"}


def build_segmenter(config: RegionConfig) -> keras.Model:
    shape = (config.size, config.size, 3)
    build = unet if config.architecture == "unet" else attention_unet
    return build(shape, filters=config.filters, name=MODEL_NAMES[config.architecture])


def trained_region(cases: Sequence[Case], config: RegionConfig, work: Path, log: Callable[[str], None] = print
                   ) -> keras.Model:
    """The segmenter of `work` trained on `cases`: trained (or its stopped training continued), or read back when
    a finished run with the same configuration is there."""
    return trained_once(work, f"{MODEL_NAMES[config.architecture]}.keras", asdict(config),
                        lambda: train_region(region_examples(cases, config.size), config, work, log)[0], log)


class RegionBatches(ShuffledBatches):
    """Augmented 2.5D stacks: left-right mirror (the pelvis is near symmetric), rotation, scale, shift,
    gamma and gain, as between patients and scanners."""

    def __init__(self, examples: RegionExamples, config: RegionConfig):
        self.examples, self.size = examples, config.size
        super().__init__(len(examples), config.batch_size, config.seed, steps=config.steps_per_epoch)

    def epoch_order(self) -> np.ndarray:
        # More steps than items per epoch: draw with repetition.
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.integers(0, self.n_items, self.steps * self.batch_size)

    def batch(self, idx: np.ndarray, rng: np.random.Generator):
        pairs = [augment(self.examples.x[i], self.examples.y[i], rng) for i in idx]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = x.shape[0]
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-12, 12), rng.uniform(0.88, 1.12))
    matrix[:, 2] += rng.uniform(-0.05, 0.05, 2) * size
    x = cv2.warpAffine(np.ascontiguousarray(x), matrix, (size, size), flags=cv2.INTER_LINEAR)
    y = cv2.warpAffine(np.ascontiguousarray(y[..., 0]), matrix, (size, size), flags=cv2.INTER_NEAREST)[..., None]
    x = np.clip(x, 0.0, None) ** np.exp(rng.uniform(-0.3, 0.3)) * rng.uniform(0.85, 1.15)
    return x.astype(np.float32), y.astype(np.float32)


def train_region(examples: RegionExamples, config: RegionConfig, work: Path, log: Callable[[str], None] = print,
                 callbacks: Sequence[keras.callbacks.Callback] = ()) -> tuple[keras.Model, dict[str, Any]]:
    """Train (or continue training) a region segmenter in `work`; returns it and the run's record."""
    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    model = build_segmenter(config)
    model.compile(optimizer=adam_cosine(config.lr, config.epochs * config.steps_per_epoch, alpha=0.02),
                  loss=dice_bce_loss)
    record_path = work / "run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"wall_s": 0.0, "sittings": 0}
    started = time.time()
    history = model.fit(RegionBatches(examples, config), epochs=config.epochs, verbose=2,
                        callbacks=[keras.callbacks.BackupAndRestore(str(work / "backup")), *callbacks])
    record["wall_s"] = round(record["wall_s"] + time.time() - started, 1)
    record["sittings"] += 1
    record.update(config=asdict(config), n_examples=len(examples), final_loss=history.history["loss"][-1]
                  if history.history.get("loss") else record.get("final_loss"))
    record_path.write_text(json.dumps(json_safe(record), indent=1))
    log(f"trained on {len(examples)} slices in {record['wall_s']:.0f} s over {record['sittings']} sitting(s)")
    return model, record


def predict_region(model: keras.Model, volume: np.ndarray, size: int, batch: int = 8) -> np.ndarray:
    """(slices, H, W) bool region of one study volume."""
    stacks = slice_stacks(normalise_volume(volume), size)
    probs = np.concatenate([model(stacks[i:i + batch], training=False) for i in range(0, len(stacks), batch)])
    return region_mask(probs, volume.shape[1:])


def region_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-slice Dice (mean, 5th percentile, over slices with region in either) and volume Dice."""
    per_slice = [dice(p, t) for p, t in zip(pred, truth) if p.any() or t.any()]
    return {"slice_dice_mean": float(np.mean(per_slice)) if per_slice else 1.0,
            "slice_dice_p5": float(np.percentile(per_slice, 5)) if per_slice else 1.0,
            "volume_dice": dice(pred, truth), "n_slices": len(per_slice)}


def evaluate_cases(model: keras.Model, cases: Sequence[Case], size: int) -> dict[str, dict[str, float]]:
    scores = {}
    for case in cases:
        truth = read_volume(case.region) > 0
        for seq, path in case.images.items():
            scores[f"{case.case_id}_{seq}"] = region_scores(predict_region(model, read_volume(path), size), truth)
    return scores


def summarise(scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean figures over case-sequences, overall and per sequence."""
    out: dict[str, Any] = {}
    for label, keep in (("all", lambda k: True), ("T1W", lambda k: k.endswith("_T1W")),
                        ("STIR", lambda k: k.endswith("_STIR"))):
        rows = [v for k, v in scores.items() if keep(k)]
        if rows:
            out[label] = {m: float(np.mean([r[m] for r in rows])) for m in ("slice_dice_mean", "slice_dice_p5",
                                                                               "volume_dice")}
            out[label]["n"] = len(rows)
    return out


def cross_validate(config: RegionConfig, work: Path, folds: Sequence[int], cases: list[Case] | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    cases = cases if cases is not None else labelled_cases()
    by_id = {c.case_id: c for c in cases}
    scores: dict[str, dict[str, float]] = {}
    for fold in folds:
        train_ids, test_ids = folds_of(list(by_id), CASE_FOLDS)[fold]
        log(f"fold {fold}: train {', '.join(train_ids)}; test {', '.join(test_ids)}")
        model = trained_region([by_id[c] for c in train_ids], config, work / f"fold{fold}", log)
        fold_scores = evaluate_cases(model, [by_id[c] for c in test_ids], config.size)
        (work / f"fold{fold}" / "scores.json").write_text(json.dumps(json_safe(fold_scores), indent=1))
        scores.update(fold_scores)
    return {"per_case": scores, "summary": summarise(scores)}


MODEL_IDS = {"attention_unet": "sij-study-region-attention-unet", "unet": "sij-study-region-unet-ref"}
GRADCAM_LAYERS = {"attention_unet": "dec1_2_relu", "unet": "dec1_conv2"}
ARCHITECTURES = {
    "attention_unet": "Attention U-Net (Oktay et al. 2018) on 2.5D stacks: encoder {enc}, bottleneck {bottom}, additive "
                      "attention gates on the skips, BatchNorm+ReLU double 3x3 convs, sigmoid output",
    "unet": "Plain U-Net (Ronneberger et al. 2015) on 2.5D stacks, the reference: encoder {enc}, bottleneck {bottom}, "
            "double 3x3 convs, transposed-convolution upsampling, sigmoid output"}


def export_region(work: Path, config: RegionConfig, out_dir: Path, cases: list[Case]) -> dict[str, Any]:
    """Ship `work`/final's model into `out_dir` (registry entry and model card); returns the entry."""
    from training.export import register_model, save_for_shipping, write_model_card

    record = json.loads((work / "final" / "run.json").read_text())
    # The configuration the final model was trained with (not the command line's), so the entry says what ran.
    config = RegionConfig(**{**record["config"], "filters": tuple(record["config"]["filters"])})
    model_id = MODEL_IDS[config.architecture]
    final = keras.models.load_model(work / "final" / f"{MODEL_NAMES[config.architecture]}.keras", compile=False)
    path = save_for_shipping(final, out_dir / f"{model_id}.keras")
    shipped = keras.models.load_model(path, compile=False)
    cv = json.loads((work / "cross_validation.json").read_text()) if (work / "cross_validation.json").exists() else {}
    # The shipped file's own figures on the cases it learnt (a check that the export kept the model, not a
    # held-out figure: those are the cross-validated ones).
    fitted = summarise(evaluate_cases(shipped, cases, config.size))
    enc = "-".join(map(str, config.filters[:-1]))
    entry = {
        "id": model_id, "task": "sacroiliac_study", "role": "segmenter", "version": "1.0.0",
        "title": ("SIJ study disease region, attention U-Net (real MRI)" if config.architecture == "attention_unet"
                  else "SIJ study disease region, reference U-Net (real MRI)"),
        "architecture": ARCHITECTURES[config.architecture].format(enc=enc, bottom=config.filters[-1]),
        # a reference is not run unless chosen for a side-by-side comparison, as in every task
        "reference": config.architecture == "unet", "default": config.architecture != "unet",
        "file": path.name,
        "input": {"shape": [config.size, config.size, 3], "channels": ["slice before", "slice", "slice after"],
                  "crop": "full", "normalisation": "volume percentiles 1-99.5 to 0-1 (clipped at 1.5)"},
        "outputs": ["mask"],
        "gradcam_layer": GRADCAM_LAYERS[config.architecture],
        "ood_exempt": STUDY_OOD_EXEMPT,
        "training": {"data": "real semi-coronal SIJ MRI of spondyloarthritis patients (sij_mri_nifti: 9 cases with a "
                             "manual disease-region mask, T1W and STIR on one grid), every slice of every sequence",
                     "split": "figures: 3-fold cross-validation by case " + "; ".join(
                         "/".join(f) for f in CASE_FOLDS) + " held out in turn; the shipped model: all 9 cases",
                     "seed": config.seed, "epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch,
                     "batch_size": config.batch_size, "learning_rate": config.lr, "loss": "Dice + binary cross-entropy",
                     "command": (f"python -m training.sacroiliac.region --architecture {config.architecture} "
                                 f"--epochs {config.epochs} --folds 0,1,2 --final --work /tmp/jointscan_sij_region "
                                 f"&& python -m training.sacroiliac.region --architecture {config.architecture} "
                                 f"--folds none --export models/ --work /tmp/jointscan_sij_region"),
                     "wall_time_s": record.get("wall_s"), "n_train": record.get("n_examples"), "quick": False},
        "metrics": {"cross_validated": cv.get("summary", {}), "per_case": cv.get("per_case", {}),
                    "shipped_on_its_training_cases": fitted},
        "description": ("Segments the sacroiliac disease region (periarticular sacrum and ilium, where sacroiliitis is "
                        "read) on every slice of a real semi-coronal study, from each slice with its two neighbours; "
                        "the oedema is measured inside it."),
    }
    entry = register_model(out_dir, entry, shipped)
    write_model_card(out_dir, entry, card_sections(entry))
    return entry


def card_sections(entry: dict[str, Any]) -> dict[str, str]:
    metrics = entry["metrics"]
    rows = ["| sequence | case-sequences | mean per-slice Dice | 5th percentile per-slice Dice | volume Dice |",
            "|---|---|---|---|---|"]
    for label, row in metrics["cross_validated"].items():
        rows.append(f"| {label} | {row['n']} | {row['slice_dice_mean']:.3f} | {row['slice_dice_p5']:.3f} | "
                    f"{row['volume_dice']:.3f} |")
    per_case = ["| held-out case | per-slice Dice | p5 | volume Dice |", "|---|---|---|---|"]
    for key, row in sorted(metrics["per_case"].items()):
        per_case.append(f"| {key} | {row['slice_dice_mean']:.3f} | {row['slice_dice_p5']:.3f} | "
                        f"{row['volume_dice']:.3f} |")
    return {
        "Training data": (
            "Real semi-coronal sacroiliac MRI of spondyloarthritis patients (`../shared/data/sij_mri_nifti`, the "
            "supplemental data of Hepburn et al.; research use, never committed): 9 cases with a manual mask of the "
            "disease region, T1W for all and STIR for 6, 336x336 pixels at 0.595 mm, 23-25 slices of 3.3 mm. "
            "**Every patient had spondyloarthritis**: there are no healthy pelvises, so the model has never seen a "
            "joint without disease. Split by case, never by slice."),
        "Metrics on held-out data": (
            "Three-fold cross-validation by case (each fold trained on six cases, scored on the other three, on the "
            "study's own grid; per-slice Dice over slices where the reference or the prediction holds region):\n\n"
            + "\n".join(rows) + "\n\n" + "\n".join(per_case) + "\n\n"
            "Target: mean per-slice Dice 0.93 (the published model reached 0.94 on its own two test cases, which are "
            "not in this copy). The attention U-Net and the reference U-Net are trained on the same folds; each "
            "one's schedule is in its training block."),
        "Known failure modes and limits": (
            "Nine cases from one centre and one protocol: other scanners, field strengths, slice thicknesses or "
            "oblique angles are untested. Slices at the ends of the study, where the joints leave the plane, carry "
            "most of the error. A healthy pelvis was never seen. Not a reader: a research measurement only."),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the sacroiliac disease-region segmenter on real studies.")
    parser.add_argument("--folds", default="0,1,2", help="folds to cross-validate (comma-separated, or 'none')")
    parser.add_argument("--final", action="store_true", help="also train on every labelled case")
    parser.add_argument("--architecture", default="attention_unet", choices=("attention_unet", "unet"))
    parser.add_argument("--epochs", type=int, default=RegionConfig.epochs)
    parser.add_argument("--steps", type=int, default=RegionConfig.steps_per_epoch)
    parser.add_argument("--size", type=int, default=RegionConfig.size, help="input side in pixels")
    parser.add_argument("--filters", default=",".join(map(str, RegionConfig.filters)),
                        help="filters per level, comma-separated")
    parser.add_argument("--batch", type=int, default=RegionConfig.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/jointscan_sij_region"))
    parser.add_argument("--quick", action="store_true", help="a tiny configuration, for tests")
    parser.add_argument("--export", type=Path, default=None, help="ship the final model into this models folder")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else RegionConfig()
    config = RegionConfig(**{**asdict(base), "architecture": args.architecture, "seed": args.seed,
                             **({} if args.quick else {"epochs": args.epochs, "steps_per_epoch": args.steps,
                                                      "size": args.size, "batch_size": args.batch,
                                                      "filters": tuple(int(f) for f in args.filters.split(","))})})
    cases = labelled_cases()
    if not cases:
        print("no labelled sacroiliac studies found (set JOINTSCAN_DATA_DIR)")
        return 1
    work = args.work / config.architecture
    if args.folds != "none":
        result = cross_validate(config, work, [int(f) for f in args.folds.split(",")], cases)
        (work / "cross_validation.json").write_text(json.dumps(json_safe(result), indent=1))
        for key, row in sorted(result["per_case"].items()):
            print(f"{key:10} slice Dice {row['slice_dice_mean']:.3f} (p5 {row['slice_dice_p5']:.3f}) "
                  f"volume Dice {row['volume_dice']:.3f}")
        for label, row in result["summary"].items():
            print(f"{label:5} n={row['n']:2d} mean per-slice Dice {row['slice_dice_mean']:.3f}, "
                  f"p5 {row['slice_dice_p5']:.3f}, volume Dice {row['volume_dice']:.3f}")
    if args.final:
        model = trained_region(cases, config, work / "final")
        print(f"saved {work / 'final' / (model.name + '.keras')}")
    if args.export is not None:
        entry = export_region(work, config, args.export, cases)
        print(f"registered {entry['id']} ({entry['size_bytes'] / 1024:.0f} KiB) in {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
