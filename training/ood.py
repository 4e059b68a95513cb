"""Fit a model's training-data check (tasks.ood): the feature distribution and its refusal threshold.

The distribution is fitted on training inputs (mean and Ledoit-Wolf shrunk covariance: the features
outnumber what a plain covariance estimates well from a few thousand inputs); the threshold is the
(1 - false_refusal_rate) quantile of the distances of held-out in-distribution inputs, so about that
share of inputs like the training data is refused. The file goes beside the model and the entry's
`ood` block records it with its checksum.
"""
from __future__ import annotations

import dataclasses
import glob
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.covariance import LedoitWolf

from imaging.io import ImageReadError, read_image
from tasks.ood import FeatureDistribution, feature_statistics
from training.export import KEPT_SECTIONS, register_model, sha256_file

DEFAULT_FALSE_REFUSAL_RATE = 0.01


def fit_distribution(train_features: np.ndarray) -> FeatureDistribution:
    features = np.asarray(train_features, dtype=np.float64).reshape(len(train_features), -1)
    estimate = LedoitWolf().fit(features)
    return FeatureDistribution(estimate.location_, estimate.precision_)


def refusal_threshold(distribution: FeatureDistribution, held_out_features: np.ndarray,
                      false_refusal_rate: float = DEFAULT_FALSE_REFUSAL_RATE, margin: float = 1.0) -> float:
    return threshold_of(distribution.distance(held_out_features), false_refusal_rate, margin)


def threshold_of(distances: np.ndarray, false_refusal_rate: float, margin: float = 1.0) -> float:
    """`margin` times the distance that `false_refusal_rate` of held-out in-distribution inputs exceed. A
    margin above 1 allows for patients farther from the training data than any held-out one (with few
    held-out patients, a new patient's slices can lie beyond them all)."""
    return float(margin * np.quantile(np.asarray(distances, np.float64), 1.0 - false_refusal_rate))


def attach(models_dir: Path, entry: dict[str, Any], layer: str, distribution: FeatureDistribution,
           threshold: float, false_refusal_rate: float, fitted_on: str, figures: dict[str, Any],
           command: str, data: str) -> dict[str, Any]:
    """Write `<id>.ood.npz` beside the model, record it in the entry (re-registered) and in its card.
    `data` names the training data in a few words for the withheld message ("synthetic phantoms")."""
    path = Path(models_dir) / f"{entry['id']}.ood.npz"
    distribution.save(path)
    entry = dict(entry, ood={"method": "mahalanobis", "layer": layer, "file": path.name,
                             "sha256": sha256_file(path), "threshold": round(threshold, 4),
                             "false_refusal_rate": false_refusal_rate, "fitted_on": fitted_on, "data": data,
                             "figures": figures})
    stored = register_model(models_dir, entry)
    if stored.get("card"):
        write_card_section(Path(models_dir) / stored["card"], CARD_SECTION, card_text(stored["ood"], command))
    return stored


def model_features(model: Any, inputs: Sequence[np.ndarray], layer: str, batch: int = 32) -> np.ndarray:
    """(n, d) check features of model inputs (each (H, W, C), built as the app builds them), in batches."""
    rows = [model.features(np.stack(inputs[i:i + batch]), layer, feature_statistics)
            for i in range(0, len(inputs), batch)]
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def cross_fitted_refusal(distances: np.ndarray, groups: Sequence[Any], false_refusal_rate: float,
                         margin: float = 1.0, folds: int = 5, seed: int = 0) -> float:
    """The share of held-out inputs refused by a threshold chosen on the other folds (split by group, e.g.
    by patient; leave one group out when there are no more groups than folds): an honest estimate of the
    false-refusal rate, which the threshold chosen on all of them meets by construction."""
    distances = np.asarray(distances, np.float64)
    keys = np.asarray([str(g) for g in groups])
    unique = np.unique(keys)
    folds = min(folds, len(unique))
    fold_of = dict(zip(unique[np.random.default_rng(seed).permutation(len(unique))], np.arange(len(unique)) % folds))
    fold = np.array([fold_of[k] for k in keys])
    refused = 0
    for f in range(folds):
        threshold = threshold_of(distances[fold != f], false_refusal_rate, margin)
        refused += int(np.sum(distances[fold == f] > threshold))
    return refused / len(distances)


