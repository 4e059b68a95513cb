"""Shipping the sacroiliac models: the compact file, the registry entry and the model cards."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imaging.layers import custom_objects
from training.export import metrics_table, save_for_shipping, write_model_card
from training.quantize import quantize_convolutions
from training.sacroiliac.data import PhantomSplits
from training.sacroiliac.model import CLASSIFIER_SPECS, COUNTERPART, SEGMENTER_SPEC
from training.sacroiliac.train import TrainResult
from training.toolbox.runs import inside_repo, repo_relative


TASK = "sacroiliac"
VERSION = "1.0.0"
META: dict[str, dict[str, Any]] = {
    "sij-attention-unet": dict(
        role="segmenter", reference=False, default=True, title="SIJ joint-region attention U-Net",
        architecture="Attention U-Net (Oktay et al. 2018): encoder 8-16-32, bottleneck 64, additive attention "
                     "gates on the skips, BatchNorm+ReLU double 3x3 convs, sigmoid output",
        description="Segments the sacroiliac joint region (both joints and the periarticular bone band) on a "
                    "semi-coronal MRI slice resized to 128x128; the mask focuses the classifier and its Grad-CAM."),
    "sij-unet-ref": dict(
        role="segmenter", reference=True, default=False, title="SIJ joint-region U-Net (reference)",
        architecture="Plain U-Net of the original design (Ronneberger et al. 2015): encoder 64-128-256, "
                     "bottleneck 512, mirrored decoder with 2x2 transposed convs, two 3x3 Conv+ReLU per block",
        description="Reference segmenter of the original design, trained on the same phantoms with the same loss "
                    "under a stated compute budget; kept for side-by-side comparison."),
    "sij-dual-head": dict(
        role="classifier", reference=False, default=True, title="SIJ AS status and stage, dual-head CNN",
        architecture="Compact CNN: image, mask and mask-gated image (image x mask) channels, full-resolution 3x3 "
                     "stem (16), three separable-conv BN+ReLU blocks (24, 48, 96) with max-pooling, 3x3 conv 128 "
                     "('gradcam_conv', 16x20), global average and global max pooling concatenated, dropout 0.3, "
                     "softmax heads as_status (2) and stage (4); left-right flip averaged at inference",
        description="Gives AS negative/positive and a stage (Normal, Early, Moderate, Advanced) from the crop "
                    "around the segmented joint region, with the predicted mask as a second input channel."),
    "sij-cnn3-ref": dict(
        role="classifier", reference=True, default=False, title="SIJ AS status and stage, 3-block CNN (reference)",
        architecture="Original design: Conv 32/64/128 (3x3 ReLU) each with 2x2 max-pooling, Flatten, Dense 128 "
                     "ReLU, dropout 0.5, softmax heads as_status (2) and stage (4); Dense layers int8-quantised "
                     "(Keras `model.quantize('int8')`) after training",
        description="Reference classifier of the original design on the whole slice resized to 128x128; kept "
                    "for side-by-side comparison."),
}


def save_and_reload(result: TrainResult, out_dir: Path) -> tuple[Path, Any]:
    """Save `<out_dir>/<id>.keras` (float16 storage; the reference CNN's Dense layers int8, the reference
    U-Net's convolution kernels int8 per output channel) and reload it."""
    model = result.model
    if result.model_id == "sij-cnn3-ref":
        model.quantize("int8")            # Dense layers only; convolutions stay float
    elif result.model_id == "sij-unet-ref":
        model = quantize_convolutions(model)   # 7.7 M conv weights: int8 keeps the file well under budget
    path = save_for_shipping(model, Path(out_dir) / f"{result.model_id}.keras")
    shipped = keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    return path, shipped


def _entry(model_id: str, result: TrainResult, metrics: dict[str, Any], data: PhantomSplits, seed: int,
           quick: bool, out_dir: Path) -> dict[str, Any]:
    meta = META[model_id]
    role = meta["role"]
    b = result.budget
    command = f"python -m training.sacroiliac --models {model_id} --out {_display_out(out_dir)} --seed {seed}"
    if quick:
        command = command.replace("python -m training.sacroiliac", "python -m training.sacroiliac --quick")
    steps = b.steps_per_epoch or int(np.ceil(b.n_train / b.batch_size))
    if role == "segmenter":
        inp, outputs, gradcam = dict(SEGMENTER_SPEC), ["mask"], None
    else:
        inp, outputs, gradcam = dict(CLASSIFIER_SPECS[model_id]), ["as_status", "stage"], "gradcam_conv"
    return {
        "id": model_id, "task": TASK, "role": role, "version": VERSION, "title": meta["title"],
        "architecture": meta["architecture"], "reference": meta["reference"], "default": meta["default"],
        "file": f"{model_id}.keras", "input": inp, "outputs": outputs, "gradcam_layer": gradcam,
        "training": {
            "data": "synthetic semi-coronal SIJ MRI phantoms (training.phantoms.sacroiliac), STIR and T1, "
                    "uint8/255 images; labels from the generator's parameters",
            "split": (f"train seeds {int(data.train.seeds[0])}-{int(data.train.seeds[0]) + b.n_train - 1} "
                      f"(SEED_RANGES['train']), model selection on val seeds {data.val.seed_text} "
                      f"(SEED_RANGES['val']), figures on test seeds {data.test.seed_text} (SEED_RANGES['test'])"),
            "seed": seed, "epochs": result.epochs_run, "command": command,
            "wall_time_s": round(result.wall_time_s, 1),
            "n_train": b.n_train, "n_val": len(data.val), "batch_size": b.batch_size,
            "steps_per_epoch": steps, "learning_rate": b.lr, "epochs_max": b.epochs,
            "loss": "Dice + binary cross-entropy" if role == "segmenter" else "categorical cross-entropy (both heads)",
            "quick": quick,
        },
        "metrics": metrics, "card": f"cards/{model_id}.md", "description": meta["description"],
    }


def _display_out(out_dir: Path) -> str:
    return repo_relative(out_dir) + "/" if inside_repo(out_dir) else str(out_dir)


def _fmt_pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def card_sections(entry: dict[str, Any], others: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Card sections for a sacroiliac model; `others` = registry entries by id (for the comparison columns)."""
    mid, tr, m = entry["id"], entry.get("training", {}), entry.get("metrics", {})
    role = entry["role"]
    counterpart = others.get(COUNTERPART[mid])
    sections: dict[str, str] = {}
    sections["Training data"] = (
        "Synthetic semi-coronal sacroiliac-joint MRI phantoms from `training.phantoms.sacroiliac` (STIR-like and "
        "T1-like, pose/scale/bias-field/noise variation; stage 0-3 drawn uniformly, AS status = stage >= 1; "
        "masks and labels from the generator's parameters, never from the image). Disjoint seed ranges: "
        f"{tr.get('split', '')}. Images enter as uint8/255, the same as an uploaded PNG, through the task's own "
        "preprocessing (`tasks.sacroiliac.segmenter_input` / `classifier_input`)."
    )
    if role == "segmenter":
        how = ("Target: the GT mask area-resized to 128x128 (soft fraction per pixel, centred like the bilinear "
               "upsampling used at serving). No augmentation (every phantom is a new pose and acquisition).")
    elif mid == "sij-dual-head":
        how = ("Input: crop around the joint-region mask (10% margin) resized to 128x160 (height x width, about "
               "the joint region's own size and aspect, so small lesions keep their pixels), mask as second channel. "
               "During training the GT mask is randomly dilated/eroded (up to 2 px) and shifted (up to 3 px) so the "
               "classifier tolerates segmentation error; intensity augmentation (gamma, gain/offset, noise) and "
               "random left-right flips. Validation uses one fixed perturbation per case. At inference the crop "
               "and its left-right mirror go through the model as one batch and the probabilities are averaged "
               "(input `tta: hflip`; the figures below include it).")
    else:
        how = ("Input: the whole slice resized to 128x128 (no crop, no mask). Intensity augmentation and left-right "
               "flips as for the dual-head model. After training the Dense layers are quantised to int8 with "
               "Keras `model.quantize('int8')` (convolutions stay float) so the file fits the repository budget; "
               "the figures below are from the quantised, shipped file.")
    sections["Training"] = (
        f"{how}\n\nBudget: {tr.get('n_train')} training phantoms, batch {tr.get('batch_size')}, "
        f"{tr.get('steps_per_epoch')} steps/epoch, up to {tr.get('epochs_max')} epochs (ran {tr.get('epochs')}, early "
        f"stopping on validation loss with best weights restored), Adam with cosine decay from "
        f"{tr.get('learning_rate')}, loss {tr.get('loss')}. Wall time {tr.get('wall_time_s', 0):.0f} s on a shared "
        f"2-core CPU machine (no GPU) while other training jobs ran, so an upper bound. Seed {tr.get('seed')}."
        + (" This is a compute-limited reference: trained honestly on the same data and loss, but the budget above "
           "is all it got; a longer run would likely improve it." if entry.get("reference") else "")
    )
    sections["Metrics on held-out data"] = _metrics_section(entry, counterpart)
    limits = [
        "Phantoms are not patients: every figure here is on synthetic images from the same generator as the "
        "training data. There is no real-patient validation; the one real SIJ patient in the shared data is "
        "unlabelled and serves only ingestion and display checks.",
        "Real scans differ in anatomy, field of view, slice position, coil and sequence parameters, artefacts and "
        "co-existing disease; expect performance on them to be much lower and unknown.",
        "Staging is a simplified 4-level construct of the phantom generator (Normal, Early, Moderate, Advanced), "
        "not a clinical classification (e.g. not ASAS/SPARCC/modified New York grading).",
    ]
    if role == "segmenter":
        limits.append("The mask is a band around both joint lines; slices without visible joints (or far outside "
                      "the trained pose range) give an empty or partial mask, reported as 'no joint region found'.")
    elif mid == "sij-dual-head":
        limits.append("The classifier sees only the crop around the predicted joint region: a missed or misplaced "
                      "mask degrades it (the card reports the GT-mask figure beside the end-to-end one).")
        by_seq = m.get("as_accuracy_by_sequence") or {}
        early = m.get("early_recall_by_sequence") or {}
        limits.append("Early disease (one or two small oedema foci) is the hardest class and the main source of AS "
                      "errors (Normal<->Early confusions), above all on T1-like images, where oedema is a faint dark "
                      "focus in grey marrow"
                      + (f": AS accuracy {', '.join(f'{q} {_fmt_pct(v)}' for q, v in by_seq.items())}; Early recall "
                         f"{', '.join(f'{q} {_fmt_pct(v)}' for q, v in early.items())}" if by_seq else "")
                      + "."
                      + (" The project's AS-accuracy target (97%) is not reached."
                         if (m.get("as_accuracy") or 0) < 0.97 else ""))
    else:
        limits.append("The whole slice is downsampled to 128 px, halving the resolution at which small early lesions "
                      "are seen.")
    sections["Known failure modes and limits"] = "\n".join(f"- {s}" for s in limits)
    sections["On real studies: withheld"] = _real_studies_note(entry)
    return sections


def _real_studies_note(entry: dict[str, Any]) -> str:
    """What this phantom-trained model does on real MRI: it answers nowhere, and the card says why, with the figures
    of its training-data check on the real studies."""
    figures = (entry.get("ood") or {}).get("figures") or {}
    what = "joint region" if entry["role"] == "segmenter" else "AS status and stage"
    counts = ""
    if figures.get("n_sij_real_nifti"):
        counts = (f" Its training-data check refuses {figures['sij_real_nifti_refused']:.1%} of the "
                  f"{figures['n_sij_real_nifti']} slices of the real studies (`sij_mri_nifti`) and "
                  f"{figures.get('sij_real_dicom_refused', 0):.0%} of the {figures.get('n_sij_real_dicom', 0)} real DICOM "
                  "slices (`sij_mri_dicom`), so on a real slice its answer is withheld with that reason.")
    return (f"This model has only seen phantoms, and its {what} has not been validated on any real MRI.{counts} "
            "Every real patient in the shared data has spondyloarthritis and every real study has slices without "
            "oedema, so its AS status could not earn its place on them; it is not run on real studies at all. The "
            "study task (`sacroiliac_study`) reads real studies with the disease-region segmenters trained on the "
            "real masks (`sij-study-region-attention-unet`, `sij-study-region-unet-ref`), and a study's status comes "
            "from the measured bone marrow oedema and the ASAS definition instead.")


def _image_steps(entry: dict[str, Any]) -> int:
    tr = entry.get("training", {})
    return int((tr.get("steps_per_epoch") or 0) * (tr.get("epochs") or 0) * (tr.get("batch_size") or 0))


def _compute_note(entry: dict[str, Any], counterpart: dict[str, Any] | None) -> str:
    if not counterpart:
        return ""
    parts = [f"`{e['id']}` {_image_steps(e):,} image-steps ({e.get('training', {}).get('wall_time_s', 0):.0f} s)"
             for e in (entry, counterpart)]
    return ("\n\nTraining compute behind each column (images seen x epochs; wall time on the shared machine): "
            + ", ".join(parts) + ". The reference is compute-limited: compare accuracy with that in mind; "
            "latency and file size do not depend on it.")


def _metrics_section(entry: dict[str, Any], counterpart: dict[str, Any] | None) -> str:
    m = entry.get("metrics", {})
    label = f"`{entry['id']}`" + (" (reference)" if entry.get("reference") else " (ours)")
    rows: dict[str, dict[str, Any]] = {}
    if entry["role"] == "segmenter":
        def seg_row(mm: dict[str, Any]) -> dict[str, Any]:
            r = {k: mm.get(k) for k in ("dice_mean", "dice_median", "dice_p05", "region_found_rate")}
            r.update({f"dice_mean {q}": v for q, v in (mm.get("dice_mean_by_sequence") or {}).items()})
            return r

        rows[label] = seg_row(m)
        if counterpart and counterpart.get("metrics"):
            clabel = f"`{counterpart['id']}`" + (" (reference)" if counterpart.get("reference") else " (ours)")
            rows[clabel] = seg_row(counterpart["metrics"])
        keys = list(dict.fromkeys(k for r in rows.values() for k in r))
        intro = (f"{m.get('test_cases')} held-out test phantoms (seeds {m.get('test_seeds')}), evaluated from the "
                 "shipped file: the predicted probability map is upsampled to 256x256, thresholded at 0.5, and "
                 "compared with the GT mask (Dice per case).")
    else:
        def flat(mm: dict[str, Any]) -> dict[str, Any]:
            r = {k: mm.get(k) for k in ("as_accuracy", "as_sensitivity", "as_specificity", "stage_accuracy",
                                          "stage_macro_f1", "stage_qwk", "stage_mae")}
            for name, v in (mm.get("stage_recall") or {}).items():
                r[f"recall {name}"] = v
            for q, v in (mm.get("as_accuracy_by_sequence") or {}).items():
                r[f"as_accuracy {q}"] = v
            for q, v in (mm.get("early_recall_by_sequence") or {}).items():
                r[f"recall Early {q}"] = v
            if "stage_macro_f1_gt_mask" in mm:
                r["stage_macro_f1 (GT mask)"] = mm["stage_macro_f1_gt_mask"]
                r["as_accuracy (GT mask)"] = mm.get("as_accuracy_gt_mask")
            return r

        rows[label] = flat(m)
        if counterpart and counterpart.get("metrics"):
            clabel = f"`{counterpart['id']}`" + (" (reference)" if counterpart.get("reference") else " (ours)")
            rows[clabel] = flat(counterpart["metrics"])
        keys = list(dict.fromkeys(k for r in rows.values() for k in r))
        intro = (f"{m.get('test_cases')} held-out test phantoms (seeds {m.get('test_seeds')}), evaluated END TO END "
                 f"from the shipped file: segmenter `{m.get('segmenter')}` predicts the mask, the classifier gets "
                 "the input built from that predicted mask exactly as `tasks.sacroiliac.SacroiliacTask.run` does.")
        for r in rows.values():
            for k in keys:
                r.setdefault(k, None)
        cm = m.get("stage_confusion")
        if cm:
            intro_cm = "\n\nStage confusion matrix (rows true, columns predicted; Normal, Early, Moderate, Advanced):\n\n```\n" \
                       + "\n".join(" ".join(f"{v:4d}" for v in row) for row in cm) + "\n```"
        else:
            intro_cm = ""
        return intro + "\n\n" + metrics_table(rows, keys) + _compute_note(entry, counterpart) + intro_cm
    return intro + "\n\n" + metrics_table(rows, keys) + _compute_note(entry, counterpart)


def write_cards(out_dir: Path) -> None:
    registry_path = Path(out_dir) / "registry.json"
    if not registry_path.exists():
        return
    entries = {e["id"]: e for e in json.loads(registry_path.read_text())["models"] if e.get("task") == TASK}
    for entry in entries.values():
        write_model_card(out_dir, entry, card_sections(entry, entries))
