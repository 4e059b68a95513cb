"""Shipping the spine segmenters: the file, its evaluation, the registry entry with its command, the cards."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import keras

from imaging.layers import custom_objects
from training.export import metrics_table, register_model, save_for_shipping, write_model_card
from training.quantize import quantize_convolutions
from training.spine.data import patient_sort_key
from training.spine.evaluate import evaluate
from training.spine.model import ModelSpec


TASK = "spine"


def _command(args_models: Sequence[str], quick: bool, out: str, extra: str = "") -> str:
    parts = ["python -m training.spine", "--models " + " ".join(args_models), f"--out {out}"]
    if quick:
        parts.insert(1, "--quick")
    return " ".join(parts) + extra


def _pretrain_text(pre: dict, epochs) -> str:
    hw = "x".join(str(v) for v in pre.get("input_hw", ()))
    first = (f"the given file `{pre['from_file']}` (sha256 `{pre['sha256'][:12]}...`), itself trained so"
             if pre.get("from_file") else f"trained here in {pre.get('wall_time_s', 0):.0f} s")
    return (f"\n\nTwo stages: first {pre.get('epochs_run')} epochs from scratch at {hw}, learning rate "
            f"{pre.get('lr')}, soft Dice weights {pre.get('dice_weights')} ({first}); then the {epochs} epochs "
            "above fine-tune those weights at this input size with the loss above. The regenerate command runs "
            "both; `--init FILE` starts from a first-stage file instead.")


def export_one(spec: ModelSpec, model, out_dir: Path, *, val_rows, val_patients, train_patients, input_hw,
               epochs: int, seed: int, wall_s: float, command: str, data_desc: str, history: dict,
               budget_min: float | None = None, mixed_precision: bool = True, pretrain: dict | None = None,
               log=print) -> dict[str, Any]:
    """save_for_shipping -> reload -> evaluate the shipped file -> register_model (card written later)."""
    if spec.int8_convolutions:
        model = quantize_convolutions(model)
    path = save_for_shipping(model, out_dir / f"{spec.id}.keras")
    shipped = keras.models.load_model(path, compile=False, custom_objects=custom_objects())
    t0 = time.perf_counter()
    metrics = evaluate(shipped, val_rows, input_hw)
    log(f"[{spec.id}] shipped file on {len(val_patients)} validation patients: "
        + ", ".join(f"{k} {metrics[k]}" for k in ("dice_vertebra", "dice_disc", "dice_canal"))
        + f" ({time.perf_counter() - t0:.0f} s)")
    entry = {
        "id": spec.id, "task": TASK, "role": "segmenter", "version": "1.0.0", "title": spec.title,
        "architecture": spec.architecture, "reference": spec.reference, "default": spec.default,
        "file": path.name,
        "input": {"shape": [int(input_hw[0]), int(input_hw[1]), 1], "channels": ["image"],
                  "preprocessing": "tasks.spine.spine_input (resize, 1-99 percentile scaling)"},
        "outputs": ["labels"],
        "gradcam_layer": spec.gradcam_layer,
        "training": {
            "data": data_desc,
            "split": sorted(val_patients, key=patient_sort_key),
            "train_patients": sorted(train_patients, key=patient_sort_key),
            "seed": seed, "epochs": epochs, "command": command, "wall_time_s": round(wall_s, 1),
            "loss": "categorical cross-entropy + soft Dice (vertebra, disc, canal"
                    + (", weighted {:g} : {:g} : {:g})".format(*spec.dice_weights)
                       if len(set(spec.dice_weights)) > 1 else ")"),
            "augmentation": "rotation <= 10 deg, scale <= 10 %, shift <= 5 %, gamma 0.7-1.5, contrast, "
                            "brightness, light noise; no flips",
            "budget": (spec.budget_note.format(epochs=epochs, h=input_hw[0], w=input_hw[1], budget=budget_min,
                                               epoch_min=wall_s / 60 / max(epochs, 1))
                       if spec.budget_note and budget_min else None),
            "budget_min": budget_min,
            # a two-stage model's first stage, under the key every two-stage card reads (training.export)
            "first_stage": ({k: (list(v) if isinstance(v, tuple) else v) for k, v in pretrain.items()}
                            if pretrain else None),
            "precision": f"trained in {'mixed bfloat16' if mixed_precision else 'float32'}, shipped and evaluated "
                         "in float32 (weights stored float16"
                         + (", convolution kernels int8 per output channel)" if spec.int8_convolutions else ")"),
            "final_train_loss": history.get("loss", [None])[-1],
            "final_val_loss": history.get("val_loss", [None])[-1],
        },
        "metrics": {**metrics, "evaluated_on": "validation patients, the shipped file, dataset resolution (256x320)"},
        "card": f"cards/{spec.id}.md",
        "description": spec.description,
    }
    return register_model(out_dir, entry, model=shipped)


def write_cards(out_dir: Path, log=print) -> None:
    """(Re)write the card of every spine model in `out_dir`'s registry, each with the others' figures beside."""
    reg_path = out_dir / "registry.json"
    if not reg_path.exists():
        return
    entries = [m for m in json.loads(reg_path.read_text()).get("models", []) if m.get("task") == TASK]
    keys = ["dice_vertebra", "dice_disc", "dice_canal", "mean_dice",
            "patient_dice_vertebra", "patient_dice_disc", "patient_dice_canal"]
    rows = {f"{m['id']}" + (" (reference)" if m.get("reference") else " (ours)"): m.get("metrics", {})
            for m in entries}
    for m in entries:
        tr = m.get("training", {})
        present = (out_dir / m["file"]).exists() and m["file"] not in _git_ignored(out_dir)
        sections = {
            "Training data": (
                f"{tr.get('data')}.\n\nSplit by patient (seeded, seed {tr.get('seed')}): "
                f"{len(tr.get('train_patients', []))} patients train, {len(tr.get('split', []))} validate; no "
                f"patient has slices on both sides. Validation patients: {', '.join(tr.get('split', []))}. "
                "There is no separate test set; the figures below are validation figures. No checkpoint was "
                "selected on them: the weights after the last epoch ship (the validation loss was only logged)."),
            "Training": (
                f"Loss: {tr.get('loss')}. Adam with cosine decay, batch 8; {tr.get('precision', 'float32')}. "
                f"Augmentation: {tr.get('augmentation')}. "
                f"Input {m['input']['shape'][0]}x{m['input']['shape'][1]} (preprocessing "
                "`tasks.spine.spine_input`, shared with the app). "
                f"{tr.get('epochs')} epochs, {tr.get('wall_time_s', 0):.0f} s wall on 2 shared CPU cores"
                + (f" (a {tr['budget_min']:.0f}-minute training budget decided how many epochs fit; the "
                   "regenerate command below repeats that number)" if tr.get("budget_min") else "") + "."
                + (f"\n\n**{tr['budget']}**" if tr.get("budget") else "")
                + (_pretrain_text(tr["first_stage"], tr.get("epochs")) if tr.get("first_stage") else "")),
            "Metrics on held-out data": (
                "Dice per structure on the validation patients, measured on the reloaded shipped file at the "
                "dataset's resolution (probabilities resized bilinearly, then argmax, as the app does). "
                "`dice_*`: pooled over all validation slices; `patient_dice_*`: mean of per-patient Dice. "
                "Targets: vertebra >= 0.90, disc >= 0.85, canal >= 0.85.\n\n" + metrics_table(rows, keys)
                + "\n\nRerun `python benchmarks/spine_figures.py` for these figures with latency and file size."),
            "Known failure modes and limits": (
                "- Trained on 2-D sagittal T2 SPACE slices of one public dataset (SPIDER, 33 patients, "
                "downscaled by 2); other sequences (T1, STIR), axial slices, other scanners or fields of view "
                "are out of distribution and will segment worse or wrongly, without warning.\n"
                "- Lateral (parasagittal) slices, where the canal is thin or absent and the vertebrae show "
                "pedicles and facets, are the hardest: the canal is the first structure to be missed there.\n"
                "- The vertebra label covers the whole vertebra, so posterior elements appear as separate "
                "islands; the app counts as vertebrae only components that touch a disc. Vertebrae and discs "
                "cut by the image edge count like whole ones; a transitional or fused segment changes the "
                "count. Counts are not levels: the model does not name L1-S1.\n"
                "- Severely degenerated, collapsed or herniated discs, implants and metal artefacts are rare "
                "or absent in the training data.\n"
                "- Inputs are percentile-scaled per slice; a slice dominated by a bright artefact is "
                "normalised badly."),
        }
        if not present:
            sections["File"] = (f"The file `{m['file']}` is not committed to git (all committed models together "
                                "must stay under 30 MB); the registry reports it as missing until it is "
                                f"regenerated with `{tr.get('command')}`. The figures above were measured on the "
                                "shipped file before it was left out.")
        write_model_card(out_dir, m, sections)
    log(f"model cards written for {', '.join(m['id'] for m in entries)}")


def _git_ignored(out_dir: Path) -> set[str]:
    """File names listed in `<out_dir>/.gitignore` (models too large to commit are kept out of git)."""
    path = out_dir / ".gitignore"
    if not path.exists():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}