def probe_images(root: Path, own: set[str], per_kind: int = 40, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Images a check must refuse, grey 0-1 as the upload path decodes them, by kind: the real images of
    ../shared/data of every other kind, the other DICOM files, generated documents and noise. `own`: the
    kinds the model reads, left out."""
    from imaging.normalize import normalise_volume
    from imaging.volume import read_nifti
    from training.recogniser.data import document, texture

    kinds: dict[str, list[np.ndarray]] = {}
    for kind, pattern in (("knee", "knee_kl/val/*/*.jpg"), ("hand_real", "hand_xray_paediatric/*.png"),
                          ("spine", "spine_mri/images/*.png"), ("sij_real_dicom", "sij_mri_dicom/*/*.dcm"),
                          ("other_dicom", "dicom/*.dcm")):
        if kind in own:
            continue
        paths = sorted(glob.glob(str(root / pattern)))
        for path in paths[:: max(1, len(paths) // per_kind)][:per_kind]:
            try:
                kinds.setdefault(kind, []).append(read_image(Path(path).read_bytes()).pixels)
            except ImageReadError:
                continue
    if "sij_real_nifti" not in own:
        for path in sorted(glob.glob(str(root / "sij_mri_nifti/images/*/*.nii.gz"))):
            volume = normalise_volume(read_nifti(Path(path).read_bytes()).volumes[0].voxels)
            kinds.setdefault("sij_real_nifti", []).extend(np.clip(s, 0, 1) for s in volume[2:-2:6])
    rng = np.random.default_rng(seed)
    kinds["document"] = [document(rng) for _ in range(per_kind // 2)]
    kinds["noise"] = [texture(rng) for _ in range(per_kind // 2)]
    return kinds


@dataclasses.dataclass
class CheckFit:
    distribution: FeatureDistribution
    threshold: float
    figures: dict[str, Any]


def fit_check(train: np.ndarray, val: np.ndarray, val_groups: Sequence[Any], probes: dict[str, np.ndarray],
              false_refusal_rate: float = DEFAULT_FALSE_REFUSAL_RATE, threshold_from: str = "validation inputs",
              margin: float = 1.0) -> CheckFit:
    """Fit on `train` features, threshold on `val` at the stated rate (and margin); figures: the
    cross-fitted false refusals on val (by group) and the share of each probe kind refused (all, ideally)."""
    distribution = fit_distribution(train)
    d_val = distribution.distance(val)
    threshold = threshold_of(d_val, false_refusal_rate, margin)
    figures: dict[str, Any] = {"threshold_from": threshold_from, "n_train": len(train), "margin": margin,
                               "validation_refused": float(np.mean(d_val > threshold)), "n_validation": len(val),
                               "validation_cross_fitted_refused": cross_fitted_refusal(d_val, val_groups,
                                                                                       false_refusal_rate, margin),
                               "n_validation_cross_fitted": len(val), "val_max_distance": float(d_val.max())}
    for kind, features in probes.items():
        if len(features):
            d = distribution.distance(features)
            figures[f"{kind}_refused"] = float(np.mean(d > threshold))
            figures[f"n_{kind}"] = len(features)
            figures[f"{kind}_min_distance"] = float(d.min())
    return CheckFit(distribution, threshold, figures)


def describe(model_id: str, fit: CheckFit, log: Callable[[str], None] = print) -> None:
    log(f"{model_id}: threshold {fit.threshold:.2f}; " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fit.figures.items()))


CARD_SECTION = KEPT_SECTIONS["ood"]


def card_text(spec: dict[str, Any], command: str) -> str:
    """The model card's account of its training-data check, from the registry's `ood` block."""
    figures = spec.get("figures", {})
    margin = f"{figures['margin']:g} times " if figures.get("margin", 1.0) != 1.0 else ""
    kinds = sorted(k[:-len("_refused")] for k in figures if k.endswith("_refused"))
    rows = "\n".join(f"| {k.replace('_', ' ')} | {figures.get('n_' + k, '')} | {100 * figures[k + '_refused']:.1f}% |"
                     for k in kinds)
    return (f"The model answers only for inputs like its training data. The {spec['layer']} layer's channel means and "
            f"standard deviations are compared with their distribution over {spec['fitted_on']} (Mahalanobis "
            f"distance, Ledoit-Wolf covariance); above {spec['threshold']:.2f} ({margin}the distance that "
            f"{100 * spec['false_refusal_rate']:g}% of {figures.get('threshold_from', 'validation inputs')} exceed), "
            "the answer is withheld and the page says why. Cross-fitted by patient or case, the threshold refuses "
            f"{100 * figures.get('validation_cross_fitted_refused', float('nan')):.1f}% of held-out in-distribution "
            "inputs.\n\n"
            "| inputs | n | refused |\n|---|---|---|\n" + rows + "\n\n"
            f"Regenerate: `{command}`")


def write_card_section(card: Path, heading: str, body: str) -> None:
    """Put `heading` with `body` into the card, replacing an earlier version of that section."""
    text = card.read_text() if card.exists() else ""
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start].rstrip() + ("\n\n" + text[end + 1:] if end >= 0 else "")
    card.write_text(text.rstrip() + f"\n\n{heading}\n\n{body}\n")
