"""The sacroiliac models' training-data check: fitted on phantoms, measured on real MRI and other images.

    python -m training.sacroiliac.ood --out models [--train 2000 --val 500]

Features: each model's input as the app builds it (a segmenter reads the slice, a classifier the crop
around the shipped segmenter's served mask), at its layer in OOD_LAYERS. Fitted on training phantoms, threshold at 1% false refusals on validation
phantoms, then measured on test phantoms (false refusals) and on what the classifier has never seen:
every slice of the real studies (../shared/data/sij_mri_nifti and sij_mri_dicom) and the other real
images of ../shared/data (knee and hand radiographs, spine MRI, other DICOM), each of which must be refused. Figures go into the registry entry and are printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from imaging.io import ImageReadError, read_image
from imaging.volume import read_nifti
from model_loader import ModelRegistry
from tasks.ood import feature_statistics
from tasks.sacroiliac import classifier_input, segmenter_input
from imaging.normalize import normalise_volume
from training.ood import attach, fit_distribution, refusal_threshold
from training.sacroiliac.data import generate_split
from training.sacroiliac.evaluate import predict_masks, served_mask
from training.toolbox.runs import data_dir

# Early layers: their texture statistics tell phantoms from real images (see tasks.ood).
OOD_LAYERS = {"sij-attention-unet": "enc1_2_relu", "sij-unet-ref": "enc1_conv2",
              "sij-dual-head": "block2_relu2", "sij-cnn3-ref": "conv2"}
SEGMENTER_OF = {"sij-dual-head": "sij-attention-unet", "sij-cnn3-ref": "sij-unet-ref",
                "sij-attention-unet": "sij-attention-unet", "sij-unet-ref": "sij-unet-ref"}


def model_features(loaded, images01: Iterable[np.ndarray], masks: Iterable[np.ndarray], layer: str) -> np.ndarray:
    """The layer's statistics for each image, given as the app gives it to this model (a classifier reads
    the crop around the served mask, a segmenter the whole slice)."""
    rows = []
    for img, mask in zip(images01, masks):
        if loaded.entry.role == "segmenter":
            x = segmenter_input(img, loaded.entry.input_shape[0])
        else:
            x, _ = classifier_input(img, mask, loaded.entry.input)
        rows.append(loaded.features(x, layer, feature_statistics)[0])
    return np.asarray(rows)


def served_masks_of(segmenter, images01: list[np.ndarray]) -> list[np.ndarray]:
    size = segmenter.entry.input_shape[0]
    return [served_mask(np.asarray(segmenter(segmenter_input(img, size)))[0, :, :, 0], img.shape) for img in images01]


def real_images(root: Path) -> dict[str, list[np.ndarray]]:
    """Display-ready grey images (0-1) by kind: the real SIJ slices (NIfTI slices normalised per volume, as an
    export to PNG would show them; DICOM slices as the upload path decodes them) and other anatomy."""
    kinds: dict[str, list[np.ndarray]] = {"sij_real_nifti": [], "sij_real_dicom": [], "knee": [], "hand": [],
                                          "spine": [], "other_dicom": []}
    for path in sorted(glob.glob(str(root / "sij_mri_nifti/images/*/*.nii.gz"))):
        volume = read_nifti(Path(path).read_bytes()).volumes[0].voxels
        kinds["sij_real_nifti"] += [np.clip(s, 0, 1) for s in normalise_volume(volume)]
    for kind, pattern, limit in (("sij_real_dicom", "sij_mri_dicom/patient1/*.dcm", 100),
                                 ("knee", "knee_kl/val/*/*.jpg", 60), ("hand", "hand_xray_paediatric/*.png", 10),
                                 ("spine", "spine_mri/images/*.png", 60), ("other_dicom", "dicom/*.dcm", 10)):
        for path in sorted(glob.glob(str(root / pattern)))[:limit]:
            try:
                kinds[kind].append(read_image(Path(path).read_bytes()).pixels)
            except ImageReadError:
                continue
    return {k: v for k, v in kinds.items() if v}


# A run answers only when both its segmenter and its classifier do: at 1% each, about 1.2% of validation
# phantoms lost their answer; 0.5% each keeps a run's under 1%.
RATE = 0.005


def fit(out_dir: Path, model_id: str, n_train: int, n_val: int, n_test: int, rate: float = RATE,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    registry = ModelRegistry(out_dir)
    model, segmenter = registry.load(model_id), registry.load(SEGMENTER_OF[model_id])
    layer = OOD_LAYERS[model_id]
    # Only a classifier reads the served mask; a segmenter's features need none.
    needs_masks = model.entry.role == "classifier"
    splits = {name: generate_split(name, n) for name, n in (("train", n_train), ("val", n_val), ("test", n_test))}
    features = {}
    for name, ph in splits.items():
        masks = predict_masks(segmenter.model, ph) if needs_masks else [None] * len(ph)
        features[name] = model_features(model, [ph.image01(i) for i in range(len(ph))], masks, layer)
        log(f"{model_id}: {name} phantoms {len(ph)} -> features {features[name].shape}")
    distribution = fit_distribution(features["train"])
    threshold = refusal_threshold(distribution, features["val"], rate)
    figures: dict[str, Any] = {"threshold_from": f"{n_val} validation phantoms",
                               "test_phantoms_refused": float(np.mean(distribution.distance(features["test"]) > threshold)),
                               "n_test_phantoms": n_test}
    for kind, images in real_images(data_dir()).items():
        masks = served_masks_of(segmenter, images) if needs_masks else [None] * len(images)
        d = distribution.distance(model_features(model, images, masks, layer))
        figures[f"{kind}_refused"] = float(np.mean(d > threshold))
        figures[f"n_{kind}"] = len(images)
        figures[f"{kind}_min_distance"] = float(d.min())
    figures["val_phantom_max_distance"] = float(distribution.distance(features["val"]).max())
    entry = registry.get(model_id)
    stored = attach(out_dir, dataclasses.asdict(entry), layer, distribution, threshold, rate,
                    f"{n_train} training phantoms (seeds {splits['train'].seed_text})", figures,
                    f"python -m training.sacroiliac.ood --out models --models {model_id} --train {n_train} "
                    f"--val {n_val} --test {n_test} --rate {rate}", data="synthetic phantoms")
    log(f"{model_id}: threshold {threshold:.2f}; " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in figures.items()))
    return stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+", default=list(OOD_LAYERS))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--rate", type=float, default=RATE, help="false-refusal rate on the validation phantoms")
    args = parser.parse_args(argv)
    for model_id in args.models:
        fit(args.out, model_id, args.train, args.val, args.test, args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
